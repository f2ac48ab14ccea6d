"""Synthetic data, splits, frame selection, standardisation, weights, .npz loading."""
import numpy as np
import pytest

from collapse import data


def test_synthetic_shapes_and_seed_determinism():
    X, y = data.make_synthetic(n_samples=300, n_frames=7, n_features=5, seed=3)
    assert X.shape == (300, 7, 5) and y.shape == (300,)
    assert X.dtype == np.float32 and y.dtype == np.float32
    X2, y2 = data.make_synthetic(n_samples=300, n_frames=7, n_features=5, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = data.make_synthetic(n_samples=300, n_frames=7, n_features=5, seed=4)
    assert not np.array_equal(X, X3)


def test_split_fractions_and_seed():
    split = data.split_indices(1000, 0.15, 0.2, seed=0)
    assert [int((split == k).sum()) for k in (0, 1, 2)] == [650, 150, 200]
    np.testing.assert_array_equal(split, data.split_indices(1000, 0.15, 0.2, seed=0))


def test_prepare_keeps_last_frames_and_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 7, 3)).astype(np.float32)
    X[:, :, 0] += np.arange(7)            # frame index visible in channel 0
    y = rng.normal(size=100).astype(np.float32)
    split = np.array([0] * 60 + [1] * 20 + [2] * 20)
    X[split == 2] += 100.0                # a shifted test split must not move the train statistics
    prepared = data.prepare(X, y, split, temporal_frames=3)
    assert prepared.X_train.shape == (60, 3, 3) and prepared.X_test.shape == (20, 3, 3)
    assert prepared.X_unlabeled.shape == (60, 7, 3)
    train_all = prepared.X_unlabeled
    np.testing.assert_allclose(train_all.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_all.std(axis=(0, 1)), 1.0, atol=1e-4)
    # the kept frames are the last three: channel 0 increases along them
    assert np.all(np.diff(prepared.X_train[:, :, 0].mean(axis=0)) > 0)
    np.testing.assert_array_equal(prepared.X_train, train_all[:, 4:, :])
    assert prepared.X_test.mean() > 10      # test was standardised with train stats


def test_prepare_rejects_impossible_frames_and_constant_targets():
    X = np.zeros((30, 7, 2), np.float32)
    split = np.array([0] * 20 + [1] * 5 + [2] * 5)
    with pytest.raises(data.DataError, match="data.temporal_frames=8"):
        data.prepare(X, np.arange(30, dtype=np.float32), split, temporal_frames=8)
    with pytest.raises(data.DataError, match="constant"):
        data.prepare(X, np.ones(30, np.float32), split, temporal_frames=3)


def test_overweight_factor_weights_rare_targets_with_mean_one():
    y = np.arange(100, dtype=np.float32)
    w = data.sample_weights(y, overweight_factor=2.0, rare_quantile=0.1)
    assert w.mean() == pytest.approx(1.0)
    rare = (y < np.quantile(y, 0.1)) | (y > np.quantile(y, 0.9))
    assert np.allclose(w[rare] / w[~rare][0], 2.0)
    np.testing.assert_array_equal(data.sample_weights(y), np.ones(100, np.float32))


def test_npz_roundtrip_with_split(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 4, 2))
    y = np.linspace(0, 1, 40)
    split = np.array([0] * 30 + [1] * 5 + [2] * 5)
    np.savez(tmp_path / "d.npz", X=X, y=y, split=split)
    X2, y2, split2 = data.load_npz(str(tmp_path / "d.npz"))
    assert X2.dtype == np.float32 and X2.shape == (40, 4, 2)
    np.testing.assert_array_equal(split2, split)


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros(5)}, "missing array 'X'"),
    ({"X": np.zeros((5, 2)), "y": np.zeros(5)}, "expected \\(N, T, C\\)"),
    ({"X": np.zeros((5, 2, 2)), "y": np.zeros(4)}, "5 samples but y has 4"),
    ({"X": np.full((5, 2, 2), np.nan), "y": np.zeros(5)}, "NaN/inf"),
    ({"X": np.zeros((5, 2, 2), dtype=object), "y": np.zeros(5)}, "without pickle"),
])
def test_npz_bad_files_name_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DataError, match=message) as err:
        data.load_npz(str(path))
    assert str(path) in str(err.value)


