"""A sweep job's side of the sweep: exit when the sweep that started it is gone, and
what a job without a result tells the sweeper.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
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
    The launching process's death shows on the worker's end of the pipe it was started
    through (multiprocessing's parent sentinel, at once) or as a changed getppid() (the
    orphan is reparented: joblib's workers; a worker forked by collapse's fork server is
    reparented only once that server has exited, ~0.5 s later). The worker then SIGTERMs
    itself, so a job in progress records itself `interrupted` with its history
    (collapse.run.execute), and exits for good a few seconds later. Records' atomic writes
    leave the old or the new file, whenever the exit lands.
    A no-op in a process that multiprocessing did not start (the basic launcher's,
    one worker or one job): a sweep must survive the shell that started it."""
    import multiprocessing

    global _watching_parent
    if _watching_parent or multiprocessing.parent_process() is None:
        return
    from multiprocessing.connection import wait

    _watching_parent = True
    parent = os.getppid()
    sentinel = getattr(multiprocessing.parent_process(), "sentinel", None)

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        if sentinel is None:
            time.sleep(poll_s)
            return False
        try:
            return bool(wait([sentinel], timeout=poll_s))     # readable only at EOF: nothing is sent on it
        except OSError:
            return True

    def watch() -> None:
        global _parent_gone
        while not gone():
            pass
        _parent_gone = True
        os.kill(os.getpid(), signal.SIGTERM)   # collapse.train exits once the job is recorded
        time.sleep(5)                          # a job stuck in C code: give up on the record
        os._exit(1)

    threading.Thread(target=watch, name="collapse-exit-with-parent", daemon=True).start()


# a record with this attribute is the job's one closing line (collapse.train): a launcher that
# prints its own progress lines (collapse's) drops it from the console, any other shows it
JOB_LINE = "collapse_job_line"


class _JobConsole(logging.Filter):
    def __init__(self, keep_job_line: bool):
        super().__init__()
        self.keep_job_line = keep_job_line

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (self.keep_job_line and getattr(record, JOB_LINE, False))


def _console_handlers() -> list:
    """The root logger's handlers that write to the terminal (not a job's log file)."""
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and h.stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)]


def console_for_job(job_num: int, launcher_reports: bool) -> None:
    """A sweep job's console: warnings and errors only, each with its job number (the
    per-epoch lines of parallel jobs interleaved, unnumbered, into hundreds of lines); the
    job's log file keeps everything. `launcher_reports`: the launcher prints a line per
    finished job (collapse's), else the job's closing line stays on the console.
    Hydra configures fresh handlers for every job, so this lasts one job."""
    for handler in _console_handlers():
        handler.addFilter(_JobConsole(keep_job_line=not launcher_reports))
        handler.setFormatter(logging.Formatter(f"[job {job_num}][%(levelname)s] %(message)s"))


@contextlib.contextmanager
def console_for_group():
    """An ensemble stack's console, while it trains: warnings and errors only, as a sweep
    job's (console_for_job); each member's lines go to its own job log (collapse.run.ensemble)
    and the launcher prints a line per finished member."""
    handlers = _console_handlers()
    quiet = _JobConsole(keep_job_line=False)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def failed_objective(sweeper: DictConfig) -> float:
    """What a job without a result returns to Hydra's sweeper: NaN, or for an Optuna
    sweeper the worst value (hydra-optuna-sweeper 1.2/1.3 with optuna 2.10, if a user
    picks it, stops the whole search on a NaN; collapse's own tells such a trial FAIL
    either way, collapse.sweep.study.trial_value)."""
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return -math.inf if "max" in str(sweeper.get("direction", "minimize")).lower() else math.inf
    return math.nan
