"""Build a sweep's summary: ranked cells, effects of the factors, paired differences.

    build_summary(sweep_dir) -> (summary dict, histories)    reads, writes nothing
    write_summary(summary, histories, out_dir)               summary.{csv,md,json}, plots
    summarize(sweep_dir)                                     both

Jobs come from collapse.summary.jobs, every statistic from collapse.summary.stats, the
tables from collapse.summary.report, the plots from collapse.summary.plots; a search
(Optuna) is summarised by collapse.summary.search. The sweep is a factorial design, seeds are its replicates:
- cell statistics over the cell's *result runs* (completed, stopped_collapse; see
  sweep_jobs.Job.best), each metric with its own n; failure rate = runs that ended
  without a result (diverged, failed, interrupted) / runs that ended.
- planned seeds of a cell: from the sweep's manifest.json when there is one, else the
  union of the seeds seen in the sweep. A cell with results for fewer than half its
  planned seeds is "incomplete": no verdict, ranked apart.
- effects: type II ANOVA with the pooled within-cell error, and estimated marginal
  means per level (stats.factorial_anova).
- paired differences against the baseline by seed, Holm-adjusted over the cells, with
  the smallest difference the seeds could detect (stats.detectable_difference).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from collapse.records import ManifestError, job_dirs, read_manifest
from collapse.summary import search, stats
from collapse.summary.jobs import (
    DIAGNOSES,
    EFFECT_KEYS,
    EFFECT_SPLITS,
    FAILURE_STATUSES,
    PAIRED_KEYS,
    RANK_METRIC,
    STAT_KEYS,
    STATES,
    Job,
    find_factors,
    level_key,
    manifest_jobs,
    read_jobs,
    same_level,
    sweep_info,
    unify_numeric_levels,
)
from collapse.summary.report import write_outputs
from collapse.summary.stats import describe

LEVELS = ("minimum", "good", "excellent")
SCHEMA = 2      # summary.json: 2 = EMMs and design-based eta² in main_effects, anova, power, failure rate


class SweepDirError(ValueError):
    """The sweep directory does not exist or holds no job directories."""


@dataclass(frozen=True)
class Thresholds:
    """Phase-1 verdict levels (minimum, good, excellent) and the variance-ratio cut-off of
    the study's "ratio below 10 %" column (`collapse`, its CLI name)."""
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


# ---------------------------------------------------------------- the design

def _label(factors: Sequence[str], cell: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(factors, cell)) or "(all jobs)"


def _cell_of(settings: dict, factors: Sequence[str]) -> tuple:
    return tuple(settings.get(f) for f in factors)


def _plan(jobs: list[Job], placed: list[Job], planned: Optional[list], factors: list, sweep_dir: Path):
    """The grid of cells, each cell's planned seeds, and the planned jobs that never
    started -> (levels, grid, planned_seeds, absent, problems, notes)."""
    notes: list[str] = []
    problems: list[tuple[int, str]] = []
    planned = planned or []
    cells_planned = [_cell_of(s, factors) for _, s, _, _ in planned]
    levels = {f: sorted({j.settings.get(f) for j in placed} | {c[i] for c in cells_planned if c[i] is not None},
                        key=level_key) for i, f in enumerate(factors)}
    observed = {_cell_of(j.settings, factors) for j in placed} | {c for c in cells_planned if None not in c}
    n_combinations = math.prod(len(levels[f]) for f in factors)
    full_grid = 2 * len(observed) >= n_combinations      # Hydra's basic sweeper runs the whole product
    if full_grid:
        grid = list(itertools.product(*(levels[f] for f in factors)))
    else:   # e.g. an optimising sweeper: no grid to infer missing jobs from
        grid = sorted(observed, key=lambda c: tuple(map(level_key, c)))
        notes.append(f"the cells are {len(observed)} of {n_combinations} factor combinations, not a grid: "
                     "missing jobs are not inferred from it")

    nums = {j.num for j in jobs if j.num is not None}
    seeds_by_cell: dict[tuple, set] = {c: set() for c in grid}
    if planned:
        for (_, _, _, seed), cell in zip(planned, cells_planned):
            if cell in seeds_by_cell:
                seeds_by_cell[cell].add(seed)
        absent = sorted(num for num, *_ in planned if num not in nums)
        if absent:
            problems.append((-1, f"{len(absent)} of {len(planned)} planned jobs never started: "
                                  f"{', '.join(map(str, absent))}"))
    else:   # no manifest: gaps in the job numbers and the grid's tail; every seed seen, everywhere
        seeds = {j.seed for j in placed}
        for cell in grid:
            seeds_by_cell[cell] = set(seeds) if full_grid else {j.seed for j in placed
                                                                 if _cell_of(j.settings, factors) == cell}
        # (only where jobs are numbered: without numbers there are no gaps to see)
        top = max(max(nums) + 1, len(grid) * len(seeds) if full_grid else 0) if nums else 0
        absent = [n for n in range(top) if n not in nums]
        problems += [(n, f"job {n}: {sweep_dir / str(n)}: missing (no job directory)") for n in absent]
        if absent:
            notes.append("no usable manifest.json: planned jobs inferred from the job numbers and the grid")
    for job in placed:      # a job the plan did not foresee still counts as planned
        seeds_by_cell.setdefault(_cell_of(job.settings, factors), set()).add(job.seed)
    return levels, grid, seeds_by_cell, absent, problems, notes


