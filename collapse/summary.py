"""Summarise a sweep directory: ranked cells, main effects, paired differences, plots.

    python -m collapse.summary SWEEP_DIR [--thresholds r2=0,0.3,0.5 ratio=0.4,0.7,0.85 collapse=0.1]
                               [--no-plots]

Reads every job directory with collapse.sweep_jobs (a job that failed, is missing,
still running, corrupt or of an unknown schema is reported on its own line and the rest
is summarised), writes summary.{csv,md,json} with collapse.summary_report and
summary_*.png with collapse.plots into the sweep directory, atomically.

Statistics, over the *result runs* of a cell (status completed or stopped_collapse;
diverged runs are counted but kept out, see sweep_jobs.Job.best), on the best epoch:
- mean = sum(x) / n,  std = sqrt(sum((x - mean)^2) / (n - 1)),
  95% CI = mean +- t_{0.975, n-1} * std / sqrt(n)  (Student t; NaN when n < 2).
- collapse rate = fraction of runs with val variance ratio < `collapse` or diagnosis
  label "collapsed".
- verdict: the highest of minimum / good / excellent whose thresholds the cell's mean
  val R² *and* mean val variance ratio both exceed; else "fail".
- main effect of a factor: marginal mean (and CI) per level over all runs at that level;
  eta^2 = SS_between / SS_total, SS_between = sum_l n_l (mean_l - mean)^2,
  SS_total = sum_i (x_i - mean)^2 over the runs - the share of run-to-run variance of
  the metric that the factor's levels explain.
- paired difference of a cell against the baseline: d_s = x_cell,s - x_baseline,s for
  each seed s with a result in both; mean, t-CI and the number of pairs.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from collapse.summary_report import render_text, write_outputs
from collapse.sweep_jobs import (DIAGNOSES, EFFECT_KEYS, PAIRED_KEYS, STAT_KEYS, STATES, Job, job_dirs,
                                 read_job, sweep_info)
from collapse.sweep_jobs import read_metrics  # noqa: F401  (collapse.summary's API before the split)

LEVELS = ("minimum", "good", "excellent")

# t_{0.975, df} for df = 1..30 (checked against scipy.stats.t.ppf to 1e-8)
_T975 = (12.70620474, 4.30265273, 3.18244631, 2.77644511, 2.57058184, 2.44691185,
         2.36462425, 2.30600414, 2.26215716, 2.22813885, 2.20098516, 2.17881283,
         2.16036866, 2.14478669, 2.13144955, 2.11990530, 2.10981558, 2.10092204,
         2.09302405, 2.08596345, 2.07961384, 2.07387307, 2.06865761, 2.06389856,
         2.05953855, 2.05552944, 2.05183052, 2.04840714, 2.04522964, 2.04227246)


class SweepDirError(ValueError):
    """The sweep directory does not exist or holds no job directories."""


# ---------------------------------------------------------------- statistics

def t975(df: int) -> float:
    """Student t quantile t_{0.975, df}: exact table for df <= 30, beyond it the
    Cornish-Fisher expansion t = z + g1/df + g2/df^2 + g3/df^3 + g4/df^4 around
    z = 1.95996 (Abramowitz & Stegun 26.7.5; error < 1e-7 for df > 30)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def describe(values) -> dict:
    """n, mean, sample std (n - 1) and the 95% t-interval of the finite values."""
    xs = _finite(values)
    n = len(xs)
    mean = math.fsum(xs) / n if n else math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    half = t975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def eta_squared(groups: Sequence[Sequence[float]]) -> float:
    """SS_between / SS_total of the finite values, grouped (NaN if SS_total is 0)."""
    groups = [g for g in (_finite(g) for g in groups) if g]
    xs = [x for g in groups for x in g]
    if len(xs) < 2:
        return math.nan
    grand = math.fsum(xs) / len(xs)
    ss_total = math.fsum((x - grand) ** 2 for x in xs)
    ss_between = math.fsum(len(g) * (math.fsum(g) / len(g) - grand) ** 2 for g in groups)
    return ss_between / ss_total if ss_total > 0 else math.nan


# ---------------------------------------------------------------- thresholds

