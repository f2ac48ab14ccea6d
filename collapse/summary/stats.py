"""Statistics for a sweep: pure functions on numbers and arrays, nothing about jobs.

- `describe`: n, mean, sample SD and the 95% Student-t interval of the finite values.
- `eta_squared`: one-way share of variance, NaN when all values are equal (a tolerance).
- `factorial_anova`: the sweep as a factorial design with seeds as replicates: type II
  sums of squares for every main effect and two-factor interaction the design can
  estimate, F and p against the pooled within-cell error, eta² and partial eta², and
  estimated marginal means (EMMs) per level with model-based 95% intervals.
- `holm`: Holm's step-down adjustment of a family of p-values.
- `paired_power`, `detectable_difference`, `seeds_needed`: power of a two-sided paired t
  test from the noncentral t distribution.

Quantiles and tail areas come from scipy.special (stdtrit, fdtrc, nctdtr are the
functions scipy.stats' t, f and nct call; importing scipy.stats costs ~0.6 s more).
Undefined is NaN, never 0: one value has no SD and no interval.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Optional, Sequence

import numpy as np
from scipy import special

ALPHA = 0.05
POWER = 0.80
# Values whose spread is below this fraction of their size are "all equal": floating-point
# noise (0.1 + 0.2 vs 0.3) must not become a share of variance of 1.0.
REL_TOL = 1e-9


def finite(values) -> np.ndarray:
    """The finite numbers among `values` (None, NaN, inf and non-numbers left out)."""
    return np.array([float(v) for v in values
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)], dtype=float)


def t_quantile(q: float, df: float) -> float:
    """Student t quantile t_{q, df} (NaN for df < 1: no interval without a variance)."""
    return float(special.stdtrit(df, q)) if df >= 1 else math.nan


def t975(df: float) -> float:
    """t_{0.975, df}: the 95% two-sided critical value."""
    return t_quantile(0.975, df)


def _negligible(ss: float, x: np.ndarray) -> bool:
    """A sum of squares that is floating-point noise next to the values' size."""
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    return ss <= x.size * (REL_TOL * max(scale, 1e-300)) ** 2


def all_equal(values) -> bool:
    """The finite values are one number up to REL_TOL of their size."""
    x = finite(values)
    return x.size > 0 and float(np.ptp(x)) <= REL_TOL * max(float(np.max(np.abs(x))), 1e-300)


