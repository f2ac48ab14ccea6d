"""`python -m MODULE ARGS` in a process forked from a server that has already imported
torch and Hydra: how conftest.cli runs `python -m collapse.train` (conftest.python_m).

A fresh interpreter spends ~0.3 s of CPU importing Hydra and the package, and ~1.8 s more on
torch, before a command line's first line of collapse code; most of the suite's command lines
are refusals that take ~0.4 s after that, or tiny runs that take ~0.6 s (2 cores). The server is the one
the sweep engine's workers fork from (collapse.sweep.engine.PRELOAD, started once per pytest
worker). `main` makes the forked child what a fresh `python -m MODULE` is when it starts MODULE:
its cwd, environment and sys.path (the cwd, then PYTHONPATH, then site's), stdin empty, stdout
and stderr to files, a multiprocessing main process with no parent; then MODULE runs as
__main__, and the child ends as Python ends (non-daemon threads joined, atexit run, streams
flushed) with Python's exit status.

Not the same as a fresh interpreter: the hash seed (the server's), and whatever a preloaded
module computed when imported (collapse.records reads the umask then: conftest.cli starts a
fresh interpreter for a umask). What only a fresh interpreter shows (start-up, what a run
imports, signals and kills) is tested with real ones: conftest.start_cli, single_cli_run,
modules_after_a_run, test_wheel. tests/test_forked_cli.py holds the child to a fresh one.
"""
from __future__ import annotations

import atexit
import io
import os
import runpy
import signal
import sys
import threading
from multiprocessing import context, process
from typing import Sequence


def main(module: str, args: Sequence[str], cwd: str, env: dict, out: str, err: str, fresh: dict) -> None:
    """Run in the forked child; never returns (os._exit with the command's exit status).
    fresh: conftest.fresh_interpreter(), what a new interpreter started the same way holds."""
    code = 1
    try:
        try:
            _become_fresh(cwd, env, out, err, fresh)
        except BaseException:       # noqa: BLE001 - the test reads it as the command's stderr
            import traceback

            with open(err, "a") as f:
                f.write("forked_cli: the child could not be set up:\n" + traceback.format_exc())
            raise
        sys.argv = ["-m", *args]
        try:
            runpy._run_module_as_main(module)      # what `python -m` calls: MODULE runs in __main__
            code = 0
        except SystemExit as e:
            code = _exit_status(e.code)
        except BaseException as e:  # noqa: BLE001 - uncaught: Python's traceback, from runpy's frame on
            e.__traceback__ = e.__traceback__.tb_next
            sys.excepthook(type(e), e, e.__traceback__)
            if isinstance(e, KeyboardInterrupt):
                _end()
                signal.signal(signal.SIGINT, signal.SIG_DFL)    # as Python ends on an uncaught Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
        _end()
    finally:
        os._exit(code)


def _become_fresh(cwd: str, env: dict, out: str, err: str, fresh: dict) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # `python -m` puts the cwd first, then PYTHONPATH, then what site adds (after `-c`'s '')
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *extra, *fresh["path"][1:]]
    sys.path_importer_cache.clear()
    for fd, path in ((0, os.devnull), (1, out), (2, err)):
        new = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.stdin, sys.stdout, sys.stderr = (_stream(fd, spec) for fd, spec in enumerate(fresh["streams"]))
    main_globals = sys.modules["__main__"].__dict__        # the fork server's own `-c` code's names
    for name in [k for k in main_globals if not k.startswith("__")]:
        del main_globals[name]
    # multiprocessing's view of this process: a main process with no parent and no children,
    # no start method chosen (the engine's workers and collapse.sweep.job read these)
    main_process = next(c for c in process.BaseProcess.__subclasses__() if c.__name__ == "_MainProcess")
    process._current_process = main_process()
    process._parent_process = None
    process._children = set()
    context._default_context._actual_context = None


def _stream(fd: int, spec: Sequence) -> io.TextIOWrapper:
    """sys.stdin/stdout/stderr as Python opens them on fd (spec: a fresh interpreter's, for files)."""
    encoding, errors, line_buffering, write_through, buffer_type = spec
    raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
    buffer = raw if buffer_type == "FileIO" else io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffer, encoding=encoding, errors=errors, newline="\n", line_buffering=line_buffering,
                            write_through=write_through)


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
