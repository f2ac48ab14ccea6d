"""The metrics.json contract: schema version, statuses, atomic writes, safe reads.

A run directory holds `metrics.json` (this module's format) and, when a best epoch
exists, `model.pt` (a plain state_dict, loadable with `torch.load(weights_only=True)`).
Every write goes to a temp file in the same directory, is flushed and fsync'd, then
`os.replace`d over the target: a kill at any moment leaves either the old complete
file or the new complete file, never a truncated one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.pt"

# Statuses. The first three are results: a resumed sweep does not redo them.
RESULT_STATUSES = ("completed", "diverged", "stopped_collapse")
STATUSES = RESULT_STATUSES + ("failed", "running")


class RecordError(ValueError):
    """A metrics.json that cannot be used (corrupt, unknown schema, ...)."""


def _finite_or_none(obj: Any) -> Any:
    # strict JSON has no NaN/inf: undefined metrics are stored as null
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # the half-written temp file is ours to remove; the target is untouched
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, record: dict) -> None:
    data = json.dumps(_finite_or_none(record), indent=1, allow_nan=False).encode()
    _atomic_write_bytes(path, lambda f: f.write(data))


def save_weights(path: Path, state_dict: dict) -> None:
    import torch

    cpu_state = {k: v.detach().cpu() for k, v in state_dict.items()}
    _atomic_write_bytes(path, lambda f: torch.save(cpu_state, f))


def read_record(path: Path) -> dict:
    """Read a metrics.json; raise RecordError naming the file if it is not usable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object")
    if record.get("schema") != SCHEMA_VERSION:
        raise RecordError(f"{path}: unknown schema version {record.get('schema')!r} (this is {SCHEMA_VERSION})")
    if record.get("status") not in STATUSES:
        raise RecordError(f"{path}: unknown status {record.get('status')!r}")
    return record


def config_hash(resolved_config: dict) -> str:
    """Hash of the resolved config, minus bookkeeping keys that do not change results."""
    relevant = {k: v for k, v in resolved_config.items() if k not in ("resume",)}
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
