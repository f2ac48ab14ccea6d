"""A custom data set for `data=custom`:

    python -m collapse.train data=custom data._target_=examples.datasets.make_waves +data.kwargs.n_samples=600

The contract (collapse.models, collapse.targets): a callable with its own keywords (data.kwargs.*), and
`seed` if it wants the run's seed, returning (X, y) or (X, y, split): X (N, T, C),
y (N,), split (N,) of 0/1/2. Frame selection (data.temporal_frames), the split,
standardisation and sample weights are the framework's, as for data=npz.
"""
from __future__ import annotations

import numpy as np


def make_waves(n_samples: int = 800, n_frames: int = 5, n_features: int = 4, noise: float = 0.1,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sine waves with a random phase per sample; the target is the wave's value one
    step after the last frame, so the last frames carry the signal."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=(n_samples, 1))
    t = np.arange(n_frames)[None, :]
    mixing = rng.normal(size=(2, n_features))
    latent = np.stack([np.sin(phase + 0.8 * t), np.cos(phase + 0.8 * t)], axis=-1)     # (N, T, 2)
    X = latent @ mixing + noise * rng.normal(size=(n_samples, n_frames, n_features))
    y = 10.0 + 3.0 * np.sin(phase[:, 0] + 0.8 * n_frames)                                  # units of its own
    return X.astype(np.float32), y.astype(np.float32)


def make_waves_split(n_samples: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same, with a split of its own: the first 70% train, then 15% val, 15% test."""
    X, y = make_waves(n_samples, seed=seed)
    split = np.zeros(n_samples, dtype=np.int64)
    split[int(0.70 * n_samples):int(0.85 * n_samples)] = 1
    split[int(0.85 * n_samples):] = 2
    return X, y, split
