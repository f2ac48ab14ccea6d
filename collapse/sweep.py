"""Sweep bookkeeping around Hydra's launchers: the resume guard, per-job skip/refuse
decisions, thread counts per job, and the sweep's exit status.

Hydra runs `SweepStatus` (conf/config.yaml: hydra.callbacks) in the launching process.
Two Hydra facts shape it: an exception raised in a callback only becomes a warning,
so refusals raise SystemExit (a BaseException, which Hydra lets through); and
`on_multirun_end` is skipped when a job raised, so jobs never raise (collapse.train
records failures in metrics.json instead) and this callback reads those files.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from collapse import records
from collapse.sweep_jobs import job_dirs

FAILED = ("failed", "diverged")


class RunExists(RuntimeError):
    """Running this job would overwrite a result already in its directory."""


def _task_overrides(overrides) -> list[str]:
    # `resume=...` is how a sweep is continued, not part of what it computes
    return sorted(o for o in overrides if not o.lstrip("+~").startswith("resume="))


def refuse(message: str) -> None:
    print(f"collapse: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def existing_run(run_dir: Path, cfg_hash: str, resume: bool) -> Optional[dict]:
    """Decide what to do with a run directory that may hold an earlier run.

    Returns the earlier record when it is a result for the same config and `resume`
    is set (skip the job). Returns None when the job should run (nothing there, or an
    earlier failed/interrupted attempt). Raises RunExists when running would
    overwrite a result (another config's, or this one's without `resume`)."""
    path = Path(run_dir) / records.METRICS_FILE
    try:
        old = records.read_record(path)
    except FileNotFoundError:
        return None
    except records.RecordError:
        return None            # a corrupt file is not a result: rerun over it
    if old["status"] not in records.RESULT_STATUSES:
        return None
    if old.get("config_hash") != cfg_hash:
        raise RunExists(f"{path} holds a result of another config (hash {old.get('config_hash')}, "
                           f"this one {cfg_hash}); refusing to overwrite it - use another output dir")
    if not resume:
        raise RunExists(f"{path} already holds a result of this config; pass resume=true to skip it "
                           "or use another output dir")
    return old


_watching_parent = False


def exit_with_parent(poll_s: float = 0.5) -> None:
    """End this (worker) process soon after the process that started it dies.

    A loky worker outlives a SIGKILLed sweep: it finishes its job, idles for minutes,
    and a resume started meanwhile runs the same job a second time into the same files.
    The parent's death shows as a changed getppid() (the orphan is reparented). The
    exit can land mid-write: records' atomic writes leave the old or the new file.
    A no-op in a process that multiprocessing did not start (the basic launcher's,
    joblib with n_jobs=1): a sweep must survive the shell that started it."""
    import multiprocessing

    global _watching_parent
    if _watching_parent or multiprocessing.parent_process() is None:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="collapse-exit-with-parent", daemon=True).start()


def threads_per_job(requested: int, launcher: Optional[DictConfig]) -> int:
    """Torch threads for one job: `requested`, or cores / jobs running at once.

    Oversubscription is the expensive mistake here: 2 joblib workers with 2 threads
    each on 2 cores ran 2x slower than the sequential sweep (shared/STYLE.md)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    target = str(launcher.get("_target_", "")).lower() if launcher is not None else ""
    concurrent = 1
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs") or 1)
        concurrent = min(cores, n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs))
    elif "submitit" in target:
        return int(launcher.get("cpus_per_task") or 1)
    return max(1, cores // concurrent)


class SweepStatus(Callback):
    """Refuse to mix sweeps in one directory; exit non-zero when a job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        previous = sweep_dir / "multirun.yaml"
        if not previous.exists():
            return
        if not config.get("resume", False):
            refuse(f"hydra.sweep.dir={sweep_dir} already holds a sweep; pass resume=true to "
                   "continue it, or choose another hydra.sweep.dir")
        old = OmegaConf.load(previous)
        old_name, new_name = old.hydra.job.config_name, config.hydra.job.config_name
        old_over = _task_overrides(old.hydra.overrides.task)
        new_over = _task_overrides(config.hydra.overrides.task)
        if (old_name, old_over) != (new_name, new_over):
            refuse(f"cannot resume into {sweep_dir}: it holds another sweep's runs "
                   f"(config {old_name!r} with overrides {old_over}; this command: "
                   f"config {new_name!r} with overrides {new_over})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        counts: dict[str, int] = {}
        bad: list[str] = []
        for job in job_dirs(sweep_dir):
            try:
                status = records.read_record(job / records.METRICS_FILE)["status"]
            except (FileNotFoundError, records.RecordError):
                status = "missing"
            counts[status] = counts.get(status, 0) + 1
            if status in FAILED or status == "missing":
                bad.append(f"{job.name} ({status})")
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep {sweep_dir}: {sum(counts.values())} jobs: {parts}")
        print(f"summary: python -m collapse.summary {sweep_dir}")
        if bad:
            print(f"collapse: error: jobs that did not complete: {', '.join(bad)}", file=sys.stderr)
            raise SystemExit(1)
