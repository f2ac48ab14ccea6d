"""A sweep as a pandas DataFrame, one row per job (pip install "collapse[notebook]").

    from collapse.summary import load_runs
    runs = load_runs("outputs/sweeps/phase4/<date_time>")
"""
from __future__ import annotations

import math
from pathlib import Path

from collapse.records import job_dirs
from collapse.summary.build import SweepDirError, _metric
from collapse.summary.jobs import STAT_KEYS, find_factors, read_jobs, sweep_info, unify_numeric_levels


def load_runs(sweep_dir):
    """A pandas DataFrame of a sweep, one row per job directory: `job`, the factors (one
    column each, numbers where every value is one), `seed`, `status`, the best epoch's
    val and test metrics (`val_r2`, `test_variance_ratio`, ...; NaN unless the run is a
    result), `diagnosis_val`, `diagnosis_test`, `monitor_value`, `epochs_run`, `path`.
    pandas is imported here only (pip install "collapse[notebook]")."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    jobs = read_jobs(job_dirs(sweep_dir), histories=False)
    placed = [j for j in jobs if j.settings is not None]
    unify_numeric_levels([j.settings for j in placed])
    factors, _ = find_factors(jobs, [str(k) for k in sweep_info(jobs).get("factors") or []])
    rows = []
    for job in sorted(jobs, key=lambda j: (j.num is None, j.num or 0)):
        record = job.record or {}
        best = job.best or {}
        row = {"job": job.num, **{f: (job.settings or {}).get(f) for f in factors},
               "seed": int(job.seed) if job.seed is not None and str(job.seed).isdigit() else job.seed,
               "status": job.status}
        for key in STAT_KEYS:
            row[key.replace(".", "_")] = _metric(best, key) if best else math.nan
        row.update({"diagnosis_val": job.diagnosis("val"), "diagnosis_test": job.diagnosis("test"),
                    "monitor_value": record.get("monitor_value") if job.best else math.nan,
                    "epochs_run": record.get("epochs_run"), "path": str(job.path)})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["job", *factors, "seed", "status",
                                        *(k.replace(".", "_") for k in STAT_KEYS), "diagnosis_val",
                                        "diagnosis_test", "monitor_value", "epochs_run", "path"])
    for f in factors:       # "0.5" -> 0.5 where the whole column is numbers
        numeric = pd.to_numeric(frame[f], errors="coerce")
        if numeric.notna().sum() == frame[f].notna().sum():
            frame[f] = numeric
    return frame


