"""Datasets as in-memory arrays: the synthetic benchmark, user .npz files, splits,
frame selection, feature and target standardisation (train statistics only), label
subsets for SSL studies (`label_fraction`) and sample weights for rare targets.

Everything here is numpy and plain numbers (no torch, no Hydra); `prepare` returns
float32 arrays that the entry point hands to torch once, so the training loop only
slices tensors already in memory.

The synthetic benchmark (`make_synthetic`)
-------------------------------------------
Each sample is a sequence of T frames (T = 7: a week of days) of C features. Three
latent cycles turn once per period P, which is near T frames and jittered per
sample so that the window never matches it exactly (weekly seasonality seen
through a T-day window)::

    theta_k,t = phi_k + 2 pi t / P      phi_k ~ U(0, 2 pi), k = 0..K,  P = T (1 + U(-j, j))
    x_t       = sum_k a_k M_k [cos theta_k,t, sin theta_k,t] + noise_std * e_t     (C,)
    z         = standardise(exp(1.5 sin theta_0,T-1))     skewed: rare high targets
    y         = 0.72 + 0.1 * (signal * z + sqrt(1 - signal^2) * u)

Only cycle 0 drives the target, through its phase at the *last* frame; the K = 2
distractor cycles (the same period, independent phases) and the per-sample,
unobserved amplitudes a_k ~ U(0.5, 1.5) are nuisance. `M_k` (C, 2) is a fixed
random mixing, e ~ N(0, I), u ~ N(0, 1) target noise (none at signal = 1).

Why this design (each choice measured with the presets in conf/experiment/, 5 seeds):
- Honest no-signal shrinkage from the data alone: a model that mean-pools all 7
  frames averages every cycle over a whole period and sees almost nothing of the
  last phase (|r| < 0.1 on val), so MSE rightly predicts ~ the mean (runs 2-3:
  variance ratio 0.01-0.08), while the last 3 frames keep the phase (phase1: r ~ 0.8).
  The jitter keeps a small, real leak. noise_std is low because any per-sample
  variation that survives the 7-frame mean becomes prediction spread with no signal
  behind it (at noise_std 0.3, run 3 sat at variance ratio 0.09-0.13).
- The distractor cycles are nuisance variation, as real inputs have. They make a
  random network's initial output less correlated with the target (|r| 0.4-0.9
  without them, 0.0-0.6 with them, 5 inits), which matters because a variance term
  is blind to the sign of the pattern it spreads: without them, at n_samples 6000,
  a phase-1 run (lambda 0.5) stopped early inside an anti-correlated state on one
  seed in five (none with them); and the overreg squeeze needed a 3x stronger decay,
  after which the variance-term cure lifted R² by only 0.21 on two seeds of five
  (>= 0.26 on all five with them).
- Pathological collapse is left to training (coupled L2, tiny output init: the
  `overreg` preset), and `signal = 0` makes targets independent of the inputs: a
  negative control. Nothing in the generator knows about any training knob.
"""
from __future__ import annotations

import math
import os
import stat
import zipfile
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from collapse.config import DataConfig
from collapse.errors import DataError

TARGET_MEAN, TARGET_SCALE = 0.72, 0.1
FLOAT32_SQRT_MAX = float(np.sqrt(np.finfo(np.float32).max))     # ~1.8e19


# Defaults below are read from the schema (collapse.config.DataConfig), their one place.
_D = DataConfig


