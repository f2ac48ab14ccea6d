"""collapse.metrics against scikit-learn and hand-computed values."""
import math

import numpy as np
import pytest

from collapse import metrics
from collapse.config import DiagnosisConfig

rng = np.random.default_rng(0)
Y_TRUE = rng.normal(0.72, 0.1, size=200)
Y_PRED = 0.5 * Y_TRUE + rng.normal(0.3, 0.02, size=200)


def test_r2_rmse_mae_match_sklearn():
    # imported here: at the top it cost every pytest worker ~1 s of collection
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    assert metrics.r2(Y_TRUE, Y_PRED) == pytest.approx(r2_score(Y_TRUE, Y_PRED), abs=1e-12)
    assert metrics.rmse(Y_TRUE, Y_PRED) == pytest.approx(math.sqrt(mean_squared_error(Y_TRUE, Y_PRED)), abs=1e-12)
    assert metrics.mae(Y_TRUE, Y_PRED) == pytest.approx(mean_absolute_error(Y_TRUE, Y_PRED), abs=1e-12)


def test_hand_computed_small_case():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 3.0, 3.0])
    # std(y) = sqrt(1.25), std(p) = 0.5
    assert metrics.variance_ratio(y, p) == pytest.approx(0.5 / math.sqrt(1.25))
    # cov = mean((y - 2.5)(p - 2.5)) = (0.75 + 0.25 + 0.25 + 0.75) / 4 = 0.5
    assert metrics.pearson_r(y, p) == pytest.approx(0.5 / (math.sqrt(1.25) * 0.5))
    assert metrics.calibration_slope(y, p) == pytest.approx(0.5 / 0.25)
    assert metrics.ccc(y, p) == pytest.approx(2 * 0.5 / (1.25 + 0.25 + 0.0))
    report = metrics.regression_report(y, p)
    assert report["pred_range"] == 1.0 and report["pred_std"] == pytest.approx(0.5)


def test_slope_and_r_agree_with_numpy():
    slope = np.polyfit(Y_PRED, Y_TRUE, 1)[0]
    assert metrics.calibration_slope(Y_TRUE, Y_PRED) == pytest.approx(slope, rel=1e-9)
    assert metrics.pearson_r(Y_TRUE, Y_PRED) == pytest.approx(np.corrcoef(Y_TRUE, Y_PRED)[0, 1], rel=1e-9)


def test_constant_predictions_collapse_signature():
    const = np.full_like(Y_TRUE, 0.72)
    report = metrics.regression_report(Y_TRUE, const)
    assert report["variance_ratio"] == 0.0
    assert report["r2"] <= 0.0
    assert math.isnan(report["pearson_r"]) and math.isnan(report["calibration_slope"])
    # nothing tells a squeeze from no signal when the predictions do not move
    assert metrics.diagnose(Y_TRUE, const, DiagnosisConfig())["label"] == "inconclusive"