# ---------------------------------------------------------------- per cell

def _metric(best: dict, key: str) -> Optional[float]:
    split, name = key.split(".")
    return (best.get(split) or {}).get(name)


def _below(value: Optional[float], threshold: float) -> bool:
    """value < threshold, an undefined ratio (constant predictions) counting as below."""
    return not (isinstance(value, (int, float)) and value >= threshold)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and x.__class__ is not bool and math.isfinite(x)


def _paired(cell_runs: dict, base_runs: dict, key: str, effect: Optional[float]) -> dict:
    """Per-seed differences cell - baseline over the seeds with a value in both: mean,
    t-interval, p (paired t), and what the seeds can detect (80% power, alpha 0.05)."""
    shared = sorted(cell_runs.keys() & base_runs.keys(), key=level_key)
    diffs = [a - b for a, b in ((cell_runs[s][key], base_runs[s][key]) for s in shared)
             if _number(a) and _number(b)]
    t = stats.paired_t(diffs)
    return {"n_pairs": t["n"], "mean": t["mean"], "std": t["std"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
            "p": t["p"], "p_holm": math.nan, "detectable": stats.detectable_difference(t["std"], t["n"]),
            "effect": effect, "seeds_needed": stats.seeds_needed(effect, t["std"]) if effect else None}


def _cell_summary(cell_jobs: list, cell_runs: dict, base_runs: dict, planned_seeds: set, th: Thresholds,
                  split: str, effect: Optional[float], effects_split: str = "test") -> dict:
    """Counts, statistics, failure and collapse rates, diagnoses, verdict, differences vs baseline."""
    counts = dict.fromkeys(STATES, 0)
    for job in cell_jobs:
        counts[job.status] += 1
    have = {j.seed for j in cell_jobs}
    missing = sorted((s for s in planned_seeds if s not in have), key=level_key)
    counts["missing"] += len(missing)
    results = [r["_job"] for r in cell_runs.values()]
    metrics = {k: describe(r[k] for r in cell_runs.values()) for k in STAT_KEYS}
    failures = sum(counts[s] for s in FAILURE_STATUSES)
    labels = [j.diagnosis(split) for j in results]
    # collapse is the diagnosis' word only: a small ratio is also what honest no-signal
    # shrinkage looks like, so the study's "variance ratio below the cut-off" is its own column
    low_ratio = [_below(_metric(j.best, "val.variance_ratio"), th.collapse) for j in results]
    promised = [j for j in results if j.diagnosis("val") == "collapsed"]
    held = [j.recalibration_held() for j in promised]
    # the linear reference each run recorded (ridge on the same frames) and how far the run
    # trails it, on the effects split: headroom >> 0 is under-training, not a lack of signal
    refs = [((j.record.get("reference") or {}).get(effects_split) or {}).get("r2") for j in results]
    mine = [_metric(j.best, f"{effects_split}.r2") for j in results]
    headroom = [a - b for a, b in zip(refs, mine) if isinstance(a, (int, float)) and isinstance(b, (int, float))]
    n_planned = max(len(planned_seeds), len(results))
    incomplete = len(results) < n_planned / 2 or not results
    return {"jobs": sorted(j.num for j in cell_jobs if j.num is not None),
            "seeds": sorted(have, key=level_key), "missing_seeds": missing,
            "counts": counts, "n_results": len(results), "n_planned": n_planned, "incomplete": incomplete,
            "metrics": metrics,
            "failure_rate": failures / (failures + len(results)) if failures + len(results) else math.nan,
            "collapse_rate": labels.count("collapsed") / len(labels) if labels else math.nan,
            "ratio_below_cutoff_rate": sum(low_ratio) / len(low_ratio) if low_ratio else math.nan,
            "reference_r2": describe(refs), "headroom": describe(headroom),
            "diagnosis": {d: labels.count(d) for d in DIAGNOSES}, "diagnosis_split": split,
            "recalibration": {"collapsed_on_val": len(promised), "known": sum(h is not None for h in held),
                              "raised_test_r2": sum(h is True for h in held)},
            "verdict": "incomplete" if incomplete else th.verdict(metrics[f"{effects_split}.r2"]["mean"],
                                                                  metrics[f"{effects_split}.variance_ratio"]["mean"]),
            "vs_baseline": {k: _paired(cell_runs, base_runs, k, effect if k.endswith("r2") else None)
                            for k in PAIRED_KEYS},
            "warning": False, "warning_tentative": False}


def _choose_baseline(grid: list, factors: list, declared: Sequence[str]) -> tuple[tuple, str, list[str]]:
    """The baseline cell from sweep.baseline (`key=value` items), else the first cell."""
    if len(grid) < 2:
        return (grid[0] if grid else ()), "only cell", []
    wanted = dict(str(item).partition("=")[::2] for item in declared)
    matches = [c for c in grid if all(same_level(v, wanted[f]) for f, v in zip(factors, c) if f in wanted)]
    if not declared:
        return grid[0], "first cell", ["no sweep.baseline declared: baseline = first cell in sorted order"]
    if not matches:
        return grid[0], "first cell", [f"sweep.baseline {' '.join(declared)} matches no cell: "
                                       "baseline = first cell in sorted order"]
    notes = [f"sweep.baseline {' '.join(declared)} matches {len(matches)} cells: the first is the baseline"
             ] if len(matches) > 1 else []
    return matches[0], "sweep.baseline", notes


def _holm_and_warnings(cells: list, split: str = "test") -> tuple[list[str], list[str]]:
    """Holm-adjust each paired metric's p-values over the cells; flag "variance up, R²
    down" where both paired 95% intervals exclude 0 (a warning), or where only the
    means point that way (tentative, with n)."""
    others = [c for c in cells if not c["baseline"]]
    for key in PAIRED_KEYS:
        for c, p in zip(others, stats.holm([c["vs_baseline"][key]["p"] for c in others])):
            c["vs_baseline"][key]["p_holm"] = p
    warnings, tentative = [], []
    for c in others:
        r2, ratio = c["vs_baseline"][f"{split}.r2"], c["vs_baseline"][f"{split}.variance_ratio"]
        if not (r2["n_pairs"] and ratio["n_pairs"] and ratio["mean"] > 0 and r2["mean"] < 0):
            continue
        text = (f"{c['label']}: {split} variance ratio {_with_interval(ratio)} but {split} R² {_with_interval(r2)} "
                f"vs baseline (paired by seed, n {r2['n_pairs']})")
        if ratio["ci_low"] > 0 and r2["ci_high"] < 0:
            c["warning"] = True
            warnings.append(text + ": variance forced up on weak signal?")
        else:
            c["warning_tentative"] = True
            reason = "the intervals do not exclude 0" if math.isfinite(r2["ci_low"]) and math.isfinite(
                ratio["ci_low"]) else "one pair gives no interval"
            tentative.append(f"tentative: {text}: {reason}")
    return warnings, tentative


def _with_interval(d: dict) -> str:
    """`+0.120 [+0.050, +0.190]`, or the mean alone where one pair gives no interval."""
    if math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"]):
        return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    return f"{d['mean']:+.3f}"


# ---------------------------------------------------------------- effects of the factors

def _failures(factors: list, levels: dict, grid: list, cell_info: dict) -> tuple[list, list]:
    """Per factor: the failure rate at each level over every cell (incomplete ones too)
    and the test of whether it differs between levels (stats.failure_rate_test); where it
    does (p < stats.FAILURE_SCREEN_ALPHA) the factor's effects rest on the survivors only.
    -> (one dict per factor, notes)."""
    out, notes = [], []
    for i, f in enumerate(factors):
        failed = [sum(sum(cell_info[c]["counts"][s] for s in FAILURE_STATUSES) for c in grid if c[i] == v)
                  for v in levels[f]]
        ended = [x + sum(cell_info[c]["n_results"] for c in grid if c[i] == v) for x, v in zip(failed, levels[f])]
        test = stats.failure_rate_test(failed, ended)
        flagged = bool(math.isfinite(test["p"]) and test["p"] < stats.FAILURE_SCREEN_ALPHA)
        out.append({"failed": failed, "ended": ended, "rate": test["rates"], "test": test["test"], "p": test["p"],
                    "survivors_only": flagged})
        if flagged:
            rates = ", ".join(f"{v} {r:.2f}" for v, r in zip(levels[f], test["rates"]) if math.isfinite(r))
            name = "Fisher's exact" if test["test"] == "fisher" else "chi-squared"
            notes.append(f"{f} changes the failure rate ({rates}; {name} p {test['p']:.3g} < "
                         f"{stats.FAILURE_SCREEN_ALPHA:g}): its effects are computed on the survivors only, "
                         "a sample the failures chose")
    return out, notes


def _effects(factors: list, levels: dict, grid: list, runs: dict, cell_info: dict) -> tuple[list, dict, dict, list]:
    """Type II ANOVA and EMMs of each EFFECT_KEY over the result runs of the cells that are
    not incomplete, the failure-rate test of each factor ->
    (main_effects, anova, variance_explained, notes)."""
    nan = {k: math.nan for k in EFFECT_KEYS}
    if not factors:
        return [], {}, {"cells": nan, "within_cells": dict(nan)}, []
    fits, emms, notes = {}, {}, []
    # incomplete cells are listed apart from the ANOVA as from the ranking: a cell where
    # most runs failed is a sample of its survivors
    apart = [c for c in grid if cell_info[c]["incomplete"] and runs[c]]
    if apart:
        notes.append(f"incomplete cells left out of the ANOVA and EMMs: {'; '.join(_label(factors, c) for c in apart)}")
    counted = [c for c in grid if not cell_info[c]["incomplete"]]
    for key in EFFECT_KEYS:
        values = [(cell, r[key]) for cell in counted for r in runs[cell].values() if _number(r[key])]
        # a level with no value at all is left out of the model (its EMM is undefined):
        # kept, it would make every EMM of every factor inestimable
        used = [[v for v in levels[f] if any(cell[i] == v for cell, _ in values)] for i, f in enumerate(factors)]
        index = [{v: j for j, v in enumerate(u)} for u in used]
        idx = [tuple(index[i][v] for i, v in enumerate(cell)) for cell, _ in values]
        fit = fits[key] = stats.factorial_anova([y for _, y in values], idx, [len(u) for u in used])
        emms[key] = [[fit["emms"][i][index[i][v]] if v in index[i] else stats.undefined_emm(0)
                      for v in levels[f]] for i, f in enumerate(factors)]
        notes += [f"{key}: {n}" for n in fit["notes"]]
        notes += [f"{key}: {f}={v} has no values: left out of the model" for i, f in enumerate(factors)
                  for v in levels[f] if v not in index[i]]
        lost = [f"{f}={used[i][lv]}" for i, f in enumerate(factors) for lv, e in enumerate(fit["emms"][i])
                if not e["estimable"] and e["n"]]
        if lost and fit["empty_cells"]:
            empty = "; ".join(_label(factors, tuple(used[i][j] for i, j in enumerate(c))) for c in fit["empty_cells"])
            notes.append(f"{key}: no results in {empty}: the {fit['emm_model']} model the ANOVA tests cannot "
                         f"estimate the EMMs of {', '.join(lost)} (—), and no smaller model stands in for it")
    failures, failure_notes = _failures(factors, levels, grid, cell_info)
    notes += failure_notes
    terms = {key: {tuple(t["factors"]): t for t in fits[key]["terms"]} for key in EFFECT_KEYS}
    main = []
    for i, f in enumerate(factors):
        main.append({
            "factor": f,
            "levels": [{"value": v, **{key: emms[key][i][j] for key in EFFECT_KEYS}}
                       for j, v in enumerate(levels[f])],
            **{name: {key: terms[key].get((i,), {}).get(field, math.nan) for key in EFFECT_KEYS}
               for name, field in (("eta_squared", "eta_sq"), ("partial_eta_squared", "partial_eta_sq"),
                                   ("f", "f"), ("df", "df"), ("p", "p"))},
            "failures": failures[i], "survivors_only": failures[i]["survivors_only"]})
    anova = {key: {"terms": [{"term": " × ".join(factors[i] for i in t["factors"]),
                              **{k: v for k, v in t.items() if k != "factors"},
                              "factors": [factors[i] for i in t["factors"]]} for t in fits[key]["terms"]],
                   "error": fits[key]["error"], "ss_total": fits[key]["ss_total"], "n": fits[key]["n"],
                   "emm_model": fits[key]["emm_model"], "cells_left_out": [_label(factors, c) for c in apart]}
             for key in EFFECT_KEYS}
    explained = {"cells": {k: fits[k]["cells"]["share"] for k in EFFECT_KEYS},
                 "within_cells": {k: fits[k]["cells"]["within_share"] for k in EFFECT_KEYS}}
    return main, anova, explained, list(dict.fromkeys(notes))


def _split_disagreements(main: list, cells: list, split: str) -> list[str]:
    """Notes where the effects split and the other one disagree in sign: a main-effect
    contrast (level vs first level) or a cell's paired ΔR² vs baseline."""
    other = "val" if split == "test" else "test"

    def opposite(a, b) -> bool:
        return all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b)) and a * b < 0

    notes = []
    for e in main:
        for lvl in e["levels"][1:]:
            a, b = lvl[f"{split}.r2"]["vs_first"]["mean"], lvl[f"{other}.r2"]["vs_first"]["mean"]
            if opposite(a, b):
                notes.append(f"{e['factor']}={lvl['value']} vs {e['factor']}={e['levels'][0]['value']}: "
                             f"{split} R² EMM {a:+.3f} but {other} R² EMM {b:+.3f}: val and test disagree in sign")
    for c in cells:
        if c["baseline"]:
            continue
        a, b = c["vs_baseline"][f"{split}.r2"]["mean"], c["vs_baseline"][f"{other}.r2"]["mean"]
        if opposite(a, b):
            notes.append(f"{c['label']} vs baseline: paired {split} ΔR² {a:+.3f} but {other} ΔR² {b:+.3f}: "
                         "val and test disagree in sign")
    return notes


