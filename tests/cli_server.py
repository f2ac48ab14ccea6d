"""A test-only "zygote" for `python -m collapse.train`: one process per pytest worker imports
torch, hydra and the run path once, then forks a child for each CLI run the tests ask for.

The suite starts ~150 CLI processes; each fresh one paid 0.3-0.5 s to import hydra, and the
ones that train another ~1 s to import torch. A forked child starts with those imports done and
otherwise runs what `python -m collapse.train ARGS` runs: its own pid, cwd, environment, argv,
stdout/stderr files, Python's own `-m` path (runpy), and its own interpreter exit (atexit
handlers, the exit status, a traceback on an uncaught exception). What it cannot be is a fresh
interpreter: tests about what a process imports, or that set variables read when a library
loads (PYTHONPATH, OMP_NUM_THREADS, ...), start a real one (conftest.cli decides).

Protocol, one JSON line each way over the two fds given in argv:
  request  {"module": str, "args": [...], "cwd": str, "env": {...}, "stdout": path, "stderr": path}
  replies  {"pid": int}  then, once the child is reaped, {"returncode": int}  (-N: signal N)
The server ends when its request pipe closes (its pytest worker is gone).
"""
import gc
import importlib
import json
import os
import sys

# What a CLI run imports, once (not collapse.train itself: `-m` runs it as __main__, and a
# fresh `python -m` has no other copy). Importing starts no thread, OpenMP pool, fork server
# or Hydra state, which every child would inherit.
PRELOAD = ("torch", "numpy", "cloudpickle", "hydra", "hydra._internal.hydra", "hydra._internal.utils",
           "hydra._internal.config_loader_impl", "hydra._internal.logging_config",
           "hydra.core.override_parser.overrides_parser", "hydra.experimental.callback",
           "hydra._internal.core_plugins.basic_launcher", "hydra._internal.core_plugins.basic_sweeper",
           "hydra._internal.core_plugins.file_config_source",
           "hydra._internal.core_plugins.structured_config_source",
           "hydra._internal.core_plugins.importlib_resources_config_source",
           "collapse.config", "collapse.records", "collapse.run.execute", "collapse.sweep.callback",
           "collapse.sweep.engine", "collapse.sweep.job", "collapse.sweep.progress", "collapse.trainer",
           "collapse.models", "collapse.losses", "collapse.ssl", "collapse.data", "collapse.metrics")


def serve(requests: int, replies: int) -> dict:
    """Fork a child per request and report its pid and exit status; returns only in a child."""
    reader = os.fdopen(requests, "r")
    writer = os.fdopen(replies, "w", buffering=1)
    for line in reader:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            reader.close()
            writer.close()
            return request
        writer.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        writer.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    os._exit(0)                             # the worker closed the pipe


def become(request: dict) -> str:
    """Turn this forked child into `python -m MODULE ARGS` run from `cwd`; returns MODULE."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.path[0] = os.getcwd()               # as `python -m` puts the cwd first
    sys.argv = ["-m", *request["args"]]     # as `python -m` leaves it: runpy sets argv[0] to the file
    return request["module"]


if __name__ == "__main__":
    import runpy

    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()     # out of every child's collections: no walk over, nor copy of, torch's objects
    module = become(serve(int(sys.argv[1]), int(sys.argv[2])))
    # What `python -m MODULE` runs; a SystemExit or an uncaught exception leaves the
    # interpreter as it leaves a fresh one.
    runpy._run_module_as_main(module)
