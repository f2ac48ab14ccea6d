"""Sweep bookkeeping around Hydra's launchers: the sweep directory's lock and manifest,
the resume guard, thread counts per job, and the sweep's exit status.

Hydra runs `SweepStatus` (conf/config.yaml: hydra.callbacks) in the launching process.
Two Hydra facts shape it: an exception raised in a callback only becomes a warning,
so refusals raise SystemExit (a BaseException, which Hydra lets through); and
`on_multirun_end` is skipped when a job raised, so jobs never raise (collapse.train
records failures in metrics.json instead) and this callback reads those files.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from collapse import records
from collapse.sweep_dir import DirLock, DirLocked, job_dirs, read_manifest, write_manifest

NOT_DONE = ("failed", "diverged", "interrupted", "running")


def refuse(message: str) -> None:
    print(f"collapse: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _task_overrides(overrides) -> list[str]:
    # `resume=...` is how a sweep is continued, not part of what it computes
    return sorted(o for o in overrides if not o.lstrip("+~").startswith("resume="))


def planned_jobs(config: DictConfig) -> Optional[list[list[str]]]:
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


_watching_parent = False
parent_gone = False          # set in a worker whose sweep died: the job in progress exits once recorded


def exit_with_parent(poll_s: float = 0.1) -> None:
    """End this (worker) process soon after the process that started it dies.

    A worker process (collapse's launcher, joblib's loky) outlives a SIGKILLed sweep:
    it finishes its job, and a resume started meanwhile runs the same job a second time
    into the same files.
    The parent's death shows as a changed getppid() (the orphan is reparented). The
    worker then SIGTERMs itself, so a job in progress records itself `interrupted` with
    its history (collapse.runner), and exits for good a few seconds later. Records'
    atomic writes leave the old or the new file, whenever the exit lands.
    A no-op in a process that multiprocessing did not start (the basic launcher's,
    one worker or one job): a sweep must survive the shell that started it."""
    import multiprocessing

    global _watching_parent
    if _watching_parent or multiprocessing.parent_process() is None:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        global parent_gone
        while os.getppid() == parent:
            time.sleep(poll_s)
        parent_gone = True
        os.kill(os.getpid(), signal.SIGTERM)   # collapse.train exits once the job is recorded
        time.sleep(5)                          # a job stuck in C code: give up on the record
        os._exit(1)

    threading.Thread(target=watch, name="collapse-exit-with-parent", daemon=True).start()


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity mask, capped by a cgroup CPU
    quota (a container or a SLURM job can allow fewer cores than the machine shows)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:        # cgroup v2: "max 100000" or "<quota> <period>"
        text = (cgroup / "cpu.max").read_text().split()
        if text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:    # cgroup v1
            q = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = q / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text()) if q > 0 else None
        except (OSError, ValueError):
            pass
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def workers_for(n_jobs: int, cores: int) -> int:
    """How many jobs run at once for a launcher's `n_jobs`, as joblib reads it (-1: all
    cores, -2: all but one, ...; 0 is collapse's "not sized yet": all usable cores)."""
    if n_jobs > 0:
        return n_jobs
    return max(1, cores + 1 + n_jobs) if n_jobs < 0 else cores


# set by the launching process when a sweep starts, read by its jobs (worker processes
# inherit the environment): how many jobs run at once
CONCURRENT_ENV = "COLLAPSE_CONCURRENT_JOBS"


def threads_per_job(requested: int, launcher: Optional[DictConfig]) -> int:
    """Torch threads for one job: `requested`, or usable cores / jobs running at once
    (a single run: all usable cores). Under submitit: the job's `cpus_per_task`.

    Oversubscription is the expensive mistake here: 2 workers with 2 threads
    each on 2 cores ran 2x slower than the sequential sweep (README, Performance)."""
    if requested > 0:
        return requested
    cores = usable_cores()
    if launcher is None:
        return cores
    target = str(launcher.get("_target_", "")).lower()
    if "submitit" in target:
        return int(launcher.get("cpus_per_task") or 1)
    concurrent = int(os.environ.get(CONCURRENT_ENV, "0") or 0)
    if concurrent <= 0 and _is_pool(target):
        concurrent = workers_for(int(launcher.get("n_jobs") or 0), cores)
    return max(1, cores // max(1, min(cores, concurrent or 1)))


def _is_pool(launcher_target: str) -> bool:
    """A launcher that runs jobs in a pool of local processes sized by `n_jobs`."""
    return "joblib" in launcher_target or "collapse_launcher" in launcher_target


def failed_objective(sweeper: DictConfig) -> float:
    """What a job without a result returns to Hydra's sweeper: NaN, or for the Optuna
    sweeper the worst value - hydra-optuna-sweeper 1.2/1.3 with optuna 2.10 stops the
    whole search on a NaN (it tells Optuna the value twice; the second tell raises)."""
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return -math.inf if "max" in str(sweeper.get("direction", "minimize")).lower() else math.inf
    return math.nan


def size_launcher(config: DictConfig, n_planned: Optional[int]) -> None:
    """Fix how many jobs run at once, before Hydra builds the launcher: the default
    launcher (conf/hydra/launcher/parallel.yaml, n_jobs 0) gets min(usable cores, jobs
    that can run at once) workers - a worker costs a second or more of start-up, so a
    sweep never starts more than it has jobs for. Exported to the jobs (CONCURRENT_ENV)."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", "")).lower()
    if _is_pool(target):
        n_jobs = int(launcher.get("n_jobs") or 0)
        if n_jobs == 0:
            n_jobs = max(1, min(usable_cores(), n_planned or usable_cores()))
            with open_dict(config), read_write(config):
                launcher.n_jobs = n_jobs
        concurrent = workers_for(n_jobs, usable_cores())
    elif "submitit" in target:
        return                  # each job has its own cpus_per_task
    else:
        concurrent = 1          # the basic launcher runs one job at a time
    os.environ[CONCURRENT_ENV] = str(concurrent)


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
        jobs = planned_jobs(config)
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