def _two_way_means(factors: list, levels: dict, grid: list, runs: dict) -> Optional[dict]:
    """Mean val and test R² over the first two factors' cells, unweighted over the other
    factors' cells (each cell's mean counts once); undefined where one of those cells has
    no mean (an average of the others would be a different quantity): the heatmap and the
    interaction plot."""
    if len(factors) < 2:
        return None
    rows, cols = levels[factors[0]], levels[factors[1]]

    def means(key: str) -> list:
        cell_means = {c: describe(r[key] for r in runs[c].values())["mean"] for c in grid}
        by_pair: dict[tuple, list] = {}
        for c in itertools.product(*(levels[f] for f in factors)):
            by_pair.setdefault(c[:2], []).append(cell_means.get(c, math.nan))

        def mean(a, b):
            xs = by_pair.get((a, b), [])
            return float(np.mean(xs)) if xs and all(math.isfinite(x) for x in xs) else math.nan

        return [[mean(a, b) for b in cols] for a in rows]

    return {"rows": factors[0], "cols": factors[1], "row_levels": rows, "col_levels": cols,
            "mean_val_r2": means("val.r2"), "mean_test_r2": means("test.r2")}


# ---------------------------------------------------------------- the summary

def build_summary(sweep_dir, thresholds=None, histories: bool = False, diagnosis_split: str = "val",
                  effect: Optional[float] = None, effects_split: str = "test") -> tuple[dict, dict]:
    """Read every job of `sweep_dir` and return (summary dict, histories by cell label;
    empty unless `histories`). Writes nothing. Raises SweepDirError naming the path.
    `effects_split`: the split whose metrics rank the cells and give the verdicts and
    warnings (test: it chose nothing); both splits' effects are computed."""
    if effects_split not in EFFECT_SPLITS:
        raise ValueError(f"effects_split={effects_split!r} is invalid: must be one of {', '.join(EFFECT_SPLITS)}")
    sweep_dir = Path(sweep_dir)
    th = Thresholds(**thresholds) if isinstance(thresholds, dict) else thresholds or Thresholds()
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    dirs = job_dirs(sweep_dir)
    if not dirs:
        raise SweepDirError(f"{sweep_dir}: holds no job directories")

    jobs = read_jobs(dirs, histories)
    try:
        manifest, manifest_problem = read_manifest(sweep_dir), None
    except ManifestError as e:     # not "no manifest": the jobs it planned are inferred below
        manifest, manifest_problem = None, f"{e}: planned jobs inferred from the job numbers and the grid"
    planned = manifest_jobs(manifest)
    info = sweep_info(jobs)
    placed = [j for j in jobs if j.settings is not None]
    notes = unify_numeric_levels([j.settings for j in placed] + [s for _, s, _, _ in planned or []])
    declared = [str(k) for k in info.get("factors") or []]
    factors, factor_notes = find_factors(jobs, declared)
    notes += factor_notes
    has_manifest = planned is not None or manifest_problem is not None
    if search.is_search(sweep_dir, jobs, factors, has_manifest):   # --- a search: no grid
        problems = [f"job {j.num if j.num is not None else j.path.name}: {p}" for j in jobs for p in j.problems]
        return search.build(sweep_dir, jobs, factors, info, notes, problems), {}
    levels, grid, planned_seeds, absent, numbered, plan_notes = _plan(jobs, placed, planned, factors, sweep_dir)
    notes += plan_notes
    by_cell: dict[tuple, list[Job]] = {c: [] for c in grid}
    for job in placed:
        by_cell.setdefault(_cell_of(job.settings, factors), []).append(job)

    numbered += [(j.num if j.num is not None else math.inf,
                  f"job {j.num if j.num is not None else j.path.name}: {p}") for j in jobs for p in j.problems]
    problems = [p for _, p in sorted(numbered, key=lambda item: item[0])]
    problems[:0] = [manifest_problem] if manifest_problem else []
    problems += [f"cell {_label(factors, cell)}: no jobs at all" for cell in grid if not by_cell[cell]]

    # per-run best metrics of the result runs, by seed (for pairing)
    runs: dict[tuple, dict] = {}
    for cell, cell_jobs in by_cell.items():
        runs[cell] = {}
        for job in sorted(cell_jobs, key=lambda j: (j.num is None, j.num or 0)):
            if job.best is None:
                continue
            if job.seed in runs[cell]:
                problems.append(f"job {job.num}: seed {job.seed} of cell {_label(factors, cell)} "
                                "has an earlier job too: the later one is used")
            runs[cell][job.seed] = {**{k: _metric(job.best, k) for k in STAT_KEYS}, "_job": job}

    baseline, baseline_source, baseline_notes = _choose_baseline(grid, factors, info.get("baseline") or [])
    notes += baseline_notes
    cells = [{"label": _label(factors, cell), "settings": dict(zip(factors, cell)), "baseline": cell == baseline,
              **_cell_summary(by_cell[cell], runs[cell], runs.get(baseline, {}), planned_seeds.get(cell, set()), th,
                              diagnosis_split, effect, effects_split)} for cell in grid]
    warnings, tentative = _holm_and_warnings(cells, effects_split)
    rank_key = f"{effects_split}.{RANK_METRIC}"
    ranked = sorted(cells, key=lambda c: (c["incomplete"], -c["metrics"][rank_key]["mean"]
                                          if math.isfinite(c["metrics"][rank_key]["mean"]) else math.inf))
    for rank, c in enumerate(ranked, 1):
        c["rank"] = None if c["incomplete"] else rank
    main, anova, explained, effect_notes = _effects(factors, levels, grid, runs,
                                                    {cell: c for cell, c in zip(grid, cells)})
    if len(grid) > 1 and not runs.get(baseline):
        notes.append(f"the baseline {_label(factors, baseline)} has no results: no paired differences (—)")
    notes += effect_notes + tentative + _split_disagreements(main, cells, effects_split)

    by_status = dict.fromkeys(STATES, 0)
    for job in jobs:
        by_status[job.status] += 1
    by_status["missing"] += len(absent)
    summary = {
        "schema": SCHEMA, "sweep_dir": str(sweep_dir), "sweep_name": info.get("name"),
        "thresholds": {"r2": list(th.r2), "ratio": list(th.ratio), "collapse": th.collapse, "levels": list(LEVELS)},
        "jobs": {"total": len(jobs) + len(absent), "by_status": by_status, "absent": absent,
                 "planned": len(planned) if planned is not None else None,
                 "manifest": True if planned is not None else ("unreadable" if manifest_problem else False)},
        "factors": [{"key": f, "levels": levels[f], "declared": f in declared} for f in factors],
        "seeds": sorted({s for seeds in planned_seeds.values() for s in seeds}, key=level_key),
        "baseline": {"label": _label(factors, baseline), "settings": dict(zip(factors, baseline)),
                     "source": baseline_source},
        "diagnosis_split": diagnosis_split, "effects_split": effects_split, "effect": effect,
        "cells": ranked, "main_effects": main, "anova": anova, "variance_explained": explained,
        "heatmap": _two_way_means(factors, levels, grid, runs),
        "notes": notes, "problems": problems, "warnings": warnings, "files": [],
    }
    cell_histories = {_label(factors, cell): [r["_job"].record.get("history") or [] for r in runs[cell].values()]
                      for cell in grid} if histories else {}
    return summary, cell_histories


