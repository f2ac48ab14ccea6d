"""The cures and the diagnosis against hand-computed values, and one real cure.

Every expected number below is worked out by hand in the comment beside it (or by
an explicit loop that restates the formula), never by calling the code under test.
"""
import math

import numpy as np
import pytest
import torch

from collapse import data
from collapse.config import DiagnosisConfig, LossConfig, ModelConfig, SSLConfig
from collapse.losses import RegressionLoss, bmc, concordance, variance_term
from collapse.metrics import diagnose

PRED = torch.tensor([0.0, 1.0, 2.0, 3.0])      # mean 1.5, population var 1.25
TARGET = torch.tensor([0.0, 2.0, 4.0, 6.0])    # mean 3.0, population var 5.0


# --- variance term: squared, hinge, batch or train-split target variance ------------

def test_variance_term_squared_and_hinge_under_dispersed():
    # ratio 1.25 / 5 = 0.25: squared (1 - 0.25)^2 = 0.5625, hinge the same (shortfall > 0)
    assert variance_term(PRED, TARGET, "squared", None, 0.0).item() == pytest.approx(0.5625)
    assert variance_term(PRED, TARGET, "hinge", None, 0.0).item() == pytest.approx(0.5625)


def test_hinge_does_not_punish_over_dispersion():
    # swap roles: ratio 5 / 1.25 = 4 -> squared (1 - 4)^2 = 9, hinge max(0, -3)^2 = 0
    assert variance_term(TARGET, PRED, "squared", None, 0.0).item() == pytest.approx(9.0)
    assert variance_term(TARGET, PRED, "hinge", None, 0.0).item() == 0.0


def test_variance_term_against_the_train_split_variance():
    # target_var 2.5 (the train split's) replaces the batch's 5.0: (1 - 1.25 / 2.5)^2 = 0.25
    cfg = LossConfig(name="mse", variance_lambda=2.0, variance_target="train", eps=0.0)
    loss = RegressionLoss(cfg, train_target_var=2.5)
    mse = (0 + 1 + 4 + 9) / 4                                    # 3.5
    assert loss(PRED, TARGET).item() == pytest.approx(mse + 2.0 * 0.25)
    with pytest.raises(ValueError, match="train_target_var"):
        RegressionLoss(LossConfig(name="mse", variance_target="train"))


def test_variance_term_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="squared or hinge"):
        variance_term(PRED, TARGET, "cubic", None, 1e-8)


# --- concordance (CCC) loss -----------------------------------------------------------

def test_ccc_by_hand():
    # cov = mean([(-1.5)(-3), (-0.5)(-1), (0.5)(1), (1.5)(3)]) = 10 / 4 = 2.5
    # CCC = 2 * 2.5 / (1.25 + 5.0 + (1.5 - 3.0)^2) = 5 / 8.5
    ccc = 5.0 / 8.5
    assert concordance(PRED, TARGET, eps=0.0).item() == pytest.approx(ccc)
    ccc_only = RegressionLoss(LossConfig(name="ccc", ccc_weight=1.0, eps=0.0))
    assert ccc_only(PRED, TARGET).item() == pytest.approx(1 - ccc)
    # mixed: (1 - 0.5) * mse + 0.5 * (1 - CCC), mse = 3.5
    mixed = RegressionLoss(LossConfig(name="ccc", ccc_weight=0.5, eps=0.0))(PRED, TARGET).item()
    assert mixed == pytest.approx(0.5 * 3.5 + 0.5 * (1 - ccc))


def test_ccc_is_one_only_for_identical_predictions_and_sees_the_sign():
    assert concordance(TARGET, TARGET, eps=0.0).item() == pytest.approx(1.0)
    mirror = 2 * TARGET.mean() - TARGET                         # same spread, opposite sign
    assert concordance(mirror, TARGET, eps=0.0).item() == pytest.approx(-1.0)
    # the variance term cannot tell the mirror image from the truth: both give 0
    assert variance_term(mirror, TARGET, "squared", None, 0.0).item() == pytest.approx(0.0)


# --- Balanced MSE (batch-based Monte Carlo) ------------------------------------------

