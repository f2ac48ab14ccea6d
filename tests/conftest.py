"""Shared helpers for the fault, bad-input and reproducibility suites.

Every CLI run is a process of its own with cwd=tmp_path, so default output dirs land in the
test's tmp dir: cli() forks it from a server that has already imported torch and Hydra
(forked_cli says what that child shares with a fresh `python -m collapse.train` and what it
does not); start_cli (the kill tests' runs) and cli(fresh=True) start a new interpreter.
Process trees are read from /proc (no psutil): the fault tests kill real processes by pid.
"""
from __future__ import annotations

import os

# pytest-xdist runs one test process per core, and each test's own processes set the threads
# they train with: any other OpenMP/BLAS thread (this process's torch, numpy's BLAS in every
# child) only spins against the other workers. Measured on 2 cores: 496 -> 450 s of CPU for
# the suite, 252 -> 229 s of wall. Set before numpy or torch is imported; a run's own
# thread count (collapse.sweep.cores) does not read it.
# A run with every core's threads (a single run, the basic launcher) still shares the cores
# with the other worker's test: OpenMP threads that wait sleep instead of spinning (PASSIVE).
# Alternated pairs of the suite: 526 / 541 s and 524 / 585 s of CPU (passive / spinning).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

# The tests send SIGINT to the processes they start and expect Python's KeyboardInterrupt.
# A test run started with SIGINT ignored (a background job of a non-interactive shell:
# `(make test &)`, nohup) passes that on to every child, and Python then leaves it ignored:
# a writer sent SIGINT went on writing until the test's 60 s timeout. Caught here, the
# signal reaches each child as the default again (exec resets a caught signal, not an ignored one).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small enough that a job takes well under a second on an idle core, big enough that
# every split has samples and the model learns something seed-dependent.
TINY = ("data.n_samples=400", "trainer.epochs=3", "model.hidden_dim=16")
# The fault tests' sweep: 4 jobs, each long enough (a few hundred ms) for a kill to
# land in the middle of one (20 epochs: with epoch lines kept off a sweep's console, 8
# epochs ran ~150 ms, and a whole sweep could finish inside the kill's random delay).
# Dirs are job numbers: 0..3 in the order of the product.
SWEEP_TINY = ("data.n_samples=400", "trainer.epochs=20", "model.hidden_dim=16")
SWEEP_GRID = ("loss.variance_lambda=0,0.5", "seed=0,1")
N_SWEEP_JOBS = 4
# Long enough that a worker process, which notices its sweep's death at once, is still
# mid-job when it does: a kill lands after epoch 2 and by epoch 6 (the tests wait for a job
# in that window), 6 or more epochs (~40 ms each) before the job's end; an epoch
# checkpoints every time. One torch thread, as the default launcher gives each of its 2 workers
# on 2 cores: the basic launcher would give its job both, and this model's ops are too small to
# split (a job trained in 0.59-0.71 s on 2 threads, 0.25-0.31 s on 1, the same metrics).
MID_RUN = ("data.n_samples=2500", "trainer.epochs=12", "trainer.patience=0", "model.hidden_dim=16",
           "checkpoint_every_s=0", "trainer.threads=1")
BASIC = ("hydra/launcher=basic",)      # the sequential launcher; the default runs jobs in parallel
TIMEOUT = 240
ROOT = Path(__file__).resolve().parent.parent     # the checkout: conf/, sweeps/, examples/


