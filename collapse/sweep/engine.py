"""The default launcher's engine: a sweep's jobs on a pool of worker processes.

Hydra's joblib launcher reached 0.68 of the 2-core limit on phase4 (docs/performance.md),
and three things of its design were why:
- the sweeper composes every job's config in the launching process, one after another,
  before any job starts, and each worker then composes it again;
- the workers start only when the first job is sent, so their start-up (python, torch)
  comes after that serial validation instead of beside it;
- the Hydra state (config loader, config store, task function) travels with every job.
Here the workers start as soon as the launcher exists (collapse.sweep.cores sized it), each
job is composed once, in a worker, in parallel (the composed config comes
back and goes to whichever worker is free: every job is still composed before any job
runs, so a cell that cannot compose still refuses the sweep up front), and the Hydra
state goes to each worker once. A worker that dies (the OOM killer, kill -9) loses
only its job: the job is reported, a new worker takes the next one, and the sweep goes
on; its end report (collapse.sweep.callback) counts the job as not done and exits non-zero.

hydra_plugins/collapse_launcher.py holds the Hydra classes (Hydra requires plugins to
live there); they delegate to this module. Nothing here imports torch: the workers fork
from a server process that imported it once (multiprocessing's forkserver, PRELOAD); starting
the first worker waits for that import, and the workers then compose the sweep's cells.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Optional, Sequence

from collapse.errors import Interrupted

log = logging.getLogger(__name__)

COMPOSE, RUN, STOP = "compose", "run", "stop"
RUN_GROUP = "run_group"     # hydra/launcher=ensemble: jobs trained together (collapse.sweep.ensemble)
SHUTDOWN_GRACE_S = 15.0     # an interrupted job records itself (history, best weights) in this time
# What the fork server imports once for every worker it forks: a spawned worker paid ~1.7 s
# of CPU for python, torch and hydra before its first job, a forked one ~0.3 s, and its
# siblings share those pages. Modules that fail to import are left to the workers. Not
# collapse.train itself: a worker runs it as its __main__ (runpy warns if it is loaded).
# collapse.sweep.preloaded comes last: it freezes what the others left in the server's heap.
PRELOAD = ("torch", "hydra", "cloudpickle", "collapse.config", "collapse.run.execute", "collapse.sweep.engine",
           "collapse.sweep.preloaded")


# ----------------------------------------------------------------------------- worker side

def _worker_main(conn) -> None:
    """A worker: receive and unpack the Hydra state once, import torch, then compose or
    run jobs until told to stop or the launching process goes away (the pipe closes)."""
    # Ctrl-C reaches the whole process group: the launching process decides (it forwards
    # SIGTERM to busy workers); while a job trains, collapse.run.execute handles SIGINT itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        payload = conn.recv_bytes()                 # first: the launching process is sending it
        environ = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    # the launching process's environment as it is now (CONCURRENT_ENV: the threads a job
    # takes): the fork server's is the one it had when that server started, maybe a sweep ago
    os.environ.clear()
    os.environ.update(environ)
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(state["singletons"])
    import torch  # noqa: F401 - every job needs it (preloaded by the fork server; spawned: paid now)

    _send(conn, ("ready", os.getpid()))
    while True:
        try:
            kind, data = conn.recv()
        except (EOFError, OSError):
            return                                  # the launching process is gone
        if kind == STOP:
            # idle, nothing left to write: skip the interpreter's teardown of torch (~0.4 s a
            # worker, which the sweep would wait for); the job logs' handlers flush every line
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            reply = ("ok", _handle(state, kind, data))
        except Exception as e:  # noqa: BLE001 - goes back to the launching process
            reply = ("error", _picklable(e))
        except BaseException as e:                  # an interrupt: the job has recorded it
            code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
            _send(conn, ("exit", code))
            os._exit(code)
        _send(conn, reply)


def _send(conn, message: tuple) -> None:
    """cloudpickle, as joblib does: a job's return holds the sweeper's config, whose
    dataclass (Optuna's) Hydra's plugin scan loaded under a name plain pickle cannot find."""
    import cloudpickle

    try:
        data = cloudpickle.dumps(message)
    except Exception as e:  # noqa: BLE001 - a reply that will not travel: its text does
        data = cloudpickle.dumps(("error", RuntimeError(f"the worker's reply cannot be sent: "
                                                        f"{type(e).__name__}: {e}")))
    try:
        conn.send_bytes(data)
    except OSError:             # BrokenPipeError: the launching process is gone (SIGKILLed)
        os._exit(1)             # nobody is left to tell: no traceback, no teardown


def _compose(state: dict, overrides: Sequence[str]) -> bytes:
    import cloudpickle

    config = state["hydra_context"].config_loader.load_sweep_config(state["config"], list(overrides))
    return cloudpickle.dumps(config)


def _handle(state: dict, kind: str, data):
    if kind == COMPOSE:
        return _compose(state, data)
    if kind == RUN_GROUP:
        from collapse.sweep.ensemble import run_group

        return run_group(state, data)
    return _run(state, *data)


def _job_config(state: dict, job_num: int, composed: Optional[bytes], overrides: Sequence[str]):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    config = pickle.loads(composed) if composed is not None else \
        state["hydra_context"].config_loader.load_sweep_config(state["config"], list(overrides))
    with open_dict(config):                         # as Hydra's basic launcher numbers jobs
        config.hydra.job.id = job_num
        config.hydra.job.num = job_num
    HydraConfig.instance().set_config(config)
    return config


def _run(state: dict, job_num: int, composed: Optional[bytes], overrides: Sequence[str]):
    from hydra.core.utils import configure_log, run_job

    config = _job_config(state, job_num, composed, overrides)
    try:
        return run_job(hydra_context=state["hydra_context"], task_function=state["task_function"],
                       config=config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    finally:
        configure_log(state["config"].hydra.hydra_logging, state["config"].hydra.verbose)


def _send_quietly(conn, *messages: bytes) -> None:
    try:
        for data in messages:
            conn.send_bytes(data)
    except (OSError, ValueError):
        pass            # the worker died first: its sentinel tells the pool


def _picklable(e: BaseException) -> BaseException:
    try:
        return pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001 - an exception that will not travel: its text does
        return RuntimeError(f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- launching side

@dataclass(eq=False)       # hashed by identity
class _Worker:
    process: Any
    conn: Any
    ready: bool = False
    task: Optional[tuple] = None            # (key, kind, data) while busy


def _context():
    """Workers fork from a fork server that preloaded PRELOAD; spawned where there is none
    (Windows). Never forked from the launching process: a worker would inherit the sweep
    directory's lock and the launching process's threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))       # read when the server starts: once a process
    return context