def test_fit_affine_recovers_squeeze():
    squeezed = 0.72 + 0.2 * (Y_TRUE - 0.72)
    a, b = metrics.fit_affine(Y_TRUE, squeezed)
    assert b == pytest.approx(5.0) and metrics.r2(Y_TRUE, a + b * squeezed) == pytest.approx(1.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.r2([1.0, 2.0], [1.0])


def test_to_original_units_maps_only_unit_bearing_entries():
    report = {"r2": 0.5, "pred_std": 0.5, "pred_mean": 0.1, "rmse": 2.0, "pearson_r": 0.7}
    out = metrics.to_original_units(report, target_std=10.0, target_mean=100.0)
    assert out == {"r2": 0.5, "pred_std": 5.0, "pred_mean": 101.0, "rmse": 20.0, "pearson_r": 0.7}
    flat = metrics.to_original_units({"val_mae": 1.0, "train_loss": 1.0}, 3.0, prefix="val_")
    assert flat == {"val_mae": 3.0, "train_loss": 1.0}


@pytest.mark.parametrize("scale, offset", [(1e-3, -7.0), (1.0, 0.0), (77.0, 152.0), (1e6, 5e4), (-2.0, 3.0)])
def test_every_dimensionless_metric_and_the_diagnosis_ignore_units(scale, offset):
    """float64 in, any affine change of units of targets and predictions together
    (a negative scale flips both, so r and the slope keep their sign)."""
    base_report = metrics.regression_report(Y_TRUE, Y_PRED)
    report = metrics.regression_report(scale * Y_TRUE + offset, scale * Y_PRED + offset)
    for key in ("r2", "variance_ratio", "pearson_r", "ccc", "calibration_slope"):
        assert report[key] == pytest.approx(base_report[key], rel=1e-9, abs=1e-12)
    base = metrics.diagnose(Y_TRUE, Y_PRED, DiagnosisConfig(), candidates=40)
    got = metrics.diagnose(scale * Y_TRUE + offset, scale * Y_PRED + offset, DiagnosisConfig(), candidates=40)
    assert got["label"] == base["label"]
    np.testing.assert_allclose(got["r_ci"] + got["slope_ci"] + got["variance_ratio_ci"],
                               base["r_ci"] + base["slope_ci"] + base["variance_ratio_ci"], rtol=1e-9)


def test_offset_interval_matches_scipys_one_sample_t_interval():
    from scipy import stats

    d, low, high = metrics.offset_interval(Y_TRUE, Y_PRED, 0.9)
    ci = stats.ttest_1samp(Y_PRED - Y_TRUE, 0.0).confidence_interval(0.9)
    assert d == pytest.approx(float(np.mean(Y_PRED - Y_TRUE)), rel=1e-12)
    assert (low, high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_correlated_but_shifted_predictions_are_biased_never_healthy():
    """The issue's case: r ~ 0.97, predictions 1.3 target sds too low (a test range above
    the train range): R² < 0 from the offset alone."""
    g = np.random.default_rng(1)
    y = 50.0 + 4.0 * g.normal(size=300)
    good = y + 1.0 * g.normal(size=300)                 # r ~ 0.97, slope ~ 1
    assert metrics.diagnose(y, good, DiagnosisConfig(), split="test")["label"] == "healthy"
    shifted = good - 1.3 * y.std()
    got = metrics.diagnose(y, shifted, DiagnosisConfig(), split="test")
    assert got["label"] == "biased" and got["r2"] < 0 < got["pearson_r"] - 0.9
    assert got["offset"] == pytest.approx(float(np.mean(shifted - y)))
    assert got["offset_sds"] == pytest.approx(got["offset"] / y.std()) and got["offset_sds"] < -1.2
    assert f"{got['offset']:+.4g} target units" in got["reason"]
    assert f"{got['offset_sds']:+.2f} target sds" in got["reason"]
    # a shift too small to make R² negative is not bias; a squeeze that is shifted stays collapsed
    small = metrics.diagnose(y, good - 0.3 * y.std(), DiagnosisConfig(), split="test")
    assert small["label"] == "healthy"
    squeezed = y.mean() + 0.1 * (good - y.mean()) - 1.5 * y.std()
    assert metrics.diagnose(y, squeezed, DiagnosisConfig(), split="test")["label"] == "collapsed"
    # units: the label and offset_sds ignore an affine change of both
    scaled = metrics.diagnose(1e3 * y + 7.0, 1e3 * shifted + 7.0, DiagnosisConfig(), split="test")
    assert scaled["label"] == "biased" and scaled["offset_sds"] == pytest.approx(got["offset_sds"], rel=1e-9)


@pytest.mark.parametrize("n, p", [(120, 21), (30, 60)])      # n > p and p > n
def test_ridge_gcv_matches_sklearns_ridgecv(n, p):
    from sklearn.linear_model import RidgeCV

    g = np.random.default_rng(n)
    X = g.normal(size=(n, p)) * g.uniform(0.5, 3, size=p) + 2.0
    y = X[:, :5] @ g.normal(size=5) + 3.0 * g.normal(size=n) + 7.0
    coef, intercept, alpha = metrics.ridge_gcv(X, y)
    ref = RidgeCV(alphas=metrics.RIDGE_ALPHAS).fit(X, y)
    assert alpha == ref.alpha_
    np.testing.assert_allclose(coef, ref.coef_, rtol=1e-8, atol=1e-10)
    assert intercept == pytest.approx(ref.intercept_, rel=1e-8, abs=1e-10)


def test_a_run_far_below_its_linear_reference_is_underfit():
    g = np.random.default_rng(3)
    y = g.normal(size=400)
    reference = y + 0.3 * g.normal(size=400)                     # R² ~ 0.9
    weak = 0.1 * reference + 0.3 * g.normal(size=400)            # r ~ 0.3, calibrated: would read healthy
    base = metrics.diagnose(y, weak, DiagnosisConfig(), split="test")
    got = metrics.diagnose(y, weak, DiagnosisConfig(), split="test", y_reference=reference)
    assert base["label"] != "underfit" and got["label"] == "underfit"
    assert got["reference_r2"] == pytest.approx(metrics.r2(y, reference))
    assert got["reference_gap"] == pytest.approx(metrics.r2(y, reference) - metrics.r2(y, weak), rel=1e-9)
    assert got["reference_gap_ci"][0] > 0.05 and f"(else {base['label']}" in got["reason"]
    # as good as the reference: the label is the one without it, the gap still recorded
    same = metrics.diagnose(y, reference, DiagnosisConfig(), split="test", y_reference=reference)
    assert same["label"] == "healthy" and same["reference_gap"] == 0.0
    # a squeeze keeps its label (fixable as such) though it trails the reference too
    squeezed = 0.1 * reference
    assert metrics.diagnose(y, squeezed, DiagnosisConfig(), y_reference=reference)["label"] == "collapsed"


def test_reference_gap_interval_is_scipys_paired_t_interval():
    from scipy import stats

    g = np.random.default_rng(4)
    y = g.normal(size=80)
    a, b = y + g.normal(size=80), y + 0.5 * g.normal(size=80)
    gap, low, high = metrics.reference_gap(y, a, b, 0.95)
    d = ((y - a) ** 2 - (y - b) ** 2) / y.var()
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert gap == pytest.approx(metrics.r2(y, b) - metrics.r2(y, a), rel=1e-9)
    assert (low, high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
