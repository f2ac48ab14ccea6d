"""The files collapse writes, as one contract: a run's metrics.json (the typed
`RunRecord`), its weights and checkpoint, a sweep's manifest, and the lock that says
which process owns a directory. Nothing here imports torch at module level, numpy or
the rest of collapse: the summary reads these files with this module alone.

    RunRecord / read_record     metrics.json: statuses, diagnosis labels, schema
    write_json / save_torch     atomic writes (temp file + fsync + os.replace)
    DirLock                     exclusive flock on DIR/.collapse.lock, naming its holder
    write_manifest / read_manifest / job_dirs    a sweep directory's layout

A run directory holds `metrics.json` (a `RunRecord`), when a best epoch exists
`model.pt` (a plain state_dict, loadable with `torch.load(weights_only=True)`), and
while a run is unfinished `checkpoint.pt` (what `resume` continues from).
Every write goes to a temp file in the same directory, is flushed and fsync'd, then
`os.replace`d over the target: a kill at any moment leaves either the old complete
file or the new complete file, never a truncated one. Files get the mode the umask
allows (0644 under umask 022), not mkstemp's private 0600.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

NUMBER = re.compile(r"[0-9]+")     # a job dir's name: ASCII digits only (str.isdigit() accepts '²')
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)      # 2: status interrupted, diagnosis per split, target_scaler
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"

# Statuses. The first three are results: a resumed sweep does not redo them.
# `interrupted` (SIGINT/SIGTERM) and `failed` are not: resume continues or reruns them.
RESULT_STATUSES = ("completed", "diverged", "stopped_collapse")
STATUSES = RESULT_STATUSES + ("failed", "interrupted", "running")
# A search's trial (collapse.sweep.study writes the spec into the sweep dir and names it and
# the trial number in these environment variables; collapse.run.pruning reports each epoch)
SEARCH_SPEC_FILE = "optuna_study.json"
SEARCH_SPEC_ENV, SEARCH_TRIAL_ENV = "COLLAPSE_OPTUNA_STUDY", "COLLAPSE_OPTUNA_TRIAL"
# what collapse.metrics.diagnose may call a split (diagnosis.<split>.label)
LABELS = ("healthy", "collapsed", "no_signal", "inflated", "biased", "underfit", "inconclusive")


def _read_umask() -> int:
    # os.umask can only be read by setting it; /proc says it without a race
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


@dataclass
class RunRecord:
    """One run's metrics.json. Written by collapse.run.execute, read by the summary.

    Metric dicts (`best.val`, ...) are collapse.metrics.regression_report's, in the
    target's original units; NaN is stored as null."""
    status: str = "running"                # one of STATUSES
    stop_reason: Optional[str] = None      # max_epochs | early_stopping | collapse_guard | non_finite_loss
                                           # | bad_input | exception | interrupted | pruned (a search's
                                           # pruner stopped it: status completed, best epoch so far)
    error: Optional[str] = None
    traceback: Optional[str] = None
    seed: Optional[int] = None
    study: Optional[str] = None
    monitor: Optional[str] = None
    monitor_value: Optional[float] = None  # the best epoch's monitored val metric, higher is better
    best_epoch: Optional[int] = None
    epochs_run: int = 0
    resumed_from_epoch: Optional[int] = None   # set when a run continued from its checkpoint
    stage: Optional[str] = None            # where a failed/interrupted run stopped: prepare | train
    best: Optional[dict] = None            # {"epoch", "val": report, "test": report}
    final: Optional[dict] = None           # {"epoch", "val": report} of the last epoch run
    recalibrated: Optional[dict] = None    # affine refit on val, applied to test
    reference: Optional[dict] = None       # ridge on the same frames: {"alpha", "val", "test", ...} or {"skipped"}
    diagnosis: Optional[dict] = None       # {"val": {...}, "test": {...}} (collapse.metrics.diagnose)
    target_scaler: Optional[dict] = None   # {"mean", "std"}: the loss saw (y - mean) / std
    batch_size: Optional[int] = None       # as trained (trainer.batch_size, capped for small data)
    budget_exhausted: Optional[bool] = None    # best epoch = last allowed: still improving
    history: list = field(default_factory=list)       # one dict per epoch
    ssl_history: Optional[list] = None
    config: dict = field(default_factory=dict)        # resolved
    config_hash: Optional[str] = None
    overrides: list = field(default_factory=list)     # as typed
    choices: dict = field(default_factory=dict)       # config group -> option
    job: dict = field(default_factory=dict)           # num (sweeps), dir, config_name
    device: Optional[str] = None
    threads: Optional[int] = None
    engine: str = "single"                 # single: Trainer.fit; ensemble: stacked with other runs (collapse.ensemble)
    started_at: Optional[float] = None
    wall_time_s: Optional[float] = None
    warnings: list = field(default_factory=list)
    weights_sha256: Optional[str] = None   # of model.pt as written: resume and the summary check it
    provenance: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    @property
    def is_result(self) -> bool:
        return self.status in RESULT_STATUSES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / METRICS_FILE, self.to_dict())


