"""Cores and threads: how many jobs run at once, and how many torch threads each gets.

One rule everywhere: threads = usable cores / jobs running at once, where usable cores
honour the CPU affinity mask and the cgroup quota (taskset, containers, SLURM). A single
run takes every usable core; under submitit a job gets its `cpus_per_task`.
Oversubscription is the expensive mistake: 2 workers with 2 threads each on 2 cores ran
2x slower than the sequential sweep (docs/performance.md).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, open_dict, read_write


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
