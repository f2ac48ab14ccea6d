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

import contextlib
import functools
import itertools
import math
from typing import Optional, Sequence

import numpy as np
from scipy import special

ALPHA = 0.05
POWER = 0.80
# The failure-rate test is a screen for a confounder, not a finding: missing a factor that
# chooses which runs survive costs a false effect, a false alarm only a flag to read. So it
# flags at 0.10, as screens for confounding do, and reports its p beside the flag.
FAILURE_SCREEN_ALPHA = 0.10
# Values whose spread is below this fraction of their size are "all equal": floating-point
# noise (0.1 + 0.2 vs 0.3) must not become a share of variance of 1.0.
REL_TOL = 1e-9


def _finite_list(values) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and v.__class__ is not bool and math.isfinite(v)]


def finite(values) -> np.ndarray:
    """The finite numbers among `values` (None, NaN, inf and non-numbers left out)."""
    return np.array(_finite_list(values), dtype=float)


@functools.lru_cache(maxsize=4096)
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


def _equal_list(x: list[float]) -> bool:
    return bool(x) and max(x) - min(x) <= REL_TOL * max(max(map(abs, x)), 1e-300)


def all_equal(values) -> bool:
    """The finite values are one number up to REL_TOL of their size."""
    return _equal_list(_finite_list(values))


def describe(values) -> dict:
    """n, mean, sample SD (n - 1) and the 95% t-interval of the finite values. (Plain
    Python: a summary calls this ~14 times a cell, on a few values, where numpy's per-call
    overhead was most of the cost.)"""
    x = _finite_list(values)
    n = len(x)
    mean = math.fsum(x) / n if n else math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1)) if n > 1 else math.nan
    if n > 1 and _equal_list(x):
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

def _chi2_density(v: np.ndarray, df: float) -> np.ndarray:
    half = df / 2
    return np.exp(special.xlogy(half - 1, v) - v / 2 - special.gammaln(half) - half * math.log(2))


def nct_cdf(t: float, df: float, nc: float) -> float:
    """P(T <= t) for T noncentral t (df, noncentrality nc). special.nctdtr returns NaN at
    large noncentrality (df 1, nc 7.6 already; df 4, nc 58 in the upper tail), exactly
    where a power bisection at 2 pairs looks; there it is the integral over V ~ chi²(df)
    of Phi(t sqrt(V / df) - nc), which is what T = (Z + nc) / sqrt(V / df) means."""
    value = float(special.nctdtr(df, nc, t))
    if math.isfinite(value):
        return value
    from scipy import integrate  # ~0.3 s to import: only where nctdtr fails

    def integrand(v):
        return float(special.ndtr(t * math.sqrt(v / df) - nc) * _chi2_density(np.array(v), df))

    # split at the chi² mode region so quad sees where the mass is
    edges = [0.0, max(df - 2, 0.0) + 1e-12, df + 10 * math.sqrt(2 * df) + 10, math.inf]
    total = sum(integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-10, limit=200)[0]
                for a, b in zip(edges, edges[1:]))
    return min(max(total, 0.0), 1.0)


def paired_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t test of n differences with SD `sd`
    to detect a mean difference `effect`: P(|T| > t_{1-alpha/2, n-1}) with T noncentral
    t (df n - 1, noncentrality effect / sd * sqrt(n))."""
    if n < 2 or not (sd > 0) or not math.isfinite(effect) or not math.isfinite(sd):
        return math.nan
    df, nc = n - 1, abs(effect) / sd * math.sqrt(n)
    crit = t_quantile(1 - alpha / 2, df)
    return float(1 - nct_cdf(crit, df, nc) + nct_cdf(-crit, df, nc))


def _reached(power_value: float, power: float) -> bool:
    """A NaN power is not "reached": the old bisection read NaN as reached and answered
    5.47 SDs at 2 pairs where 11.55 are needed."""
    return math.isfinite(power_value) and power_value >= power


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean difference that n pairs with SD `sd` detect with `power`
    (two-sided, level alpha); NaN when n < 2 or the SD is undefined or zero."""
    if n < 2 or not isinstance(sd, (int, float)) or not (sd > 0) or not math.isfinite(sd):
        return math.nan
    return sd * _detectable_d(int(n), alpha, power)