class RecordError(ValueError):
    """A metrics.json that cannot be used (corrupt, unknown schema, ...)."""


def finite_or_none(obj: Any) -> Any:
    # strict JSON has no NaN/inf: undefined metrics are stored as null
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


class WriteError(OSError):
    """A file could not be written for want of room: the disk (or quota) is full, or the
    file is over the size limit (`ulimit -f`). The message names the file and which."""

    def __str__(self) -> str:
        return str(self.strerror)           # the message alone, without "[Errno 28]"


def _no_room(path: Path, e: OSError) -> Optional[WriteError]:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(e.errno, f"{path}: disk full ({e.strerror}) while writing it")
    if e.errno == errno.EFBIG:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        return WriteError(e.errno, f"{path}: file too large (the file size limit, ulimit -f, is {limit})")
    return None


def _atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # the half-written temp file is ours to remove; the target is untouched
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        named = _no_room(path, e) if isinstance(e, OSError) else None
        if named is not None:
            raise named from None
        raise


TEMP_SUFFIX = ".tmp"


def remove_temp_files(directory: Path) -> list[Path]:
    """Remove the temp files a writer killed mid-write left in `directory` (`.NAME.*.tmp`).
    Only for the holder of the directory's lock: nobody else is writing there."""
    removed = []
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write_bytes(path, lambda f: f.write(data))


def write_json(path: Path, record: dict) -> None:
    write_bytes(path, json.dumps(finite_or_none(record), indent=1, allow_nan=False).encode())


def save_torch(path: Path, obj: Any) -> str:
    """torch.save, atomically (weights, checkpoints); returns the file's sha256. Serialised
    in memory first: a failed write is then an OSError that says why (torch's own writer
    says only "file write failed"), and the hash costs no second read."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    _atomic_write_bytes(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def save_weights(path: Path, state_dict: dict) -> str:
    """Write a state_dict's tensors (on CPU) to `path`; returns the file's sha256."""
    return save_torch(path, {k: v.detach().cpu() for k, v in state_dict.items()})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_problem(run_dir: Path, record: dict) -> Optional[str]:
    """Why the weights of a recorded run cannot be trusted, or None: model.pt missing or
    not the file the record's `weights_sha256` names. Records without a hash (older ones,
    save_weights=false) are not checked."""
    expected = record.get("weights_sha256")
    if not expected:
        return None
    path = Path(run_dir) / WEIGHTS_FILE
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        return f"{path}: missing, though {METRICS_FILE} records its sha256"
    except OSError as e:
        return f"{path}: unreadable ({e.strerror})"
    if actual != expected:
        return (f"{path}: sha256 {actual[:12]}... is not the {expected[:12]}... that {METRICS_FILE} "
                "records: the weights were changed or damaged after the run")
    return None


def read_record(path: Path) -> dict:
    """Read a metrics.json; raise RecordError naming the file if it is not usable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    return check_record(path, record)


def check_record(path: Path, record: Any) -> dict:
    """`record` (parsed from `path`) if it is an object of a readable schema and a known
    status, else RecordError naming the file."""
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object")
    if record.get("schema") not in READABLE_SCHEMAS:
        raise RecordError(f"{path}: unknown schema version {record.get('schema')!r} "
                          f"(this version reads {', '.join(map(str, READABLE_SCHEMAS))})")
    if record.get("status") not in STATUSES:
        raise RecordError(f"{path}: unknown status {record.get('status')!r}")
    return record


# top-level keys that say how a run is kept, not what it computes
BOOKKEEPING_KEYS = ("resume", "checkpoint_every_s", "logger")   # logger: where results are also sent


