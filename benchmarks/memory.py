"""Item 6: peak RSS of one default run and of a parallel sweep; the data held once."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import PY, TINY, Result, median, run_cmd, train_cmd


def sweep_peak_rss(quick: bool, tmp: Path, epochs: int, ctx: dict) -> float:
    """The summed RSS of a default (parallel) phase4 sweep's process tree at its peak
    (--quick: parallel_sweep's default sweep, sampled, where that item ran)."""
    from benchmarks.processes import phase4_grid

    if quick and "quick_default_phase4" in ctx:
        return ctx["quick_default_phase4"]["tree_peak_mb"]
    timed = run_cmd(train_cmd(*phase4_grid(quick, epochs), f"hydra.sweep.dir={tmp}/phase4_memory",
                              config_name="phase4"), tmp, sample_tree=True)
    return timed.tree_peak_mb


def bench_memory(quick: bool, tmp: Path, ctx: dict) -> Result:
    res = Result()
    if quick:
        if not ctx.get("tiny_run_maxrss_mb_cpu"):
            ctx["tiny_run_maxrss_mb_cpu"] = [run_cmd(train_cmd(*TINY, f"hydra.run.dir={tmp}/tiny_run"), tmp).maxrss_mb]
        run_peak = median(ctx["tiny_run_maxrss_mb_cpu"])
        run_label = "peak RSS, one tiny run (1 epoch, 300 samples)"
    else:
        run_peak = run_cmd(train_cmd(f"hydra.run.dir={tmp}/default_run"), tmp).maxrss_mb
        run_label = "peak RSS, one default run"
    n_samples, epochs = (40_000, 2) if quick else (400_000, 4)
    if quick:       # in this process: one interpreter start less in CI
        from benchmarks.probe import memory

        probe = memory(n_samples, epochs)
    else:
        out = run_cmd([PY, "-m", "benchmarks.probe", "memory", str(n_samples), str(epochs)], tmp).stdout
        probe = json.loads([ln for ln in out.splitlines() if ln.startswith("PROBE ")][-1][6:])
    per_epoch = probe["rss_per_epoch_mb"]
    train_mb = probe["train_mb"]
    growth = (per_epoch[-1] - per_epoch[0]) / max(1, len(per_epoch) - 1)
    first = per_epoch[0] - probe["rss_fit_start_mb"]
    shared = probe["tensors_share_prepared_arrays"]
    sweep_peak = sweep_peak_rss(quick, tmp, ctx.get("phase4_epochs", 0), ctx)
    res.figures = {"default_run_peak_rss_mb": run_peak,
                   "sweep_2_workers_peak_rss_mb": sweep_peak, "probe": probe,
                   "growth_per_epoch_mb": growth, "first_epoch_working_memory_mb": first}
    res.add(run_label, run_peak, "MB", note="largest process, wait4 ru_maxrss")
    res.add("peak RSS, parallel sweep (phase4 grid)", sweep_peak, "MB",
            note="sum over the process tree, sampled every 0.1 s")
    res.add(f"probe: prepared arrays ({n_samples} samples)", sum(probe["prepared_mb"].values()), "MB",
            note=f"train split {train_mb:.1f} MB, X_unlabeled (SSL only) "
                 f"{probe['prepared_mb'].get('X_unlabeled', 0.0):.1f} MB")
    res.add("probe: trainer tensors sharing the prepared arrays", sum(shared.values()) / len(shared), "fraction",
            (">=", 1.0), note=", ".join(f"{k} {'shared' if v else 'COPIED'}" for k, v in shared.items()))
    res.add("probe: RSS growth per epoch / train split", growth / train_mb, "copies", ("<=", 0.1),
            note=f"{growth:+.2f} MB/epoch over {len(per_epoch)} epochs")
    res.add("probe: working memory of the first epoch", first, "MB",
            note=f"{first / train_mb:.2f} x the train split: batches, activations, allocator")
    return res
