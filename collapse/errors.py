"""The exceptions that cross layers: raised by the science or the machinery, caught by
the entry points, which turn each into one line (exit 2) or a recorded result.

    ConfigError   a config value that composed fine but is impossible (names the key)
    DataError     a data file or callable that cannot be used (names the file or key)
    RunExists     running would overwrite a result, or another process holds the dir
    Interrupted   SIGTERM arrived (what SLURM sends on pre-emption and at the time limit)
"""
from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A config value that composed fine but is impossible (the message names the key)."""


class DataError(ValueError):
    """Bad or unusable input data (the message names the file or the key)."""


class RunExists(RuntimeError):
    """Running here would overwrite a result, or another process is using the run dir."""


class Interrupted(BaseException):
    """SIGTERM (or another stop signal) arrived; `signum` says which. A BaseException, like
    KeyboardInterrupt, so `except Exception` in library code does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# what an entry point reports as bad input: one line, exit 2 (a sweep job records it)
BAD_INPUT = (ConfigError, DataError, RunExists)