def _toy(n=100, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4, 2)).astype(np.float32)
    y = (5e4 + 1e3 * rng.normal(size=n)).astype(np.float32)
    split = np.array([0] * (n - 30) + [1] * 15 + [2] * 15)
    return X, y, split


def test_target_scaler_is_the_train_split_mean_and_std_in_float64():
    X, y, split = _toy()
    prepared = data.prepare(X, y, split, temporal_frames=2)
    train = y[split == 0].astype(np.float64)
    assert prepared.target_mean == pytest.approx(train.mean(), rel=1e-12)
    assert prepared.target_std == pytest.approx(train.std(), rel=1e-12)
    # the loss sees standardised targets; y_* stay in the file's units
    assert prepared.z_train.mean() == pytest.approx(0.0, abs=1e-6)
    assert prepared.z_train.std() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(prepared.y_val, y[split == 1])
    np.testing.assert_allclose(prepared.unscale(prepared.z_val), y[split == 1], rtol=1e-6)
    assert prepared.scaler == {"mean": prepared.target_mean, "std": prepared.target_std}
    off = data.prepare(X, y, split, temporal_frames=2, standardize_target=False)
    assert (off.target_mean, off.target_std) == (0.0, 1.0)
    np.testing.assert_array_equal(off.z_train, off.y_train)


def test_label_fraction_keeps_a_seeded_share_of_train_targets_and_all_frames_for_ssl():
    X, y, split = _toy(n=230)                                    # 200 train
    part = data.prepare(X, y, split, temporal_frames=2, label_fraction=0.05, seed=3)
    assert len(part.y_train) == 10 and len(part.X_train) == 10 and len(part.w_train) == 10
    assert part.X_unlabeled.shape == (200, 4, 2) and part.n_train_all == 200
    assert len(part.y_val) == 15 and len(part.y_test) == 15      # untouched
    idx = data.labelled_subset(200, 0.05, seed=3)
    np.testing.assert_array_equal(part.y_train, y[split == 0][idx])
    np.testing.assert_array_equal(part.X_train, part.X_unlabeled[idx][:, 2:, :])
    # the scaler comes from the labelled targets only
    assert part.target_mean == pytest.approx(y[split == 0][idx].astype(np.float64).mean(), rel=1e-12)
    other = data.labelled_subset(200, 0.05, seed=4)
    assert not np.array_equal(idx, other)
    np.testing.assert_array_equal(data.labelled_subset(200, 1.0, seed=0), np.arange(200))
    assert len(data.labelled_subset(200, 0.001, seed=0)) == 2    # at least 2: a variance exists


@pytest.mark.parametrize("which, name", [(1, "val"), (2, "test")])
def test_constant_val_or_test_targets_are_a_data_error_naming_the_file(which, name):
    X, y, split = _toy()
    y[split == which] = 3.0
    with pytest.raises(data.DataError, match=f"/my/file.npz: targets are constant on the {name} split"):
        data.prepare(X, y, split, temporal_frames=2, source="/my/file.npz")


@pytest.mark.parametrize("section, key, value", [
    ("data", "label_fraction", 0.0), ("data", "label_fraction", 1.5),
    ("diagnosis", "confidence", 1.0), ("diagnosis", "inflate_ratio_of_r", 1.0),
])
def test_new_keys_are_range_checked_by_name(section, key, value):
    from collapse.config import Config, ConfigError, validate

    cfg = Config()
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match=f"{section}.{key}={value!r} is invalid"):
        validate(cfg)
