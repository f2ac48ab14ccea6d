"""Runs trained together as one stacked model (collapse.ensemble): the execution path of a
group, each member recorded as collapse.run.execute records a run.

    execute_group([(cfg, record, run_dir), ...], threads) -> [RunRecord or the exception, ...]

Per member, as `execute` does: its run directory is locked; a result of the same config is
returned with resume=true (else refused), another config's is refused; an unfinished run
continues from its checkpoint.pt; bad input is recorded and leaves the group. The others
train together (a member's init, SSL, data and loss are its single run's); every
`checkpoint_every_s` each live member's checkpoint.pt and metrics.json are rewritten; SIGINT
and SIGTERM record every unfinished member `interrupted` (history, best weights), then are
re-raised. A member's record says `"engine": "ensemble"`.

Members must agree on everything but MEMBER_KEYS (collapse.sweep.engine groups them so);
members whose data differ in shape (a data=custom callable per seed) train in separate stacks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from collapse.config import ENSEMBLE_MEMBER_KEYS as MEMBER_KEYS
from collapse.config import Config, ensemble_refusal
from collapse.errors import BAD_INPUT, ConfigError, Interrupted, RunExists
from collapse.records import DirLock, RunRecord
from collapse.run import execute as ex
from collapse.run.interrupts import Interrupts

log = logging.getLogger("collapse")


def shared_part(cfg: Config) -> Config:
    """`cfg` with MEMBER_KEYS blanked: members of one group have equal shared parts."""
    return dataclasses.replace(
        cfg, seed=0, loss=dataclasses.replace(cfg.loss, variance_lambda=0.0),
        model=dataclasses.replace(cfg.model, init_std=0.0),
        trainer=dataclasses.replace(cfg.trainer, lr=1.0, weight_decay=0.0))


def execute_group(members: Sequence[tuple[Config, RunRecord, Optional[Path]]], threads: int = 0,
                  log_files: Optional[Sequence[Optional[Path]]] = None) -> list:
    """Train `members` together; returns, per member, its finished RunRecord or the
    exception that stopped it (bad input, a failure). Re-raises an interrupt once every
    unfinished member recorded it. Every run directory's lock is released on the way out.
    `log_files`: each member's job log, where its epoch and closing lines go (as its single
    run's would); None: they go to the "collapse" logger, tagged with the job."""
    runs = [ex._Run(cfg, record, run_dir) for cfg, record, run_dir in members]
    for run, path in zip(runs, log_files or [None] * len(runs)):
        run.log_file = path
    out: list = [None] * len(runs)
    locks, todo, loaded = [], [], {}
    shared = shared_part(runs[0].cfg) if runs else None
    try:
        for i, run in enumerate(runs):
            lock = None
            try:
                if run.run_dir is not None:
                    lock = DirLock(run.run_dir)
                    locks.append(lock)              # released on the way out, acquired or not
                    previous = ex.claim(run, lock)
                    if previous is not None:
                        out[i] = previous
                        continue
                why = ensemble_refusal(str(run.cfg.model.name), [str(n) for n in run.cfg.logger.names],
                                       str(run.cfg.trainer.lr_schedule))
                if why is None and shared_part(run.cfg) != shared:
                    why = "members of one ensemble group differ beyond " + ", ".join(MEMBER_KEYS)
                if why is not None:
                    raise ConfigError(f"hydra/launcher=ensemble: {why}")
                # members of one seed share their data (phase4: 3 loads for a stack of 12, not 12)
                key = (repr(run.cfg.data), run.cfg.seed, run.cfg.ssl.enabled)
                run.data = loaded.get(key)
                ex._prepare(run)
                loaded[key] = run.data
                run.record.engine = "ensemble"
                todo.append(i)
            except BAD_INPUT as e:
                if lock is not None and not isinstance(e, RunExists):
                    run.record.status, run.record.stop_reason = "failed", "bad_input"
                    run.record.error = f"{type(e).__name__}: {e}"
                    run.write()
                out[i] = e
        # data of one shape per stack (synthetic and .npz splits have one size whatever the seed)
        stacks: dict = {}
        for i in todo:
            d = runs[i].data
            key = (d.X_train.shape, d.X_val.shape, d.X_test.shape, runs[i].device)
            stacks.setdefault(key, []).append(i)
        for group in stacks.values():
            _train_recorded([runs[i] for i in group], threads)
            for i in group:
                out[i] = runs[i].error if getattr(runs[i], "error", None) is not None else runs[i].record
        return out
    finally:
        for lock in locks:
            lock.release()


# glibc's mallopt parameters (malloc.h), and how far they are raised for a stack
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20         # glibc's ceiling for it on 64-bit
TRIM_THRESHOLD_BYTES = 64 << 20
_heap_held = False


def hold_freed_memory() -> bool:
    """Keep freed blocks up to 32 MiB in this process's heap (glibc's mallopt), once a process.

    A stack's activations are megabytes (7 frames x 12 members: 5.5 MB a layer); glibc hands
    blocks that large to mmap and returns them on free, so every step faulted its memory in
    afresh: 62k page faults an epoch, ~20% of the 7-frame stack's step. (Single runs, whose
    tensors are 0.5 MB, gained 0-6% in the same measurement, within this machine's noise:
    the default launcher is left as it is.) True where it was set; other C libraries
    (macOS, musl) keep their allocator as it is."""
    global _heap_held
    if _heap_held:
        return True
    try:
        import ctypes
        import ctypes.util

        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _heap_held = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _heap_held


