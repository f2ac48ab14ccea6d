"""`python -m collapse.train ARGS` in a process forked from a server that has already
imported Python's start-up, torch and Hydra: conftest.cli's way of running a command line.

A fresh interpreter spends ~0.3 s importing Hydra and the package, and ~1.8 s more on torch,
before a command line's first line of collapse code: most of the suite's command lines are
refusals that take ~0.4 s after that, or tiny runs that take ~0.5 s. The server is the one the
sweep engine's workers fork from (collapse.sweep.engine.PRELOAD, started once per pytest
worker); `main` then makes the child what a fresh `python -m collapse.train` would be before it
runs collapse.train as __main__: its cwd, environment and sys.path (the cwd first, then
PYTHONPATH), no stdin, stdout and stderr to files, no multiprocessing parent; at the end Python's
own exit (threads joined, atexit) and its exit status.

What only a fresh interpreter shows (its start-up, what a run imports, signals and kills)
is tested with real subprocesses: conftest.start_cli, single_cli_run, modules_after_a_run,
test_wheel.
"""
from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
import threading
from multiprocessing import context, process
from typing import Sequence


def main(args: Sequence[str], cwd: str, env: dict, out: str, err: str, base_path: Sequence[str]) -> None:
    """Run in the forked child; never returns (os._exit with the command's exit status)."""
    code = 1
    try:
        try:
            _become_fresh(cwd, env, out, err, base_path)
        except BaseException:       # noqa: BLE001 - the test reads it as the command's stderr
            import traceback

            with open(err, "a") as f:
                f.write("forked_cli: the child could not be set up:\n" + traceback.format_exc())
            raise
        sys.argv = ["-m", *args]
        try:
            runpy.run_module("collapse.train", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = _exit_status(e.code)
        except KeyboardInterrupt:
            sys.excepthook(*sys.exc_info())
            _end()
            signal.signal(signal.SIGINT, signal.SIG_DFL)    # as Python ends on an uncaught Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:   # noqa: BLE001 - an uncaught error: traceback, exit status 1
            sys.excepthook(*sys.exc_info())
        _end()
    finally:
        os._exit(code)


def _become_fresh(cwd: str, env: dict, out: str, err: str, base_path: Sequence[str]) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # `python -m` puts the cwd first, then PYTHONPATH, then what site adds (base_path[1:])
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *extra, *base_path[1:]]
    sys.path_importer_cache.clear()
    for fd, path in ((0, os.devnull), (1, out), (2, err)):
        new = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(new, fd)
        os.close(new)
    # as a fresh interpreter opens them for files: stdout block-buffered, stderr line-buffered
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    # multiprocessing's view of this process: a main process with no parent and no children,
    # no start method chosen (the engine's workers and collapse.sweep.job read these)
    main_process = next(c for c in process.BaseProcess.__subclasses__() if c.__name__ == "_MainProcess")
    process._current_process = main_process()
    process._parent_process = None
    process._children = set()
    context._default_context._actual_context = None


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _end() -> None:
    """What Python does when the main module ends: join non-daemon threads, run atexit, flush."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
