"""Training budget in optimizer steps, not epochs: a rule for small data sets.

A budget in epochs starves small splits: 60 epochs of batch 256 on 130 train samples
are 60 optimizer steps (one per epoch), far from converged, and the under-trained
model reads as "healthy shrinkage". The rule keeps the configured values whenever
they already give enough steps (the synthetic benchmark: 7000 train samples, 28
steps an epoch, unchanged), and otherwise

    batch  = min(batch_size, max(min_batch, ceil(n_train / min_batches_per_epoch)))
    epochs = max(epochs, ceil(min_steps / ceil(n_train / batch)))

so an epoch is at least `min_batches_per_epoch` steps and the run can take at least
`min_steps` steps; early stopping (patience in epochs) still ends it sooner.
Pure functions of plain numbers: the trainer's caller applies them.
"""
from __future__ import annotations

import math

MIN_BATCHES_PER_EPOCH = 8
MIN_BATCH = 16
MIN_STEPS = 1000


def effective_batch_size(n_train: int, batch_size: int, min_batches_per_epoch: int = MIN_BATCHES_PER_EPOCH,
                         min_batch: int = MIN_BATCH) -> int:
    """The batch size to train with: `batch_size`, capped so an epoch has at least
    `min_batches_per_epoch` steps, never below `min_batch` (nor above n_train)."""
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"n_train={n_train!r} and batch_size={batch_size!r} must be >= 1")
    cap = max(min_batch, math.ceil(n_train / min_batches_per_epoch))
    return max(1, min(batch_size, cap, n_train))


def effective_epochs(n_train: int, batch_size: int, epochs: int, min_steps: int = MIN_STEPS) -> int:
    """`epochs`, raised until epochs * steps_per_epoch >= min_steps (batch_size as trained)."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def plan(n_train: int, batch_size: int, epochs: int, **kw) -> dict:
    """{"batch_size", "epochs", "steps_per_epoch", "max_steps"} the rule gives."""
    batch = effective_batch_size(n_train, batch_size, **{k: v for k, v in kw.items() if k != "min_steps"})
    n_epochs = effective_epochs(n_train, batch, epochs, **{k: v for k, v in kw.items() if k == "min_steps"})
    steps = math.ceil(n_train / batch)
    return {"batch_size": batch, "epochs": n_epochs, "steps_per_epoch": steps, "max_steps": steps * n_epochs}


def budget_exhausted(best_epoch, epochs_run: int, stop_reason: str) -> bool:
    """True when the run ended at its epoch limit on its best epoch: it was still
    improving, so its metrics describe an under-trained model (raw-unit diabetes with
    the defaults: best epoch = 60 of 60 on every train size measured)."""
    return stop_reason == "max_epochs" and best_epoch is not None and best_epoch == epochs_run
