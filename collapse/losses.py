"""Training losses: a base regression loss plus a variance-preserving term.

    total = base(pred, target; w) + lambda * V(pred, target)

Base losses (per-sample weights `w`, normalised by the data module to mean 1 over the
train split, enter as a weighted mean so `overweight_factor` really shifts the optimum):
    mse    mean(w * (p - y)^2)
    huber  mean(w * huber_delta(p - y))
    l1     mean(w * |p - y|)
    ccc    (1 - c) * mse + c * (1 - CCC(p, y)), CCC = 2 cov / (var_p + var_y + (mu_p - mu_y)^2)
           over the batch (Lin 1989); CCC penalises a shrunken spread directly.
    bmc    Balanced MSE, batch-based Monte-Carlo (Ren et al., CVPR 2022):
           CE(-(p_i - y_j)^2 / (2 sigma^2), i) * 2 sigma^2, which cancels the label
           prior that MSE bakes in, so rare targets are not pulled to the mean.

Variance term (why: MSE's optimum shrinks predictions toward the mean; when the
shrinkage is pathological, a term that rewards matching the target spread undoes it):
    squared  V = (1 - var(p) / (var_y + eps))^2
    hinge    V = max(0, 1 - var(p) / (var_y + eps))^2   (no penalty for over-dispersion)
var_y is the batch's target variance, or the whole train split's (`train_target_var`,
less noisy for small batches). eps keeps the ratio finite for a constant-target batch.
Variances are population variances (unbiased=False) so a batch of one gives var 0
and a finite, gradient-free term rather than a NaN.

Every reduction runs over the last dimension: pred, target, weight (M, B) give one loss
per row (M,), which is how collapse.ensemble trains M members at once; `variance_lambda`
and `train_target_var` may then be (M,) tensors, one value per member.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from collapse.config import LossConfig


def variance_term(pred: torch.Tensor, target: torch.Tensor, mode: str,
                  target_var: Optional[float], eps: float) -> torch.Tensor:
    """(1 - var(pred)/var(target))^2, or its one-sided hinge. pred, target: (..., B) -> (...)."""
    var_t = target.var(dim=-1, unbiased=False) if target_var is None else torch.as_tensor(target_var)
    shortfall = 1.0 - pred.var(dim=-1, unbiased=False) / (var_t + eps)
    if mode == "hinge":
        shortfall = torch.clamp(shortfall, min=0.0)
    elif mode != "squared":
        raise ValueError(f"variance mode={mode!r} is invalid: must be squared or hinge")
    return shortfall ** 2


def concordance(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation over the batch (differentiable). (..., B), (..., B) -> (...)."""
    mu_p, mu_t = pred.mean(dim=-1, keepdim=True), target.mean(dim=-1, keepdim=True)
    cov = ((pred - mu_p) * (target - mu_t)).mean(dim=-1)
    return 2 * cov / (pred.var(dim=-1, unbiased=False) + target.var(dim=-1, unbiased=False)
                      + (mu_p - mu_t).squeeze(-1) ** 2 + eps)


def bmc(pred: torch.Tensor, target: torch.Tensor, sigma: float,
        weight: Optional[torch.Tensor] = None, chunk: int = 2048) -> torch.Tensor:
    """Balanced MSE, batch-based Monte-Carlo estimate (Ren et al. 2022). (..., B), (..., B) -> (...).

    Per sample i: CE_i = logsumexp_j(l_ij) - l_ii with l_ij = -(p_i - y_j)^2 / (2 sigma^2).
    Rows go in chunks so a whole validation split (B in the 10^5s) never builds a B x B matrix."""
    noise_var = sigma ** 2
    rows = []
    for start in range(0, pred.shape[-1], chunk):
        logits = -(pred[..., start:start + chunk, None] - target[..., None, :]) ** 2 / (2 * noise_var)  # (..., b, B)
        diagonal = torch.arange(logits.shape[-2], device=pred.device)
        rows.append(torch.logsumexp(logits, dim=-1) - logits[..., diagonal, diagonal + start])
    ce = torch.cat(rows, dim=-1)                                                              # (..., B)
    if weight is not None:
        ce = ce * weight
    # the 2 sigma^2 factor restores MSE's gradient scale (the paper's trick)
    return ce.mean(dim=-1) * (2 * noise_var)


class RegressionLoss:
    """Callable loss: `loss(pred, target, weight=None) -> scalar tensor`, configured by
    a LossConfig (collapse.config holds every default). `train_target_var` is required
    when `cfg.variance_target == "train"`."""

    def __init__(self, cfg: LossConfig, train_target_var: Optional[float] = None):
        if cfg.variance_target == "train" and train_target_var is None:
            raise ValueError("variance_target='train' needs train_target_var")
        self.cfg = cfg
        self.name, self.variance_lambda, self.variance_mode = cfg.name, cfg.variance_lambda, cfg.variance_mode
        self.target_var = train_target_var if cfg.variance_target == "train" else None
        self.huber_delta, self.bmc_sigma, self.ccc_weight, self.eps = (
            cfg.huber_delta, cfg.bmc_sigma, cfg.ccc_weight, cfg.eps)

    def base(self, pred: torch.Tensor, target: torch.Tensor,
             weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.name == "bmc":
            return bmc(pred, target, self.bmc_sigma, weight)
        if self.name == "l1":
            per_sample = (pred - target).abs()
        elif self.name == "huber":
            per_sample = F.huber_loss(pred, target, reduction="none", delta=self.huber_delta)
        else:  # mse, and the MSE part of ccc
            per_sample = (pred - target) ** 2
        base = (per_sample * weight).mean(dim=-1) if weight is not None else per_sample.mean(dim=-1)
        if self.name == "ccc":
            base = (1 - self.ccc_weight) * base + self.ccc_weight * (1 - concordance(pred, target, self.eps))
        return base

    def __call__(self, pred: torch.Tensor, target: torch.Tensor,
                 weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = self.base(pred, target, weight)
        if isinstance(self.variance_lambda, torch.Tensor):      # one lambda per member (M,)
            return total + self.variance_lambda * variance_term(
                pred, target, self.variance_mode, self.target_var, self.eps)
        if self.variance_lambda > 0:
            total = total + self.variance_lambda * variance_term(
                pred, target, self.variance_mode, self.target_var, self.eps)
        return total
