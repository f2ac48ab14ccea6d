"""Self-supervised pretraining of the per-frame encoder: masked-feature reconstruction.

Each unlabeled frame x (C,) has a random `mask_ratio` of its features set to 0 (the
train mean, as features are standardised); the encoder plus a linear decoder must
reconstruct the frame, with the loss on the masked features only (reconstructing
visible ones teaches the identity map, not structure):

    loss = sum(mask * (decoder(encoder(x_masked + noise)) - x)^2) / sum(mask)

`corruption_std` > 0 adds Gaussian noise to the encoder's input: a deliberately
degraded pretraining (the original study's run1), which pushes the encoder toward
blurred, low-variance features. The decoder is discarded afterwards.

Feature scale. Pretraining grows the encoder's output ~5x (RMS 0.07 -> 0.36 per unit
on the benchmark, seeds 0-1), so the same output-layer init (`model.init_std`) started
5-7x wider after SSL than without: 1.5-1.8 target stds of spread with a random sign
(r -0.35 with the target at init). In raw target units (std 0.1, variance term 50x
MSE) that spread was locked in: phase1 with ssl=on ended at val R² -1.97 / -1.19
against 0.62 / 0.58 without. So after pretraining the encoder's last layer is scaled
to give the RMS output of the encoder before it (`match_scale`): ReLU is positively
homogeneous, so the learned directions are kept and `init_std` means the same with
and without SSL.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from collapse.config import SSLConfig
from collapse.optim import Optimizer


@torch.no_grad()
def feature_rms(encoder: nn.Module, frames: torch.Tensor, n: int = 4096) -> float:
    """RMS of the encoder's output over (the first n of) `frames` (M, C), eval mode."""
    was_training = encoder.training
    encoder.eval()
    out = encoder(frames[:n])
    encoder.train(was_training)
    return float(out.pow(2).mean().sqrt())


@torch.no_grad()
def rescale_last_layer(encoder: nn.Module, factor: float) -> None:
    """Multiply the encoder's last Linear layer (weight and bias) by `factor` > 0: with
    ReLU after it, every output feature scales by `factor` and nothing else changes."""
    last = [m for m in encoder.modules() if isinstance(m, nn.Linear)][-1]
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)


def pretrain_encoder(encoder: nn.Module, frames: torch.Tensor, cfg: SSLConfig, seed: int,
                     log_fn=None, match_scale: bool = True) -> list[dict]:
    """Pretrain `encoder` in place on `frames` (N, T, C) or (M, C) with the settings of
    `cfg` (epochs, lr, batch_size, mask_ratio, corruption_std); returns the loss history.
    `match_scale`: restore the encoder's pre-training output RMS afterwards (module
    docstring); the last history entry then holds `feature_rms_before/after` and `rescaled_by`."""
    epochs, batch_size, mask_ratio, corruption_std = cfg.epochs, cfg.batch_size, cfg.mask_ratio, cfg.corruption_std
    frames = frames.reshape(-1, frames.shape[-1])                      # (M, C): frames are samples here
    rms_before = feature_rms(encoder, frames)
    n_frames, n_features = frames.shape
    decoder = nn.Linear(encoder.hidden_dim, n_features).to(frames.device)
    opt = Optimizer("adam", list(encoder.parameters()) + list(decoder.parameters()), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    encoder.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n_frames, generator=gen).to(frames.device)
        total, count = 0.0, 0
        for start in range(0, n_frames, batch_size):
            x = frames[perm[start:start + batch_size]]                 # (B, C)
            mask = (torch.rand(x.shape, generator=gen) < mask_ratio).to(x.device)
            noise = corruption_std * torch.randn(x.shape, generator=gen).to(x.device)
            recon = decoder(encoder(x.masked_fill(mask, 0.0) + noise))
            loss = ((recon - x) ** 2 * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            count += len(x)
        history.append({"epoch": epoch, "loss": total / count})
        if log_fn:
            log_fn(f"SSL epoch {epoch} | masked reconstruction loss: {total / count:.4f}")
        if not math.isfinite(total):
            break
    rms_after = feature_rms(encoder, frames)
    if match_scale and history and math.isfinite(rms_after) and rms_after > 0 and rms_before > 0:
        rescale_last_layer(encoder, rms_before / rms_after)
        history[-1].update({"feature_rms_before": rms_before, "feature_rms_after": rms_after,
                            "rescaled_by": rms_before / rms_after})
    return history
