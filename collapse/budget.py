"""The training budget for small data sets, as pure functions of plain numbers.

A budget in epochs starves small splits: 60 epochs of batch 256 on 130 train samples
are 60 optimizer steps (one per epoch), far from converged, and the under-trained
model reads as "healthy shrinkage". The rule (trainer.min_batches_per_epoch, applied
by collapse.runner) caps the batch so an epoch is at least that many steps:

    batch = min(batch_size, max(MIN_BATCH, ceil(n_train / min_batches_per_epoch)))

It leaves the synthetic benchmark alone (7000 train samples: 28 steps an epoch at
256). Measured on scikit-learn's diabetes data (scripts/real_data.py --budget) with
standardised targets, early stopping ends runs well before 60 epochs at every train
size, so no minimum number of steps is imposed; `budget_exhausted` flags a run whose
best epoch was its last one allowed (still improving) instead.
"""
from __future__ import annotations

import math

MIN_BATCH = 16      # below this, batch statistics (the variance term, CCC) get too noisy


def effective_batch_size(n_train: int, batch_size: int, min_batches_per_epoch: int) -> int:
    """`batch_size`, capped so an epoch has at least `min_batches_per_epoch` steps (0: no
    cap), never below MIN_BATCH nor above n_train."""
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"n_train={n_train!r} and batch_size={batch_size!r} must be >= 1")
    if min_batches_per_epoch <= 0:
        return min(batch_size, n_train)
    cap = max(MIN_BATCH, math.ceil(n_train / min_batches_per_epoch))
    return max(1, min(batch_size, cap, n_train))


def budget_exhausted(best_epoch, epochs_run: int, stop_reason: str) -> bool:
    """True when the run ended at its epoch limit on its best epoch: it was still
    improving, so its metrics describe an under-trained model (raw-unit diabetes with
    the defaults: best epoch = 60 of 60 on every train size measured)."""
    return stop_reason == "max_epochs" and best_epoch is not None and best_epoch == epochs_run
