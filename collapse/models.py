"""Sequence regressors: a per-frame encoder, a temporal aggregator, a linear head.

    x (B, T, C) -> FrameEncoder -> (B, T, H) -> aggregator -> (B, H) -> head -> (B,)

`model=custom` brings your own nn.Module (`build_model`, `check_model`, `CustomRegressor`):

    model=custom model._target_=examples.nets.FrameAttention +model.kwargs.width=32

Its target is called as `_target_(n_features=C, **kwargs)` (plus `output_bias=b` when it
names that parameter) through collapse.targets, and must map (B, T, C) float32 to (B,):
`check_model` runs it on one batch before training and refuses it with one line naming
the class. The framework's output rule then applies to its last nn.Linear (in module
order): weight ~ N(0, model.init_std), bias = output_bias when it has one output, as for
the built-in head; a model without an nn.Linear keeps its own init (a warning says so).

Aggregators:
    mean_pool      mean over frames: the classic design, which over-averages when the
                   signal lives in *where* in the window a pattern sits
    temporal_conv  Conv1d over time, then the last step: learns frame weights
    gru            a GRU whose last hidden state reads out: can weight frames freely

The model predicts *standardised* targets (collapse.data: train-split mean and std);
its buffers `target_mean` / `target_std` hold that scaler, so they travel with the
weights in model.pt and `predict_original(x)` answers in the file's units.

The output layer's weight init std is the study's `init_std` knob, in standardised
target units. Its bias starts at the standardised train-target mean (`output_bias`,
0 with standardisation on), the same rule for every configuration, so
the initial prediction *spread* is set by init_std alone. The initial prediction
*mean* is not the target mean: ReLU features are positive, so w . E[h] adds an
offset that grows with init_std. Measured on the benchmark (3 frames, 5 inits), in
train-target stds: |offset| 0.06 and spread 0.06 at init_std 0.1, 0.32 and 0.28 at 0.5
(on raw targets of std 0.1 the same init was 10x wider: ~0.9 and ~4.6 stds of offset).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from collapse.config import ModelConfig
from collapse.errors import ConfigError

_M = ModelConfig        # defaults are read from the schema, their one place


class FrameEncoder(nn.Module):
    """Per-frame MLP shared across time: (..., C) -> (..., H)."""

    def __init__(self, n_features: int, hidden_dim: int = _M.hidden_dim, n_layers: int = _M.n_layers,
                 dropout: float = _M.dropout):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_dim
        self.net = nn.Sequential(*layers)
        self.hidden_dim = hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequenceRegressor(nn.Module):
    """The model a ModelConfig describes, for `n_features` inputs per frame. The
    output bias starts at `output_bias`; `target_mean` / `target_std` are the scaler
    its outputs are in (kept in the state_dict: see `predict_original`)."""

    def __init__(self, cfg: ModelConfig, n_features: int, output_bias: float = 0.0,
                 target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        name, hidden_dim, init_std = cfg.name, cfg.hidden_dim, cfg.init_std
        self.name = name
        self.encoder = FrameEncoder(n_features, hidden_dim, cfg.n_layers, cfg.dropout)
        if name == "temporal_conv":
            # causal padding on the left so the last step sees the last `kernel_size` frames
            self.temporal = nn.Conv1d(hidden_dim, hidden_dim, cfg.kernel_size)
            self.pad = cfg.kernel_size - 1
        elif name == "gru":
            self.temporal = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, 1)
        nn.init.normal_(self.head.weight, mean=0.0, std=init_std)
        nn.init.constant_(self.head.bias, output_bias)
        # persistent: saved in the state_dict (model.pt), float64 so an offset like 5e4
        # does not eat the digits of the prediction
        self.register_buffer("target_mean", torch.tensor(float(target_mean), dtype=torch.float64))
        self.register_buffer("target_std", torch.tensor(float(target_std), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, T, C)
        h = self.encoder(x)                                # (B, T, H)
        if self.name == "mean_pool":
            pooled = h.mean(dim=1)                         # (B, H)
        elif self.name == "temporal_conv":
            h = nn.functional.pad(h.transpose(1, 2), (self.pad, 0))    # (B, H, T + pad)
            pooled = torch.relu(self.temporal(h))[:, :, -1]            # (B, H)
        else:
            _, last = self.temporal(h)                     # (1, B, H)
            pooled = last[0]
        return self.head(pooled).squeeze(-1)               # (B,)

    @torch.no_grad()
    def predict_original(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode predictions (B,) in the targets' original units, float64."""
        was_training = self.training
        self.eval()
        out = self(x).double() * self.target_std + self.target_mean
        self.train(was_training)
        return out


