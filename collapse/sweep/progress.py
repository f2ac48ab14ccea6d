"""The sweep's console: one line per finished job and a running count with an ETA.

    job 6  frames=3 λ=0.5 seed=0: completed, test R² 0.912, val R² 0.934, healthy | 7/12 done, ~20 s left

The launching process prints these as its workers report each job (collapse.sweep.engine);
the jobs' per-epoch lines go to their own log files only (collapse.sweep.job.console_for_job).
On a terminal a tqdm bar stays under the lines; into a file or a pipe only the plain lines go.
No line is wider than LINE_WIDTH.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from collapse import records
from collapse.labels import cell_name, fit

LINE_WIDTH = 120


def _r2(record: dict, split: str) -> str:
    value = ((record.get("best") or {}).get(split) or {}).get("r2")
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _diagnosis(record: dict) -> str:
    d = record.get("diagnosis") or {}
    labels = {split: (d.get(split) or {}).get("label") for split in ("val", "test") if isinstance(d.get(split), dict)}
    if not labels:
        return "no diagnosis"
    if len(set(labels.values())) == 1:
        return str(next(iter(labels.values())))
    return ", ".join(f"{split} {label}" for split, label in labels.items())


def job_line(job_num: int, overrides: Sequence[str], record: Optional[dict], lost: str = "") -> str:
    """What one finished job says: its number, cell, status, test and val R², diagnosis."""
    head = f"job {job_num:<2} {cell_name(overrides)}:"
    if record is None:
        return f"{head} {lost or 'no metrics.json'}"
    status = record.get("status", "?")
    if status in records.RESULT_STATUSES:
        if record.get("stop_reason") == "pruned":        # a search's pruner stopped it
            status += " (pruned)"
        return f"{head} {status}, test R² {_r2(record, 'test')}, val R² {_r2(record, 'val')}, {_diagnosis(record)}"
    reason = record.get("error") or record.get("stop_reason") or ""
    return f"{head} {status}" + (f" ({reason})" if reason else "")


def eta(done: int, total: Optional[int], elapsed_s: float) -> str:
    """`7/12 done, ~20 s left` (rate so far times what is left); `7 done` without a total."""
    if not total:
        return f"{done} done"
    if done >= total:
        return f"{done}/{total} done in {_duration(elapsed_s)}"
    if done == 0:
        return f"0/{total} done"
    return f"{done}/{total} done, ~{_duration(elapsed_s / done * (total - done))} left"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class SweepProgress:
    """Counts the sweep's finished jobs and prints a line for each. `total`: the jobs the
    sweep will run (None when unknown); `fixed`: overrides every job has (left out of the
    lines). `bar`: None decides by the stream (a terminal gets a tqdm bar unless
    COLLAPSE_NO_BAR is set)."""

    def __init__(self, total: Optional[int], stream=None, bar: Optional[bool] = None, fixed: Sequence[str] = ()):
        self.total, self.done = total, 0
        self.fixed = set(fixed)         # the command line's fixed overrides: the same in every job, not shown
        self.stream = stream if stream is not None else sys.stdout
        self.started = time.monotonic()
        if bar is None:
            bar = _is_terminal(self.stream) and not os.environ.get("COLLAPSE_NO_BAR")
        self.bar = None
        if bar:
            try:
                from tqdm import tqdm
            except ImportError:         # tqdm is a dependency; a trimmed install still gets the lines
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="job", file=self.stream, leave=False, dynamic_ncols=True)

    def job_done(self, job_num: int, overrides: Sequence[str], job_dir: Optional[str | Path], lost: str = "") -> str:
        """Report a finished job (its metrics.json in `job_dir`); returns the line printed."""
        record = None
        if job_dir is not None:
            try:
                record = records.read_record(Path(job_dir) / records.METRICS_FILE)
            except (FileNotFoundError, records.RecordError):
                record = None
        self.done += 1
        count = eta(self.done, self.total, time.monotonic() - self.started)
        line = job_line(job_num, [o for o in overrides if o not in self.fixed], record, lost)
        line = fit(line, LINE_WIDTH - len(count) - 3) + " | " + count
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
        else:
            print(line, file=self.stream, flush=True)
        return line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
