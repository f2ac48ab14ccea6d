"""A custom model for `model=custom`:

    python -m collapse.train model=custom model._target_=examples.nets.FrameAttention +model.kwargs.width=32

The contract (collapse.models, collapse.targets): the constructor takes `n_features` (C, from the data)
and its own keywords (model.kwargs.*), optionally `output_bias`; forward maps
(B, T, C) to (B,). The framework initialises the last nn.Linear (here `head`) with
model.init_std and the output-bias rule, so the init knob works as for built-in models.
"""
from __future__ import annotations

import torch
from torch import nn


class FrameAttention(nn.Module):
    """Per-frame MLP, then a learned softmax weighting of the frames, then a linear head:
    unlike mean pooling it can put its weight on the last frames."""

    def __init__(self, n_features: int, width: int = 32, temperature: float = 1.0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.score = nn.Linear(width, 1)
        self.temperature = temperature
        self.head = nn.Linear(width, 1)       # the last nn.Linear: model.init_std applies here

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (B, T, C)
        h = self.encoder(x)                                       # (B, T, W)
        weights = torch.softmax(self.score(h) / self.temperature, dim=1)   # (B, T, 1)
        return self.head((weights * h).sum(dim=1)).squeeze(-1)   # (B,)


class LastFrameConv(nn.Module):
    """A model with no nn.Linear: model.init_std cannot reach it (the run warns)."""

    def __init__(self, n_features: int, output_bias: float = 0.0):
        super().__init__()
        self.conv = nn.Conv1d(n_features, 1, kernel_size=1)
        nn.init.constant_(self.conv.bias, output_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (B, T, C)
        return self.conv(x.transpose(1, 2))[:, 0, -1]             # (B,)