def config_hash(resolved_config: dict) -> str:
    """Hash of the resolved config, minus bookkeeping keys that do not change results."""
    relevant = {k: v for k, v in resolved_config.items() if k not in BOOKKEEPING_KEYS}
    for group in ("model", "data"):
        # keys that only model=custom / data=custom set: unset, a config hashes as it did
        # before they existed (so resume=true accepts runs recorded then)
        node = relevant.get(group)
        if isinstance(node, dict) and node.get("_target_") is None and not node.get("kwargs"):
            relevant[group] = {k: v for k, v in node.items() if k not in ("_target_", "kwargs")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def provenance() -> dict:
    return {
        "python": sys.version.split()[0],
        "versions": {d: _version(d) for d in ("collapse", "torch", "numpy", "hydra-core", "omegaconf")},
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- directories: lock, manifest, job dirs
# A sweep's launching process holds the sweep directory's lock from its first callback to
# its exit; each run holds its own run directory's lock while it trains. The lock is an
# fcntl.flock on `.collapse.lock`: the kernel drops it when the holder dies, however it
# dies, so a SIGKILLed sweep never leaves a stale lock behind.

LOCK_FILE = ".collapse.lock"
MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = 1


class DirLocked(RuntimeError):
    """Another live process holds the directory."""


class DirLock:
    """An exclusive flock on DIR/.collapse.lock; the file names the holder (pid, host)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self, what: str = "directory") -> "DirLock":
        try:
            import fcntl
        except ImportError:         # not POSIX: no locking (documented in the README)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirLocked(f"{what} {self.path.parent} is in use by another process ({holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)       # closing drops the flock
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_manifest(sweep_dir: Path, config_name: Optional[str], task_overrides: list[str],
                   jobs: list[list[str]]) -> None:
    """Record the jobs a sweep plans (job number = position), before any of them starts."""
    write_json(Path(sweep_dir) / MANIFEST_FILE, {
        "schema": MANIFEST_SCHEMA, "config_name": config_name, "task_overrides": list(task_overrides),
        "jobs": [{"num": num, "overrides": list(overrides)} for num, overrides in enumerate(jobs)]})


class ManifestError(RecordError):
    """A manifest.json that exists but cannot be used (the message names it and why)."""


def read_manifest(sweep_dir: Path) -> Optional[dict]:
    """The manifest, or None when the sweep has none (an old sweep, or a sweeper that
    decides its jobs as it goes, such as Optuna). Raises ManifestError naming the file
    when one exists but is damaged: never mistaken for "no manifest"."""
    path = Path(sweep_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA \
            or not isinstance(manifest.get("jobs"), list):
        raise ManifestError(f"{path}: not a manifest of schema {MANIFEST_SCHEMA} (an object with a list of jobs)")
    return manifest


def _is_job_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / ".hydra").is_dir()


def job_dirs(sweep_dir: Path, max_depth: int = 3) -> list[Path]:
    """The job directories of a sweep: subdirectories (up to `max_depth` deep) holding a
    metrics.json or a .hydra/ dir, whatever `hydra.sweep.subdir` named them. Job numbers
    (ASCII digits) come first in numeric order, other names after, sorted."""
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        try:        # scandir: the entries' types come with the listing, without a stat each
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        except OSError:
            return
        for child in (directory / name for name in names):
            if _is_job_dir(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(Path(sweep_dir), 1)
    numbered = sorted((p for p in found if NUMBER.fullmatch(p.name)), key=lambda p: int(p.name))
    return numbered + [p for p in found if not NUMBER.fullmatch(p.name)]


def interrupt_orphaned(sweep_dir: Path, pid: int, reason: str) -> list[Path]:
    """Mark `interrupted` the records a dead process (`pid`, this host) left `running` in
    `sweep_dir`'s job directories, and remove its temp files there. Only for the process
    that owns the sweep: the dead one held those directories' locks, nobody else does.
    Returns the job directories changed."""
    changed = []
    host = socket.gethostname()
    for job in job_dirs(sweep_dir):
        try:
            record = read_record(job / METRICS_FILE)
        except (OSError, RecordError):
            continue
        prov = record.get("provenance") or {}
        if record["status"] != "running" or prov.get("pid") != pid or prov.get("hostname") != host:
            continue
        remove_temp_files(job)
        record.update(status="interrupted", stop_reason="interrupted", error=f"Killed: {reason}",
                      stage=record.get("stage") or "train")
        write_json(job / METRICS_FILE, record)
        changed.append(job)
    return changed
