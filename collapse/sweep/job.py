"""A sweep job's side of the sweep: exit when the sweep that started it is gone, and
what a job without a result tells the sweeper.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time

from omegaconf import DictConfig

_watching_parent = False
_parent_gone = False         # set in a worker whose sweep died: the job in progress exits once recorded


def parent_gone() -> bool:
    """True in a worker process whose sweep died (it exits once its job is recorded)."""
    return _parent_gone


def exit_with_parent(poll_s: float = 0.1) -> None:
    """End this (worker) process soon after the process that started it dies.

    A worker process (collapse's launcher, joblib's loky) outlives a SIGKILLed sweep:
    it finishes its job, and a resume started meanwhile runs the same job a second time
    into the same files.
    The parent's death shows as a changed getppid() (the orphan is reparented). The
    worker then SIGTERMs itself, so a job in progress records itself `interrupted` with
    its history (collapse.run.execute), and exits for good a few seconds later. Records'
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
        global _parent_gone
        while os.getppid() == parent:
            time.sleep(poll_s)
        _parent_gone = True
        os.kill(os.getpid(), signal.SIGTERM)   # collapse.train exits once the job is recorded
        time.sleep(5)                          # a job stuck in C code: give up on the record
        os._exit(1)

    threading.Thread(target=watch, name="collapse-exit-with-parent", daemon=True).start()



def failed_objective(sweeper: DictConfig) -> float:
    """What a job without a result returns to Hydra's sweeper: NaN, or for the Optuna
    sweeper the worst value - hydra-optuna-sweeper 1.2/1.3 with optuna 2.10 stops the
    whole search on a NaN (it tells Optuna the value twice; the second tell raises)."""
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return -math.inf if "max" in str(sweeper.get("direction", "minimize")).lower() else math.inf
    return math.nan
