"""What a refused run that touches nothing costs, measured both ways (docs/reliability.md).

    python scripts/refusal_cost.py            # median of 20 repeats; exits 1 if the choice no longer holds

Hydra writes a single run's `.hydra/*.yaml` and its log before the task function can
check anything. Two ways to leave nothing behind:
- check first: repeat, in a callback before Hydra writes, what can refuse a run (the
  typed config and its ranges, the data load, the device) - paid again by every run
  that is not refused;
- restore (chosen): snapshot what Hydra will overwrite in the run dir before it writes
  (collapse.sweep.callback.RunDirSnapshot), and put it back only when the run is refused.
Prints the per-run cost of each for the default config and checks restore is the cheaper.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_s(fn, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from collapse import data as data_lib
    from collapse.run.execute import resolve_device
    from collapse.sweep.callback import RunDirSnapshot
    from collapse.train import CONF_DIR, to_config

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra.run.dir={run_dir}"], return_hydra_config=True)
        # a used run dir: what a refusal must put back
        (run_dir / ".hydra").mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (run_dir / ".hydra" / name).write_text("x" * 4000)
        (run_dir / "train.log").write_text("y" * 2000)
        snapshot = median_s(lambda: RunDirSnapshot(cfg))
        restore = median_s(lambda: RunDirSnapshot(cfg).restore())
        task = cfg.copy()
        with open_dict(task):
            del task["hydra"]
        typed = to_config(task)
        resolve_device(typed.trainer.device)         # torch imported once, outside the timing

        def check_first():
            checked = to_config(task)
            data_lib.load(checked.data, checked.seed, unlabeled=checked.ssl.enabled)
            resolve_device(checked.trainer.device)

        check = median_s(check_first)
    print(f"restore:     {snapshot * 1e3:.2f} ms per run (snapshot), {restore * 1e3:.2f} ms per refusal "
          "(snapshot + restore)")
    print(f"check first: {check * 1e3:.2f} ms per run (config check, data load, device: done twice)")
    ok = snapshot < check
    print("restore is the cheaper per run" if ok else "CHECK FAILED: restore is not the cheaper per run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