def make_synthetic(n_samples: int = _D.n_samples, n_frames: int = _D.n_frames, n_features: int = _D.n_features,
                   signal: float = _D.signal, noise_std: float = _D.noise_std,
                   period_jitter: float = _D.period_jitter, seed: int = 0,
                   n_distractors: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Generate X (N, T, C) float32 and y (N,) float32; see the module docstring.

    n_distractors: latent cycles besides the target's (same period, independent phases)."""
    rng = np.random.default_rng(seed)
    n_cycles = 1 + n_distractors
    mixing = rng.normal(size=(n_features, 2 * n_cycles)) / math.sqrt(2 * n_cycles)     # (C, 2L)
    phase0 = rng.uniform(0, 2 * math.pi, size=(n_samples, n_cycles))                   # (N, L)
    period = n_frames * (1 + rng.uniform(-period_jitter, period_jitter, size=(n_samples, 1)))
    turn = 2 * math.pi * np.arange(n_frames)[None, :] / period                          # (N, T)
    theta = phase0[:, None, :] + turn[:, :, None]                                       # (N, T, L)
    amplitude = rng.uniform(0.5, 1.5, size=(n_samples, 1, n_cycles))                    # (N, 1, L)
    latent = np.concatenate([amplitude * np.cos(theta), amplitude * np.sin(theta)], axis=-1)  # (N, T, 2L)
    X = latent @ mixing.T + noise_std * rng.normal(size=(n_samples, n_frames, n_features))
    z = np.exp(1.5 * np.sin(theta[:, -1, 0]))            # cycle 0 at the last frame
    z = (z - z.mean()) / z.std()
    u = rng.normal(size=n_samples)
    y = TARGET_MEAN + TARGET_SCALE * (signal * z + math.sqrt(max(0.0, 1 - signal ** 2)) * u)
    return X.astype(np.float32), y.astype(np.float32)


def memory_limit() -> int:
    """How many bytes of arrays a data file may unpack to: half the memory available now
    (MemAvailable, capped by the address-space limit, `ulimit -v`), since the arrays are
    held at least twice while they become float32 splits. Without /proc: no cap from it."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            available = soft if available is None else min(available, soft)
    except (ImportError, OSError, ValueError):
        pass
    return (available if available is not None else 2 ** 62) // 2


_NOT_REGULAR = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _check_file(path: str, limit: int) -> None:
    """Refuse, before anything opens it, what cannot be an .npz of bounded size: a missing
    path, a directory, a device (/dev/zero never ends), a FIFO (blocks forever), a socket,
    and a file whose size or declared unpacked size exceeds `limit`. Symlinks are followed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"data.path={path!r}: file not found") from None
    except OSError as e:      # ELOOP: a symbolic link loop; EACCES, ...
        raise DataError(f"data.path={path!r}: cannot be opened ({e.strerror})") from None
    target = f" (-> {os.path.realpath(path)})" if os.path.islink(path) else ""
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"data.path={path!r}{target} is a directory, not an .npz file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
        raise DataError(f"data.path={path!r}{target} is {kind}, size {st.st_size} bytes: refused "
                        f"(only regular .npz files are read, up to {limit} bytes)")
    if st.st_size > limit:
        raise DataError(f"data.path={path!r}{target} is {st.st_size} bytes, over the limit of {limit} bytes "
                        "(half the memory available): refused")


def _unpacked_size(path: str) -> int:
    """The bytes the archive's arrays will take once loaded: each .npy header's shape times
    its item size (np.load allocates that before reading a byte of data, whatever the zip
    holds), or the zip's declared size for a member that is not an .npy."""
    from numpy.lib import format as npy

    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                total += info.file_size
                continue
            with archive.open(info) as member:
                version = npy.read_magic(member)
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(member)
                total += math.prod(shape) * dtype.itemsize
    return total


