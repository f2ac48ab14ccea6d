"""A directory that one process owns: its lock, and a sweep's manifest and job dirs.

    DirLock(d).acquire()      exclusive, non-blocking; raises DirLocked naming the holder
    write_manifest / read_manifest    <sweep_dir>/manifest.json: the jobs a sweep plans
    job_dirs(sweep_dir)       every job directory, whatever `hydra.sweep.subdir` names it

A sweep's launching process holds the sweep directory's lock from its first callback
to its exit; each run holds its own run directory's lock while it trains. The lock is
an fcntl.flock on `.collapse.lock`: the kernel drops it when the holder dies, however it
dies, so a SIGKILLed sweep never leaves a stale lock behind. Plain files and numpy-free:
the summary imports this too.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Optional

from collapse import records

LOCK_FILE = ".collapse.lock"
MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = 1
_NUMBER = re.compile(r"[0-9]+")     # ASCII digits only: str.isdigit() accepts '²', int() does not


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, records.FILE_MODE)
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
    records.write_json(Path(sweep_dir) / MANIFEST_FILE, {
        "schema": MANIFEST_SCHEMA, "config_name": config_name, "task_overrides": list(task_overrides),
        "jobs": [{"num": num, "overrides": list(overrides)} for num, overrides in enumerate(jobs)]})


def read_manifest(sweep_dir: Path) -> Optional[dict]:
    """The manifest, or None when the sweep has none (an old sweep, or a sweeper that
    decides its jobs as it goes, such as Optuna). A damaged one is treated as absent."""
    try:
        manifest = json.loads((Path(sweep_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA \
            or not isinstance(manifest.get("jobs"), list):
        return None
    return manifest


def _is_job_dir(path: Path) -> bool:
    return (path / records.METRICS_FILE).is_file() or (path / ".hydra").is_dir()


def job_dirs(sweep_dir: Path, max_depth: int = 3) -> list[Path]:
    """The job directories of a sweep: subdirectories (up to `max_depth` deep) holding a
    metrics.json or a .hydra/ dir, whatever `hydra.sweep.subdir` named them. Job numbers
    (ASCII digits) come first in numeric order, other names after, sorted."""
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if _is_job_dir(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(Path(sweep_dir), 1)
    numbered = sorted((p for p in found if _NUMBER.fullmatch(p.name)), key=lambda p: int(p.name))
    return numbered + [p for p in found if not _NUMBER.fullmatch(p.name)]
