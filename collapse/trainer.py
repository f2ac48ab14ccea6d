"""The training loop: shuffled index slicing of in-memory tensors, early stopping on
the monitored val metric, a collapse guard, and divergence recorded as a result.

The Trainer knows nothing about the model or the loss beyond `model(x) -> (B,)` and
`loss_fn(pred, target, weight) -> scalar`; it takes plain numbers and tensors.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from collapse.metrics import regression_report

log = logging.getLogger("collapse")

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # adam applies weight_decay as coupled L2 inside the adaptive step, which squeezes
    # the output scale; adamw decouples it (Loshchilov & Hutter) and does not.
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is invalid: must be one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode predictions (N,) for X (N, T, C), in chunks to bound memory."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    model.train(was_training)
    return out


@dataclass
class FitResult:
    status: str                   # completed | diverged | stopped_collapse
    stop_reason: str              # max_epochs | early_stopping | collapse_guard | non_finite_loss
    best_epoch: Optional[int]     # None when no epoch finished with finite predictions
    best_score: float
    history: list = field(default_factory=list)


class Trainer:
    """Fit a regressor; fitted state ends in `_` (scikit-learn style)."""

    def __init__(self, epochs: int = 60, batch_size: int = 256, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 0.0, monitor: str = "r2",
                 patience: int = 10, min_delta: float = 1e-4, guard: bool = True,
                 guard_threshold: float = 0.02, guard_warmup: int = 10, guard_patience: int = 5,
                 seed: int = 0, log_fn: Callable[[str], None] = log.info):
        if monitor not in ("r2", "val_loss"):
            raise ValueError(f"monitor={monitor!r} is invalid: must be r2 or val_loss")
        self.epochs, self.batch_size = epochs, batch_size
        self.optimizer, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.guard, self.guard_threshold = guard, guard_threshold
        self.guard_warmup, self.guard_patience = guard_warmup, guard_patience
        self.seed, self.log_fn = seed, log_fn

    def _score(self, val_loss: float, r2: float) -> float:
        # one "higher is better" number; NaN (constant predictions) counts as worst
        score = r2 if self.monitor == "r2" else -val_loss
        return score if math.isfinite(score) else -math.inf

    def fit(self, model: nn.Module, loss_fn, X_train: torch.Tensor, y_train: torch.Tensor,
            w_train: Optional[torch.Tensor], X_val: torch.Tensor, y_val: torch.Tensor) -> FitResult:
        """X_*: (N, T, C), y_*: (N,), w_train: (N,) or None, all on the model's device.

        On return the model holds the weights of the best epoch; `best_state_` holds
        a copy of them (None if no epoch finished with finite predictions)."""
        opt = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        shuffle = torch.Generator().manual_seed(self.seed)   # CPU generator: same order on any device
        n_train = len(X_train)
        y_val_np = y_val.double().cpu().numpy()
        history: list[dict] = []
        best_score, best_epoch, since_best, collapsed_for = -math.inf, None, 0, 0
        self.best_state_ = None
        status, stop_reason = "completed", "max_epochs"

        for epoch in range(1, self.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n_train, generator=shuffle).to(X_train.device)
            loss_sum = torch.zeros((), device=X_train.device)
            for start in range(0, n_train, self.batch_size):
                idx = perm[start:start + self.batch_size]
                w = w_train[idx] if w_train is not None else None
                loss = loss_fn(model(X_train[idx]), y_train[idx], w)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # accumulate on the device: a .item() per batch would sync every step
                loss_sum += loss.detach() * len(idx)
            train_loss = loss_sum.item() / n_train

            pred_val = predict(model, X_val)
            val_loss = loss_fn(pred_val, y_val, None).item()
            if not (math.isfinite(train_loss) and torch.isfinite(pred_val).all()):
                # a recorded result, not a crash: the best weights so far are kept
                status, stop_reason = "diverged", "non_finite_loss"
                history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
                self.log_fn(f"Epoch {epoch} | loss is not finite: stopping (diverged)")
                break
            report = regression_report(y_val_np, pred_val.double().cpu().numpy())
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            **{f"val_{k}": v for k, v in report.items()},
                            "seconds": time.perf_counter() - t0})
            self.log_fn(f"Epoch {epoch} | R²: {report['r2']:.3f} | Var Ratio: {100 * report['variance_ratio']:.1f}% "
                        f"| Pred Std: {report['pred_std']:.4g} | Val Loss: {val_loss:.4g}")

            score = self._score(val_loss, report["r2"])
            if best_epoch is None or score > best_score + self.min_delta:
                best_score, best_epoch, since_best = score, epoch, 0
                # clone: the optimizer keeps updating the live parameters in place
                self.best_state_ = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            # guard: a val variance ratio stuck near zero after warm-up is collapse, not a slow start
            low = report["variance_ratio"] < self.guard_threshold
            collapsed_for = collapsed_for + 1 if (low and epoch > self.guard_warmup) else 0
            if self.guard and collapsed_for >= self.guard_patience:
                status, stop_reason = "stopped_collapse", "collapse_guard"
                self.log_fn(f"Epoch {epoch} | collapse guard: val variance ratio < {self.guard_threshold:.1%} "
                            f"for {collapsed_for} epochs, stopping")
                break
            if self.patience and since_best >= self.patience:
                stop_reason = "early_stopping"
                break

        if self.best_state_ is not None:
            model.load_state_dict(self.best_state_)
        return FitResult(status, stop_reason, best_epoch, best_score, history)