def _bmc_by_hand(pred, target, sigma, weight=None):
    """Ren et al. 2022, BMC: mean_i w_i * [-log softmax_j(-(p_i - y_j)^2 / 2 s^2)]_{j=i} * 2 s^2."""
    total = 0.0
    for i, p in enumerate(pred):
        logits = [-(p - y) ** 2 / (2 * sigma ** 2) for y in target]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        ce = log_norm - logits[i]
        total += ce * (weight[i] if weight is not None else 1.0)
    return total / len(pred) * 2 * sigma ** 2


def test_bmc_against_a_hand_written_computation():
    pred, target, sigma = [0.1, 0.5, 0.9], [0.0, 0.6, 1.0], 0.5
    expected = _bmc_by_hand(pred, target, sigma)
    got = bmc(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), sigma)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # as a base loss, and with per-sample weights
    w = [1.0, 2.0, 0.5]
    loss = RegressionLoss(LossConfig(name="bmc", bmc_sigma=sigma))
    t = lambda v: torch.tensor(v, dtype=torch.float64)        # noqa: E731
    assert loss(t(pred), t(target)).item() == pytest.approx(expected, rel=1e-12)
    assert loss(t(pred), t(target), t(w)).item() == pytest.approx(_bmc_by_hand(pred, target, sigma, w), rel=1e-12)


def test_bmc_row_chunks_change_nothing():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(37, generator=g, dtype=torch.float64), torch.randn(37, generator=g, dtype=torch.float64)
    whole = bmc(pred, target, 0.3)
    assert bmc(pred, target, 0.3, chunk=5).item() == pytest.approx(whole.item(), rel=1e-12)
    assert bmc(pred, target, 0.3, chunk=1).item() == pytest.approx(whole.item(), rel=1e-12)


# --- target-density weighting -----------------------------------------------------------

Y4 = np.array([0.0, 0.0, 0.0, 1.0])   # 2 bins [0, .5), [.5, 1]: counts 3, 1 -> density 3/4 x3, 1/4


def test_density_without_smoothing_is_the_histogram():
    np.testing.assert_allclose(data.smoothed_density(Y4, bins=2, sigma=0.0), [0.75, 0.75, 0.75, 0.25])


def test_inverse_and_sqrt_inverse_weights_by_hand():
    # inverse: 1/rho = 4/3 x3, 4; mean 2 -> 2/3 x3, 2
    w = data.sample_weights(Y4, weighting="inverse", bins=2, sigma=0.0)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0], rtol=1e-6)
    # sqrt: 1/sqrt(rho) = 2/sqrt(3) x3, 2; mean (6/sqrt(3) + 2) / 4
    raw = np.array([2 / math.sqrt(3)] * 3 + [2.0])
    w = data.sample_weights(Y4, weighting="sqrt_inverse", bins=2, sigma=0.0)
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)


def test_dense_weights_by_hand():
    # rho' = (rho - min) / (max - min) = 1, 1, 1, 0; alpha 0.5: 1 - 0.5 rho' = 0.5 x3, 1; mean 0.625
    w = data.sample_weights(Y4, weighting="dense", bins=2, sigma=0.0, dense_alpha=0.5)
    np.testing.assert_allclose(w, [0.8, 0.8, 0.8, 1.6], rtol=1e-6)
    # alpha 1: the common targets get the floor 1e-6, the rare one the rest
    w = data.sample_weights(Y4, weighting="dense", bins=2, sigma=0.0, dense_alpha=1.0)
    mean = (3e-6 + 1.0) / 4
    np.testing.assert_allclose(w, [1e-6 / mean] * 3 + [1.0 / mean], rtol=1e-5)


def test_lds_smoothing_by_hand():
    # 5 bins of width 0.98 over [min, max] = [0.1, 5.0]: counts 4, 0, 1, 0, 1 (the last
    # bin is closed). Gaussian kernel, sigma 1 bin, half width ceil(3 sigma) = 3,
    # normalised; the counts are padded by reflection, then convolved.
    y = np.array([0.1, 0.2, 0.3, 0.4, 2.5, 5.0])
    counts = [4, 0, 1, 0, 1]
    kernel = [math.exp(-0.5 * k * k) for k in range(-3, 4)]
    kernel = [v / sum(kernel) for v in kernel]

    def reflected(i):                                # numpy 'reflect': ... c2 c1 | c0 ... c4 | c3 c2 ...
        while i < 0 or i > 4:
            i = -i if i < 0 else 8 - i
        return counts[i]

    smooth = [sum(kernel[k + 3] * reflected(b + k) for k in range(-3, 4)) for b in range(5)]
    expected = [smooth[b] / len(y) for b in (0, 0, 0, 0, 2, 4)]
    np.testing.assert_allclose(data.smoothed_density(y, bins=5, sigma=1.0), expected, rtol=1e-9)