def _env(extra: Optional[dict] = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(extra or {})
    return env


def cli(args: Sequence[str], cwd: Path, env: Optional[dict] = None, timeout: float = TIMEOUT,
        umask: Optional[int] = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m collapse.train ARGS` to completion; text stdout/stderr (python_m)."""
    return python_m("collapse.train", args, cwd, env, timeout, umask, fresh)


def python_m(module: str, args: Sequence[str], cwd: Path, env: Optional[dict] = None, timeout: float = TIMEOUT,
             umask: Optional[int] = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` to completion, stdin empty. A process of its own, forked from the
    fork server that has already imported torch and Hydra (forked_cli); fresh=True, or a `umask`
    to run under (collapse.records reads it when imported), starts a new interpreter instead."""
    command = [sys.executable, "-m", module, *args]
    if fresh or umask is not None:
        return subprocess.run(command, cwd=cwd, env=_env(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=None if umask is None else lambda: os.umask(umask))
    # the sweep engine's fork server: in-process sweeps' workers fork from it too
    import forked_cli

    from collapse.sweep.engine import _context

    with tempfile.TemporaryDirectory(prefix="collapse-cli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = _context().Process(target=forked_cli.main, name="collapse-cli",
                                   args=(module, list(args), str(cwd), _env(env), out, err, fresh_interpreter()))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(command, child.exitcode, Path(out).read_text(), Path(err).read_text())


@functools.lru_cache(maxsize=None)
def fresh_interpreter() -> dict:
    """What a new interpreter started from this one holds: sys.path with no PYTHONPATH ('' first,
    then what site adds) and its std streams on files (encoding, errors, buffering)."""
    code = ("import json, sys; print(json.dumps({'path': sys.path, 'streams': [(s.encoding, s.errors, "
            "s.line_buffering, s.write_through, type(s.buffer).__name__) for s in (sys.stdin, sys.stdout, "
            "sys.stderr)]}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def in_process_sweep(hydra_sweep_runner, monkeypatch) -> Callable:
    """start(overrides, sweep_dir): a multirun of collapse.train in this process, as a notebook's
    (the default launcher's workers fork from this process's fork server). Hydra's runner removes
    sweep_dir when its block ends: read the jobs inside `with start(...):`."""
    from collapse import train
    from collapse.sweep.cores import CONCURRENT_ENV

    monkeypatch.delenv(CONCURRENT_ENV, raising=False)      # the sweep sets it in this process

    def start(overrides: Sequence[str], sweep_dir: Path):
        return hydra_sweep_runner(calling_file=train.__file__, calling_module=None, task_function=train.task,
                                  config_path=train.CONF_DIR, config_name="config", overrides=list(overrides),
                                  temp_dir=sweep_dir)
    return start


def start_cli(args: Sequence[str], cwd: Path, log: Path, module: str = "collapse.train") -> subprocess.Popen:
    """Start `python -m MODULE ARGS` in its own session (so a signal reaches only it and
    its children); output goes to `log`, not a pipe nobody drains."""
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


# ---------------------------------------------------------------- processes via /proc

def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, ppid) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid:
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_quietly(proc: subprocess.Popen) -> None:
    """Teardown: SIGKILL what is left of a test's process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------- sweep directories

def read_json(path: Path) -> Optional[dict]:
    """A metrics.json as a dict; None when absent. Raises on anything but valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def statuses(sweep_dir: Path, n_jobs: int = N_SWEEP_JOBS) -> dict[int, str]:
    """job number -> status in its metrics.json, or 'missing'. Asserts every file that
    exists is complete, valid JSON: a truncated file fails the test right here."""
    out = {}
    for num in range(n_jobs):
        path = Path(sweep_dir) / str(num) / "metrics.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            out[num] = "missing"
            continue
        try:
            out[num] = json.loads(text)["status"]
        except ValueError as e:
            raise AssertionError(f"{path} is not valid JSON ({e}): {text[:200]!r}") from None
    return out


def fingerprint(path: Path) -> tuple[int, int, str]:
    """(inode, mtime_ns, sha256): a rewritten file changes at least one of them."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def completed_fingerprints(sweep_dir: Path, n_jobs: int = N_SWEEP_JOBS) -> dict[int, tuple]:
    """Fingerprints of metrics.json and model.pt of every completed job."""
    out = {}
    for num, status in statuses(sweep_dir, n_jobs).items():
        if status == "completed":
            job = Path(sweep_dir) / str(num)
            out[num] = (fingerprint(job / "metrics.json"), fingerprint(job / "model.pt"))
    return out


def results(sweep_dir: Path, n_jobs: int = N_SWEEP_JOBS) -> dict[int, dict]:
    """What a run computed, keyed by job number: config hash, status, best and final
    metrics and the per-epoch history without wall-clock fields."""
    out = {}
    for num in range(n_jobs):
        r = read_json(Path(sweep_dir) / str(num) / "metrics.json")
        assert r is not None, f"job {num} has no metrics.json"
        out[num] = {"config_hash": r["config_hash"], "status": r["status"], "best": r["best"],
                    "final": r["final"], "best_epoch": r["best_epoch"],
                    "history": [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]}
    return out


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory `build(root)` fills once for the whole test run, however many pytest-xdist
    workers ask for it: the first builds it under a lock, the others wait and reuse it. Its
    users only read it (they copy what they change)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent                      # the run's own temp dir, above each worker's
    root = base / f"built-once-{name}"
    with open(base / f"built-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".built").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            (root / ".built").touch()
    return root


def _sweep_once(args: Sequence[str]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        proc = cli(["-m", *args, f"hydra.sweep.dir={root / 'sweep'}"], cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert statuses(root / "sweep") == dict.fromkeys(range(N_SWEEP_JOBS), "completed")
        (root / "console.txt").write_text(proc.stdout + proc.stderr)
    return build


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory) -> Path:
    """The fault tests' sweep run once, uninterrupted, with the basic launcher: what
    every killed-and-resumed sweep must end up equal to. Its stdout and stderr are
    ../console.txt."""
    return built_once(tmp_path_factory, "reference", _sweep_once([*SWEEP_TINY, *SWEEP_GRID, *BASIC])) / "sweep"


@pytest.fixture(scope="session")
def mid_run_reference(tmp_path_factory) -> Path:
    """The mid-run sweep (MID_RUN), uninterrupted (basic launcher): what both launchers
    must reach after kills mid-job."""
    return built_once(tmp_path_factory, "mid-run", _sweep_once([*SWEEP_TINY, *SWEEP_GRID, *MID_RUN, *BASIC])) / "sweep"


@pytest.fixture(scope="session")
def single_cli_run(tmp_path_factory) -> Path:
    """`python -m collapse.train TINY` run once in a fresh interpreter, under umask 027: its
    directory is run/, its stdout and stderr console.txt. What a plain command-line run prints
    and writes (the umask test reads its files' modes: 027 gives 0640, which tells mkstemp's 0600
    and a fixed 0644 apart; collapse.records reads the umask when it is imported)."""
    def build(root: Path) -> None:
        proc = cli([*TINY, f"hydra.run.dir={root / 'run'}"], cwd=root, umask=0o027)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (root / "console.txt").write_text(proc.stdout + proc.stderr)
    return built_once(tmp_path_factory, "single-cli-run", build)


@pytest.fixture(scope="session")
def modules_after_a_run(tmp_path_factory) -> set:
    """The modules a fresh process holds once `run()` has trained a small model with
    pretraining and the plateau schedule, logger none: what a run imports (run once)."""
    def build(root: Path) -> None:
        overrides = [*TINY, "ssl=on", "ssl.epochs=1", "trainer.lr_schedule=plateau"]
        code = ("import json, sys; from collapse.train import run; "
                f"r = run({overrides!r}, run_dir=sys.argv[1], quiet=True); "
                "assert r.status == 'completed', r.status; json.dump(sorted(sys.modules), open(sys.argv[2], 'w'))")
        out = subprocess.run([sys.executable, "-c", code, str(root / "run"), str(root / "modules.json")], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads((built_once(tmp_path_factory, "modules-after-a-run", build) / "modules.json").read_text()))


# ---------------------------------------------------------------- references

def torch_optimizer(name: str, params, lr: float, weight_decay: float):
    """torch.optim's Adam / AdamW / SGD(momentum 0.9): what collapse.optim must equal."""
    import torch

    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    return cls(params, lr=lr, weight_decay=weight_decay, **({"momentum": 0.9} if name == "sgd" else {}))


# ---------------------------------------------------------------- data files

def xy(n: int = 60, frames: int = 5, features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A valid (X, y) pair for data=npz: X (N, T, C) float32, y (N,) float32."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, frames, features)).astype(np.float32)
    return X, (X[:, -1, 0] + 0.1 * rng.normal(size=n)).astype(np.float32)


def write_npz(path: Path, **arrays) -> Path:
    """np.savez, which pickles object arrays: the loader must refuse those."""
    np.savez(path, **arrays)
    return Path(path)