def describe(values) -> dict:
    """n, mean, sample SD (n - 1) and the 95% t-interval of the finite values."""
    x = finite(values)
    n = int(x.size)
    mean = float(math.fsum(x) / n) if n else math.nan
    std = float(math.sqrt(math.fsum((x - mean) ** 2) / (n - 1))) if n > 1 else math.nan
    if n > 1 and all_equal(x):
        std = 0.0           # equal values: no spread, not floating-point noise
    half = t975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def eta_squared(groups: Sequence[Sequence[float]]) -> float:
    """SS_between / SS_total of the finite values, grouped; NaN when the values are all
    equal (SS_total is zero or noise)."""
    gs = [g for g in (finite(g) for g in groups) if g.size]
    if not gs or sum(g.size for g in gs) < 2:
        return math.nan
    x = np.concatenate(gs)
    grand = x.mean()
    ss_total = float(((x - grand) ** 2).sum())
    if all_equal(x) or _negligible(ss_total, x):
        return math.nan
    ss_between = float(sum(g.size * (g.mean() - grand) ** 2 for g in gs))
    return min(ss_between / ss_total, 1.0)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and
    does not count as a test."""
    p = [float(v) if v is not None else math.nan for v in pvalues]
    order = sorted((i for i, v in enumerate(p) if math.isfinite(v)), key=lambda i: p[i])
    m, running, out = len(order), 0.0, [math.nan] * len(p)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------- power of a paired t test

def paired_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t test of n differences with SD `sd`
    to detect a mean difference `effect`: P(|T| > t_{1-alpha/2, n-1}) with T noncentral
    t (df n - 1, noncentrality effect / sd * sqrt(n))."""
    if n < 2 or not (sd > 0) or not math.isfinite(effect):
        return math.nan
    df, nc = n - 1, abs(effect) / sd * math.sqrt(n)
    crit = t_quantile(1 - alpha / 2, df)
    return float(1 - special.nctdtr(df, nc, crit) + special.nctdtr(df, nc, -crit))


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean difference that n pairs with SD `sd` detect with `power`
    (two-sided, level alpha); NaN when n < 2 or the SD is undefined or zero."""
    if n < 2 or not isinstance(sd, (int, float)) or not (sd > 0) or not math.isfinite(sd):
        return math.nan
    return sd * _detectable_d(int(n), alpha, power)


@functools.lru_cache(maxsize=None)
def _detectable_d(n: int, alpha: float, power: float) -> float:
    """The standardized difference (mean / SD) that n pairs detect: the power depends on
    nothing else, so one bisection serves every cell with n pairs."""
    lo, hi = 0.0, 1.0
    while paired_power(hi, 1.0, n, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return math.nan
    for _ in range(60):        # bisection on a monotone function, to ~1e-18 of the bracket
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_power(mid, 1.0, n, alpha) < power else (lo, mid)
    return hi


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                 max_n: int = 100_000) -> Optional[int]:
    """The fewest pairs (seeds) with which a paired t test detects `effect` with `power`;
    None when the SD is undefined or zero, or more than max_n would be needed."""
    if not (sd > 0) or not math.isfinite(sd) or not effect:
        return None
    lo, hi = 2, 2
    while paired_power(effect, sd, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            return None
    while lo < hi:             # the smallest n in [lo, hi] with enough power
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if paired_power(effect, sd, mid, alpha) < power else (lo, mid)
    return lo


# ---------------------------------------------------------------- the factorial model

def _coding(n_levels: int) -> np.ndarray:
    """Sum-to-zero (deviation) coding: level i -> row i of an L x (L - 1) matrix."""
    if n_levels < 2:
        return np.zeros((n_levels, 0))
    return np.vstack([np.eye(n_levels - 1), -np.ones((1, n_levels - 1))])


def _term_columns(codes: list[np.ndarray], idx: np.ndarray, term: tuple) -> np.ndarray:
    """Design columns of a term (a tuple of factor positions) for rows of level indices."""
    cols = np.ones((idx.shape[0], 1))
    for f in term:
        block = codes[f][idx[:, f]]
        cols = (cols[:, :, None] * block[:, None, :]).reshape(idx.shape[0], -1)
    return cols


def _design(codes, idx, terms) -> np.ndarray:
    return np.hstack([np.ones((idx.shape[0], 1)), *(_term_columns(codes, idx, t) for t in terms)])


def _fit(X: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(residual sum of squares, rank) of the least-squares fit of y on X."""
    if X.shape[1] == 0:
        return float((y ** 2).sum()), 0
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    return float(resid @ resid), int(rank)


def _contains(term: tuple, sub: tuple) -> bool:
    return set(sub) <= set(term)


