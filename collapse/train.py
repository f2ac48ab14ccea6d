"""Entry point: one experiment per Hydra job, and `run()` for notebooks.

    python -m collapse.train loss.variance_lambda=0.5
    python -m collapse.train --multirun data.temporal_frames=1,3,7 seed=0,1,2

Flow: compose (Hydra) -> typed Config + range checks -> collapse.run.execute (the one
execution path, shared with `run()`) -> metrics.json in the job's output dir. Bad input
fails before anything that looks like a result is written: a single run prints one
line and exits 2; inside a sweep the job records status `failed` with the error so the
other jobs carry on. Only this module and collapse.config touch Hydra/OmegaConf.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from collapse import records
from collapse.config import Config, ConfigError, check_known_keys, ineffective_keys, register_configs, validate
from collapse.errors import BAD_INPUT, Interrupted
from collapse.records import RunRecord


def conf_dir() -> str:
    """The primary config directory: `collapse/conf` inside an installed wheel (the
    project's top-level conf/ is shipped there, pyproject.toml), else the checkout's conf/
    beside the package (a source tree or an editable install). Absolute, built from
    __file__: a package-relative config_path fails when main() is called from a console
    script ("Primary config module 'conf' not found")."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"collapse: no conf/config.yaml in {package} or beside it: a broken install")


CONF_DIR = conf_dir()
log = logging.getLogger("collapse")
register_configs()


def to_config(cfg: DictConfig) -> Config:
    """Composed DictConfig -> validated dataclass (raises ConfigError naming the key)."""
    check_known_keys(OmegaConf.to_container(cfg, resolve=False))
    return validate(OmegaConf.to_object(cfg))


def _one_line(e: BaseException) -> str:
    # OmegaConf's messages span lines with the key on a later one ("full_key: ...")
    if isinstance(e, OmegaConfBaseException):
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return f"{e.full_key}: {first}" if getattr(e, "full_key", None) else first
    return str(e)


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {str(o).partition("=")[0].lstrip("+~") for o in overrides}


def _prepare(cfg: DictConfig, record: RunRecord) -> Config:
    """Composed config -> typed Config, filling the record's bookkeeping as far as it
    gets. Raises ConfigError or an OmegaConf error (an unresolvable interpolation)."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # seed at the top level from the start: a job that fails before training is still
    # a replicate of its cell (the summary pairs and counts runs by it)
    record.config, record.config_hash, record.seed = resolved, records.config_hash(resolved), resolved.get("seed")
    typed = to_config(cfg)
    record.study, record.monitor = typed.study, str(typed.trainer.monitor)
    record.warnings = ineffective_keys(typed, _override_keys(record.overrides))
    for warning in record.warnings:
        log.warning(f"collapse: warning: {warning}")
    return typed


def _run_job(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], choices: dict,
             job: dict, multirun: bool, launcher: Optional[DictConfig]) -> float:
    """The CLI's (and every sweep job's) side of runner.execute: bad input is one line
    and exit 2 for a single run; in a sweep every failure is recorded and the sweep goes
    on; an interrupt stops the process with 128 + the signal's number."""
    from collapse.run.execute import execute
    from collapse.sweep.cores import threads_per_job
    from collapse.sweep.job import exit_with_parent, parent_gone

    if multirun:
        exit_with_parent()          # a worker process must not outlive a killed sweep
    metrics_path = run_dir / records.METRICS_FILE
    record = RunRecord(overrides=list(overrides), choices=choices, job=job)
    try:
        try:
            typed = _prepare(cfg, record)
        except (ConfigError, OmegaConfBaseException) as e:
            if multirun:        # recorded, so the summary counts the job as failed
                record.status, record.stop_reason = "failed", "bad_input"
                record.error = f"{type(e).__name__}: {_one_line(e)}"
                record.write(run_dir)
            raise
        record = execute(typed, record, run_dir, threads=threads_per_job(typed.trainer.threads, launcher),
                         record_bad_input=multirun)
    except (*BAD_INPUT, OmegaConfBaseException) as e:
        if not multirun:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            print(f"collapse: error: {_one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        log.error(f"collapse: error: {_one_line(e)}")
        return math.nan
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"collapse: interrupted by {signal.Signals(signum).name}: recorded in {metrics_path}",
              file=sys.stderr)
        if parent_gone():           # an orphaned worker: nobody is left to report to
            os._exit(128 + signum)
        raise SystemExit(128 + signum) from None
    except Exception as e:  # noqa: BLE001 - recorded by execute; a sweep goes on
        log.error(f"run failed: {type(e).__name__}: {e}")
        if not multirun:
            print(f"collapse: error: run failed: {type(e).__name__}: {e} (traceback in {metrics_path})",
                  file=sys.stderr)
            raise SystemExit(1) from None
        return math.nan

    return _report(record, metrics_path)


