"""Shared helpers: subprocess timing, process-tree memory sampling, medians, result rows.

Every figure that has a target is a comparison made inside one benchmark run (these
machines are shared and noisy): baseline and candidate are measured in alternation,
`repeats` times, and the median of the per-repeat ratios (or differences) is reported.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
PY = sys.executable
# tiny jobs: start-up and per-job costs dominate, training is a few milliseconds
TINY = ("trainer.epochs=1", "data.n_samples=300")


class BenchError(RuntimeError):
    """A benchmarked command failed (the message holds its command and output tail)."""


def child_env() -> dict:
    env = dict(os.environ)
    # the package under test is this checkout, even where it is not pip-installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("HYDRA_FULL_ERROR", "1")
    return env


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


@dataclass
class Timed:
    seconds: float
    maxrss_mb: float          # peak RSS of the largest process in the tree (wait4)
    tree_peak_mb: Optional[float] = None   # sampled peak of the summed RSS of the tree
    stdout: str = ""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run_cmd(args: Sequence[str], cwd: Path, timeout: float = 900, sample_tree: bool = False,
            env: Optional[dict] = None) -> Timed:
    """Run a command to completion; wall time and peak RSS. Raises BenchError on failure.

    Output goes to files, not pipes (a full pipe would stall the child and the clock)."""
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    out_path, err_path = cwd / f".bench_{os.getpid()}_out.txt", cwd / f".bench_{os.getpid()}_err.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(args), cwd=cwd, stdout=out, stderr=err, env=env or child_env())
        sampler = TreeSampler(proc.pid) if sample_tree else None
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if sampler is not None:
        sampler.stop()
    stdout, stderr = _read_text(out_path), _read_text(err_path)
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = "\n".join((stdout + "\n" + stderr).strip().splitlines()[-15:])
        raise BenchError(f"exit {proc.returncode} after {seconds:.1f}s: {shlex.join(args)}\n{tail}")
    return Timed(seconds, usage.ru_maxrss / 1024, sampler.peak_mb if sampler else None, stdout + stderr)


class TreeSampler:
    """Samples the summed RSS of a process and all its descendants every `interval` s
    (a scan of /proc costs a few ms of CPU: keep the interval coarse on 2 cores)."""

    def __init__(self, root: int, interval: float = 0.1):
        self.root, self.interval, self.peak_mb = root, interval, 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = _read_text(Path("/proc", entry, "stat"))
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    total += int(_read_text(Path("/proc", str(pid), "statm")).split()[1]) * self._page
                except (IndexError, ValueError):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def train_cmd(*overrides: str, config_name: Optional[str] = None, multirun: bool = False) -> list[str]:
    args = [PY, "-m", "collapse.train"]
    if config_name:
        args += ["--config-dir", str(SWEEPS), "--config-name", config_name]
    if multirun:
        args.append("-m")
    return args + list(overrides)


def job_records(sweep_dir: Path) -> list[dict]:
    """The metrics.json of every job directory of a sweep, in job order."""
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))
    return [json.loads((p / "metrics.json").read_text()) for p in jobs]


# ------------------------------------------------------------------ result rows

@dataclass
class Row:
    """One printed figure. `target` is (op, threshold) with op '<=' or '>='; None: reported only."""
    label: str
    value: Optional[float]
    unit: str = ""
    target: Optional[tuple[str, float]] = None
    note: str = ""
    quick = False           # class-wide: --quick figures come from tiny sizes, no target applies

    @property
    def status(self) -> str:
        if self.target is None:
            return "info"
        if Row.quick:
            return "n/a"
        if self.value is None or self.value != self.value:
            return "MISS"
        op, threshold = self.target
        ok = self.value <= threshold if op == "<=" else self.value >= threshold
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict:
        return {"label": self.label, "value": self.value, "unit": self.unit,
                "target": None if self.target is None else f"{self.target[0]} {self.target[1]:g}",
                "status": self.status, "note": self.note}


@dataclass
class Result:
    """What one benchmark hands back: figures (raw numbers for the JSON) and rows (the table)."""
    figures: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0

    def add(self, label: str, value, unit: str = "", target=None, note: str = "") -> None:
        self.rows.append(Row(label, None if value is None else float(value), unit, target, note))

    def as_dict(self) -> dict:
        return {"figures": self.figures, "rows": [r.as_dict() for r in self.rows], "notes": self.notes,
                "skipped": self.skipped, "error": self.error, "seconds": round(self.seconds, 2)}