@dataclass(frozen=True)
class Thresholds:
    """Phase-1 verdict levels (minimum, good, excellent) and the collapse cut-off."""
    r2: tuple = (0.0, 0.3, 0.5)
    ratio: tuple = (0.40, 0.70, 0.85)
    collapse: float = 0.1

    def __post_init__(self):
        for name in ("r2", "ratio"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or list(value) != sorted(value):
                raise ValueError(f"thresholds {name}={value} is invalid: must be 3 increasing numbers "
                                 "(minimum, good, excellent)")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "collapse", float(self.collapse))

    def verdict(self, r2: float, ratio: float) -> str:
        if not (math.isfinite(r2) and math.isfinite(ratio)):
            return "n/a"
        passed = [lvl for lvl, r, v in zip(LEVELS, self.r2, self.ratio) if r2 > r and ratio > v]
        return passed[-1] if passed else "fail"

    @classmethod
    def parse(cls, items: Sequence[str]) -> "Thresholds":
        """From CLI items `r2=A,B,C`, `ratio=A,B,C`, `collapse=X` (ValueError names the item)."""
        kwargs: dict[str, Any] = {}
        for item in items:
            key, _, value = item.partition("=")
            try:
                numbers = tuple(float(v) for v in value.split(","))
            except ValueError:
                numbers = ()
            ok = (key == "collapse" and len(numbers) == 1) or \
                (key in ("r2", "ratio") and len(numbers) == 3 and list(numbers) == sorted(numbers))
            if not ok:
                raise ValueError(f"--thresholds {item!r} is invalid: expected r2=MIN,GOOD,EXCELLENT or "
                                 "ratio=MIN,GOOD,EXCELLENT (3 increasing numbers) or collapse=X")
            kwargs[key] = numbers[0] if key == "collapse" else numbers
        return cls(**kwargs)


# ---------------------------------------------------------------- factors

def _level_key(value: Optional[str]):
    """Numbers in numeric order, before strings; a missing value first."""
    if value is None:
        return (0, 0.0, "")
    try:
        return (1, float(value), value)
    except ValueError:
        return (2, 0.0, value)


