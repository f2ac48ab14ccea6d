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
to recover.
"""
from __future__ import annotations

import math

import numpy as np


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


def diagnose(report: dict[str, float], min_r: float = 0.2,
             collapse_ratio_of_r: float = 0.5) -> dict:
    """Tell a fixable collapse from an honest lack of signal, from val metrics.

    - no_signal: |r| < min_r. The inputs, as the model sees them, carry (almost) no
      information; MSE then rightly shrinks toward the mean and a variance term
      can only make R² worse (rescaling to full variance gives at best 2r - 1).
      The calibration slope is meaningless here and is not used.
    - collapsed: the variance ratio is below collapse_ratio_of_r * |r|. Calibrated
      shrinkage would give ratio ~ |r|; being squeezed this far below it (slope >> 1)
      is pathological and fixable (variance term, CCC, recalibration).
    - collapsed, too: r <= -min_r. The predictions mirror the target (a run locked
      into the wrong sign, e.g. by a variance term that is blind to it); an affine
      refit (negative slope) undoes it, so it is fixable, and it is not healthy.
    - healthy: otherwise.
    """
    r, ratio = report.get("pearson_r", math.nan), report.get("variance_ratio", math.nan)
    used = {"pearson_r": r, "variance_ratio": ratio,
            "calibration_slope": report.get("calibration_slope", math.nan),
            "min_r": min_r, "collapse_ratio_of_r": collapse_ratio_of_r}
    if not math.isfinite(ratio) or ratio == 0.0:
        # r is undefined for constant predictions: nothing tells signal from squeeze
        label, why = "collapsed", "predictions are constant"
    elif not math.isfinite(r) or abs(r) < min_r:
        label, why = "no_signal", f"|r| < {min_r:g}: no signal to recover"
    elif r < 0:
        label, why = "collapsed", f"r = {r:.3f}: anti-correlated with the target, fixable by recalibration"
    elif ratio < collapse_ratio_of_r * abs(r):
        label, why = "collapsed", (f"variance ratio {ratio:.3f} < {collapse_ratio_of_r:g} * |r| "
                                   f"= {collapse_ratio_of_r * abs(r):.3f}: squeezed, fixable")
    else:
        label, why = "healthy", "variance ratio consistent with the signal"
    return {"label": label, "reason": why, **used}
