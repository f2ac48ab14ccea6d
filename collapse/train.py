"""Entry point: one experiment per Hydra job, and `run()` for notebooks.

    python -m collapse.train loss.variance_lambda=0.5
    python -m collapse.train --multirun data.temporal_frames=1,3,7 seed=0,1,2

Flow: compose (Hydra) -> typed Config + range checks -> collapse.run.execute.execute (the
one execution path, shared with `run()`) -> metrics.json in the job's output dir. Bad
input fails before anything that looks like a result is written: a single run prints
one line and exits 2; inside a sweep the job records status `failed` with the error so
the other jobs carry on. Hydra and OmegaConf stop here: the run path below receives the
typed Config (collapse.config) and plain numbers.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import threading
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


def help_keys(width: int = 120) -> str:
    """Every schema key with its type, default and one-line description (collapse.config's
    comments), grouped by config group: what `--help` prints (conf/config.yaml's
    hydra.help.template calls it through the `collapse_help` resolver)."""
    import textwrap

    from collapse.config import schema_help

    rows = schema_help()
    key_w = max(len(k) for k, *_ in rows)
    lines, section = [], None
    for key, kind, default, text in rows:
        group = key.split(".")[0] if "." in key else ""
        if group != section:
            section = group
            lines += ["", f"{group}.*   (group {group}: {group}=OPTION picks a file in conf/{group}/)" if group
                      and (Path(CONF_DIR) / group).is_dir() else f"{group or 'top level'}"]
        shown = "null" if default is None else default
        head = f"  {key.ljust(key_w)}  {kind} = {shown}"
        lines += textwrap.wrap(text, width, initial_indent=head.ljust(key_w + 30) + "  ",
                               subsequent_indent=" " * (key_w + 32)) if text else [head]
    # string.Template (Hydra's help) reads `$`: double it
    return "\n".join(lines).strip("\n").replace("$", "$$")


OmegaConf.register_new_resolver("collapse_help", help_keys, replace=True)


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


def _recorded(metrics_path: Path, *statuses: str) -> bool:
    """Whether `metrics_path` exists and records one of `statuses`: a message names the
    file only then."""
    try:
        return records.read_record(metrics_path)["status"] in statuses
    except (OSError, records.RecordError):
        return False


def _refused(e: BaseException) -> "SystemExit":
    """A single run refused as bad input: its one line; the run directory as it was
    before Hydra wrote its job files (collapse.sweep.callback.RunDirSnapshot)."""
    from collapse.sweep.callback import restore_run_dir

    restore_run_dir()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exc()
    print(f"collapse: error: {_one_line(e)}", file=sys.stderr)
    return SystemExit(2)


def _run_job(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], choices: dict,
             job: dict, multirun: bool, launcher: Optional[DictConfig]) -> float:
    """The CLI's (and every sweep job's) side of runner.execute: bad input is one line
    and exit 2 for a single run; in a sweep every failure is recorded and the sweep goes
    on; an interrupt stops the process with 128 + the signal's number."""
    from collapse.sweep.cores import threads_per_job
    from collapse.sweep.job import console_for_job, exit_with_parent, parent_gone

    if multirun:
        exit_with_parent()          # a worker process must not outlive a killed sweep
        # epoch lines to the job's log file only; collapse's launcher prints a line per job
        console_for_job(job["num"], str((launcher or {}).get("_target_", "")).endswith(".ParallelLauncher"))
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
        # imported once the config is good: a refused run (one line, exit 2) never loads the run path
        from collapse.run.execute import execute

        record = execute(typed, record, run_dir, threads=threads_per_job(typed.trainer.threads, launcher),
                         record_bad_input=multirun)
    except (*BAD_INPUT, OmegaConfBaseException) as e:
        if not multirun:
            raise _refused(e) from None
        log.error(f"collapse: error: {_one_line(e)}")
        return math.nan
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        where = (f"recorded in {metrics_path}" if _recorded(metrics_path, "interrupted")
                 else "nothing recorded (it stopped before its record was written)")
        print(f"collapse: interrupted by {signal.Signals(signum).name}: {where}", file=sys.stderr)
        if parent_gone():           # an orphaned worker: nobody is left to report to
            os._exit(128 + signum)
        raise SystemExit(128 + signum) from None
    except Exception as e:  # noqa: BLE001 - recorded by execute; a sweep goes on
        # a full disk names itself and its file (records.WriteError); else the exception
        what = str(e) if isinstance(e, records.WriteError) else f"run failed: {type(e).__name__}: {e}"
        log.error(what)
        if not multirun:
            where = f" (traceback in {metrics_path})" if _recorded(metrics_path, "failed") else ""
            print(f"collapse: error: {what}{where}", file=sys.stderr)
            raise SystemExit(1) from None
        return math.nan

    return _report(record, metrics_path)


