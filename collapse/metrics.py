"""Regression metrics that expose variance collapse, as pure functions on arrays.

All take 1-D arrays `y_true`, `y_pred` of the same length, compute in float64, and
return Python floats (NaN where a metric is undefined, e.g. r with constant preds),
so they can go straight into JSON. Where scikit-learn has the metric (r2, rmse, mae)
the tests check these against it; scikit-learn itself is kept off the run path
because importing it costs about a second per process.

Why these metrics: a collapsed regressor has fine MAE/RMSE but R² <= 0 and a
variance ratio (pred_std / target_std) of a few percent. Pearson r separates the
two kinds of collapse: under MSE with calibrated predictions the variance ratio is
about r, so a ratio far *below* r (calibration slope >> 1) is a squeeze that a
variance term or recalibration can undo, whereas r ~ 0 means there is no signal
to recover. `diagnose` turns that into a label only where the sample size allows:
every test is on an interval (Fisher z for r, OLS t for the slope and the offset), so 15 samples
say `inconclusive` rather than a guess. Everything here is invariant to an affine
change of units of y_true and y_pred together, except pred_std, rmse, mae, ranges
and the diagnosis' offset (in target units; `offset_sds` is the invariant form).
"""
from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import Optional

import numpy as np

from collapse import records
from collapse.config import DiagnosisConfig


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    return y_true, y_pred


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as sklearn's r2_score)."""
    y_true, y_pred = _pair(y_true, y_pred)
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / ss_tot