@functools.lru_cache(maxsize=None)
def _detectable_d(n: int, alpha: float, power: float) -> float:
    """The standardized difference (mean / SD) that n pairs detect: the power depends on
    nothing else, so one bisection serves every cell with n pairs. The answer errs high
    (the upper end of the final bracket), never low."""
    lo, hi = 0.0, 1.0
    while not _reached(paired_power(hi, 1.0, n, alpha), power):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return math.nan
    for _ in range(60):        # bisection on a monotone function, to ~1e-18 of the bracket
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _reached(paired_power(mid, 1.0, n, alpha), power) else (mid, hi)
    return hi


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                 max_n: int = 100_000) -> Optional[int]:
    """The fewest pairs (seeds) with which a paired t test detects `effect` with `power`;
    None when the SD is undefined or zero, or more than max_n would be needed. The answer
    is checked: its power is reached, the power of one pair fewer is not."""
    if not isinstance(effect, (int, float)) or not isinstance(sd, (int, float)) or not (sd > 0) \
            or not math.isfinite(sd) or not effect or not math.isfinite(effect):
        return None
    lo, hi = 2, 2
    while not _reached(paired_power(effect, sd, hi, alpha), power):
        lo, hi = hi, hi * 2
        if hi > max_n:
            return None
    while lo < hi:             # the smallest n in [lo, hi] with enough power
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _reached(paired_power(effect, sd, mid, alpha), power) else (mid + 1, hi)
    while lo <= max_n and not _reached(paired_power(effect, sd, lo, alpha), power):
        lo += 1                # never too few, whatever the bisection assumed about monotonicity
    return lo if lo <= max_n else None


# ---------------------------------------------------------------- failures as an outcome