def _report(record: RunRecord, metrics_path: Path) -> float:
    from collapse.sweep.job import JOB_LINE

    val = (record.best or {}).get("val") or {}
    labels = ", ".join(f"{split} {d.get('label')}" for split, d in (record.diagnosis or {}).items()) or "none"
    log.info(f"{record.status} ({record.stop_reason}) | best epoch {record.best_epoch} | "
             f"val R² {_num(val.get('r2'))} | var ratio {_num(val.get('variance_ratio'))} "
             f"| diagnosis {labels} | {metrics_path}", extra={JOB_LINE: True})
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
    log_file: Optional[Path] = None         # the job's log (Hydra's job_logging file), if it has one


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
    # where Hydra's job logging writes this job's log: the member's lines go there while its stack trains
    has_file = OmegaConf.select(hc, "job_logging.handlers.file", default=None) is not None
    log_file = run_dir / f"{hc.job.name}.log" if has_file else None
    return _Member(typed, record, run_dir, hc.sweeper, hc.launcher, log_file)


def train_members(prepared: list) -> list[float]:
    """Train the prepared members as one group; per member what `main` returns in a sweep."""
    from collapse.run.ensemble import execute_group, job_log
    from collapse.sweep.cores import threads_per_job
    from collapse.sweep.job import console_for_group, exit_with_parent, parent_gone

    members = [p for p in prepared if isinstance(p, _Member)]
    if not members:
        return list(prepared)
    exit_with_parent()
    threads = threads_per_job(members[0].typed.trainer.threads, members[0].launcher)
    try:
        with console_for_group():
            outs = execute_group([(m.typed, m.record, m.run_dir) for m in members], threads,
                                 log_files=[m.log_file for m in members])
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
        # the member's closing line in its own log; the launcher prints its line on the console
        with console_for_group(), job_log(p.log_file):
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


def task(cfg: DictConfig) -> float:
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


_hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(task)

# Command-line override keys that make Hydra (or logging) call a Python callable; refused
# unless the user opts in (docs/reliability.md, "What runs code").
ALLOW_CLI_TARGETS = "COLLAPSE_ALLOW_CLI_TARGETS"
_CUSTOM_TARGET_KEYS = ("model._target_", "data._target_")       # model=custom, data=custom: checked by the schema
_CUSTOM_KWARGS = ("model.kwargs", "data.kwargs")


def _names_callable(key: str, value) -> bool:
    parts = key.split(".")
    if key == "hydra.callbacks" or key.startswith("hydra.callbacks.") or "_target_" in parts:
        return True
    logging_config = key.startswith(("hydra.job_logging", "hydra.hydra_logging"))
    if logging_config and parts[-1] in ("class", "()"):
        return True
    tokens = ("_target_", "class", "()") if logging_config else ("_target_",)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(str(k) in tokens for k in node):
                return True
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return False


