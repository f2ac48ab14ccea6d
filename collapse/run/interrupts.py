"""Signals while a run trains: SIGINT and SIGTERM become results, not crashes.

In the main thread, SIGINT raises KeyboardInterrupt and SIGTERM raises
collapse.errors.Interrupted, except inside `deferred()` (a checkpoint being written),
where they wait for the block to end; while an interrupt is being recorded
(`recording()`) further signals are dropped.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from collapse.errors import Interrupted


class Interrupts:
    """While a run trains, in the main thread: SIGINT raises KeyboardInterrupt and SIGTERM
    raises Interrupted, except inside `deferred()` (a checkpoint being written: torch.save
    turns an exception raised inside it into a RuntimeError, which would read as a
    failure), where they wait for the block to end. Under submitit, which owns the job's
    signals (it bypasses SIGTERM; on its pre-emption signal it requeues the job and exits
    from the handler), SIGTERM is left alone and that handler is deferred the same way."""

    def __init__(self) -> None:
        self._depth, self._pending, self._recording = 0, [], False
        self._handlers: dict = {}
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self                        # Python allows handlers only there
        self._handlers[signal.SIGINT] = self._raise
        if os.environ.get("SUBMITIT_EXECUTOR"):
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
            if preempt is not None and callable(signal.getsignal(preempt)):
                self._handlers[preempt] = signal.getsignal(preempt)
        else:
            self._handlers[signal.SIGTERM] = self._raise
        for signum in self._handlers:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @staticmethod
    def _raise(signum: int, frame) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    def _handle(self, signum: int, frame) -> None:
        if self._recording:
            return                             # the interrupt being recorded already stops the run
        if self._depth:
            self._pending.append((signum, frame))
        else:
            self._handlers[signum](signum, frame)

    @contextmanager
    def recording(self):
        """While an interrupt is recorded: further signals are dropped."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    @contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                signum, frame = self._pending.pop(0)
                self._pending.clear()
                self._handlers[signum](signum, frame)