class WorkerPool:
    """`n_workers` worker processes that each hold the Hydra state; `map` hands tasks to
    whichever worker is free."""

    def __init__(self, n_workers: int, payload: bytes):
        self.payload = payload
        self.workers: list[_Worker] = []
        self._on_done: Optional[Callable[[tuple, tuple], None]] = None
        self._started, self._all_ready = time.monotonic(), False
        self._context = _context()
        for _ in range(n_workers):
            self._start()

    def _start(self) -> None:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child_end,),
                                        name=f"collapse-worker-{len(self.workers)}")
        try:
            process.start()     # the first one starts the fork server: python and PRELOAD, ~1.5 s
        except (EOFError, OSError) as e:
            # the fork server died before it forked (killed while importing torch): so would the next
            parent_end.close()
            child_end.close()
            self.shutdown()
            print(f"collapse: error: a sweep worker process died while starting (the fork server it "
                  f"comes from ended: {type(e).__name__}); hydra/launcher=basic runs the jobs in this "
                  "process", file=sys.stderr)
            raise SystemExit(1) from None
        child_end.close()
        # The Hydra state (hundreds of kB) and the environment go over the worker's own pipe,
        # from a thread. Not as Process arguments: multiprocessing writes those before it closes
        # its copy of the child's end, so a worker killed while starting left start() blocked forever.
        threading.Thread(target=_send_quietly, args=(parent_end, self.payload, pickle.dumps(dict(os.environ))),
                         daemon=True, name="collapse-worker-payload").start()
        self.workers.append(_Worker(process, parent_end))

    def map(self, tasks: Sequence[tuple], on_lost: Callable[[tuple, int, int], Any],
            on_done: Optional[Callable[[tuple, tuple], None]] = None) -> dict:
        """tasks: (key, kind, data). Returns {key: ("ok" | "error", value)}; a task whose
        worker died gets on_lost(task, exit code, the worker's pid) and a new worker takes the rest.
        on_done(task, reply) is called as each task finishes (the sweep's progress lines)."""
        queue, results = deque(tasks), {}
        self._on_done = on_done
        with _signals_raise():
            try:
                while queue or any(w.task for w in self.workers):
                    for w in self.workers:
                        # a ready worker has its payload: nothing else is writing to its pipe
                        if w.ready and w.task is None and queue:
                            w.task = queue.popleft()
                            w.conn.send((w.task[1], w.task[2]))
                    self._collect(results, on_lost)
            except (KeyboardInterrupt, Interrupted) as e:
                busy = sum(1 for w in self.workers if w.task is not None)
                self.shutdown()
                signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
                print(f"collapse: sweep interrupted by {signal.Signals(signum).name}: {busy} job(s) in progress "
                      "recorded themselves as interrupted; resume=true continues the sweep", file=sys.stderr)
                raise SystemExit(128 + signum) from None
        return results

    def _collect(self, results: dict, on_lost) -> None:
        watched = {}
        for w in self.workers:
            watched[w.conn] = watched[w.process.sentinel] = w
        for w in dict.fromkeys(watched[r] for r in wait(list(watched))):
            gone = False
            try:
                while w.conn.poll():                # a reply sent just before dying still counts
                    message = pickle.loads(w.conn.recv_bytes())
                    if message[0] == "ready":
                        w.ready = True
                        if not self._all_ready and all(x.ready for x in self.workers):
                            self._all_ready = True          # what a parallel sweep pays before its first job
                            log.info(f"{len(self.workers)} worker processes ready in "
                                     f"{time.monotonic() - self._started:.2f} s")
                    elif message[0] == "exit":      # interrupted: the job recorded it, the worker exits
                        gone = True
                        break
                    else:
                        if self._on_done is not None:
                            self._on_done(w.task, message)
                        results[w.task[0]], w.task = message, None
            except (EOFError, OSError):
                gone = True
            if gone or not w.process.is_alive():
                self._lost(w, results, on_lost)

    def _lost(self, w: _Worker, results: dict, on_lost) -> None:
        w.process.join(5)
        code = w.process.exitcode if w.process.exitcode is not None else -1
        w.conn.close()
        self.workers.remove(w)
        if not w.ready:
            self.shutdown()
            # it would die the same way again: stop here, before (more) jobs run
            print(f"collapse: error: a sweep worker process died while starting ({_ended(code)}); anything it "
                  "printed is above; hydra/launcher=basic runs the jobs in this process", file=sys.stderr)
            raise SystemExit(1)
        if w.task is not None:
            results[w.task[0]] = ("lost", on_lost(w.task, code, w.process.pid))
            if self._on_done is not None:
                self._on_done(w.task, ("lost", f"lost: its worker process died ({_ended(code)})"))
        self._start()                           # the pool keeps its size for the rest of the sweep

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop every worker: idle ones are told to; busy ones get SIGTERM (their job
        records itself interrupted) and `grace_s` to exit, then SIGKILL."""
        for w in self.workers:
            try:
                if w.task is not None:
                    os.kill(w.process.pid, signal.SIGTERM)
                elif w.ready:
                    w.conn.send((STOP, None))
                else:
                    w.process.kill()                        # still starting: no job to lose
            except (OSError, ValueError):
                pass                                        # already gone
        deadline = time.monotonic() + grace_s
        with _signals_ignored():                            # a second Ctrl-C must not cut the wait short
            for w in self.workers:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.exitcode is None:
                    w.process.kill()
                    w.process.join()
                w.conn.close()
        self.workers = []


class _signals_raise:
    """SIGTERM raises Interrupted in the launching process (SIGINT already raises
    KeyboardInterrupt), so the pool can stop its workers before the process exits."""

    def __enter__(self):
        self._previous = None
        if _main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted(signum)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _signals_ignored:
    def __enter__(self):
        self._previous = {}
        if _main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def _ended(exitcode: int) -> str:
    """How a process ended, from multiprocessing's exitcode (-N: killed by signal N)."""
    if exitcode < 0 and -exitcode in signal.valid_signals():
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _planned_total(config) -> Optional[int]:
    """How many jobs the sweep runs: the grid's size, a search's n_trials; None if unknown."""
    from collapse.sweep.callback import planned_overrides

    try:
        jobs = planned_overrides(config)
    except Exception:  # noqa: BLE001 - a count for the console only; Hydra reports bad sweeps itself
        return None
    if jobs is not None:
        return len(jobs)
    n_trials = config.hydra.sweeper.get("n_trials")
    return int(n_trials) if isinstance(n_trials, int) else None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- the launcher's logic

