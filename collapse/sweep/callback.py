"""The sweep's Hydra callback: the sweep directory's lock and manifest, the resume guard,
sizing the launcher, and the sweep's exit status.

Hydra runs `SweepStatus` (conf/config.yaml: hydra.callbacks) in the launching process.
Two Hydra facts shape it: an exception raised in a callback only becomes a warning,
so refusals raise SystemExit (a BaseException, which Hydra lets through); and
`on_multirun_end` is skipped when a job raised, so jobs never raise (collapse.train
records failures in metrics.json instead) and this callback reads those files.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from collapse import records
from collapse.records import DirLock, DirLocked, job_dirs, read_manifest, write_manifest
from collapse.sweep.cores import size_launcher

NOT_DONE = ("failed", "diverged", "interrupted", "running")


def refuse(message: str) -> None:
    print(f"collapse: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _task_overrides(overrides) -> list[str]:
    # `resume=...` is how a sweep is continued, not part of what it computes
    return sorted(o for o in overrides if not o.lstrip("+~").startswith("resume="))


def planned_overrides(config: DictConfig) -> Optional[list[list[str]]]:
    """The override lists of every job the sweep will launch, in job-number order, as
    Hydra's BasicSweeper expands them (its `params` first, then the command line);
    None for another sweeper (Optuna decides its trials as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith((".BasicSweeper", ".GridSweeper")):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    [jobs] = BasicSweeper.split_arguments(overrides, None)
    return [[o for o in job if not o.lstrip("+~").startswith("resume=")] for job in jobs]


class SweepStatus(Callback):
    """Own the sweep directory (lock + manifest); exit non-zero when a job did not complete.

    The lock is taken before any job starts and held by this (launching) process until
    it exits, so a second sweep into the same directory - a different one, or the same
    one resumed twice at once - is refused instead of racing this one job for job."""

    def __init__(self) -> None:
        self._lock: Optional[DirLock] = None

    def __getstate__(self) -> dict:
        # launchers send the callbacks to their workers: a copy holds no lock
        return {**self.__dict__, "_lock": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self._lock = DirLock(sweep_dir).acquire("hydra.sweep.dir")
        except DirLocked as e:
            refuse(f"{e}; wait for it to finish or choose another hydra.sweep.dir")
        jobs = planned_overrides(config)
        manifest = read_manifest(sweep_dir)
        previous = sweep_dir / "multirun.yaml"
        if previous.exists() or manifest is not None:
            if not config.get("resume", False):
                refuse(f"hydra.sweep.dir={sweep_dir} already holds a sweep; pass resume=true to "
                       "continue it, or choose another hydra.sweep.dir")
            self._check_same_sweep(config, sweep_dir, previous, manifest, jobs)
        if jobs is not None:
            write_manifest(sweep_dir, config.hydra.job.config_name,
                           _task_overrides(config.hydra.overrides.task), jobs)
        # a search (Optuna) launches its trials in batches of the sweeper's n_jobs
        size_launcher(config, len(jobs) if jobs is not None else config.hydra.sweeper.get("n_jobs"))
        if jobs is None:
            # another sweeper (Optuna) writes no multirun.yaml, which the guard above and the
            # summary read: write it as the BasicSweeper does
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(config, previous)

    @staticmethod
    def _check_same_sweep(config: DictConfig, sweep_dir: Path, previous: Path,
                          manifest: Optional[dict], jobs: Optional[list]) -> None:
        if manifest is not None and jobs is not None:
            if [job.get("overrides") for job in manifest["jobs"]] != jobs:
                refuse(f"cannot resume into {sweep_dir}: it holds another sweep's runs "
                       f"(config {manifest.get('config_name')!r} with overrides {manifest.get('task_overrides')}, "
                       f"{len(manifest['jobs'])} jobs; this command: config {config.hydra.job.config_name!r} "
                       f"with overrides {_task_overrides(config.hydra.overrides.task)}, {len(jobs)} jobs)")
            return
        if not previous.exists():
            return
        old = OmegaConf.load(previous)
        old_name, new_name = old.hydra.job.config_name, config.hydra.job.config_name
        old_over = _task_overrides(old.hydra.overrides.task)
        new_over = _task_overrides(config.hydra.overrides.task)
        if (old_name, old_over) != (new_name, new_over):
            refuse(f"cannot resume into {sweep_dir}: it holds another sweep's runs "
                   f"(config {old_name!r} with overrides {old_over}; this command: "
                   f"config {new_name!r} with overrides {new_over})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception raised here into a warning and exits 0: whatever
        # goes wrong while counting must still fail the sweep
        try:
            bad = self._report(Path(str(config.hydra.sweep.dir)))
        except Exception as e:  # noqa: BLE001
            print(f"collapse: error: could not check the sweep's jobs: {type(e).__name__}: {e}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            if self._lock is not None:
                self._lock.release()
        if bad:
            print(f"collapse: error: jobs that did not complete: {', '.join(bad)}", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _report(sweep_dir: Path) -> list[str]:
        """Print the sweep's status counts; return the jobs that did not complete."""
        counts: dict[str, int] = {}
        bad: list[str] = []
        seen: set[int] = set()
        for job in job_dirs(sweep_dir):
            try:
                record = records.read_record(job / records.METRICS_FILE)
                status, num = record["status"], (record.get("job") or {}).get("num")
            except (FileNotFoundError, records.RecordError):
                status, num = "missing", None
            if isinstance(num, int):
                seen.add(num)
            counts[status] = counts.get(status, 0) + 1
            if status in NOT_DONE or status == "missing":
                bad.append(f"{job.name} ({status})")
        manifest = read_manifest(sweep_dir)
        if manifest is not None:
            never = [job["num"] for job in manifest["jobs"] if job.get("num") not in seen]
            if never:
                counts["never started"] = len(never)
                bad.append(f"{len(never)} never started ({', '.join(map(str, never))})")
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep {sweep_dir}: {sum(counts.values())} jobs: {parts}")
        print(f"summary: python -m collapse.summary {sweep_dir}")
        return bad