def cli_callable_overrides(args: Sequence[str]) -> list[str]:
    """The command-line overrides in `args` that name a Python callable for Hydra to call:
    `hydra.callbacks...`, any `_target_` (in the key or inside a dict value) except
    model._target_ / data._target_ and their kwargs (model=custom and data=custom, which
    the schema refuses for any other option), and logging's `class`/`()`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    found = []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue                    # a flag, or a flag's value (--config-dir DIR)
        try:
            [override] = parser.parse_overrides([arg])
        except (HydraException, ValueError):
            continue                    # Hydra reports it when it parses the command line
        key = override.key_or_group
        if key in _CUSTOM_TARGET_KEYS or key.startswith(tuple(k + "." for k in _CUSTOM_KWARGS)) \
                or key in _CUSTOM_KWARGS:
            continue
        try:
            value = override.value()
        except Exception:  # noqa: BLE001 - a sweep (x=a,b) or a deletion: its key decides
            value = None
        if _names_callable(key, value):
            found.append(arg)
    return found


def _objective(value: float, sweeper: DictConfig) -> float:
    """A trial without a result (NaN): what collapse.sweep.job.failed_objective says for this
    sweeper (the record says `failed`)."""
    from collapse.sweep.job import failed_objective

    return failed_objective(sweeper) if math.isnan(value) else value


class _RunConsole:
    """run()'s progress in a notebook with no logging set up: Python shows only warnings
    then, so the epoch lines (collapse's INFO) go to stdout through a handler of its own,
    for the call's duration. Logging the user configured keeps its say (nothing is added,
    so nothing is printed twice, nor does a level set on the "collapse" logger); `quiet`
    keeps only warnings."""

    def __init__(self, quiet: bool):
        self.quiet, self.handler, self.level = quiet, None, None

    def __enter__(self):
        self.level = log.level
        if self.quiet:
            log.setLevel(logging.WARNING)
        elif log.level == logging.NOTSET and not _shows_info(log):     # a level the user set is theirs
            self.handler = logging.StreamHandler(sys.stdout)
            self.handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(self.handler)
            log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        if self.handler is not None:
            log.removeHandler(self.handler)
        log.setLevel(self.level)


def _shows_info(logger: logging.Logger) -> bool:
    """Whether an INFO record of `logger` reaches a handler that prints it."""
    if logger.getEffectiveLevel() > logging.INFO:
        return False
    node: Optional[logging.Logger] = logger
    while node is not None:
        if any(h.level <= logging.INFO for h in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


def run(overrides: Sequence[str] = (), run_dir: Optional[str | Path] = None, quiet: bool = False) -> RunRecord:
    """Notebook API: compose the config with `overrides`, train, return the RunRecord.

    The same execution path as the CLI (collapse.run.execute). With `run_dir`, the
    record, weights and checkpoints go there and the directory behaves as a CLI run's:
    locked while in use, another config's result refused, `resume=true` returns a
    finished result or continues an interrupted run. Raises ConfigError, DataError or
    RunExists for bad input (the message names the key or file); a KeyboardInterrupt
    is recorded as `interrupted`, then re-raised. Torch's thread count is restored.
    Its epoch lines print to stdout (a notebook shows them) without any logging set-up;
    `quiet=True` keeps only warnings."""
    # Hydra's global state (initialize_config_dir) and torch's thread count are per
    # process: calls from several threads take turns
    with _RUN_LOCK:
        return _run(overrides, run_dir, quiet)


_RUN_LOCK = threading.Lock()


def _run(overrides: Sequence[str], run_dir: Optional[str | Path], quiet: bool = False) -> RunRecord:
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
    with _RunConsole(quiet):
        typed = _prepare(cfg, record)
        return execute(typed, record, run_dir, threads=typed.trainer.threads)


# Hydra's flags that take the next argument as their value
_FLAGS_WITH_VALUE = {"-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                     "--config-dir", "-c", "--cfg", "-p", "--package", "--info", "--experimental-rerun"}


def cli() -> None:
    """The command line (python -m collapse.train, collapse-train). Before Hydra composes
    (its own messages span lines and suggest nothing): a misspelt key or an impossible
    option value fails in one line, with a suggestion; an override that names a callable
    is refused unless COLLAPSE_ALLOW_CLI_TARGETS=1. Then Hydra runs `task`."""
    from collapse.config import unknown_override

    groups = [p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()]
    arguments = sys.argv[1:]
    for i, argument in enumerate(arguments):
        if i and arguments[i - 1] in _FLAGS_WITH_VALUE:
            continue                    # -sc install=bash, --config-name NAME: not an override
        message = unknown_override(argument, groups)
        if message is not None:
            print(f"collapse: error: {message}", file=sys.stderr)
            raise SystemExit(2)
    found = cli_callable_overrides(arguments)
    if found and os.environ.get(ALLOW_CLI_TARGETS) != "1":
        print(f"collapse: error: {found[0]!r} names a Python callable for Hydra to call (hydra.callbacks / "
              f"_target_ outside model=custom and data=custom); refused from the command line - put it in a "
              f"config file, or set {ALLOW_CLI_TARGETS}=1 to allow it", file=sys.stderr)
        raise SystemExit(2)
    try:
        _hydra_main()       # returns nothing: a failure leaves through SystemExit (exit 1 or 2)
    finally:
        # The process ends here: the garbage is collected now, and the rest of the heap (torch's
        # ~170,000 objects) is put out of the collector's reach. CPython's shutdown otherwise walks
        # it in several full passes: 0.35 s of a 1-epoch run's 2.1 s. Objects still die by refcount.
        gc.collect()
        gc.freeze()


if __name__ == "__main__":
    cli()
