"""Bring your own model and data: `model=custom` and `data=custom`, the Hydra way.

    model=custom model._target_=examples.nets.FrameAttention +model.kwargs.width=32
    data=custom  data._target_=examples.datasets.make_waves +data.kwargs.n_samples=600

A model target is called as `_target_(n_features=C, **kwargs)` (plus `output_bias=b`
when it names that parameter) through `hydra.utils.instantiate`, and must return an
nn.Module that maps (B, T, C) float32 to (B,): `check_model` runs it on one batch before
training and refuses it with one line naming the class. The framework's output rule
then applies to its last nn.Linear (in module order): weight ~ N(0, model.init_std),
bias = output_bias when it has one output, the same rule as the built-in head; a
model without an nn.Linear keeps its own init and the run says so (a warning).
`CustomRegressor` wraps it with the target scaler, as `SequenceRegressor` has it.

A data target is called as `_target_(**kwargs)` (plus `seed=...` when it names that
parameter) and returns (X, y) or (X, y, split), arrays as an .npz holds them; they go
through `collapse.data.prepare` like every data set: frame selection, splits (seeded
when there is no split), feature and target standardisation, label fraction, weights.

`_target_` imports and calls code: it is trusted input, like a Python script. Only
this module imports Hydra's instantiate, and only when a custom option is chosen.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import numpy as np

from collapse.config import ConfigError, DataConfig, ModelConfig
from collapse.data import DataError, check_arrays


def _accepts(target: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def locate(path: str) -> Any:
    """The object at `package.module.Name` (as Hydra locates a _target_, without its
    error log): the longest importable module prefix, then attributes."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise           # the module exists but imports something missing
    else:
        raise ModuleNotFoundError(f"no module named {parts[0]!r} (is its directory on sys.path / PYTHONPATH?)")
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


def _instantiate(group: str, target: str, kwargs: dict, framework: dict, optional: dict) -> Any:
    """hydra.utils.instantiate({_target_, **kwargs}, **framework, **the optional keys the
    callable names); an import or call error becomes one ConfigError naming the target."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        obj = locate(target)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
        raise ConfigError(f"{group}._target_={target!r} cannot be imported "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    extra = {k: v for k, v in optional.items() if k not in kwargs and _accepts(obj, k)}
    try:
        return instantiate({"_target_": target, **kwargs}, **framework, **extra, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        message = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"{group}._target_={target!r} failed: {type(cause).__name__}: {message}") from None


# ---------------------------------------------------------------- models

def _custom_model_class():
    import torch
    from torch import nn

    from collapse.models import SequenceRegressor

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

    return CustomRegressor


def init_output_layer(net, init_std: float, output_bias: float) -> Optional[str]:
    """The framework's output rule on `net`'s last nn.Linear; a warning when it has none."""
    from torch import nn

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
                target_std: float = 1.0, warnings: Optional[list] = None):
    """The model a ModelConfig describes: SequenceRegressor, or model=custom's network
    wrapped in CustomRegressor (raises ConfigError naming the target)."""
    from collapse.models import SequenceRegressor

    if cfg.name != "custom":
        return SequenceRegressor(cfg, n_features, output_bias=output_bias, target_mean=target_mean,
                                 target_std=target_std)
    from torch import nn

    net = _instantiate("model", cfg._target_, dict(cfg.kwargs), {"n_features": n_features},
                       {"output_bias": output_bias})
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model._target_={cfg._target_!r} returned a {type(net).__name__}, not a torch.nn.Module")
    warning = init_output_layer(net, cfg.init_std, output_bias)
    if warning and warnings is not None:
        warnings.append(warning)
    return _custom_model_class()(net, target_mean, target_std)


def check_model(cfg: ModelConfig, X: np.ndarray) -> list[str]:
    """Build model=custom once and run it on one batch of `X` (N, k, C): refuse it with one
    line naming the class unless it maps (B, k, C) to (B,) finite values. Returns warnings."""
    import torch

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


# ---------------------------------------------------------------- data

def load_data(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Call data=custom's target; check what it returns as collapse.data.load_npz checks a file."""
    source = f"data._target_={cfg._target_!r}"
    out = _instantiate("data", cfg._target_, dict(cfg.kwargs), {}, {"seed": seed})
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise DataError(f"{source} returned a {type(out).__name__}; expected (X, y) or (X, y, split)")
    return check_arrays(out[0], out[1], out[2] if len(out) == 3 else None, source)
