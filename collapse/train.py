"""Entry point: one experiment per Hydra job, and `run()` for notebooks.

    python -m collapse.train loss.variance_lambda=0.5
    python -m collapse.train --multirun data.temporal_frames=1,3,7 seed=0,1,2

Flow: compose (Hydra) -> typed Config + range checks -> data -> collapse.runner ->
metrics.json in the job's output dir. Bad input fails before anything that looks
like a result is written: a single run prints one line and exits 2; inside a sweep
the job records status `failed` with the error so the other jobs carry on.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from collapse import records
from collapse.config import Config, ConfigError, check_known_keys, register_configs, validate
from collapse.data import DataError

# Absolute, built from __file__: a package-relative config_path fails when main()
# is called from a console script (shared/STYLE.md).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("collapse")
register_configs()


def to_config(cfg: DictConfig) -> Config:
    """Composed DictConfig -> validated dataclass (raises ConfigError naming the key)."""
    check_known_keys(OmegaConf.to_container(cfg, resolve=False))
    return validate(OmegaConf.to_object(cfg))


def _one_line(e: Exception) -> str:
    # OmegaConf's messages span lines with the key on a later one ("full_key: ...")
    if isinstance(e, OmegaConfBaseException):
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return f"{e.full_key}: {first}" if getattr(e, "full_key", None) else first
    return str(e)


def _base_record(cfg: DictConfig, overrides: Sequence[str], choices: dict, job: dict) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # seed at the top level from the start: a job that fails before training is still
    # a replicate of its cell (the summary pairs and counts runs by it)
    return {"schema": records.SCHEMA_VERSION, "config": resolved,
            "config_hash": records.config_hash(resolved), "overrides": list(overrides),
            "choices": choices, "job": job, "seed": resolved.get("seed")}


def _labels(record: dict) -> str:
    """'val healthy, test inconclusive' from record["diagnosis"] (one entry per split)."""
    diagnosis = record.get("diagnosis") or {}
    return ", ".join(f"{split} {d.get('label')}" for split, d in diagnosis.items()) or "none"


def _run_job(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], choices: dict,
             job: dict, multirun: bool, launcher: Optional[DictConfig]) -> float:
    from collapse.runner import load_data, resolve_device, run_experiment
    from collapse.sweep import RunExists, exit_with_parent, existing_run, threads_per_job

    if multirun:
        exit_with_parent()      # a joblib (loky) worker must not outlive a killed sweep
    metrics_path = run_dir / records.METRICS_FILE
    record = {"schema": records.SCHEMA_VERSION, "overrides": list(overrides), "choices": choices, "job": job}
    try:
        record = _base_record(cfg, overrides, choices, job)    # resolves interpolations: may fail
        typed = to_config(cfg)
        previous = existing_run(run_dir, record["config_hash"], typed.resume)
        if previous is not None:
            log.info(f"resume: {metrics_path} already holds a {previous['status']} run of this config; skipped")
            value = previous.get("monitor_value")
            return float(value) if value is not None else math.nan
        data = load_data(typed)
        resolve_device(typed.trainer.device)          # trainer.device=cuda without CUDA is bad input
    except (ConfigError, DataError, RunExists, OmegaConfBaseException) as e:
        if not multirun:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            print(f"collapse: error: {_one_line(e)}", file=sys.stderr)
            raise SystemExit(2)
        log.error(f"collapse: error: {_one_line(e)}")
        if isinstance(e, RunExists):        # would overwrite a result: touch nothing
            return math.nan
        records.write_json(metrics_path, {**record, "status": "failed", "stop_reason": "bad_input",
                                          "error": f"{type(e).__name__}: {_one_line(e)}"})
        return math.nan
    import torch    # only now: bad input above fails without paying torch's import (~1.5 s)

    torch.set_num_threads(threads_per_job(typed.trainer.threads, launcher))

    try:
        record = run_experiment(typed, data, run_dir, record,
                                write=lambda r: records.write_json(metrics_path, r))
    except Exception as e:  # noqa: BLE001 - a crash mid-run is a recorded result, not a dead sweep
        log.error(f"run failed: {type(e).__name__}: {e}")
        record.update({"status": "failed", "stop_reason": "exception",
                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        records.write_json(metrics_path, record)
        if not multirun:
            print(f"collapse: error: run failed: {type(e).__name__}: {e} (traceback in {metrics_path})",
                  file=sys.stderr)
            raise SystemExit(1)
        return math.nan

    best = record.get("best") or {}
    val = best.get("val") or {}
    log.info(f"{record['status']} ({record['stop_reason']}) | best epoch {record['best_epoch']} | "
             f"val R² {val.get('r2', math.nan):.3f} | var ratio {val.get('variance_ratio', math.nan):.3f} "
             f"| diagnosis {_labels(record)} | {metrics_path}")
    if record["status"] == "diverged":
        log.warning("the loss became non-finite: recorded as diverged (try a lower trainer.lr)")
    return float(record["monitor_value"])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra task function. Returns the monitored val metric (for Hydra sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    # a launcher numbers every sweep job; hydra.mode is not reliable inside jobs (it
    # is only set there when the sweep was started with -m or hydra.mode=MULTIRUN)
    multirun = not OmegaConf.is_missing(hc.job, "num")
    job = {"num": hc.job.num if multirun else None, "dir": hc.runtime.output_dir,
           "config_name": hc.job.config_name}
    # as typed: iterating the ListConfig would resolve `${...}` inside the override strings
    overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)
    return _run_job(cfg, Path(hc.runtime.output_dir), overrides, choices, job,
                    multirun, hc.launcher if multirun else None)


def run(overrides: Sequence[str] = (), run_dir: Optional[str | Path] = None) -> dict:
    """Notebook API: compose the config with `overrides`, train, return the metrics record.

    Writes metrics.json and model.pt only when `run_dir` is given. Raises ConfigError
    or DataError for bad input (the message names the key or file).
    """
    from hydra import compose, initialize_config_dir

    from collapse.runner import load_data, run_experiment

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    typed = to_config(cfg)
    if typed.trainer.threads > 0:
        import torch

        torch.set_num_threads(typed.trainer.threads)
    record = _base_record(cfg, overrides, choices, {"num": None, "dir": str(run_dir) if run_dir else None})
    data = load_data(typed)
    write = (lambda r: records.write_json(Path(run_dir) / records.METRICS_FILE, r)) if run_dir else (lambda r: None)
    return run_experiment(typed, data, Path(run_dir) if run_dir else None, record, write)


if __name__ == "__main__":
    main()
