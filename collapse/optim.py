"""A run's optimizer and lr schedule: torch's Adam, AdamW and SGD (momentum 0.9) update
rules and its ReduceLROnPlateau rule, written out, with torch's own state_dict formats.

Why not torch.optim itself: an optimizer's first use (its constructor, step, zero_grad,
state_dict) imports torch._dynamo, to keep torch.compile out of it. That is about 1.2 s of
CPU in every process that trains (torch 2.13): 40% of a small CLI run and of every fresh
sweep worker, for a compiler nothing here uses. The update below is torch's single-tensor
path, operation for operation, so the weights are the same bits (tests/test_optim.py pins
them, and the state_dicts, against torch.optim), and a checkpoint written by either
continues in the other. On CUDA torch would pick its foreach kernels, which round
differently in the last bits; this is the same arithmetic on every device.

Plain tensors and numbers only. `collapse.ensemble.StackedOptimizer` is the vectorised
counterpart (one lr per member); it builds its member state_dicts with `param_group`.
"""
from __future__ import annotations

import inspect
import math
from typing import Iterable

import torch

NAMES = ("adam", "adamw", "sgd")
ADAM_BETAS, ADAM_EPS, SGD_MOMENTUM = (0.9, 0.999), 1e-8, 0.9     # torch's defaults; SGD's momentum is ours


def param_group(name: str, lr: float, weight_decay: float, n_params: int) -> dict:
    """The param group torch's optimizer of that name holds (its state_dict's): its class's
    keyword defaults, this lr and weight decay, the param ids 0..n-1."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    group = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
             if k not in ("self", "params")}
    group.update(lr=float(lr), weight_decay=float(weight_decay))
    if name == "sgd":
        group["momentum"] = SGD_MOMENTUM
    elif name == "adamw" and "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters:
        group["decoupled_weight_decay"] = True       # AdamW: Adam with it forced on (its own signature lacks it)
    return {**group, "params": list(range(n_params))}


class Optimizer:
    """torch.optim.Adam / AdamW / SGD(momentum=0.9) over `params`, one param group.

    `param_groups[0]["lr"]` is the lr (the schedule lowers it); `state_dict()` and
    `load_state_dict()` speak torch's format."""

    def __init__(self, name: str, params: Iterable[torch.Tensor], lr: float, weight_decay: float):
        if name not in NAMES:
            raise ValueError(f"optimizer={name!r} is invalid: must be adam, adamw or sgd")
        self.name, self.params = name, list(params)
        self.param_groups = [param_group(name, lr, weight_decay, len(self.params))]
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Gradients to None (torch's default): the next backward writes them afresh."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, weight_decay = self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            grad = p.grad
            if self.name == "sgd":                                  # torch's _single_tensor_sgd
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(SGD_MOMENTUM).add_(grad, alpha=1)      # dampening 0
                p.add_(buf, alpha=-lr)
                continue
            if not state:                                           # torch's Adam._init_group
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
            beta1, beta2 = ADAM_BETAS                               # torch's _single_tensor_adam
            step_t += 1
            if weight_decay != 0:
                if self.name == "adamw":
                    p.mul_(1 - lr * weight_decay)                   # decoupled decay
                else:
                    grad = grad.add(p, alpha=weight_decay)          # coupled L2
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            step_size = lr / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(ADAM_EPS)
            p.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict:
        return {"state": {i: dict(s) for i, s in enumerate(self.state) if s},
                "param_groups": [dict(self.param_groups[0])]}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's or this class's state_dict: the state tensors go to their parameter's
        device (and float ones to its dtype); the group's settings (the lr the schedule
        reached) are restored."""
        groups = state_dict["param_groups"]
        ids = [i for g in groups for i in g["params"]]
        if len(groups) != 1 or len(ids) != len(self.params):
            raise ValueError(f"the checkpoint's optimizer holds {len(ids)} parameters in {len(groups)} "
                             f"group(s), the model {len(self.params)} in 1")
        saved = state_dict["state"]
        self.state = [{k: _like(v, p, k) for k, v in saved.get(i, {}).items()} for i, p in zip(ids, self.params)]
        self.param_groups = [dict(groups[0], params=list(range(len(self.params))))]


def _scalar_dtype() -> torch.dtype:
    # torch keeps Adam's step count in float64 when that is the default dtype, else float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _like(value, param: torch.Tensor, key: str):
    # as torch's Optimizer.load_state_dict: "step" stays as saved (a CPU scalar); the rest
    # follows its parameter
    if not isinstance(value, torch.Tensor) or key == "step":
        return value
    if value.is_floating_point():
        return value.to(dtype=param.dtype, device=param.device)
    return value.to(device=param.device)


class PlateauSchedule:
    """torch's ReduceLROnPlateau(mode="max", threshold_mode="abs", cooldown=0) on an
    `Optimizer`: after more than `patience` epochs whose score is not above the best by
    `threshold`, the lr is multiplied by `factor`, never below `min_lr`."""

    EPS = 1e-8          # torch's: a change of the lr smaller than this is not made

    def __init__(self, optimizer: Optimizer, factor: float, patience: int, threshold: float, min_lr: float):
        self.optimizer, self.factor, self.patience = optimizer, factor, patience
        self.threshold, self.min_lr = threshold, min_lr
        self.best, self.num_bad_epochs, self.last_epoch = -math.inf, 0, 0

    def step(self, score: float) -> None:
        self.last_epoch += 1
        if score > self.best + self.threshold:
            self.best, self.num_bad_epochs = float(score), 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            group = self.optimizer.param_groups[0]
            new_lr = max(group["lr"] * self.factor, self.min_lr)
            if group["lr"] - new_lr > self.EPS:
                group["lr"] = new_lr
            self.num_bad_epochs = 0

    def state_dict(self) -> dict:
        # the keys torch's ReduceLROnPlateau.state_dict() holds for these three
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        """This class's or torch's ReduceLROnPlateau state_dict."""
        self.best, self.num_bad_epochs = float(state["best"]), int(state["num_bad_epochs"])
        self.last_epoch = int(state.get("last_epoch", 0))