class Engine:
    """What the Hydra launcher does: compose a batch (validation), then run it, on the
    pool when n_workers > 1, else in this process (as Hydra's basic launcher does, but
    composing each job once)."""

    def __init__(self, n_workers: int, hydra_context, task_function, config):
        self.n_workers = max(1, int(n_workers))
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.pool: Optional[WorkerPool] = None
        self._composed: dict[tuple, bytes] = {}
        self.progress = None                    # SweepProgress, from the first launch on
        if self.n_workers > 1:
            self.pool = WorkerPool(self.n_workers, self._payload())
            atexit.register(self.close)         # a sweeper that never closes its launcher (Optuna)

    def _payload(self) -> bytes:
        import cloudpickle  # the task function is hydra.main's, not importable by name
        from hydra.core.singleton import Singleton

        return cloudpickle.dumps({"hydra_context": self.hydra_context, "config": self.config,
                                  "task_function": self.task_function, "singletons": Singleton.get_state()})

    def compose(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch, keeping the configs for `launch`; raise the
        first job's composition error (in job order) before anything runs."""
        keys = [tuple(o) for o in batch]
        if self.pool is None:
            for key in keys:
                self._composed[key] = _compose({"hydra_context": self.hydra_context, "config": self.config}, key)
            return
        todo = [(i, COMPOSE, key) for i, key in enumerate(keys)]
        replies = self.pool.map(todo, on_lost=lambda task, code, pid: None)
        for i, key in enumerate(keys):
            kind, value = replies[i]
            if kind == "error":
                raise value
            if kind == "ok":
                self._composed[key] = value
            # lost: that job composes again when it runs

    def launch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        setup_globals()
        hydra = self.config.hydra
        configure_log(hydra.hydra_logging, hydra.verbose)
        os.makedirs(str(hydra.sweep.dir), exist_ok=True)
        where = f"on {self.n_workers} worker processes" if self.pool else "in this process"
        log.info(f"Launching {len(batch)} jobs {where}")
        if self.progress is None:
            from collapse.sweep.progress import SweepProgress

            self.progress = SweepProgress(_planned_total(self.config), fixed=list(self.config.hydra.overrides.task))
        tasks = []
        for i, overrides in enumerate(batch):
            # each job's cell is in its progress line when it finishes: the list goes to debug
            log.debug(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            tasks.append((i, RUN, (initial_job_idx + i, self._composed.pop(tuple(overrides), None), list(overrides))))
        if self.pool is None:
            state = {"hydra_context": self.hydra_context, "config": self.config, "task_function": self.task_function}
            returns = []
            for task in tasks:
                returns.append(_run(state, *task[2]))
                self._job_done(task, ("ok", returns[-1]))
            return returns
        replies = self.pool.map(tasks, on_lost=self._lost_job, on_done=self._job_done)
        returns = []
        for i in range(len(tasks)):
            kind, value = replies[i]
            if kind == "error":
                raise value
            returns.append(value)
        return returns

    def _job_done(self, task: tuple, reply: tuple) -> None:
        """A job finished (or its worker died): its progress line, read from its metrics.json."""
        job_num, _, overrides = task[2]
        kind, value = reply
        job_dir = None
        if kind == "ok":
            try:
                job_dir = str(value.hydra_cfg.hydra.runtime.output_dir)    # SweepProgress reads its record
            except AttributeError:          # not a Hydra JobReturn: nothing to read
                job_dir = None
        lost = value if kind == "lost" else (f"error: {value}" if kind == "error" else "")
        try:
            self.progress.job_done(job_num, [o for o in overrides], job_dir, lost)
        except OSError:
            pass                            # a closed console must not stop the sweep

    def _lost_job(self, task: tuple, code: int, pid: int):
        from hydra.core.utils import JobReturn, JobStatus

        from collapse.records import interrupt_orphaned
        from collapse.sweep.job import failed_objective

        job_num, _, overrides = task[2]
        # the dead worker's record says `running` (and a write may have left its temp file)
        interrupt_orphaned(str(self.config.hydra.sweep.dir), pid, f"its worker process died ({_ended(code)})")
        print(f"collapse: error: job {job_num} ({' '.join(overrides)}): its worker process died ({_ended(code)}); "
              "the sweep goes on without it and resume=true runs it again", file=sys.stderr)
        # collapse's convention for a job without a result: a completed Hydra job whose
        # value is NaN (the sweep's end report counts it as not done and exits 1)
        value = failed_objective(self.config.hydra.sweeper)
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=value)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