def write_summary(summary: dict, histories: dict, out_dir, plots: bool = True) -> list[str]:
    """Write the plots (when `plots`) and summary.{csv,md,json} into `out_dir`; raises
    OSError when it cannot. Returns the file names."""
    if summary.get("kind") == "search":                  # --- a search (collapse.summary.search)
        return search.write(summary, out_dir, plots)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["files"] = []
    if plots:
        from collapse.summary.plots import write_plots

        written, plot_notes = write_plots(summary, histories, out_dir)
        summary["files"] += [p.name for p in written]
        summary["notes"] += plot_notes
    from collapse.summary.html import write_html

    summary["files"].append(write_html(summary, out_dir))      # after the plots: it embeds them
    write_outputs(summary, out_dir)
    return summary["files"]


def summarize(sweep_dir, thresholds=None, plots: bool = True, out=None, diagnosis_split: str = "val",
              effect: Optional[float] = None, effects_split: str = "test") -> dict:
    """build_summary, then write its files into `out` (default: the sweep directory).
    `thresholds`: a Thresholds, a dict of its fields, or None for the Phase-1 defaults."""
    summary, histories = build_summary(sweep_dir, thresholds, plots, diagnosis_split, effect, effects_split)
    write_summary(summary, histories, out if out is not None else sweep_dir, plots)
    return summary