def _train_recorded(runs: list, threads: int) -> None:
    """Train with torch's threads set and the signals handled; an interrupt is recorded in
    every unfinished member, then re-raised; a failure is recorded in each (run.error)."""
    import torch

    hold_freed_memory()
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    started = time.time()
    for run in runs:
        ex.start_record(run, started)
        run.finished = False
    try:
        with Interrupts() as interrupts:
            for run in runs:
                run.interrupts = interrupts
            try:
                _train(runs, started)
            except (KeyboardInterrupt, Interrupted, SystemExit) as e:
                with interrupts.recording():
                    best = _current_best(runs)
                    for run, state in zip(runs, best):
                        if not run.finished:
                            ex.record_interrupted(run, e, started, state)
                unfinished = sum(not run.finished for run in runs)
                log.warning(f"{unfinished} ensemble member(s) interrupted ({type(e).__name__}): recorded; "
                            "resume=true continues them from their last checkpoints")
                raise
    except Exception as e:  # noqa: BLE001 - a crash mid-run is a recorded result, per member
        for run in runs:
            if not run.finished:
                ex.record_failed(run, e, started)
                run.error = e
        log.error(f"ensemble group failed: {type(e).__name__}: {e}")
    finally:
        torch.set_num_threads(previous_threads)


def _current_best(runs: list) -> list:
    trainer = getattr(runs[0], "stacked_trainer", None)
    return trainer.best_states_ if trainer is not None else [None] * len(runs)


# Hydra's job-log format (hydra/job_logging=default), so a member's log reads as a single run's
JOB_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def job_log_handler(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path, mode="a", delay=True)
    handler.setFormatter(logging.Formatter(JOB_LOG_FORMAT))
    return handler


@contextlib.contextmanager
def job_log(path: Optional[Path], handler: Optional[logging.Handler] = None):
    """The "collapse" logger's lines also into a member's job log (`path`, or an open
    `handler`) for the block; neither: nothing changes."""
    own = handler is None and path is not None
    handler = job_log_handler(path) if own else handler
    if handler is not None:
        log.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)
        if own:
            handler.close()


class _MemberLog:
    """A member's lines in its own job log, not on the worker's console: a stack's members
    printing every epoch made hundreds of interleaved lines there and left their own logs
    empty. Without a log file, its lines go to the "collapse" logger, tagged with the job."""

    def __init__(self, run):
        num = run.record.job.get("num")
        self.tag = f"job {num}" if num is not None else f"seed {run.cfg.seed}"
        path = getattr(run, "log_file", None)
        self.handler = job_log_handler(path) if path is not None else None

    def __call__(self, line: str) -> None:
        if self.handler is None:
            log.info(f"{self.tag} | {line}")
        else:
            self.handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None))

    def routed(self):
        """The "collapse" logger's lines (set-up and closing lines) into this member's log."""
        return job_log(None, self.handler)

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


def _train(runs: list, started: float) -> None:
    logs = [_MemberLog(run) for run in runs]
    try:
        _train_logged(runs, started, logs)
    finally:
        for member_log in logs:
            member_log.close()


def _train_logged(runs: list, started: float, logs: list) -> None:
    from collapse.ensemble import Member, StackedTrainer

    setups = []
    for run, member_log in zip(runs, logs):                     # each seeded as its single run
        with member_log.routed():                               # its set-up lines (the batch cap) too
            setups.append(ex.setup_training(run))
    first = runs[0].cfg
    trainer = StackedTrainer(setups[0].trainer_cfg)
    for run in runs:
        run.stacked_trainer = trainer
    members = []
    for run, s, member_log in zip(runs, setups, logs):
        members.append(Member(
            model=s.model, seed=run.cfg.seed, lr=run.cfg.trainer.lr, weight_decay=run.cfg.trainer.weight_decay,
            variance_lambda=run.cfg.loss.variance_lambda, train_target_var=s.loss_fn.target_var,
            X_train=s.X_train, y_train=s.y_train, w_train=s.w_train, X_val=s.X_val, y_val=s.y_val,
            resume=run.checkpoint, log_fn=member_log))
    hooks = [ex.epoch_hook(run, write=False) for run in runs]
    last_write = time.monotonic()

    def on_epoch_end(indices, checkpoint) -> None:
        nonlocal last_write
        # one epoch's bookkeeping for every member before an interrupt lands: else a member
        # could record an epoch in its history whose checkpoint was never written
        interrupts = getattr(runs[0], "interrupts", None)
        with interrupts.deferred() if interrupts is not None else contextlib.nullcontext():
            for i in indices:
                hooks[i](trainer._slots[i].progress, None)
            if time.monotonic() - last_write >= first.checkpoint_every_s:
                for i in indices:
                    if runs[i].run_dir is not None:
                        ex.write_checkpoint(runs[i], checkpoint(i))
                last_write = time.monotonic()

    results = trainer.fit(setups[0].loss_fn, members, on_epoch_end=on_epoch_end)
    references: dict = {}               # members of one seed share their data: one ridge fit
    for run, s, result, best, member_log in zip(runs, setups, results, trainer.best_states_, logs):
        with member_log.routed():
            ex.record_result(run, s, result, best, references)
            ex.finish_record(run, started)
        run.finished = True
