"""Self-supervised pretraining of the per-frame encoder: masked-feature reconstruction.

Each unlabeled frame x (C,) has a random `mask_ratio` of its features set to 0 (the
train mean, as features are standardised); the encoder plus a linear decoder must
reconstruct the frame, with the loss on the masked features only (reconstructing
visible ones teaches the identity map, not structure):

    loss = sum(mask * (decoder(encoder(x_masked + noise)) - x)^2) / sum(mask)

`corruption_std` > 0 adds Gaussian noise to the encoder's input: a deliberately
degraded pretraining (the original study's run1), which pushes the encoder toward
blurred, low-variance features. The decoder is discarded afterwards.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def pretrain_encoder(encoder: nn.Module, frames: torch.Tensor, epochs: int = 20, lr: float = 1e-3,
                     batch_size: int = 512, mask_ratio: float = 0.3, corruption_std: float = 0.0,
                     seed: int = 0, log_fn=None) -> list[dict]:
    """Pretrain `encoder` in place on `frames` (N, T, C) or (M, C); returns the loss history."""
    frames = frames.reshape(-1, frames.shape[-1])                      # (M, C): frames are samples here
    n_frames, n_features = frames.shape
    decoder = nn.Linear(encoder.hidden_dim, n_features).to(frames.device)
    opt = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=lr)
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            count += len(x)
        history.append({"epoch": epoch, "loss": total / count})
        if log_fn:
            log_fn(f"SSL epoch {epoch} | masked reconstruction loss: {total / count:.4f}")
        if not math.isfinite(total):
            break
    return history