def _same_level(a: Optional[str], b: Optional[str]) -> bool:
    """Equal as written or as numbers ("0" and "0.0")."""
    try:
        return a == b or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def find_factors(jobs: Sequence[Job], declared: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keys whose values vary across the jobs -> (factors, notes).

    Order: `declared` (sweep.factors) first, then varying override keys, then varying
    group choices. A group choice that no override names and whose value follows from
    the factors already kept (one an `experiment=` option sets, say) adds no cells and
    is left out."""
    known = [j for j in jobs if j.settings is not None]
    keys = sorted(set().union(*(j.settings for j in known))) if known else []
    values = {k: [j.settings.get(k) for j in known] for k in keys}
    varying = {k for k in keys if len(set(values[k])) > 1}
    overridden = set().union(*(j.override_keys for j in known)) if known else set()
    notes = [f"sweep.factors names {k}, which does not vary across the jobs: not a factor"
             for k in declared if k not in varying]
    candidates = [k for k in declared if k in varying]
    rest = varying - set(candidates)
    candidates += sorted(rest & overridden) + sorted(rest - overridden)
    factors: list[str] = []
    for key in candidates:
        seen: dict[tuple, Optional[str]] = {}
        follows = bool(factors) and key not in overridden and key not in declared and all(
            seen.setdefault(tuple(values[f][i] for f in factors), values[key][i]) == values[key][i]
            for i in range(len(known)))
        if follows:
            notes.append(f"{key} varies but follows from {', '.join(factors)}: not a separate factor")
            continue
        if declared and key not in declared:
            notes.append(f"{key} varies but is not in sweep.factors: treated as a factor")
        factors.append(key)
    return factors, notes


# ---------------------------------------------------------------- the summary

def _label(factors: Sequence[str], cell: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(factors, cell)) or "(all jobs)"


def _metric(best: dict, key: str) -> Optional[float]:
    split, name = key.split(".")
    return (best.get(split) or {}).get(name)


def _below(value: Optional[float], threshold: float) -> bool:
    """value < threshold, an undefined ratio (constant predictions) counting as below."""
    return not (isinstance(value, (int, float)) and value >= threshold)


def _paired(cell_runs: dict, base_runs: dict, key: str) -> dict:
    """Per-seed differences cell - baseline over the seeds with a value in both."""
    shared = sorted(cell_runs.keys() & base_runs.keys(), key=_level_key)
    diffs = [cell_runs[s][key] - base_runs[s][key] for s in shared
             if len(_finite([cell_runs[s][key], base_runs[s][key]])) == 2]
    stats = describe(diffs)
    return {"n_pairs": stats["n"], "mean": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]}


def _choose_baseline(grid: list, factors: list, declared: Sequence[str]) -> tuple[tuple, str, list[str]]:
    """The baseline cell from sweep.baseline (`key=value` items), else the first cell."""
    if len(grid) < 2:
        return (grid[0] if grid else ()), "only cell", []
    wanted = dict(str(item).partition("=")[::2] for item in declared)
    matches = [c for c in grid if all(_same_level(v, wanted[f]) for f, v in zip(factors, c) if f in wanted)]
    if not declared:
        return grid[0], "first cell", ["no sweep.baseline declared: baseline = first cell in sorted order"]
    if not matches:
        return grid[0], "first cell", [f"sweep.baseline {' '.join(declared)} matches no cell: "
                                       "baseline = first cell in sorted order"]
    notes = [f"sweep.baseline {' '.join(declared)} matches {len(matches)} cells: the first is the baseline"
             ] if len(matches) > 1 else []
    return matches[0], "sweep.baseline", notes


def _cell_summary(cell_jobs: list, cell_runs: dict, base_runs: dict, seeds: list, th: Thresholds) -> dict:
    """Counts, statistics, collapse rate, diagnoses, verdict, differences vs baseline."""
    counts = dict.fromkeys(STATES, 0)
    for job in cell_jobs:
        counts[job.status] += 1
    counts["missing"] += len(set(seeds) - {j.seed for j in cell_jobs})   # seeds with no job in this cell
    results = [r["_job"] for r in cell_runs.values()]
    stats = {k: describe(r[k] for r in cell_runs.values()) for k in STAT_KEYS}
    labels = [(j.record.get("diagnosis") or {}).get("label") for j in results]
    collapsed = [label == "collapsed" or _below(_metric(j.best, "val.variance_ratio"), th.collapse)
                 for j, label in zip(results, labels)]
    have = {j.seed for j in cell_jobs}
    return {"jobs": sorted(j.num for j in cell_jobs), "seeds": sorted(have, key=_level_key),
            "missing_seeds": [s for s in seeds if s not in have],
            "counts": counts, "n_results": len(results),
            "metrics": stats,
            "collapse_rate": sum(collapsed) / len(collapsed) if collapsed else math.nan,
            "diagnosis": {d: labels.count(d) for d in DIAGNOSES},
            "verdict": th.verdict(stats["val.r2"]["mean"], stats["val.variance_ratio"]["mean"]),
            "vs_baseline": {k: _paired(cell_runs, base_runs, k) for k in PAIRED_KEYS}, "warning": False}


def _variance_up_r2_down(cells: list) -> list[str]:
    """Flag cells that raised the val variance ratio vs the baseline but lowered val R²
    (paired means over shared seeds; the difference of cell means when none are shared)."""
    base = next((c["metrics"] for c in cells if c["baseline"]), None)
    warnings = []
    for c in cells:
        if c["baseline"] or base is None:
            continue
        d_r2, d_ratio = c["vs_baseline"]["val.r2"], c["vs_baseline"]["val.variance_ratio"]
        paired = d_r2["n_pairs"] > 0 and d_ratio["n_pairs"] > 0
        dr2 = d_r2["mean"] if paired else c["metrics"]["val.r2"]["mean"] - base["val.r2"]["mean"]
        dratio = (d_ratio["mean"] if paired else
                  c["metrics"]["val.variance_ratio"]["mean"] - base["val.variance_ratio"]["mean"])
        if dratio > 0 and dr2 < 0:
            c["warning"] = True
            warnings.append(f"{c['label']}: val variance ratio up {dratio:+.3f} but val R² down {dr2:+.3f} "
                            f"vs baseline ({'paired by seed' if paired else 'cell means'}): "
                            "variance forced up on weak signal?")
    return warnings


def _main_effects(factors: list, levels: dict, all_runs: list) -> list[dict]:
    """Per factor: marginal mean and CI per level, and eta^2 (share of run-to-run variance)."""
    effects = []
    for i, f in enumerate(factors):
        groups = [[r for cell, r in all_runs if cell[i] == lvl] for lvl in levels[f]]
        effects.append({
            "factor": f,
            "levels": [{"value": lvl, **{k: describe(r[k] for r in g) for k in EFFECT_KEYS}}
                       for lvl, g in zip(levels[f], groups)],
            "eta_squared": {k: eta_squared([[r[k] for r in g] for g in groups]) for k in EFFECT_KEYS}})
    return effects


def summarize(sweep_dir, thresholds=None, plots: bool = True) -> dict:
    """Read every job of `sweep_dir`, write summary.{csv,md,json} (and PNGs when `plots`)
    into it and return the summary dict. `thresholds`: a Thresholds, a dict of its
    fields, or None for the Phase-1 defaults. Raises SweepDirError naming the path."""
    sweep_dir = Path(sweep_dir)
    th = Thresholds(**thresholds) if isinstance(thresholds, dict) else thresholds or Thresholds()
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    dirs = job_dirs(sweep_dir)
    if not dirs:
        raise SweepDirError(f"{sweep_dir}: holds no job directories (numeric subdirectories)")

    jobs = [read_job(d, histories=plots) for d in dirs]
    info = sweep_info(jobs)
    declared = [str(k) for k in info.get("factors") or []]
    factors, notes = find_factors(jobs, declared)
    placed = [j for j in jobs if j.settings is not None]

    # levels, the full grid of cells (Hydra sweeps are cartesian), the seeds (replicates)
    levels = {f: sorted({j.settings.get(f) for j in placed}, key=_level_key) for f in factors}
    seeds = sorted({j.seed for j in placed}, key=_level_key)
    observed = {tuple(j.settings.get(f) for f in factors) for j in placed}
    n_combinations = math.prod(len(levels[f]) for f in factors)
    full_grid = 2 * len(observed) >= n_combinations     # Hydra's basic sweeper runs the whole product
    if full_grid:
        grid = list(itertools.product(*(levels[f] for f in factors)))
    else:   # e.g. an optimising sweeper: no grid to infer missing jobs from
        grid = sorted(observed, key=lambda c: tuple(map(_level_key, c)))
        notes.append(f"the cells are {len(observed)} of {n_combinations} factor combinations, not a grid: "
                     "missing jobs are not inferred from it")
    by_cell: dict[tuple, list[Job]] = {c: [] for c in grid}
    for job in placed:
        by_cell[tuple(job.settings.get(f) for f in factors)].append(job)

    # jobs that never got a directory: gaps in the numbering, and the grid's tail
    nums = {j.num for j in jobs}
    absent = [n for n in range(max(max(nums) + 1, len(grid) * len(seeds) if full_grid else 0)) if n not in nums]
    numbered = [(j.num, p) for j in jobs for p in j.problems]
    numbered += [(n, f"{sweep_dir / str(n)}: missing (no job directory)") for n in absent]
    problems = [f"job {n}: {p}" for n, p in sorted(numbered, key=lambda item: item[0])]
    problems += [f"cell {_label(factors, cell)}: no jobs at all" for cell in grid if not by_cell[cell]]

    # per-run best metrics of the result runs, by seed (for pairing)
    runs: dict[tuple, dict] = {}
    for cell, cell_jobs in by_cell.items():
        runs[cell] = {}
        for job in sorted(cell_jobs, key=lambda j: j.num):
            if job.best is None:
                continue
            if job.seed in runs[cell]:
                problems.append(f"job {job.num}: seed {job.seed} of cell {_label(factors, cell)} "
                                "has an earlier job too: the later one is used")
            runs[cell][job.seed] = {**{k: _metric(job.best, k) for k in STAT_KEYS}, "_job": job}

    baseline, baseline_source, baseline_notes = _choose_baseline(grid, factors, info.get("baseline") or [])
    notes += baseline_notes
    cells = [{"label": _label(factors, cell), "settings": dict(zip(factors, cell)), "baseline": cell == baseline,
              **_cell_summary(by_cell[cell], runs[cell], runs.get(baseline, {}), seeds, th)} for cell in grid]
    warnings = _variance_up_r2_down(cells)
    ranked = sorted(cells, key=lambda c: -c["metrics"]["val.r2"]["mean"]
                    if math.isfinite(c["metrics"]["val.r2"]["mean"]) else math.inf)
    for rank, c in enumerate(ranked, 1):
        c["rank"] = rank

    all_runs = [(cell, r) for cell in grid for r in runs[cell].values()]
    cells_eta = {k: eta_squared([[r[k] for r in runs[c].values()] for c in grid]) for k in EFFECT_KEYS}
    heatmap = None
    if len(factors) >= 2:
        rows, cols = levels[factors[0]], levels[factors[1]]
        heatmap = {"rows": factors[0], "cols": factors[1], "row_levels": rows, "col_levels": cols,
                   "mean_val_r2": [[describe(r["val.r2"] for cell, r in all_runs if cell[:2] == (a, b))["mean"]
                                    for b in cols] for a in rows]}
    by_status = dict.fromkeys(STATES, 0)
    for job in jobs:
        by_status[job.status] += 1
    by_status["missing"] += len(absent)

    summary = {
        "schema": 1, "sweep_dir": str(sweep_dir), "sweep_name": info.get("name"),
        "thresholds": {"r2": list(th.r2), "ratio": list(th.ratio), "collapse": th.collapse, "levels": list(LEVELS)},
        "jobs": {"total": len(jobs) + len(absent), "by_status": by_status, "absent": absent},
        "factors": [{"key": f, "levels": levels[f], "declared": f in declared} for f in factors],
        "seeds": seeds,
        "baseline": {"label": _label(factors, baseline), "settings": dict(zip(factors, baseline)),
                     "source": baseline_source},
        "cells": ranked, "main_effects": _main_effects(factors, levels, all_runs),
        "variance_explained": {"cells": cells_eta, "within_cells": {k: 1 - v for k, v in cells_eta.items()}},
        "heatmap": heatmap, "notes": notes, "problems": problems, "warnings": warnings, "files": [],
    }
    if plots:
        from collapse.plots import write_plots

        histories = {_label(factors, cell): [r["_job"].record.get("history") or [] for r in runs[cell].values()]
                     for cell in grid}
        written, plot_notes = write_plots(summary, histories, sweep_dir)
        summary["files"] += [p.name for p in written]
        notes += plot_notes
    write_outputs(summary, sweep_dir)
    return summary


# ---------------------------------------------------------------- command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="collapse-summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (job dirs 0, 1, ...)")
    parser.add_argument("--thresholds", nargs="+", action="extend", default=[], metavar="KEY=VALUES",
                        help="r2=0,0.3,0.5  ratio=0.4,0.7,0.85  collapse=0.1 (the defaults)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    args = parser.parse_args(argv)
    try:
        thresholds = Thresholds.parse(args.thresholds)
    except ValueError as e:
        parser.error(str(e))
    try:
        summary = summarize(args.sweep_dir, thresholds, plots=not args.no_plots)
    except SweepDirError as e:
        print(f"collapse: error: {e}", file=sys.stderr)
        return 2
    try:
        for problem in summary["problems"]:
            print(f"problem: {problem}", file=sys.stderr)
        print(render_text(summary), end="")
        print(f"wrote {', '.join(summary['files'])} in {args.sweep_dir}")
        sys.stdout.flush()      # a closed pipe must show here, not in the flush at exit
    except BrokenPipeError:
        # the reader left early (`| head`); the files are written. Send what is still
        # buffered to devnull so the flush at exit does not raise again (Python docs,
        # "Note on SIGPIPE"), and exit 1 as they do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