def test_unknown_weighting_is_refused_with_its_name():
    with pytest.raises(ValueError, match="weighting='uniform'"):
        data.sample_weights(Y4, weighting="uniform")


# --- diagnosis on constructed cases --------------------------------------------------

RNG = np.random.default_rng(0)
Y = 0.72 + 0.1 * RNG.normal(size=2000)
NOISE = RNG.normal(size=2000)


def _label(pred, y=Y, candidates=1, **thresholds):
    return diagnose(y, pred, DiagnosisConfig(**thresholds), candidates)


def test_diagnose_no_signal_healthy_collapsed_and_inflated():
    # predictions unrelated to the target: |r| ~ 0, CI +- 0.044 at n 2000 -> no_signal, whatever their spread
    assert _label(0.72 + 0.1 * NOISE)["label"] == "no_signal"
    assert _label(0.72 + 0.001 * NOISE)["label"] == "no_signal"
    # calibrated shrinkage: p = E[y | signal], r = 0.8, variance ratio ~ 0.8 -> healthy
    signal = (Y - 0.72) / 0.1
    partial = 0.8 * signal + 0.6 * NOISE              # corr ~ 0.8 with the target
    calibrated = 0.72 + 0.1 * 0.8 * partial          # E[y | partial] = 0.72 + 0.1 * 0.8 * partial
    d = _label(calibrated)
    assert d["label"] == "healthy" and d["pearson_r"] == pytest.approx(0.8, abs=0.03)
    assert d["variance_ratio"] == pytest.approx(0.8, abs=0.03)
    assert d["r_ci"][0] < d["pearson_r"] < d["r_ci"][1] and d["split"] is None
    # the same, squeezed 5x: ratio ~ 0.16 < 0.5 r = 0.4 -> collapsed (slope ~ 5)
    d = _label(0.72 + 0.2 * (calibrated - 0.72))
    assert d["label"] == "collapsed" and d["calibration_slope"] == pytest.approx(5.0, rel=0.05)
    # mirror image at full spread: r ~ -0.8 is not healthy
    assert _label(0.72 - 0.1 * 0.8 * partial)["label"] == "collapsed"
    # weak signal forced to full spread (the r 0.29, ratio 0.92, R² -0.31): slope
    # 0.29 / 0.92 ~ 0.32 < 1 / 2 -> inflated, and R² = rho (2 r - rho) < 0
    weak = 0.3 * signal + math.sqrt(1 - 0.09) * NOISE
    d = _label(0.72 + 0.1 * 0.92 * weak)
    assert d["label"] == "inflated" and d["r2"] < 0 < d["r2_recalibrated"]


def test_diagnose_thresholds_are_parameters():
    # r 0.8, ratio 0.3 (slope ~ 2.7): collapsed at the default 0.5 r, healthy at 0.3 r
    signal = (Y - 0.72) / 0.1
    partial = 0.8 * signal + 0.6 * NOISE
    pred = 0.72 + 0.1 * 0.3 * partial / partial.std()
    assert _label(pred)["label"] == "collapsed"
    assert _label(pred, collapse_ratio_of_r=0.3)["label"] == "healthy"
    # r CI ~ [0.78, 0.82] lies inside +-0.9: no_signal by that threshold
    assert _label(pred, min_r=0.9)["label"] == "no_signal" and _label(pred, min_r=0.9)["r_ci"][1] < 0.9


def test_fisher_interval_and_slope_interval_by_hand():
    from collapse.metrics import r_interval, slope_interval

    # r 0.5, n 28: atanh 0.5 = 0.5493, se 1 / sqrt(25) = 0.2, 95%: +- 1.95996 * 0.2
    lo, hi = r_interval(0.5, 28)
    assert lo == pytest.approx(math.tanh(0.5493061 - 0.3919928), abs=1e-6)
    assert hi == pytest.approx(math.tanh(0.5493061 + 0.3919928), abs=1e-6)
    # slope interval = statsmodels' OLS conf_int of y ~ 1 + p
    import statsmodels.api as sm
    y, p = Y[:30], (0.5 * Y + 0.05 * NOISE)[:30]
    fit = sm.OLS(y, sm.add_constant(p)).fit()
    np.testing.assert_allclose(slope_interval(y, p), fit.conf_int(0.05)[1], rtol=1e-9)