def load_npz(path: str, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Load a user file holding X (N, T, C), y (N,) and optionally split (N,) in {0,1,2}.

    Reads regular files only, and only when the file and the arrays it unpacks to (the
    sizes its zip directory declares) fit in `limit` bytes (default `memory_limit()`).
    Refuses pickled object arrays (allow_pickle=False: a data file must not run code)
    and checks shapes, lengths and finiteness, naming the file and the array.
    """
    limit = memory_limit() if limit is None else limit
    _check_file(path, limit)
    if not zipfile.is_zipfile(path):
        # np.load would take any other file for a pickle and suggest allow_pickle=True
        raise DataError(f"{path}: not an .npz file (np.savez writes a zip archive of X, y[, split])")
    try:
        unpacked = _unpacked_size(path)
    except Exception as e:  # noqa: BLE001 - zip/format errors come as many types
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if unpacked > limit:
        raise DataError(f"{path}: its arrays unpack to {unpacked} bytes, over the limit of {limit} bytes "
                        "(half the memory available): refused")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as e:  # object arrays need pickle
        raise DataError(f"{path}: cannot load without pickle ({e}); save plain numeric arrays") from None
    except Exception as e:  # noqa: BLE001 - zip/format errors come as many types
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (found: {sorted(arrays) or 'none'})")
    return check_arrays(arrays["X"], arrays["y"], arrays.get("split"), path)


def check_arrays(X, y, split, source: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """X (N, T, C), y (N,) and an optional split (N,) in {0, 1, 2}, from a file or a
    data=custom callable: shapes, lengths, real dtypes and values float32 can compute
    with, each refused with a DataError naming `source`. Returns float32 X, float64 y
    (its precision matters until it is standardised) and int64 split."""
    X, y = np.asarray(X), np.asarray(y)
    split = np.asarray(split) if split is not None else None
    if X.ndim == 2:
        raise DataError(f"{source}: X has shape {X.shape}; expected (N, T, C) - use X[:, None, :] for one frame")
    if X.ndim != 3:
        raise DataError(f"{source}: X has shape {X.shape}; expected rank 3 (N, T, C)")
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}; expected (N,)")
    if len(X) != len(y):
        raise DataError(f"{source}: X has {len(X)} samples but y has {len(y)}")
    if 0 in X.shape[1:]:
        raise DataError(f"{source}: X has shape {X.shape}; expected at least one frame (T) and one feature (C)")
    for key, arr in (("X", X), ("y", y)):
        # real numbers only: a complex array would silently lose its imaginary part
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{source}: {key} has dtype {arr.dtype}; expected a real numeric array")
    # y keeps float64 until it is standardised (prepare): 1e8 + y in float32 keeps ~3
    # significant digits of y, the model sees only (y - mean) / std anyway
    with np.errstate(over="ignore", invalid="ignore"):
        X, y = X.astype(np.float32), y.astype(np.float64)
    for key, arr in (("X", X), ("y", y)):
        # X checked in the float32 the model sees: 1e39 is finite in float64 but inf in float32
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DataError(f"{source}: {key} holds {bad} NaN/inf values (as {arr.dtype})")
        # a value whose square overflows float32 makes every variance, MSE and
        # standardisation inf: it would train to NaN and read as a divergence (y too: its
        # metrics and predictions in original units pass through float32 tensors)
        largest = float(np.max(np.abs(arr))) if arr.size else 0.0
        if largest > FLOAT32_SQRT_MAX:
            raise DataError(f"{source}: {key} holds values up to {largest:.3g}, too large for float32 arithmetic "
                            f"(squares overflow above {FLOAT32_SQRT_MAX:.2g}); rescale it or check for sentinel values")
    if split is not None:
        if split.shape != y.shape or not np.isin(split, (0, 1, 2)).all():
            raise DataError(f"{source}: split must be shape (N,) with values 0/1/2 (train/val/test)")
        split = split.astype(np.int64)
    return X, y, split


def split_indices(n_samples: int, val_fraction: float, test_fraction: float,
                  seed: int) -> np.ndarray:
    """Seeded random split: (N,) array of 0 (train) / 1 (val) / 2 (test)."""
    order = np.random.default_rng(seed).permutation(n_samples)
    n_val, n_test = round(n_samples * val_fraction), round(n_samples * test_fraction)
    split = np.zeros(n_samples, dtype=np.int64)
    split[order[:n_val]] = 1
    split[order[n_val:n_val + n_test]] = 2
    return split


def smoothed_density(y: np.ndarray, bins: int = _D.weighting_bins, sigma: float = _D.weighting_sigma) -> np.ndarray:
    """Label-distribution smoothing (Yang et al., ICML 2021): histogram of y convolved
    with a Gaussian of `sigma` bins, read back at each sample. (N,) -> (N,)."""
    counts, edges = np.histogram(y, bins=bins)
    if sigma > 0:
        half = int(math.ceil(3 * sigma))
        kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
        counts = np.convolve(np.pad(counts.astype(np.float64), half, mode="reflect"),
                             kernel / kernel.sum(), mode="valid")
    which = np.clip(np.digitize(y, edges[1:-1]), 0, bins - 1)
    return counts[which] / len(y)


def sample_weights(y: np.ndarray, overweight_factor: float = _D.overweight_factor,
                   rare_quantile: float = _D.rare_quantile, weighting: str = _D.weighting,
                   bins: int = _D.weighting_bins, sigma: float = _D.weighting_sigma,
                   dense_alpha: float = _D.dense_alpha) -> np.ndarray:
    """Loss weights for train targets `y` (N,), normalised to mean 1.

    weighting: none | inverse (1/rho) | sqrt_inverse (1/sqrt(rho)) on the LDS density
    rho, or dense (DenseWeight, Steininger et al. 2021: max(1 - alpha * rho', 1e-6)
    with rho' the density scaled to [0, 1]). Then targets outside the central
    [rare_quantile, 1 - rare_quantile] band are multiplied by `overweight_factor`.
    """
    y = np.asarray(y, dtype=np.float64)
    weights = np.ones_like(y)
    if weighting != "none":
        rho = smoothed_density(y, bins, sigma)
        if weighting == "inverse":
            weights = 1.0 / np.maximum(rho, 1e-12)
        elif weighting == "sqrt_inverse":
            weights = 1.0 / np.sqrt(np.maximum(rho, 1e-12))
        elif weighting == "dense":
            span = rho.max() - rho.min()
            scaled = (rho - rho.min()) / span if span > 0 else np.zeros_like(rho)
            weights = np.maximum(1.0 - dense_alpha * scaled, 1e-6)
        else:
            raise ValueError(f"weighting={weighting!r} is invalid: must be none, inverse, sqrt_inverse or dense")
    if overweight_factor != 1.0:
        lo, hi = np.quantile(y, [rare_quantile, 1 - rare_quantile])
        weights = np.where((y < lo) | (y > hi), weights * overweight_factor, weights)
    return (weights / weights.mean()).astype(np.float32)


@dataclass
class PreparedData:
    """Standardised, frame-selected splits. X_*: (N, k, C) float32, y_*: (N,) float64.

    y_* are in the file's (original) units: every metric, prediction and recalibration
    speaks them. The loss and the model see `z_train` / `z_val`, the same targets
    standardised with the labelled train split's mean and std (`target_mean`,
    `target_std`; 0 and 1 when `data.standardize_target=false`), so that MSE and the
    dimensionless variance term keep one meaning whatever the units.
    """
    X_train: np.ndarray
    y_train: np.ndarray
    w_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_unlabeled: Optional[np.ndarray]   # all T frames of the whole train split, (N, T, C), for SSL; None without
    target_mean: float = 0.0
    target_std: float = 1.0
    n_train_all: int = 0                # train samples before label_fraction dropped targets (SSL sees these)

    def scale(self, y: np.ndarray) -> np.ndarray:
        """Original units -> standardised, float32 (what the loss sees)."""
        return ((np.asarray(y, dtype=np.float64) - self.target_mean) / self.target_std).astype(np.float32)

    def unscale(self, z) -> np.ndarray:
        """Standardised model output -> original units, float64 (what metrics see)."""
        return np.asarray(z, dtype=np.float64) * self.target_std + self.target_mean

    @cached_property
    def z_train(self) -> np.ndarray:
        return self.scale(self.y_train)     # computed once: torch shares its memory

    @cached_property
    def z_val(self) -> np.ndarray:
        return self.scale(self.y_val)

    @property
    def scaler(self) -> dict:
        return {"mean": self.target_mean, "std": self.target_std}

    @property
    def n_features(self) -> int:
        return self.X_train.shape[-1]


def target_scaler(y_train: np.ndarray, standardize: bool = True) -> tuple[float, float]:
    """(mean, std) of the train targets in float64 (population std); (0, 1) when off.

    float64 matters: targets like 5e4 + 1e3 * y hold their signal in the low digits,
    which a float32 mean/variance would lose."""
    if not standardize:
        return 0.0, 1.0
    y = np.asarray(y_train, dtype=np.float64)
    return float(y.mean()), float(y.std())


def labelled_subset(n_train: int, label_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the train samples that keep their targets: a seeded choice of
    round(label_fraction * n_train) of them (at least 2, so a variance exists)."""
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction={label_fraction!r} is invalid: must be in (0, 1]")
    if label_fraction == 1:
        return np.arange(n_train)
    n_keep = min(n_train, max(2, round(label_fraction * n_train)))
    # its own stream (seed + a constant) so the choice does not shift the split's
    return np.sort(np.random.default_rng([seed, 1]).choice(n_train, size=n_keep, replace=False))


def prepare(X: np.ndarray, y: np.ndarray, split: np.ndarray, temporal_frames: int,
            source: str = "data", min_split_size: int = 2, unlabeled: bool = True,
            standardize_target: bool = True, label_fraction: float = 1.0, seed: int = 0,
            **weight_kwargs) -> PreparedData:
    """Split, keep the last `temporal_frames` frames, standardise features with train
    statistics only (no leakage), and compute train sample weights. `unlabeled` keeps
    all frames of the train split for SSL (a copy 2x the train split: skip it without SSL).

    `label_fraction` < 1 keeps the targets of only that (seeded) share of the train
    split: the supervised step sees those samples, SSL all train frames; val and test
    are untouched. The target scaler comes from the labelled train targets only."""
    n_frames = X.shape[1]
    if not 1 <= temporal_frames <= n_frames:
        raise DataError(f"data.temporal_frames={temporal_frames} is invalid: must be in 1..{n_frames} "
                        f"(frames in {source})")
    for code, name in enumerate(("train", "val", "test")):
        count = int(np.sum(split == code))
        if count < min_split_size:
            raise DataError(f"{source}: the {name} split has {count} samples; need at least {min_split_size}")
    train, val, test = split == 0, split == 1, split == 2
    labelled = labelled_subset(int(train.sum()), label_fraction, seed)
    y_train = y[train][labelled]
    for name, part in (("labelled train", y_train), ("val", y[val]), ("test", y[test])):
        # not std == 0: a float32 std of equal values is ~1e-7
        if np.ptp(part) == 0:
            raise DataError(f"{source}: targets are constant on the {name} split (y = {part[0]:g}); "
                            "R², r and the variance ratio are undefined there")
    mean = X[train].mean(axis=(0, 1), keepdims=True)                  # (1, 1, C)
    std = X[train].std(axis=(0, 1), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    X = ((X - mean) / std).astype(np.float32)
    X_seen = X[:, n_frames - temporal_frames:, :]                      # (N, k, C) view
    t_mean, t_std = target_scaler(y_train, standardize_target)
    return PreparedData(
        X_train=np.ascontiguousarray(X_seen[train][labelled]), y_train=y_train.astype(np.float64),
        w_train=sample_weights(y_train, **weight_kwargs),
        X_val=np.ascontiguousarray(X_seen[val]), y_val=y[val].astype(np.float64),
        X_test=np.ascontiguousarray(X_seen[test]), y_test=y[test].astype(np.float64),
        X_unlabeled=X[train] if unlabeled else None,
        target_mean=t_mean, target_std=t_std,
        n_train_all=int(train.sum()),
    )


# ---------------------------------------------------------------- from a DataConfig

def load(cfg: DataConfig, seed: int, unlabeled: bool) -> PreparedData:
    """The data a DataConfig describes, prepared: the synthetic benchmark, an .npz file or
    data=custom's callable, split (seeded when the source has no split), frame-selected,
    standardised and weighted. `unlabeled`: keep all train frames for SSL."""
    if cfg.name == "synthetic":
        X, y = make_synthetic(cfg.n_samples, cfg.n_frames, cfg.n_features, cfg.signal, cfg.noise_std,
                              cfg.period_jitter, seed=seed)
        split, source = None, "synthetic data"
    elif cfg.name == "custom":
        X, y, split = call_custom(cfg, seed)
        source = f"data._target_={cfg._target_}"
    else:
        X, y, split = load_npz(cfg.path)
        source = cfg.path
    if split is None:
        split = split_indices(len(y), cfg.val_fraction, cfg.test_fraction, seed=seed)
    return prepare(X, y, split, cfg.temporal_frames, source=source, unlabeled=unlabeled,
                   standardize_target=cfg.standardize_target, label_fraction=cfg.label_fraction, seed=seed,
                   overweight_factor=cfg.overweight_factor, rare_quantile=cfg.rare_quantile,
                   weighting=cfg.weighting, bins=cfg.weighting_bins, sigma=cfg.weighting_sigma,
                   dense_alpha=cfg.dense_alpha)


def call_custom(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """data=custom: call `cfg._target_(**cfg.kwargs)` (plus `seed=...` when it names that
    parameter, collapse.targets) and check what it returns as `load_npz` checks a file:
    (X, y) or (X, y, split), arrays as an .npz holds them."""
    from collapse.targets import instantiate

    source = f"data._target_={cfg._target_!r}"
    out = instantiate("data", cfg._target_, dict(cfg.kwargs), {}, {"seed": seed})
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise DataError(f"{source} returned a {type(out).__name__}; expected (X, y) or (X, y, split)")
    return check_arrays(out[0], out[1], out[2] if len(out) == 3 else None, source)
