"""Datasets as in-memory arrays: the synthetic benchmark, user .npz files, splits,
frame selection, feature standardisation and sample weights for rare targets.

Everything here is numpy and plain numbers (no torch, no Hydra); `prepare` returns
float32 arrays that the entry point hands to torch once, so the training loop only
slices tensors already in memory.

The synthetic benchmark (`make_synthetic`)
-------------------------------------------
Each sample is a sequence of T frames of C features. A latent phase turns with a
period near T frames (weekly seasonality seen through a T-day window), jittered per
sample so the window never matches the period exactly::

    theta_t = phi + 2 pi t / P,   phi ~ U(0, 2 pi),   P = T (1 + U(-j, j))
    x_t     = a * M [cos theta_t, sin theta_t] + noise_std * e_t      (C,)
    z       = standardise(exp(1.5 sin theta_{T-1}))                 skewed: rare high targets
    y       = 0.72 + 0.1 * (signal * z + sqrt(1 - signal^2) * u)

`M` (C, 2) is a fixed random mixing, `a ~ U(0.5, 1.5)` an unobserved per-sample
amplitude, `u ~ N(0, 1)` target noise. The target is tied to the *last* frame's
phase. A model that mean-pools all 7 frames averages the phase over a whole period
and sees almost nothing (honest no-signal shrinkage, the mechanism behind the
original study's collapsed 7-frame runs), while the last 1-3 frames keep the phase
(healthy fits). `signal = 0` makes targets independent of inputs: a negative control.
Nothing in the generator knows about any training knob.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

TARGET_MEAN, TARGET_SCALE = 0.72, 0.1


class DataError(ValueError):
    """Bad or unusable input data (the message names the file or the key)."""


def make_synthetic(n_samples: int = 6000, n_frames: int = 7, n_features: int = 8,
                   signal: float = 1.0, noise_std: float = 0.3, period_jitter: float = 0.15,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate X (N, T, C) float32 and y (N,) float32; see the module docstring."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, 2)) / math.sqrt(2)                      # (C, 2)
    phase0 = rng.uniform(0, 2 * math.pi, size=(n_samples, 1))                     # (N, 1)
    period = n_frames * (1 + rng.uniform(-period_jitter, period_jitter, size=(n_samples, 1)))
    theta = phase0 + 2 * math.pi * np.arange(n_frames)[None, :] / period          # (N, T)
    amplitude = rng.uniform(0.5, 1.5, size=(n_samples, 1, 1))                     # (N, 1, 1)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=-1)                    # (N, T, 2)
    X = amplitude * circle @ mixing.T + noise_std * rng.normal(size=(n_samples, n_frames, n_features))
    z = np.exp(1.5 * np.sin(theta[:, -1]))
    z = (z - z.mean()) / z.std()
    u = rng.normal(size=n_samples)
    y = TARGET_MEAN + TARGET_SCALE * (signal * z + math.sqrt(max(0.0, 1 - signal ** 2)) * u)
    return X.astype(np.float32), y.astype(np.float32)


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Load a user file holding X (N, T, C), y (N,) and optionally split (N,) in {0,1,2}.

    Refuses pickled object arrays (allow_pickle=False: a data file must not run code)
    and checks shapes, lengths and finiteness, naming the file and the array.
    """
    if not os.path.isfile(path):
        raise DataError(f"data.path={path!r}: file not found")
    if not zipfile.is_zipfile(path):
        # np.load would take any other file for a pickle and suggest allow_pickle=True
        raise DataError(f"{path}: not an .npz file (np.savez writes a zip archive of X, y[, split])")
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
    X, y, split = arrays["X"], arrays["y"], arrays.get("split")
    if X.ndim == 2:
        raise DataError(f"{path}: X has shape {X.shape}; expected (N, T, C) - use X[:, None, :] for one frame")
    if X.ndim != 3:
        raise DataError(f"{path}: X has shape {X.shape}; expected rank 3 (N, T, C)")
    if y.ndim != 1:
        raise DataError(f"{path}: y has shape {y.shape}; expected (N,)")
    if len(X) != len(y):
        raise DataError(f"{path}: X has {len(X)} samples but y has {len(y)}")
    if 0 in X.shape[1:]:
        raise DataError(f"{path}: X has shape {X.shape}; expected at least one frame (T) and one feature (C)")
    for key, arr in (("X", X), ("y", y)):
        # real numbers only: a complex array would silently lose its imaginary part
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{path}: {key} has dtype {arr.dtype}; expected a real numeric array")
    with np.errstate(over="ignore", invalid="ignore"):
        X, y = X.astype(np.float32), y.astype(np.float32)
    for key, arr in (("X", X), ("y", y)):
        # checked in the float32 the model sees: 1e39 is finite in float64 but inf in float32
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DataError(f"{path}: {key} holds {bad} NaN/inf values (as float32)")
    if split is not None:
        if split.shape != y.shape or not np.isin(split, (0, 1, 2)).all():
            raise DataError(f"{path}: split must be shape (N,) with values 0/1/2 (train/val/test)")
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


def smoothed_density(y: np.ndarray, bins: int = 50, sigma: float = 2.0) -> np.ndarray:
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


def sample_weights(y: np.ndarray, overweight_factor: float = 1.0, rare_quantile: float = 0.1,
                   weighting: str = "none", bins: int = 50, sigma: float = 2.0,
                   dense_alpha: float = 1.0) -> np.ndarray:
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
    """Standardised, frame-selected splits. X_*: (N, k, C) float32, y_*: (N,) float32."""
    X_train: np.ndarray
    y_train: np.ndarray
    w_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_unlabeled: np.ndarray     # all T frames of the train split, (N, T, C), for SSL

    @property
    def n_features(self) -> int:
        return self.X_train.shape[-1]


def prepare(X: np.ndarray, y: np.ndarray, split: np.ndarray, temporal_frames: int,
            source: str = "data", min_split_size: int = 2, **weight_kwargs) -> PreparedData:
    """Split, keep the last `temporal_frames` frames, standardise features with train
    statistics only (no leakage), and compute train sample weights."""
    n_frames = X.shape[1]
    if not 1 <= temporal_frames <= n_frames:
        raise DataError(f"data.temporal_frames={temporal_frames} is invalid: must be in 1..{n_frames} "
                        f"(frames in {source})")
    for code, name in enumerate(("train", "val", "test")):
        count = int(np.sum(split == code))
        if count < min_split_size:
            raise DataError(f"{source}: the {name} split has {count} samples; need at least {min_split_size}")
    train = split == 0
    if np.ptp(y[train]) == 0:       # not std == 0: a float32 std of equal values is ~1e-7
        raise DataError(f"{source}: targets are constant on the train split (y = {y[train][0]:g}); "
                        "R² and the variance ratio are undefined")
    mean = X[train].mean(axis=(0, 1), keepdims=True)                  # (1, 1, C)
    std = X[train].std(axis=(0, 1), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    X = ((X - mean) / std).astype(np.float32)
    X_seen = X[:, n_frames - temporal_frames:, :]                      # (N, k, C) view
    val, test = split == 1, split == 2
    return PreparedData(
        X_train=np.ascontiguousarray(X_seen[train]), y_train=y[train].astype(np.float32),
        w_train=sample_weights(y[train], **weight_kwargs),
        X_val=np.ascontiguousarray(X_seen[val]), y_val=y[val].astype(np.float32),
        X_test=np.ascontiguousarray(X_seen[test]), y_test=y[test].astype(np.float32),
        X_unlabeled=X[train],
    )