def test_t_quantile_matches_scipy():
    from scipy import stats

    from collapse.metrics import t_quantile
    for df in (1, 3, 13, 200):
        for p in (0.6, 0.975, 0.99995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_small_samples_say_inconclusive_and_selection_widens():
    # a real r 0.8 seen on 15 samples: r CI ~ [0.48, 0.93] -> healthy is allowed at 95%...
    rng = np.random.default_rng(5)
    y = rng.normal(size=15)
    p = 0.8 * y + 0.6 * rng.normal(size=15)
    plain = diagnose(y, p, DiagnosisConfig())
    # ...but the split that picked the best of 60 epochs gets a 1 - 0.05 / 60 interval
    chosen = diagnose(y, p, DiagnosisConfig(), candidates=60)
    assert chosen["confidence"] == pytest.approx(1 - 0.05 / 60)
    assert chosen["r_ci"][0] < plain["r_ci"][0] and chosen["slope_ci"][1] > plain["slope_ci"][1]
    assert diagnose(y[:3], p[:3], DiagnosisConfig())["label"] == "inconclusive"
    assert diagnose(y, np.full(15, 0.3), DiagnosisConfig())["label"] == "inconclusive"      # constant predictions


@pytest.mark.parametrize("candidates", [1, 60])
def test_pure_noise_at_15_samples_is_never_healthy_or_collapsed(candidates):
    """Realistic predictions of a model that learned nothing: targets are noise, the
    predictions a fixed random function of unrelated inputs with a spread anywhere from
    squeezed to inflated, and (candidates 60) the best of 60 such epochs by R², as
    early stopping picks it. 200 seeds: the label is inconclusive or no_signal."""
    labels = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = 50.0 + 7.0 * rng.normal(size=15)
        best, best_r2 = None, -np.inf
        for _ in range(candidates):
            pred = 50.0 + 7.0 * rng.uniform(0.02, 1.5) * rng.normal(size=15)
            score = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
            if score > best_r2:
                best, best_r2 = pred, score
        labels.append(diagnose(y, best, DiagnosisConfig(), candidates)["label"])
    assert not {"healthy", "collapsed"} & set(labels), labels
    assert labels.count("inconclusive") >= 190


# --- one real pathological collapse, and its cure ---------------------------------------

@pytest.mark.slow
def test_overreg_collapses_and_the_variance_term_cures_it():
    from collapse.train import run

    sick = run(["experiment=overreg", "seed=0", "trainer.threads=1"]).to_dict()
    cured = run(["experiment=overreg_cured", "seed=0", "trainer.threads=1"]).to_dict()
    assert sick["diagnosis"]["val"]["label"] == "collapsed" and sick["best"]["val"]["pearson_r"] > 0.5
    assert sick["diagnosis"]["test"]["label"] == "collapsed"
    # the squeeze is cured (its spread fits the signal), yet the decay still holds the model below its
    # linear reference (ridge ~0.83 against ~0.73): underfit, with "else healthy" in the reason
    cured_val = cured["diagnosis"]["val"]
    assert cured_val["label"] == "underfit" and "else healthy" in cured_val["reason"], cured_val["reason"]
    assert sick["recalibrated"]["raised_test_r2"]
    assert cured["best"]["val"]["r2"] >= sick["best"]["val"]["r2"] + 0.2
    # recalibration undoes the squeeze post hoc, on test
    assert sick["recalibrated"]["test"]["r2"] >= sick["best"]["test"]["r2"] + 0.2


@pytest.mark.slow
def test_cures_sweep_applies_each_cure_over_the_experiment(tmp_path):
    """The documented cures sweep, tiny and on one seed: every cure option lands in the
    composed config on top of the experiment's own loss and data settings."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import collapse.train as train

    sweeps = str(Path(train.CONF_DIR).parent / "sweeps")
    sweep_dir = tmp_path / "cures"
    proc = subprocess.run([sys.executable, "-m", "collapse.train", "--config-dir", sweeps, "--config-name", "cures",
                           f"hydra.sweep.dir={sweep_dir}", "data.n_samples=300", "trainer.epochs=2",
                           "model.hidden_dim=16", "trainer.threads=1", "seed=0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    got = {(r["choices"]["experiment"], r["choices"]["cure"]):
           (r["config"]["loss"]["name"], r["config"]["loss"]["variance_lambda"], r["config"]["loss"]["variance_mode"],
            r["config"]["loss"]["variance_target"], r["config"]["data"]["weighting"]) for r in runs}
    assert len(got) == 18 and {r["status"] for r in runs} == {"completed"}
    assert got[("overreg", "none")] == ("mse", 0.0, "squared", "batch", "none")
    assert got[("overreg", "variance")] == ("mse", 2.0, "squared", "batch", "none")
    assert got[("run2", "variance_study")] == ("mse", 0.5, "squared", "batch", "none")
    assert got[("overreg", "hinge_train")] == ("mse", 2.0, "hinge", "train", "none")
    assert got[("run2", "ccc")][0] == "ccc" and got[("overreg", "bmc")][0] == "bmc"
    assert [got[("run2", w)][4] for w in ("lds_inverse", "lds_sqrt_inverse", "dense")] == \
        ["inverse", "sqrt_inverse", "dense"]


# --- target units: any scale and offset give the same answers ------------------------------

INVARIANT = ("r2", "variance_ratio", "pearson_r", "ccc", "calibration_slope")


def _npz_run(tmp_path, name, X, y, split, *extra):
    from collapse.train import run

    path = tmp_path / f"{name}.npz"
    np.savez(path, X=X, y=y, split=split)
    return run(["data=npz", f"data.path={path}", "data.temporal_frames=3", "trainer.epochs=8",
                "model.hidden_dim=16", "trainer.threads=1", "trainer.batch_size=64", *extra]).to_dict()


@pytest.mark.parametrize("extra", [(), ("loss.variance_lambda=0.5",)])
def test_scale_and_offset_of_the_targets_change_nothing(tmp_path, extra):
    X, y = data.make_synthetic(n_samples=400, seed=0)
    split = data.split_indices(400, 0.15, 0.15, seed=0)
    base = _npz_run(tmp_path, "base", X, y, split, *extra)
    # the file is float32 (what load_npz gives the model): an offset of k target stds
    # leaves ~2^-24 k of relative resolution, so offsets stay within ~500 stds here
    for scale, offset in ((1e-3, -2e-3), (1e3, 5e4), (1e6, -3e6)):
        rec = _npz_run(tmp_path, f"s{scale:g}", X, (y.astype(np.float64) * scale + offset).astype(np.float32),
                       split, *extra)
        assert rec["best_epoch"] == base["best_epoch"], (scale, offset)
        assert rec["target_scaler"]["std"] == pytest.approx(base["target_scaler"]["std"] * scale, rel=1e-5)
        for part in ("val", "test"):
            for key in INVARIANT:
                assert rec["best"][part][key] == pytest.approx(base["best"][part][key], rel=1e-4, abs=1e-5), \
                    (scale, offset, part, key)
            assert rec["best"][part]["rmse"] == pytest.approx(base["best"][part]["rmse"] * scale, rel=1e-4)
            assert rec["diagnosis"][part]["label"] == base["diagnosis"][part]["label"]
        assert rec["recalibrated"]["test"]["r2"] == \
            pytest.approx(base["recalibrated"]["test"]["r2"], rel=1e-4, abs=1e-5)


def test_a_large_offset_stored_as_float64_changes_nothing(tmp_path):
    """y + 1e8 in a float64 file: targets keep float64 until standardised, so the model
    sees the z of y itself (in float32 1e8 + y keeps ~3 digits of y and training moved)."""
    X, y = data.make_synthetic(n_samples=400, seed=0)
    split = data.split_indices(400, 0.15, 0.15, seed=0)
    y64 = y.astype(np.float64)
    base = _npz_run(tmp_path, "base", X, y64, split)
    rec = _npz_run(tmp_path, "offset", X, y64 + 1e8, split)
    assert rec["target_scaler"]["mean"] == pytest.approx(base["target_scaler"]["mean"] + 1e8, rel=1e-15)
    assert rec["best_epoch"] == base["best_epoch"]
    for part in ("val", "test"):
        for key in INVARIANT:
            assert rec["best"][part][key] == pytest.approx(base["best"][part][key], rel=1e-4, abs=1e-5), (part, key)
        assert rec["diagnosis"][part]["label"] == base["diagnosis"][part]["label"]
    prepared = data.prepare(X, y64 + 1e8, split, 3)
    assert prepared.y_test.dtype == np.float64 and prepared.y_test.min() > 1e8
    assert np.array_equal(prepared.y_test - 1e8, (y64 + 1e8)[split == 2] - 1e8)


def test_every_record_carries_its_linear_reference_and_an_undertrained_run_is_underfit():
    """reference: RidgeCV on the standardised, flattened frames the model saw, fitted on the
    train split, scored in original units; one epoch at a tiny lr trails it: underfit."""
    from sklearn.linear_model import RidgeCV

    from collapse.config import DataConfig
    from collapse.metrics import RIDGE_ALPHAS, regression_report
    from collapse.train import run

    rec = run(["data.n_samples=800", "trainer.epochs=1", "trainer.lr=1e-5", "model.hidden_dim=16",
               "trainer.threads=1", "seed=0"]).to_dict()
    prepared = data.load(DataConfig(n_samples=800), seed=0, unlabeled=False)
    flat = lambda X: X.reshape(len(X), -1)           # noqa: E731
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(flat(prepared.X_train), prepared.z_train.astype(np.float64))
    ref = rec["reference"]
    assert ref["alpha"] == ridge.alpha_ and ref["features"] == 3 * 8 and ref["seconds"] < 1.0
    for part, X, y in (("val", prepared.X_val, prepared.y_val), ("test", prepared.X_test, prepared.y_test)):
        expected = regression_report(y, prepared.unscale(ridge.predict(flat(X))))
        assert ref[part]["r2"] == pytest.approx(expected["r2"], abs=1e-8)
        assert ref[part]["rmse"] == pytest.approx(expected["rmse"], rel=1e-6)
    assert ref["test"]["r2"] > 0.5
    assert rec["diagnosis"]["test"]["label"] == "underfit"
    assert rec["diagnosis"]["test"]["reference_r2"] == pytest.approx(ref["test"]["r2"])


# --- SSL keeps the feature scale the head was initialised for ---------------------------

def test_pretraining_keeps_the_encoders_output_scale():
    from collapse.models import SequenceRegressor
    from collapse.ssl import feature_rms, pretrain_encoder

    X, _ = data.make_synthetic(n_samples=600, seed=0)
    frames = torch.from_numpy(((X - X.mean((0, 1))) / X.std((0, 1))).astype(np.float32))
    torch.manual_seed(0)
    grown, kept = SequenceRegressor(ModelConfig(hidden_dim=32), 8), SequenceRegressor(ModelConfig(hidden_dim=32), 8)
    kept.load_state_dict(grown.state_dict())
    flat = frames.reshape(-1, 8)
    before = feature_rms(grown.encoder, flat)
    torch.manual_seed(1)                                             # the decoder's init
    pretrain_encoder(grown.encoder, frames, SSLConfig(epochs=5), seed=0, match_scale=False)
    torch.manual_seed(1)
    history = pretrain_encoder(kept.encoder, frames, SSLConfig(epochs=5), seed=0)
    assert feature_rms(grown.encoder, flat) > 1.1 * before          # pretraining grows the scale (~5x at full size)
    assert feature_rms(kept.encoder, flat) == pytest.approx(before, rel=1e-4)
    assert history[-1]["rescaled_by"] == pytest.approx(before / history[-1]["feature_rms_after"])
    # only the scale changed: the features are proportional
    with torch.no_grad():
        a, b = grown.encoder(flat), kept.encoder(flat)
    torch.testing.assert_close(b, a * history[-1]["rescaled_by"], rtol=1e-4, atol=1e-6)


# --- pure noise with 15 validation samples: never healthy or collapsed ---------------------

def test_pure_noise_runs_with_15_val_samples_are_never_healthy_or_collapsed(tmp_path):
    """Real runs on targets independent of the inputs (a fresh data set per seed, 70/15/15
    samples, in odd units): the split that picked the best epoch and the untouched test
    split must both say inconclusive or no_signal."""
    from collapse.train import run

    labels = []
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        path = tmp_path / f"noise{seed}.npz"
        np.savez(path, X=rng.normal(size=(100, 1, 10)).astype(np.float32),
                 y=(3e3 + 40 * rng.normal(size=100)).astype(np.float32), split=np.repeat([0, 1, 2], [70, 15, 15]))
        rec = run(["data=npz", f"data.path={path}", "data.temporal_frames=1", f"seed={seed}", "trainer.epochs=30",
                   "model.hidden_dim=32", "trainer.threads=1"]).to_dict()
        labels += [rec["diagnosis"]["val"]["label"], rec["diagnosis"]["test"]["label"]]
    assert not {"healthy", "collapsed"} & set(labels), labels


# --- real data (scikit-learn's bundled diabetes, offline): scripts/real_data.py's core ------

def _real_data_script(monkeypatch):
    import importlib.util
    from pathlib import Path

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    monkeypatch.syspath_prepend(str(scripts))          # as `python scripts/real_data.py` has it
    path = scripts / "real_data.py"
    spec = importlib.util.spec_from_file_location("real_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diabetes_with_defaults_is_near_ridge_and_units_do_not_matter(tmp_path, monkeypatch):
    rd = _real_data_script(monkeypatch)
    X, y = rd.bundled("diabetes")                        # 442 samples, target std 77
    split = rd.split_for(len(y))
    ridge = rd.ridge_reference(X, y, split)["test_r2"]   # 0.407 on this split
    raw = rd.write_npz(tmp_path / "raw.npz", X, y, split)
    scaled = rd.write_npz(tmp_path / "scaled.npz", X, y * 1000 + 5e4, split)
    default = rd.summary(rd.collapse_run(raw, 0))
    assert default["r2"] >= ridge - 0.05, (default, ridge)
    a = rd.summary(rd.collapse_run(raw, 0, "loss.variance_lambda=0.5"))
    b = rd.summary(rd.collapse_run(scaled, 0, "loss.variance_lambda=0.5"))
    assert a["epoch"] == b["epoch"] and a["label"] == b["label"]
    assert b["r2"] == pytest.approx(a["r2"], abs=1e-3) and b["ratio"] == pytest.approx(a["ratio"], abs=1e-3)


def test_a_wrong_sign_weak_pattern_at_full_spread_is_inflated():
    # a variance term that locked in r ~ -0.18 at ratio 0.85 (phase1, signal 0.3, lambda 20,
    # seed 0: R² -1.0): r's sign is established, |slope| ~ 0.2 < 0.5 -> inflated
    signal = (Y - 0.72) / 0.1
    weak = -0.18 * signal + math.sqrt(1 - 0.18 ** 2) * NOISE
    d = _label(0.72 + 0.1 * 0.85 * weak)
    assert d["r_ci"][1] < 0 and d["label"] == "inflated" and d["r2"] < -0.5


def test_model_pt_and_its_config_predict_in_the_files_units(tmp_path):
    from collapse.models import SequenceRegressor
    from collapse.train import run

    X, y = data.make_synthetic(n_samples=300, seed=1)
    y = (5e4 + 1e3 * y).astype(np.float32)                           # odd units
    split = data.split_indices(300, 0.15, 0.15, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y, split=split)
    rec = run(["data=npz", f"data.path={tmp_path / 'd.npz'}", "trainer.epochs=5", "model.hidden_dim=16",
               "trainer.threads=1"], run_dir=tmp_path / "run").to_dict()
    model = SequenceRegressor(ModelConfig(**rec["config"]["model"]), X.shape[-1])
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    prepared = data.prepare(X, y, split, temporal_frames=rec["config"]["data"]["temporal_frames"])
    pred = model.predict_original(torch.from_numpy(prepared.X_test)).numpy()
    assert rec["target_scaler"]["mean"] == pytest.approx(float(y[split == 0].astype(np.float64).mean()))
    assert pred.mean() == pytest.approx(rec["best"]["test"]["pred_mean"], rel=1e-6)
    assert pred.std() == pytest.approx(rec["best"]["test"]["pred_std"], rel=1e-4)