def _report(record: RunRecord, metrics_path: Path) -> float:
    val = (record.best or {}).get("val") or {}
    labels = ", ".join(f"{split} {d.get('label')}" for split, d in (record.diagnosis or {}).items()) or "none"
    log.info(f"{record.status} ({record.stop_reason}) | best epoch {record.best_epoch} | "
             f"val R² {_num(val.get('r2'))} | var ratio {_num(val.get('variance_ratio'))} "
             f"| diagnosis {labels} | {metrics_path}")
    if record.status == "diverged":
        log.warning("the loss became non-finite: recorded as diverged (try a lower trainer.lr)")
    return _num_or_nan(record.monitor_value)


# ---------------------------------------------------------------- hydra/launcher=ensemble's job side
# collapse.sweep.ensemble runs `prepare_member` as each member's Hydra task function (Hydra's
# run_job: its job directory and .hydra/ files, as any launcher's), then `train_members` once
# for the group (collapse.run.ensemble: one stacked model, one record per member).

@dataclass
class _Member:
    typed: Config
    record: RunRecord
    run_dir: Path
    sweeper: DictConfig
    launcher: DictConfig


def prepare_member(cfg: DictConfig) -> object:
    """A member's typed config and record (a _Member), or NaN when its config is refused
    (recorded as failed, bad_input, as a sweep job's)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    job = {"num": hc.job.num, "dir": hc.runtime.output_dir, "config_name": hc.job.config_name}
    overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)
    run_dir = Path(hc.runtime.output_dir)
    record = RunRecord(overrides=list(overrides), choices=choices, job=job)
    try:
        typed = _prepare(cfg, record)
    except (ConfigError, OmegaConfBaseException) as e:
        record.status, record.stop_reason = "failed", "bad_input"
        record.error = f"{type(e).__name__}: {_one_line(e)}"
        record.write(run_dir)
        log.error(f"collapse: error: {_one_line(e)}")
        return _objective(math.nan, hc.sweeper)
    return _Member(typed, record, run_dir, hc.sweeper, hc.launcher)


def train_members(prepared: list) -> list[float]:
    """Train the prepared members as one group; per member what `main` returns in a sweep."""
    from collapse.run.ensemble import execute_group
    from collapse.sweep.cores import threads_per_job
    from collapse.sweep.job import exit_with_parent, parent_gone

    members = [p for p in prepared if isinstance(p, _Member)]
    if not members:
        return list(prepared)
    exit_with_parent()
    threads = threads_per_job(members[0].typed.trainer.threads, members[0].launcher)
    try:
        outs = execute_group([(m.typed, m.record, m.run_dir) for m in members], threads)
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"collapse: interrupted by {signal.Signals(signum).name}: {len(members)} ensemble members recorded",
              file=sys.stderr)
        if parent_gone():
            os._exit(128 + signum)
        raise SystemExit(128 + signum) from None
    values = iter(outs)
    returns = []
    for p in prepared:
        if not isinstance(p, _Member):
            returns.append(p)
            continue
        out = next(values)
        if isinstance(out, BaseException):
            log.error(f"collapse: error: {_one_line(out)} ({p.run_dir / records.METRICS_FILE})")
            returns.append(_objective(math.nan, p.sweeper))
        else:
            returns.append(_objective(_report(out, p.run_dir / records.METRICS_FILE), p.sweeper))
    return returns


def _num_or_nan(value) -> float:
    return float(value) if value is not None else math.nan


def _num(value) -> str:
    return f"{_num_or_nan(value):.3f}"


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
    value = _run_job(cfg, Path(hc.runtime.output_dir), overrides, choices, job,
                     multirun, hc.launcher if multirun else None)
    return _objective(value, hc.sweeper) if multirun else value


def _objective(value: float, sweeper: DictConfig) -> float:
    """A trial without a result (NaN): what collapse.sweep.job.failed_objective says for this
    sweeper (the record says `failed`)."""
    from collapse.sweep.job import failed_objective

    return failed_objective(sweeper) if math.isnan(value) else value


def run(overrides: Sequence[str] = (), run_dir: Optional[str | Path] = None) -> RunRecord:
    """Notebook API: compose the config with `overrides`, train, return the RunRecord.

    The same execution path as the CLI (collapse.run.execute). With `run_dir`, the
    record, weights and checkpoints go there and the directory behaves as a CLI run's:
    locked while in use, another config's result refused, `resume=true` returns a
    finished result or continues an interrupted run. Raises ConfigError, DataError or
    RunExists for bad input (the message names the key or file); a KeyboardInterrupt
    is recorded as `interrupted`, then re-raised. Torch's thread count is restored."""
    from hydra import compose, initialize_config_dir

    from collapse.run.execute import execute

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    run_dir = Path(run_dir) if run_dir is not None else None
    record = RunRecord(overrides=list(overrides), choices=choices,
                       job={"num": None, "dir": str(run_dir.resolve()) if run_dir else None, "config_name": "config"})
    typed = _prepare(cfg, record)
    return execute(typed, record, run_dir, threads=typed.trainer.threads)


if __name__ == "__main__":
    main()