def factorial_anova(y, levels, n_levels: Sequence[int], alpha: float = ALPHA) -> dict:
    """Type II ANOVA and EMMs of a factorial design.

    y: (n,) responses (finite). levels: (n, k) integer level index of each run for each
    factor. n_levels: the number of levels of each factor (the grid, empty cells included).

    Model: main effects plus every two-factor interaction, each tested by type II: its
    sum of squares is RSS(terms that do not contain it) - RSS(the same plus it), which
    depends neither on the order of the factors nor on the imbalance. The error is the
    pooled within-cell variance (the residual of the cell-means model, df = n - cells with
    runs); when no cell has two runs, the residual of the largest model that leaves
    degrees of freedom (main effects + interactions, else main effects) stands in for it.
    An interaction is left out when the design cannot estimate it (df 0).

    EMM of a level: the model's cell means averaged, unweighted, over the other factors'
    cells. With every cell observed this is the mean of the cell means (cell-means model);
    with empty cells it is the prediction of the main-effects + interactions model (or
    the main-effects model when that cannot estimate it). Its 95% interval is
    EMM +- t_{0.975, df_error} * sqrt(MS_error * c (X'X)^+ c').

    Returns {"n", "ss_total", "error": {source, df, ss, ms}, "terms": [{factors, df, ss,
    ms, f, p, eta_sq, partial_eta_sq}], "cells": {df, ss, share, within_share},
    "emms": [per factor: [{n, mean, se, ci_low, ci_high, vs_first: {mean, se, ci_low,
    ci_high}}]], "emm_model", "notes"}; vs_first is the level's EMM minus the first level's.
    """
    y = np.asarray(y, dtype=float)
    k, n = len(n_levels), len(y)
    idx = np.asarray(levels, dtype=int).reshape(n, k)
    n_levels = [int(v) for v in n_levels]
    codes = [_coding(L) for L in n_levels]
    notes: list[str] = []
    out = {"n": n, "ss_total": math.nan, "error": {"source": None, "df": 0, "ss": math.nan, "ms": math.nan},
           "terms": [], "cells": {"df": 0, "ss": math.nan, "share": math.nan, "within_share": math.nan},
           "emms": [[undefined_emm(int((idx[:, f] == lv).sum())) for lv in range(n_levels[f])] for f in range(k)],
           "emm_model": None, "notes": notes}
    if n < 2:
        return out
    grand = float(y.mean())
    ss_total = float(((y - grand) ** 2).sum())
    if all_equal(y) or _negligible(ss_total, y):
        ss_total = 0.0
    out["ss_total"] = ss_total

    # the cell-means model: its residual is the pooled within-cell error
    cell_keys, cell_of = np.unique(idx, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    n_cells = len(cell_keys)
    counts = np.bincount(cell_of, minlength=n_cells)
    cell_means = np.bincount(cell_of, weights=y, minlength=n_cells) / counts
    ss_within = float(((y - cell_means[cell_of]) ** 2).sum())
    df_within = n - n_cells
    ss_cells = max(ss_total - ss_within, 0.0)
    out["cells"] = {"df": n_cells - 1, "ss": ss_cells,
                    "share": ss_cells / ss_total if ss_total > 0 else math.nan,
                    "within_share": ss_within / ss_total if ss_total > 0 and df_within > 0 else math.nan}

    # Every model here is constant within a cell, so it is fitted to the cell means
    # weighted by sqrt(n): RSS = SS_within + the weighted residual of the cell means (the
    # same numbers as a fit to the runs, on 60 rows instead of 1,000).
    root_n = np.sqrt(counts)
    y_cells = cell_means * root_n

    def weighted(rows: np.ndarray, terms) -> np.ndarray:
        return _design(codes, rows, terms) * root_n[:, None]

    def fit(terms) -> tuple[float, int]:
        rss, rank = _fit(weighted(cell_keys, list(terms)), y_cells)
        return ss_within + rss, rank

    mains = [(f,) for f in range(k) if n_levels[f] > 1]
    pairs = [(a, b) for (a,), (b,) in itertools.combinations(mains, 2)]
    rss_full, rank_full = fit(mains + pairs)
    if df_within > 0:
        model, error = mains + pairs, {"source": "within cells", "df": df_within, "ss": ss_within}
    elif n - rank_full > 0:
        model, error = mains + pairs, {"source": "residual (no cell has two runs)", "df": n - rank_full,
                                       "ss": rss_full}
        notes.append("no cell has two runs: the error is the residual of the model, "
                     "which assumes the interactions it leaves out are zero")
    else:
        rss_main, rank_main = fit(mains)
        model = mains
        error = {"source": "residual of the main-effects model (no cell has two runs)", "df": n - rank_main,
                 "ss": rss_main}
        notes.append("no cell has two runs: the error is the residual of the main-effects model, "
                     "which takes the interactions for noise")
    error["ms"] = error["ss"] / error["df"] if error["df"] > 0 else math.nan
    if error["df"] > 0 and _negligible(error["ss"], y):
        error["ss"], error["ms"] = 0.0, 0.0
    out["error"] = error

    # type II: each term against the model of every term that does not contain it
    cache: dict[tuple, tuple[float, int]] = {}

    def cached_fit(terms: tuple) -> tuple[float, int]:
        if terms not in cache:
            cache[terms] = fit(terms)
        return cache[terms]

    for term in model:
        reduced = tuple(t for t in model if not _contains(t, term))
        rss_r, rank_r = cached_fit(reduced)
        rss_f, rank_f = cached_fit(reduced + (term,))
        df = rank_f - rank_r
        if df == 0:
            if len(term) == 2:
                continue        # not estimable from these cells
        ss = max(rss_r - rss_f, 0.0)
        if _negligible(ss, y):
            ss = 0.0
        ms = ss / df if df else math.nan
        f_stat = ms / error["ms"] if error["df"] > 0 and error["ms"] > 0 else math.nan
        p = float(special.fdtrc(df, error["df"], f_stat)) if math.isfinite(f_stat) else math.nan
        out["terms"].append({
            "factors": list(term), "df": df, "ss": ss, "ms": ms, "f": f_stat, "p": p,
            "eta_sq": ss / ss_total if ss_total > 0 else math.nan,
            "partial_eta_sq": ss / (ss + error["ss"]) if (ss + error["ss"]) > 0 else math.nan})

    out["emms"], out["emm_model"] = _emms(codes, idx, cell_keys, y_cells, root_n, n_levels, mains, pairs, error,
                                          alpha, notes)
    return out


def undefined_emm(n: int) -> dict:
    nan = {"mean": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    return {"n": n, **nan, "vs_first": dict(nan)}


def _emms(codes, idx, cell_keys, y_cells, root_n, n_levels, mains, pairs, error, alpha, notes):
    """EMMs per factor level (see factorial_anova), from the first model that estimates
    them; fitted to the sqrt(n)-weighted cell means (X'X is the same as over the runs)."""
    k = idx.shape[1]
    grid = np.array(list(itertools.product(*(range(L) for L in n_levels))), dtype=int).reshape(-1, k)
    full_grid = len(cell_keys) == len(grid)
    crit = t_quantile(1 - alpha / 2, error["df"]) if error["df"] > 0 else math.nan
    candidates = []
    if full_grid:
        candidates.append(("cell means", None))
    candidates += [("main effects + two-factor interactions", mains + pairs), ("main effects", mains)]
    for name, terms in candidates:
        if terms is None:   # every cell observed: the cell-means model, exactly
            cell_index = {tuple(c): i for i, c in enumerate(grid)}
            X = np.zeros((len(cell_keys), len(grid)))
            X[np.arange(len(cell_keys)), [cell_index[tuple(r)] for r in cell_keys]] = 1.0
            G = np.eye(len(grid))
        else:
            X, G = _design(codes, cell_keys, terms), _design(codes, grid, terms)
        X = X * root_n[:, None]
        pinv = np.linalg.pinv(X)
        beta = pinv @ y_cells
        xtx_pinv = pinv @ pinv.T
        projector = pinv @ X
        result, ok = [], True
        def estimate(c, beta=beta, xtx_pinv=xtx_pinv):       # this model's estimate of c @ beta
            mean = float(c @ beta)
            se = math.sqrt(max(float(c @ xtx_pinv @ c), 0.0) * error["ms"]) if error["df"] > 0 else math.nan
            return {"mean": mean, "se": se, "ci_low": mean - crit * se, "ci_high": mean + crit * se}

        for f in range(k):
            rows = []


            first = G[grid[:, f] == 0].mean(axis=0)
            for lv in range(n_levels[f]):
                c = G[grid[:, f] == lv].mean(axis=0)
                if not np.allclose(c @ projector, c, atol=1e-8):
                    ok = False
                    break
                # the level's EMM, and its difference from the first level's (a contrast
                # of the same model: its interval is not that of two separate EMMs)
                rows.append({"n": int((idx[:, f] == lv).sum()), **estimate(c),
                             "vs_first": estimate(c - first)})
            if not ok:
                break
            result.append(rows)
        if ok:
            if name != "cell means":
                notes.append(f"some cells have no runs: the EMMs are predictions of the {name} model")
            return result, name
    notes.append("the EMMs cannot be estimated from the cells that have runs")
    return [[undefined_emm(int((idx[:, f] == lv).sum())) for lv in range(n_levels[f])] for f in range(k)], None


def paired_t(differences) -> dict:
    """describe() of the finite differences plus the two-sided one-sample t test of mean 0
    (`p`; NaN with fewer than 2 differences or when they are all equal: no noise to test
    against)."""
    out = describe(differences)
    out["p"] = math.nan
    x = finite(differences)
    if out["n"] > 1 and not all_equal(x) and out["std"] > 0:
        t = out["mean"] / (out["std"] / math.sqrt(out["n"]))
        out["p"] = float(2 * special.stdtr(out["n"] - 1, -abs(t)))
    return out