# ---------------------------------------------------------------- model=custom

class CustomRegressor(nn.Module):
    """Your network in `net`, with the target scaler its outputs are in as buffers
    (saved in model.pt, like SequenceRegressor's)."""

    def __init__(self, net: nn.Module, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        self.net = net
        self.register_buffer("target_mean", torch.tensor(float(target_mean), dtype=torch.float64))
        self.register_buffer("target_std", torch.tensor(float(target_std), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    predict_original = SequenceRegressor.predict_original     # same buffers, same rule


def init_output_layer(net: nn.Module, init_std: float, output_bias: float) -> Optional[str]:
    """The framework's output rule on `net`'s last nn.Linear; a warning when it has none."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return (f"model.init_std has no effect: {type(net).__module__}.{type(net).__qualname__} has no "
                "nn.Linear (its output layer keeps its own init)")
    last = linears[-1]
    nn.init.normal_(last.weight, mean=0.0, std=init_std)
    if last.bias is not None and last.out_features == 1:
        nn.init.constant_(last.bias, output_bias)
    return None


def build_model(cfg: ModelConfig, n_features: int, output_bias: float = 0.0, target_mean: float = 0.0,
                target_std: float = 1.0, warnings: Optional[list] = None) -> nn.Module:
    """The model a ModelConfig describes: SequenceRegressor, or model=custom's network
    wrapped in CustomRegressor (raises ConfigError naming the target)."""
    if cfg.name != "custom":
        return SequenceRegressor(cfg, n_features, output_bias=output_bias, target_mean=target_mean,
                                 target_std=target_std)
    from collapse.targets import instantiate

    net = instantiate("model", cfg._target_, dict(cfg.kwargs), {"n_features": n_features},
                      {"output_bias": output_bias})
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model._target_={cfg._target_!r} returned a {type(net).__name__}, not a torch.nn.Module")
    warning = init_output_layer(net, cfg.init_std, output_bias)
    if warning and warnings is not None:
        warnings.append(warning)
    return CustomRegressor(net, target_mean, target_std)


def check_model(cfg: ModelConfig, X: np.ndarray) -> list[str]:
    """Build model=custom once and run it on one batch of `X` (N, k, C): refuse it with one
    line naming the class unless it maps (B, k, C) to (B,) floats. Returns warnings."""
    warnings: list[str] = []
    model = build_model(cfg, X.shape[-1], warnings=warnings)
    name = f"{type(model.net).__module__}.{type(model.net).__qualname__}"
    batch = torch.from_numpy(np.ascontiguousarray(X[:2]))
    try:
        with torch.no_grad():
            out = model.eval()(batch)
    except Exception as e:  # noqa: BLE001 - the user's forward: whatever it raises is bad input
        raise ConfigError(f"model=custom: {name} fails on a batch of shape {tuple(batch.shape)} (B, T, C): "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(batch),):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model=custom: {name} maps a batch of shape {tuple(batch.shape)} (B, T, C) to {shape}; "
                          f"it must return shape ({len(batch)},) (B,): squeeze the last dimension")
    if not out.dtype.is_floating_point:
        raise ConfigError(f"model=custom: {name} returns {out.dtype}; it must return floating point (B,)")
    return warnings