def rmse(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def mae(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def variance_ratio(y_true, y_pred) -> float:
    """pred_std / target_std (population std). 1 = full spread, ~0 = collapsed."""
    y_true, y_pred = _pair(y_true, y_pred)
    target_std = float(y_true.std())
    return float(y_pred.std()) / target_std if target_std > 0 else math.nan


def pearson_r(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    dt, dp = y_true - y_true.mean(), y_pred - y_pred.mean()
    denom = math.sqrt(float(np.sum(dt * dt)) * float(np.sum(dp * dp)))
    return float(np.sum(dt * dp)) / denom if denom > 0 else math.nan


def ccc(y_true, y_pred) -> float:
    """Lin's concordance correlation 2 cov / (var_t + var_p + (mean_t - mean_p)^2)."""
    y_true, y_pred = _pair(y_true, y_pred)
    cov = float(np.mean((y_true - y_true.mean()) * (y_pred - y_pred.mean())))
    denom = float(y_true.var() + y_pred.var() + (y_true.mean() - y_pred.mean()) ** 2)
    return 2.0 * cov / denom if denom > 0 else math.nan


def calibration_slope(y_true, y_pred) -> float:
    """Slope of the least-squares line y_true ~ a + b * y_pred.

    b = 1 for calibrated predictions; b >> 1 means the predictions are squeezed
    toward the mean (the signature of pathological collapse)."""
    y_true, y_pred = _pair(y_true, y_pred)
    var_p = float(y_pred.var())
    if var_p == 0.0:
        return math.nan
    return float(np.mean((y_true - y_true.mean()) * (y_pred - y_pred.mean()))) / var_p


def regression_report(y_true, y_pred) -> dict[str, float]:
    """Every metric the framework records, as one flat dict."""
    y_true, y_pred = _pair(y_true, y_pred)
    return {
        "r2": r2(y_true, y_pred),
        "variance_ratio": variance_ratio(y_true, y_pred),
        "pred_std": float(y_pred.std()),
        "target_std": float(y_true.std()),
        "pred_mean": float(y_pred.mean()),
        "pred_range": float(y_pred.max() - y_pred.min()) if y_pred.size else math.nan,
        "rmse": rmse(y_true, y_pred),
        "mae": mae(y_true, y_pred),
        "pearson_r": pearson_r(y_true, y_pred),
        "ccc": ccc(y_true, y_pred),
        "calibration_slope": calibration_slope(y_true, y_pred),
    }


def fit_affine(y_true, y_pred) -> tuple[float, float]:
    """Post-hoc recalibration y ~ a + b * pred, least squares (fit it on val only)."""
    y_true, y_pred = _pair(y_true, y_pred)
    b = calibration_slope(y_true, y_pred)
    if not math.isfinite(b):
        return float(y_true.mean()), 0.0
    return float(y_true.mean() - b * y_pred.mean()), b


# ---------------------------------------------------------------- the linear reference
# Ridge on the same standardised, flattened frames the model sees says in milliseconds how
# much (linear) signal exists: a network far below it is under-trained or mis-specified,
# not short of signal. RidgeCV's efficient leave-one-out (GCV) in numpy: scikit-learn's
# import (~1 s) stays off a run's path; tests/test_metrics.py checks it against RidgeCV.

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))
REFERENCE_MAX_FEATURES = 2048     # k * C above this: the SVD stops being cheap next to training


def _thin_svd(Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD through the eigendecomposition of the smaller Gram matrix: for a tall
    (7000, 24) X, np.linalg.svd took ~0.5 s on a busy 2-core machine, this ~5 ms.
    Directions with a singular value below 1e-10 of the largest are dropped (ridge
    gives them no weight in the fit nor in the hat matrix)."""
    n, p = Xc.shape
    gram = Xc.T @ Xc if n >= p else Xc @ Xc.T
    eigvals, vecs = np.linalg.eigh(gram)
    sv = np.sqrt(np.clip(eigvals, 0.0, None))
    keep = sv > 1e-10 * (sv.max() if sv.size else 0.0)
    sv, vecs = sv[keep], vecs[:, keep]
    if n >= p:
        return Xc @ vecs / sv, sv, vecs.T          # U = X V / s
    return vecs, sv, (vecs.T @ Xc) / sv[:, None]   # V' = U' X / s


def ridge_gcv(X, y, alphas=RIDGE_ALPHAS) -> tuple[np.ndarray, float, float]:
    """Ridge with an unpenalised intercept, alpha chosen by exact leave-one-out squared
    error (sklearn.linear_model.RidgeCV(alphas) with its default cv=None). X (n, p), y (n,)
    -> (coef (p,), intercept, alpha). LOO residual of a linear smoother: e_i / (1 - H_ii),
    H = Xc (Xc'Xc + alpha I)^-1 Xc' + 1/n, from one thin SVD of the centred X."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    x_mean, y_mean = X.mean(axis=0), y.mean()
    Xc, yc = X - x_mean, y - y_mean
    U, sv, Vt = _thin_svd(Xc)
    Uty = U.T @ yc
    best = (math.inf, None)
    for alpha in alphas:
        shrink = sv ** 2 / (sv ** 2 + alpha)                          # (r,)
        fitted = U @ (shrink * Uty)
        hat = np.einsum("ij,j,ij->i", U, shrink, U) + 1.0 / len(y)
        loo = float(np.mean(((yc - fitted) / (1.0 - hat)) ** 2))
        if loo < best[0]:                   # first of equals, as RidgeCV's argmax
            best = (loo, alpha)
    alpha = best[1]
    coef = Vt.T @ (sv / (sv ** 2 + alpha) * Uty)
    return coef, float(y_mean - x_mean @ coef), float(alpha)


def linear_reference(X_train, z_train, splits: dict, unscale, alphas=RIDGE_ALPHAS,
                     max_features: int = REFERENCE_MAX_FEATURES) -> dict:
    """Ridge (ridge_gcv) on the flattened frames X_* (N, k, C) and the standardised train
    targets z_train; `splits`: name -> (X, y in original units); `unscale` maps z back.
    -> {"model", "alpha", "features", "n_train", split: regression_report, ...,
    "predictions": {split: (n,)}} or {"skipped": reason}. The caller pops the predictions."""
    n, p = len(X_train), int(np.prod(np.shape(X_train)[1:]))
    if p > max_features:
        return {"skipped": f"{p} features (frames x channels) > {max_features}: an SVD would not be cheap"}
    if n < 3:
        return {"skipped": f"{n} labelled train samples: too few for leave-one-out"}
    coef, intercept, alpha = ridge_gcv(np.reshape(X_train, (n, p)), z_train, alphas)
    out = {"model": "ridge", "alpha": alpha, "alpha_on_grid_edge": alpha in (min(alphas), max(alphas)),
           "features": p, "n_train": n, "predictions": {}}
    for name, (X, y) in splits.items():
        pred = unscale(np.reshape(X, (len(X), p)).astype(np.float64) @ coef + intercept)
        out[name], out["predictions"][name] = regression_report(y, pred), pred
    return out


LABELS = records.LABELS      # the labels `diagnose` gives, as the record contract names them


def normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(p)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction
    (Numerical Recipes 6.4); scipy stays off the run path (its import costs)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):                      # the fraction converges fast below this
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """Student t quantile (p > 0.5) by bisection on the exact CDF. Cached: a run's
    diagnosis asks for the same few (p, df) over and over (~2 ms each, pure Python), and a
    sweep's runs share their split sizes."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def r_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval for Pearson r from n pairs: tanh(atanh r -+ q / sqrt(n - 3))."""
    if not math.isfinite(r) or n < 4:
        return -1.0, 1.0
    z, half = math.atanh(max(min(r, 1 - 1e-15), -1 + 1e-15)), normal_quantile(0.5 + confidence / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def slope_interval(y_true, y_pred, confidence: float = 0.95) -> tuple[float, float]:
    """OLS interval for the calibration slope b of y_true ~ a + b y_pred:
    b -+ t_{n-2} * (sd_y / sd_p) * sqrt((1 - r^2) / (n - 2)). Exact for normal residuals."""
    y_true, y_pred = _pair(y_true, y_pred)
    n, b, r = y_true.size, calibration_slope(y_true, y_pred), pearson_r(y_true, y_pred)
    if n < 4 or not (math.isfinite(b) and math.isfinite(r)):
        return -math.inf, math.inf
    se = float(y_true.std() / y_pred.std()) * math.sqrt(max(1 - r * r, 0.0) / (n - 2))
    half = t_quantile(0.5 + confidence / 2, n - 2) * se
    return b - half, b + half


def ratio_interval(ratio: float, r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the variance ratio sd_p / sd_y of *paired* samples (large-sample,
    bivariate normal): var(log(s_p / s_y)) = (1 - r^2) / (n - 1). An F interval would
    assume independent samples, and predictions and targets are anything but."""
    if not (math.isfinite(ratio) and math.isfinite(r)) or ratio <= 0 or n < 3:
        return 0.0, math.inf
    half = normal_quantile(0.5 + confidence / 2) * math.sqrt(max(1 - r * r, 0.0) / (n - 1))
    return ratio * math.exp(-half), ratio * math.exp(half)


def offset_interval(y_true, y_pred, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean offset d = mean(y_pred - y_true) with its one-sample t interval
    d -+ t_{n-1} sd(y_pred - y_true) / sqrt(n): (d, low, high), in target units."""
    y_true, y_pred = _pair(y_true, y_pred)
    diff, n = y_pred - y_true, y_true.size
    d = float(diff.mean()) if n else math.nan
    if n < 2:
        return d, -math.inf, math.inf
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(diff.std(ddof=1)) / math.sqrt(n)
    return d, d - half, d + half


def reference_gap(y_true, y_pred, y_reference, confidence: float = 0.95) -> tuple[float, float, float]:
    """How much R² the predictions trail a reference's on the same samples, with a paired
    t interval: gap = R²_ref - R² = mean(e² - e_ref²) / var(y). -> (gap, low, high)."""
    y_true, y_pred = _pair(y_true, y_pred)
    y_true, y_reference = _pair(y_true, y_reference)
    var, n = float(y_true.var()), y_true.size
    if n < 2 or var == 0.0:
        return math.nan, -math.inf, math.inf
    d = ((y_true - y_pred) ** 2 - (y_true - y_reference) ** 2) / var
    gap = float(d.mean())
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return gap, gap - half, gap + half


def diagnose(y_true, y_pred, cfg: DiagnosisConfig, candidates: int = 1, split: Optional[str] = None,
             y_reference=None) -> dict:
    """Tell a fixable collapse from an honest lack of signal and from inflated spread,
    with intervals that know the sample size. y_true, y_pred: (n,) in any units
    (every statistic used is invariant to an affine change of them).

    MSE-calibrated predictions have variance ratio ~ r, i.e. calibration slope
    b = r / ratio ~ 1. So the ratio-versus-r tests are tests on b, whose OLS interval is
    exact for normal residuals; r gets a Fisher-z interval on n. Labels, each of which
    must hold over the whole interval(s), else `inconclusive`:

    - no_signal: the r interval lies inside (-min_r, min_r). MSE rightly shrinks to the
      mean; forcing the spread up can only lower R² (at best 2r - 1 at full spread).
    - collapsed: r >= min_r over its interval and b > 1 / collapse_ratio_of_r over its
      interval (ratio squeezed below collapse_ratio_of_r * r: fixable by a variance term,
      CCC, recalibration); or r <= -min_r over its interval (a mirror image, which an
      affine refit with a negative slope undoes).
    - inflated: r's sign is established (its interval excludes 0) and |b| < 1 /
      inflate_ratio_of_r over its interval: a spread above inflate_ratio_of_r * |r|.
      With ratio rho and matched means R² = rho (2r - rho), which is < 0 exactly when
      rho > 2r: the default threshold 2 is where the spread costs more than the signal
      gives (an over-weighted variance term does this, with either sign).
    - biased (checked after collapsed: a squeeze is the more specific finding): r >= min_r
      over its interval, the mean offset d = mean(pred - y) is
      significant (its t interval excludes 0) and it is what makes R² < 0: R² =
      R²_centred - d² / var(y), with R²_centred >= 0. Correlated but shifted predictions (a
      trend, a test range outside the train range) are not healthy; the reason names d in
      target units and target sds.
    - healthy: r >= min_r and 1 / inflate_ratio_of_r <= b <= 1 / collapse_ratio_of_r, over
      both intervals.
    - inconclusive: anything else: too few samples (n = 15 gives r -+ 0.5), constant
      predictions, or an interval that straddles a boundary.

    - underfit: with `y_reference` (a linear reference's predictions on the same samples,
      collapse.metrics.linear_reference), a run that would read healthy, no_signal or
      inconclusive but whose R² trails the reference's by more than `underfit_r2_gap`
      over the paired interval of the gap: the signal exists and this model missed it
      (under-trained, or it cannot see what the linear model sees). collapsed, inflated and
      biased keep their label (more specific, and fixable as such); the gap is recorded
      for every label.

    `candidates`: how many candidates (epochs) this split selected its best from; the
    intervals are Bonferroni-widened to confidence 1 - (1 - confidence) / candidates,
    conservative because successive epochs are correlated. The split that chose the
    best epoch has an optimistic r; an untouched split (test) passes 1.
    """
    min_r, collapse_ratio_of_r, inflate_ratio_of_r = cfg.min_r, cfg.collapse_ratio_of_r, cfg.inflate_ratio_of_r
    y_true, y_pred = _pair(y_true, y_pred)
    n = y_true.size
    level = 1.0 - (1.0 - cfg.confidence) / max(int(candidates), 1)
    r, ratio = pearson_r(y_true, y_pred), variance_ratio(y_true, y_pred)
    slope = calibration_slope(y_true, y_pred)
    r_lo, r_hi = r_interval(r, n, level)
    b_lo, b_hi = slope_interval(y_true, y_pred, level)
    q_lo, q_hi = ratio_interval(ratio, r, n, level)
    offset, d_lo, d_hi = offset_interval(y_true, y_pred, level)
    target_sd = float(y_true.std())
    offset_sds = offset / target_sd if target_sd > 0 else math.nan
    r2_value = r2(y_true, y_pred)
    offset_cost = offset_sds * offset_sds        # R² lost to the offset alone: d² / var(y)
    b_collapse, b_inflate = 1.0 / collapse_ratio_of_r, 1.0 / inflate_ratio_of_r
    used = {"split": split, "n": int(n), "confidence": level, "candidates": int(candidates),
            "pearson_r": r, "r_ci": [r_lo, r_hi], "variance_ratio": ratio, "variance_ratio_ci": [q_lo, q_hi],
            "calibration_slope": slope, "slope_ci": [b_lo, b_hi], "r2": r2_value,
            "offset": offset, "offset_ci": [d_lo, d_hi], "offset_sds": offset_sds,
            "r2_recalibrated": r * r if math.isfinite(r) else math.nan,
            "min_r": min_r, "collapse_ratio_of_r": collapse_ratio_of_r, "inflate_ratio_of_r": inflate_ratio_of_r}
    ci = f"{100 * level:.4g}% CI"
    if n < 4:
        label, why = "inconclusive", f"n = {n}: too few samples for any interval"
    elif not math.isfinite(ratio) or ratio == 0.0 or not math.isfinite(r):
        label, why = "inconclusive", "predictions are constant: nothing tells a squeeze from no signal"
    elif -min_r < r_lo and r_hi < min_r:
        label, why = "no_signal", f"r {ci} [{r_lo:.2f}, {r_hi:.2f}] inside ±{min_r:g}: no signal to recover"
        if ratio > inflate_ratio_of_r * min_r:
            why += f"; the spread (ratio {ratio:.2f}) is noise and costs R²"
    elif r_hi <= -min_r:
        label, why = "collapsed", (f"r {ci} [{r_lo:.2f}, {r_hi:.2f}] <= -{min_r:g}: mirror image, "
                                   "fixable by recalibration")
    elif (r_lo > 0 or r_hi < 0) and -b_inflate < b_lo and b_hi < b_inflate:
        label, why = "inflated", (f"slope {ci} [{b_lo:.2f}, {b_hi:.2f}] < {b_inflate:g}: ratio {ratio:.2f} > "
                                  f"{inflate_ratio_of_r:g} |r| = {inflate_ratio_of_r * abs(r):.2f}, "
                                  "spread the signal cannot "
                                  f"support (R² {used['r2']:.2f} vs {r * r:.2f} recalibrated)")
    elif r_lo < min_r:
        label, why = "inconclusive", (f"r {ci} [{r_lo:.2f}, {r_hi:.2f}] spans no signal (|r| < {min_r:g}) "
                                      f"and signal: n = {n} cannot tell")
    elif b_lo > b_collapse:
        label, why = "collapsed", (f"slope {ci} [{b_lo:.2f}, {b_hi:.2f}] > {b_collapse:g}: ratio {ratio:.2f} < "
                                   f"{collapse_ratio_of_r:g} r = {collapse_ratio_of_r * r:.2f}, squeezed, fixable")
    elif (d_lo > 0 or d_hi < 0) and r2_value < 0 <= r2_value + offset_cost:
        label, why = "biased", (f"mean offset {offset:+.4g} target units ({offset_sds:+.2f} target sds), {ci} "
                                f"[{d_lo:+.4g}, {d_hi:+.4g}]: it costs {offset_cost:.2f} R² (R² {r2_value:.2f}, "
                                f"{r2_value + offset_cost:.2f} without it) although r {ci} [{r_lo:.2f}, {r_hi:.2f}]")
    elif b_inflate <= b_lo and b_hi <= b_collapse:
        label, why = "healthy", (f"r {ci} [{r_lo:.2f}, {r_hi:.2f}], slope {ci} [{b_lo:.2f}, {b_hi:.2f}]: "
                                 "spread fits the signal")
    else:
        label, why = "inconclusive", (f"slope {ci} [{b_lo:.2f}, {b_hi:.2f}] straddles {b_inflate:g} or "
                                      f"{b_collapse:g}: n = {n} cannot tell squeezed, fitting or inflated apart")
    if y_reference is not None:
        gap, g_lo, g_hi = reference_gap(y_true, y_pred, y_reference, level)
        used.update(reference_r2=r2(y_true, y_reference), reference_gap=gap, reference_gap_ci=[g_lo, g_hi],
                    underfit_r2_gap=cfg.underfit_r2_gap)
        if label in ("healthy", "no_signal", "inconclusive") and g_lo > cfg.underfit_r2_gap:
            label, why = "underfit", (f"R² {r2_value:.2f} trails the linear reference's {used['reference_r2']:.2f} "
                                      f"by {gap:.2f}, {ci} [{g_lo:.2f}, {g_hi:.2f}] > {cfg.underfit_r2_gap:g} "
                                      f"(else {label}: {why})")
    return {"label": label, "reason": why, **used}


def to_original_units(report: dict, target_std: float, target_mean: float = 0.0, prefix: str = "") -> dict:
    """A regression_report computed on standardised targets, with its unit-bearing
    entries mapped back (std-like x target_std, pred_mean also + target_mean); R²,
    ratio, r, CCC and slope are invariant and left alone. `prefix` (e.g. "val_")
    selects keys in a flat history entry."""
    out = dict(report)
    for key in ("pred_std", "target_std", "pred_range", "rmse", "mae", "pred_mean"):
        k = prefix + key
        if k in out and out[k] is not None and math.isfinite(out[k]):
            out[k] = out[k] * target_std + (target_mean if key == "pred_mean" else 0.0)
    return out