def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact_2x2(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p of Fisher's exact test of the table [[a, b], [c, d]]: the probability,
    given the margins, of every table no more likely than this one (scipy.stats'
    definition, with its relative tolerance 1 + 1e-7 for ties)."""
    row, col, total = a + b, a + c, a + b + c + d
    lo, hi = max(0, col - (total - row)), min(row, col)

    def log_p(x: int) -> float:
        return _log_choose(col, x) + _log_choose(total - col, row - x) - _log_choose(total, row)

    observed = log_p(a)
    p = math.fsum(math.exp(log_p(x)) for x in range(lo, hi + 1) if log_p(x) <= observed + math.log1p(1e-7))
    return min(p, 1.0)


def failure_rate_test(failed: Sequence[int], ended: Sequence[int]) -> dict:
    """Does the failure rate differ between levels? `failed[i]` of `ended[i]` runs at level
    i ended without a result. Fisher's exact test with 2 levels, Pearson's chi-squared
    (df levels - 1) with more; levels where no run ended are left out. p is NaN when
    there is nothing to compare (fewer than 2 levels with runs, or no failure, or nothing
    but failures). -> {"test", "p", "rates"}."""
    rates = [f / e if e else math.nan for f, e in zip(failed, ended)]
    rows = [(int(f), int(e) - int(f)) for f, e in zip(failed, ended) if e]
    out = {"test": None, "p": math.nan, "rates": rates}
    n_failed, n_ok = sum(f for f, _ in rows), sum(r for _, r in rows)
    if len(rows) < 2 or not n_failed or not n_ok:
        return out
    if len(rows) == 2:
        (a, b), (c, d) = rows
        out.update(test="fisher", p=fisher_exact_2x2(a, b, c, d))
        return out
    total = n_failed + n_ok
    stat = sum((obs - (f + r) * col / total) ** 2 / ((f + r) * col / total)
               for f, r in rows for obs, col in ((f, n_failed), (r, n_ok)))
    out.update(test="chi2", p=float(special.chdtrc(len(rows) - 1, stat)))
    return out


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


def _contains(term: tuple, sub: tuple) -> bool:
    return set(sub) <= set(term)


class _CellModels:
    """Least squares of every sub-model of one design, from the cells' sufficient
    statistics: each model here is constant within a cell, so its RSS is SS_within plus
    the residual of the cell means weighted by their counts. The weighted design of the
    largest model (cells x p) and its Gram matrix are built once; a sub-model is a set of
    its columns, solved on p x p (Cholesky when the columns are independent, else an
    eigendecomposition that also gives the rank). 1,000 cells: a few ms a model, where a
    least-squares refit on the cells x p design took ~300 ms. The factorizations depend
    on the design only, so the next metric over the same cells reuses them."""

    _last: Optional["_CellModels"] = None

    @classmethod
    def of(cls, codes, cell_keys, counts, terms) -> "_CellModels":
        key = (tuple(len(c) for c in codes), cell_keys.tobytes(), counts.tobytes(), tuple(terms))
        if cls._last is None or cls._last.key != key:
            cls._last = cls(codes, cell_keys, counts, terms)
            cls._last.key = key
        return cls._last

    def __init__(self, codes, cell_keys, counts, terms):
        self.terms = list(terms)
        self.root_n = np.sqrt(counts)
        blocks = [np.ones((len(cell_keys), 1))] + [_term_columns(codes, cell_keys, t) for t in self.terms]
        self.columns, start = {}, 1
        for t, block in zip(self.terms, blocks[1:]):
            self.columns[t] = np.arange(start, start + block.shape[1])
            start += block.shape[1]
        self.X = np.hstack(blocks) * self.root_n[:, None]
        self.gram = self.X.T @ self.X
        self.solved: dict[bytes, tuple] = {}

    def cols(self, terms) -> np.ndarray:
        return np.concatenate([np.array([0])] + [self.columns[t] for t in terms])

    def solve(self, cols: np.ndarray) -> tuple[np.ndarray, int, Optional[np.ndarray]]:
        """(generalized inverse of the Gram block, rank, null-space basis or None)."""
        key = cols.tobytes()
        if key not in self.solved:
            self.solved[key] = self._solve(self.gram[np.ix_(cols, cols)])
        return self.solved[key]

    @staticmethod
    def _solve(g: np.ndarray) -> tuple[np.ndarray, int, Optional[np.ndarray]]:
        try:
            chol = np.linalg.cholesky(g)
            # Cholesky succeeds on nearly singular blocks too: trust it only when well conditioned
            if np.all(np.diag(chol) ** 2 > 1e-10 * np.max(np.diag(g))):
                inv = np.linalg.inv(chol)
                return inv.T @ inv, len(g), None
        except np.linalg.LinAlgError:
            pass
        vals, vecs = np.linalg.eigh(g)
        keep = vals > 1e-10 * max(float(vals.max()), 1e-300)
        return (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T, int(keep.sum()), vecs[:, ~keep]

    def rss(self, terms, y: np.ndarray) -> tuple[float, int]:
        """(weighted residual SS of the cell means y, rank) of the model of `terms`; y is
        centred (the intercept is in every model, and a centred response keeps the
        residuals free of the cancellation of a large mean)."""
        cols = self.cols(terms)
        ginv, rank, _ = self.solve(cols)
        yw = y * self.root_n
        X = self.X[:, cols]
        resid = yw - X @ (ginv @ (X.T @ yw))
        return float(resid @ resid), rank


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
    An interaction is left out when the design cannot estimate it (df 0). Everything is
    computed from the cells' counts, means and within-cell SS.

    EMM of a level: the model's cell means averaged, unweighted, over the other factors'
    cells, from the model the ANOVA tests: with every cell observed and a within-cell
    error, the cell-means model (the mean of the cell means); otherwise the model of the
    tested terms. An EMM (or a difference) that model cannot estimate, because it needs a
    cell with no runs, is NaN with `estimable` False: never a number from a smaller model.
    Its 95% interval is EMM +- t_{0.975, df_error} * sqrt(MS_error * c (X'WX)^+ c').

    Returns {"n", "ss_total", "error": {source, df, ss, ms}, "terms": [{factors, df, ss,
    ms, f, p, eta_sq, partial_eta_sq}], "cells": {df, ss, share, within_share},
    "emms": [per factor: [{n, mean, se, ci_low, ci_high, estimable, vs_first: {mean, se,
    ci_low, ci_high, estimable}}]], "emm_model", "empty_cells" (level-index tuples of the
    grid's cells without runs), "notes"}; vs_first is the level's EMM minus the first level's.
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
           "emm_model": None, "empty_cells": [], "notes": notes}
    if n < 2:
        return out
    grand = float(y.mean())
    ss_total = float(((y - grand) ** 2).sum())
    if all_equal(y) or _negligible(ss_total, y):
        ss_total = 0.0
    out["ss_total"] = ss_total

    # the cells' sufficient statistics: counts, means, within-cell SS
    cell_keys, cell_of = np.unique(idx, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    n_cells = len(cell_keys)
    counts = np.bincount(cell_of, minlength=n_cells).astype(float)
    cell_means = np.bincount(cell_of, weights=y, minlength=n_cells) / counts
    ss_within = float(np.bincount(cell_of, weights=(y - cell_means[cell_of]) ** 2, minlength=n_cells).sum())
    df_within = n - n_cells
    ss_cells = max(ss_total - ss_within, 0.0)
    out["cells"] = {"df": n_cells - 1, "ss": ss_cells,
                    "share": ss_cells / ss_total if ss_total > 0 else math.nan,
                    "within_share": ss_within / ss_total if ss_total > 0 and df_within > 0 else math.nan}
    n_grid = math.prod(n_levels)
    if n_cells < n_grid:
        seen = {tuple(c) for c in cell_keys.tolist()}
        out["empty_cells"] = [c for c in itertools.product(*(range(L) for L in n_levels)) if c not in seen]

    mains = [(f,) for f in range(k) if n_levels[f] > 1]
    pairs = [(a, b) for (a,), (b,) in itertools.combinations(mains, 2)]
    models = _CellModels.of(codes, cell_keys, counts, mains + pairs)
    centred = cell_means - float((counts * cell_means).sum() / counts.sum())
    cache: dict[tuple, tuple[float, int]] = {}

    def fit(terms: tuple) -> tuple[float, int]:
        """(RSS over the runs, rank) of the model of `terms`."""
        if terms not in cache:
            with _one_blas_thread():
                rss, rank = models.rss(terms, centred)
            cache[terms] = (ss_within + rss, rank)
        return cache[terms]

    rss_full, rank_full = fit(tuple(mains + pairs))
    if df_within > 0:
        model, error = mains + pairs, {"source": "within cells", "df": df_within, "ss": ss_within}
    elif n - rank_full > 0:
        model, error = mains + pairs, {"source": "residual (no cell has two runs)", "df": n - rank_full,
                                       "ss": rss_full}
        notes.append("no cell has two runs: the error is the residual of the model, "
                     "which assumes the interactions it leaves out are zero")
    else:
        rss_main, rank_main = fit(tuple(mains))
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
    tested = []
    for term in model:
        reduced = tuple(t for t in model if not _contains(t, term))
        rss_r, rank_r = fit(reduced)
        rss_f, rank_f = fit(reduced + (term,))
        df = rank_f - rank_r
        if df == 0 and len(term) == 2:
            continue            # not estimable from these cells
        tested.append(term)
        ss = max(rss_r - rss_f, 0.0)
        if _negligible(ss, y):
            ss = 0.0
        # a term with no degrees of freedom has no share of anything: undefined, not 0
        ms = ss / df if df else math.nan
        f_stat = ms / error["ms"] if df and error["df"] > 0 and error["ms"] > 0 else math.nan
        p = float(special.fdtrc(df, error["df"], f_stat)) if math.isfinite(f_stat) else math.nan
        out["terms"].append({
            "factors": list(term), "df": df, "ss": ss, "ms": ms, "f": f_stat, "p": p,
            "eta_sq": ss / ss_total if df and ss_total > 0 else math.nan,
            "partial_eta_sq": ss / (ss + error["ss"]) if df and (ss + error["ss"]) > 0 else math.nan})

    crit = t_quantile(1 - alpha / 2, error["df"]) if error["df"] > 0 else math.nan
    if n_cells == n_grid and df_within > 0:
        out["emm_model"] = "cell means"
        out["emms"] = _cell_mean_emms(idx, cell_keys, counts, cell_means, n_levels, error, crit)
    else:
        out["emm_model"] = "main effects + two-factor interactions" if any(len(t) == 2 for t in tested) \
            else "main effects"
        with _one_blas_thread():
            out["emms"] = _model_emms(models, tested, centred, codes, idx, grand, n_levels, error, crit)
    return out


def _one_blas_thread():
    """BLAS on one thread: matrices of a few hundred columns gain nothing from more, and
    on a shared machine spinning BLAS threads made the linear algebra 5x slower
    (measured: 17 vs 87 ms at load 5 on 2 cores). threadpoolctl comes with scikit-learn;
    without it, nothing is limited."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def undefined_emm(n: int) -> dict:
    nan = {"mean": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    return {"n": n, **nan, "estimable": False, "vs_first": {**nan, "estimable": False}}


def _estimate(mean: float, var: float, error: dict, crit: float) -> dict:
    se = math.sqrt(max(var, 0.0) * error["ms"]) if error["df"] > 0 else math.nan
    return {"mean": mean, "se": se, "ci_low": mean - crit * se, "ci_high": mean + crit * se, "estimable": True}


def _undefined_estimate() -> dict:
    return {"mean": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "estimable": False}


def _cell_mean_emms(idx, cell_keys, counts, cell_means, n_levels, error, crit):
    """Every cell observed: a level's EMM is the mean of its m cells' means, its variance
    MS * sum(1/n_c) / m², and a difference of two levels (disjoint cells) adds both."""
    result = []
    for f, L in enumerate(n_levels):
        at = [cell_keys[:, f] == lv for lv in range(L)]
        mean = [float(cell_means[a].mean()) for a in at]
        var = [float((1 / counts[a]).sum()) / int(a.sum()) ** 2 for a in at]
        zero = {"mean": 0.0, "se": 0.0, "ci_low": 0.0, "ci_high": 0.0, "estimable": True}
        result.append([{"n": int((idx[:, f] == lv).sum()), **_estimate(mean[lv], var[lv], error, crit),
                        "vs_first": _estimate(mean[lv] - mean[0], var[lv] + var[0], error, crit) if lv else zero}
                       for lv in range(L)])
    return result


def _average_row(codes, terms, f: int, lv: int) -> np.ndarray:
    """The design row of level lv of factor f averaged over the other factors' grid cells:
    per term, the product of this level's coding row and the others' mean coding rows."""
    parts = [np.ones(1)]
    for t in terms:
        block = np.ones(1)
        for g in t:
            block = np.outer(block, codes[g][lv] if g == f else codes[g].mean(axis=0)).reshape(-1)
        parts.append(block)
    return np.concatenate(parts)


def _model_emms(models: _CellModels, terms, centred, codes, idx, grand, n_levels, error, crit):
    """EMMs per factor level from the model of `terms` (see factorial_anova): c @ beta for
    the level's average row c of the grid's design, when c lies in the row space of the
    observed cells' design (estimable); else undefined."""
    cols = models.cols(terms)
    ginv, _, null = models.solve(cols)
    X = models.X[:, cols]
    beta = ginv @ (X.T @ (centred * models.root_n))

    def estimate(c: np.ndarray, shift: float) -> dict:
        # estimable: c has no component in the null space of the observed cells' design
        if null is not None and null.size and np.abs(c @ null).max() > 1e-8 * max(1.0, float(np.abs(c).max())):
            return _undefined_estimate()
        return _estimate(float(c @ beta) + shift, float(c @ ginv @ c), error, crit)

    result = []
    for f in range(idx.shape[1]):
        first = _average_row(codes, terms, f, 0)
        rows = []
        for lv in range(n_levels[f]):
            c = _average_row(codes, terms, f, lv)
            rows.append({"n": int((idx[:, f] == lv).sum()), **estimate(c, grand), "vs_first": estimate(c - first, 0.0)})
        result.append(rows)
    return result


def paired_t(differences) -> dict:
    """describe() of the finite differences plus the two-sided one-sample t test of mean 0
    (`p`; NaN with fewer than 2 differences or when they are all equal: no noise to test
    against)."""
    out = describe(differences)
    out["p"] = math.nan
    if out["n"] > 1 and out["std"] > 0:         # describe's SD is 0 when the values are all equal
        t = out["mean"] / (out["std"] / math.sqrt(out["n"]))
        out["p"] = float(2 * special.stdtr(out["n"] - 1, -abs(t)))
    return out
