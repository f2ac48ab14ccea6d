"""Many runs of one model shape trained as one model: parameters stacked along a member axis.

A sweep's jobs are mostly the same small model on data of the same shape with different
seeds and knobs. Trained one by one, a step of such a model spends its time in Python and
kernel launches, not arithmetic. Stacked, M members share every launch:

    x (M, B, T, C) -> per-frame MLP (baddbmm) -> aggregator -> head (baddbmm) -> (M, B)

Each member keeps what makes it a run: its own init (built as the single run builds it,
then stacked), data (its seed's split), shuffle order (its own generator, seeded as
Trainer's), loss settings (variance_lambda per member), lr and weight decay (per member
in `StackedOptimizer`), early stopping, collapse guard and best state (`fit_stacked`
mirrors `Trainer.fit`'s per-member semantics). A member that stops leaves the stack, so
the others stop paying for it. Members never mix: the loss is a sum of per-member
losses, whose gradient w.r.t. a member's parameters is that member's own gradient.

The stacked layout is torch's own (a Linear weight is (M, out, in)), so `member_state(m)`
is exactly a SequenceRegressor state_dict and `member_optimizer_state(m)` a torch optimizer
state_dict: a member's model.pt and checkpoint.pt are those a single run writes, and a
single run's checkpoint continues here (and back).

Aggregators: mean_pool (mean over frames); temporal_conv (only its last output step is
read, so the Conv1d is one batched matmul over the last kernel_size frames, zero-padded on
the left as the causal conv pads); gru (the GRU recurrence written out in batched matmuls,
torch's gate order r, z, n). Plain tensors only: no Hydra, nothing about files.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from collapse.config import TrainerConfig
from collapse.metrics import regression_report
from collapse.models import SequenceRegressor
from collapse.optim import ADAM_BETAS, ADAM_EPS, NAMES, SGD_MOMENTUM, param_group
from collapse.trainer import FitResult, Progress

# ---------------------------------------------------------------- the stacked model

class StackedRegressor:
    """M SequenceRegressors of one shape as stacked tensors (`params`: name -> (M, ...)).

    `forward(x)`: x (M, B, T, C) -> (M, B). Built from the members' own modules, so each
    member starts from the init its single run would have."""

    def __init__(self, models: Sequence[nn.Module]):
        first = models[0]
        if not all(isinstance(m, SequenceRegressor) for m in models):
            raise TypeError("StackedRegressor stacks SequenceRegressors (the built-in models) only")
        self.name = first.name
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("members differ in their parameters' shapes: they cannot be stacked")
        self.keys = list(first.state_dict().keys())                    # a state_dict's order
        self.param_keys = [k for k, _ in first.named_parameters()]     # an optimizer's order
        self.linears = [i for i, m in enumerate(first.encoder.net) if isinstance(m, nn.Linear)]
        self.dropout = next((m.p for m in first.encoder.net if isinstance(m, nn.Dropout)), 0.0)
        self.kernel_size = first.temporal.kernel_size[0] if self.name == "temporal_conv" else None
        states = [m.state_dict() for m in models]
        self.params = {k: torch.stack([s[k].detach() for s in states]).requires_grad_()
                       for k in self.param_keys}
        self.buffers = {k: torch.stack([s[k] for s in states]) for k in self.keys if k not in self.params}
        self.training = True

    @property
    def n_members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [self.params[k] for k in self.param_keys]

    def train(self, mode: bool = True) -> "StackedRegressor":
        self.training = mode
        return self

    def eval(self) -> "StackedRegressor":
        return self.train(False)

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x (M, N, in), weight (M, out, in), bias (M, out) -> (M, N, out)
        if x.shape[0] == 1:
            # torch computes a batch of one another way (its last digits differ): a member
            # left alone in its stack, or resumed alone, must compute as it did beside others
            return torch.baddbmm(bias.unsqueeze(1).expand(2, -1, -1), x.expand(2, -1, -1),
                                 weight.transpose(1, 2).expand(2, -1, -1))[:1]
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        M, B, T, C = x.shape
        h = x.reshape(M, B * T, C)
        for i in self.linears:                              # Linear, ReLU[, Dropout] per layer
            h = torch.relu(self._linear(h, p[f"encoder.net.{i}.weight"], p[f"encoder.net.{i}.bias"]))
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
        H = h.shape[-1]
        h = h.reshape(M, B, T, H)
        if self.name == "mean_pool":
            pooled = h.mean(dim=2)
        elif self.name == "temporal_conv":
            k = self.kernel_size
            if T < k:                                       # the causal conv's zero padding
                h = F.pad(h, (0, 0, k - T, 0))
            last = h[:, :, -k:, :].reshape(M, B, k * H)     # frame-major: (j, i) -> j * H + i
            w = p["temporal.weight"]                        # (M, out, in, k) -> (M, out, k * in)
            w = w.permute(0, 1, 3, 2).reshape(M, w.shape[1], k * H)
            pooled = torch.relu(self._linear(last, w, p["temporal.bias"]))
        else:
            pooled = self._gru(h)
        return self._linear(pooled, p["head.weight"], p["head.bias"]).squeeze(-1)

    def _gru(self, h: torch.Tensor) -> torch.Tensor:
        """nn.GRU's last hidden state (h0 = 0), gates r, z, n as torch orders them."""
        p = self.params
        M, B, T, H = h.shape
        gates_in = self._linear(h.reshape(M, B * T, H), p["temporal.weight_ih_l0"],
                                p["temporal.bias_ih_l0"]).reshape(M, B, T, 3 * H)
        state = h.new_zeros(M, B, H)
        for t in range(T):
            gates_h = self._linear(state, p["temporal.weight_hh_l0"], p["temporal.bias_hh_l0"])
            i_r, i_z, i_n = gates_in[:, :, t].chunk(3, dim=-1)
            h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            state = (1 - z) * n + z * state
        return state

    @torch.no_grad()
    def predict(self, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Eval-mode predictions (M, N) for X (M, N, T, C), in chunks to bound memory."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(X[:, i:i + batch_size]) for i in range(0, X.shape[1], batch_size)], dim=1)
        self.train(was_training)
        return out

    def member_state(self, m: int) -> dict:
        """Member m's weights as a SequenceRegressor state_dict (copies)."""
        out = {}
        for k in self.keys:
            source = self.params[k] if k in self.params else self.buffers[k]
            out[k] = source[m].detach().clone()
        return out

    def load_member(self, m: int, state: dict) -> None:
        with torch.no_grad():
            for k, v in state.items():
                (self.params[k] if k in self.params else self.buffers[k])[m].copy_(v)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at `index` (the others have stopped)."""
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}


# ---------------------------------------------------------------- the stacked optimizer

class StackedOptimizer:
    """Adam, AdamW or SGD (momentum 0.9) on stacked parameters, with one lr and one weight
    decay per member (`lr`, `weight_decay`: (M,)): torch's update rules (make_optimizer's
    choices), elementwise, so member m's update is the one its own optimizer would make."""

    def __init__(self, name: str, params: Sequence[torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor):
        if name not in NAMES:
            raise ValueError(f"optimizer={name!r} is invalid: must be adam, adamw or sgd")
        self.name, self.params = name, list(params)
        self.lr, self.weight_decay = lr.double(), weight_decay.double()
        self.step_count = torch.zeros(len(lr), dtype=torch.float64)       # per member: resumed ones differ
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @staticmethod
    def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        lr, wd = self.lr, self.weight_decay
        if self.name in ("adam", "adamw"):
            beta1, beta2 = ADAM_BETAS
            step_size = lr / (1 - beta1 ** self.step_count)
            correction2_sqrt = (1 - beta2 ** self.step_count).sqrt()
        for p, state in zip(self.params, self.state):
            grad = p.grad
            if self.name == "adamw":
                p.mul_(self._per_member(1 - lr * wd, p))                     # decoupled decay
            elif wd.any():
                grad = grad + self._per_member(wd, p) * p                    # coupled L2
            if self.name == "sgd":
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(SGD_MOMENTUM).add_(grad)
                p.sub_(self._per_member(lr, p) * state["momentum_buffer"])
                continue
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / self._per_member(correction2_sqrt, p)).add_(ADAM_EPS)
            p.addcdiv_(exp_avg * self._per_member(step_size, p), denom, value=-1)

    def keep(self, index: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.step_count = self.lr[index], self.weight_decay[index], self.step_count[index]
        self.state = [{k: v[index.to(v.device)] for k, v in s.items()} for s in self.state]

    # A member's state in torch's own optimizer.state_dict() format, built and read here
    # (collapse.optim: a torch optimizer's first use imports torch._dynamo). test_ensemble
    # pins the format against torch's own state_dict for adam, adamw and sgd.
    def member_state_dict(self, m: int, member_params: Sequence[torch.Tensor]) -> dict:
        state = {}
        if self.step_count[m] > 0:
            for i, s in enumerate(self.state):
                if self.name == "sgd":
                    state[i] = {"momentum_buffer": s["momentum_buffer"][m].detach().clone()}
                else:
                    state[i] = {"step": torch.tensor(float(self.step_count[m])),
                                "exp_avg": s["exp_avg"][m].detach().clone(),
                                "exp_avg_sq": s["exp_avg_sq"][m].detach().clone()}
        return {"state": state, "param_groups": [param_group(self.name, float(self.lr[m]), float(self.weight_decay[m]),
                                                             len(member_params))]}

    def load_member(self, m: int, state_dict: dict, member_params: Sequence[torch.Tensor]) -> None:
        groups = state_dict["param_groups"]
        ids = [i for g in groups for i in g["params"]]
        if len(ids) != len(self.params):
            raise ValueError(f"the checkpoint's optimizer holds {len(ids)} parameters, the model {len(self.params)}")
        loaded_any = False
        for i, stacked, state in zip(ids, self.params, self.state):
            loaded = state_dict["state"].get(i)
            if not loaded:
                continue
            loaded_any = True
            for key in (("momentum_buffer",) if self.name == "sgd" else ("exp_avg", "exp_avg_sq")):
                if key not in state:
                    state[key] = torch.zeros_like(stacked)
                state[key][m].copy_(loaded[key])
            if "step" in loaded:
                self.step_count[m] = float(loaded["step"])
        if self.name == "sgd" and loaded_any:
            self.step_count[m] = max(1.0, float(self.step_count[m]))


# ---------------------------------------------------------------- the vectorised fit

@dataclass
class Member:
    """What one member brings to `fit_stacked` (all tensors on one device).

    `on_epoch_end(progress, checkpoint)` is Trainer.fit's hook; `log_fn` its log lines."""
    model: nn.Module
    seed: int
    lr: float
    weight_decay: float
    variance_lambda: float
    train_target_var: Optional[float]
    X_train: torch.Tensor
    y_train: torch.Tensor
    w_train: Optional[torch.Tensor]
    X_val: torch.Tensor
    y_val: torch.Tensor
    resume: Optional[dict] = None
    log_fn: Callable[[str], None] = print


class _Slot:
    """One member's loop state (Trainer.fit's locals, per member)."""

    def __init__(self, member: Member, index: int):
        self.member, self.index = member, index          # index: its place in the group, fixed
        self.shuffle = torch.Generator().manual_seed(member.seed)    # as Trainer: same order on any device
        self.progress, self.best_state, self.last_state = Progress(), None, None
        self.status, self.stop_reason, self.done = "completed", "max_epochs", False
        self.y_val_np = member.y_val.double().cpu().numpy()


class StackedTrainer:
    """Trainer.fit for many members at once; fitted state ends in `_`.

    `cfg` holds what the group shares (epochs, batch size, optimizer, monitor, patience,
    guard); each Member brings its seed, lr, weight decay, variance_lambda, data and resume
    checkpoint. `best_states_[i]` is member i's best weights so far (None before its first
    finite epoch), kept up to date while training: an interrupt records them."""

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self._slots: list[_Slot] = []

    def fit(self, loss_fn, members: Sequence[Member],
            on_epoch_end: Optional[Callable[[Sequence[int], Callable[[int], dict]], None]] = None) -> list[FitResult]:
        """`loss_fn`: a RegressionLoss of the group's loss settings (its variance_lambda and
        train target variance are set per member here). Returns one FitResult per member,
        in order; each member's model then holds its best epoch's weights (its last ones
        when no epoch was finite), as Trainer.fit leaves its model.

        `on_epoch_end(indices, checkpoint)` is called after each epoch with the indices of
        the members that finished it and go on; `checkpoint(i)` builds member i's checkpoint
        in Trainer's format (a single run continues from it, and this from a single run's)."""
        cfg = self.cfg
        slots = [_Slot(m, i) for i, m in enumerate(members)]
        self._slots = slots
        device = members[0].X_train.device
        stack = StackedRegressor([m.model for m in members])
        opt = StackedOptimizer(cfg.optimizer, stack.parameters(), torch.tensor([m.lr for m in members]),
                               torch.tensor([m.weight_decay for m in members]))
        for i, s in enumerate(slots):
            resume = s.member.resume
            if resume is None:
                continue
            s.progress = Progress(**resume["progress"])
            stack.load_member(i, resume["model"])
            opt.load_member(i, resume["optimizer"], [stack.params[k][i] for k in stack.param_keys])
            s.shuffle.set_state(resume["shuffle_rng"])
            s.best_state = resume["best_state"]
            s.last_state = resume["model"]
            # the group has one dropout generator (dropout 0, the default: unused)
            torch.set_rng_state(resume["torch_rng"])
        live = [s for s in slots if s.progress.epoch < cfg.epochs]
        stacked = _Stacked(slots, live, device)
        if len(live) < len(slots):
            _leave(stack, opt, stacked, live)
        weighted = any(m.w_train is not None for m in members)
        n_train = members[0].X_train.shape[0]

        def checkpoint(i: int) -> dict:
            s = slots[i]
            m = stacked.position(s)
            member_params = [stack.params[k][m].detach().cpu().clone() for k in stack.param_keys]
            cpu = lambda state: {k: v.detach().cpu().clone() for k, v in state.items()}  # noqa: E731
            return {"progress": asdict(s.progress), "model": cpu(stack.member_state(m)),
                    "optimizer": opt.member_state_dict(m, member_params),
                    "best_state": cpu(s.best_state) if s.best_state is not None else None,
                    "shuffle_rng": s.shuffle.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}

        while live:
            t0 = time.perf_counter()
            stack.train()
            loss_fn.variance_lambda, loss_fn.target_var = stacked.lam, stacked.target_var
            perm = torch.stack([torch.randperm(n_train, generator=s.shuffle) for s in live]).to(device)  # (M, N)
            rows = torch.arange(len(live), device=device).unsqueeze(1)
            loss_sum = torch.zeros(len(live), device=device)
            for start in range(0, n_train, cfg.batch_size):
                idx = perm[:, start:start + cfg.batch_size]                                       # (M, b)
                w = stacked.w_train[rows, idx] if weighted else None
                loss = loss_fn(stack(stacked.X_train[rows, idx]), stacked.y_train[rows, idx], w)  # (M,)
                opt.zero_grad()
                # the sum's gradient w.r.t. a member's parameters is that member's own gradient
                loss.sum().backward()
                opt.step()
                # accumulate on the device: a .item() per batch would sync every step
                loss_sum += loss.detach() * idx.shape[1]
            train_loss = (loss_sum / n_train).tolist()
            pred_val = stack.predict(stacked.X_val)                                                # (M, Nv)
            val_loss = loss_fn(pred_val, stacked.y_val, None).tolist()
            finite = torch.isfinite(pred_val).all(dim=1).tolist()
            pred_np = pred_val.double().cpu().numpy()
            seconds = time.perf_counter() - t0
            going = []
            for m, s in enumerate(live):
                s.progress.epoch += 1
                if _end_epoch(cfg, s, train_loss[m], val_loss[m], finite[m], pred_np[m], seconds,
                              lambda m=m: stack.member_state(m)):
                    going.append(s)
            if on_epoch_end is not None and going:
                on_epoch_end([s.index for s in going], checkpoint)
            if len(going) < len(live):
                for s in live:
                    if s not in going:                      # stopped: leaves the stack
                        s.last_state = stack.member_state(stacked.position(s))
                live = going
                if live:
                    _leave(stack, opt, stacked, live)
        results = []
        for s in slots:
            state = s.best_state if s.best_state is not None else s.last_state
            if state is not None:
                s.member.model.load_state_dict(state)
            p = s.progress
            results.append(FitResult(s.status, s.stop_reason, p.best_epoch, p.best_score, p.history))
        return results

    @property
    def best_states_(self) -> list:
        return [s.best_state for s in self._slots]


def _end_epoch(cfg: TrainerConfig, s: _Slot, train_loss: float, val_loss: float, finite: bool,
               pred_val, seconds: float, state: Callable[[], dict]) -> bool:
    """Trainer.fit's end of an epoch for one member: history, log line, best state, guard,
    early stopping. True when the member goes on."""
    p, epoch, log_fn = s.progress, s.progress.epoch, s.member.log_fn
    if not (math.isfinite(train_loss) and finite):
        s.status, s.stop_reason = "diverged", "non_finite_loss"
        p.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        log_fn(f"Epoch {epoch} | loss is not finite: stopping (diverged)")
        return False
    report = regression_report(s.y_val_np, pred_val)
    p.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      **{f"val_{k}": v for k, v in report.items()}, "seconds": seconds})
    log_fn(f"Epoch {epoch} | R²: {report['r2']:.3f} | Var Ratio: {100 * report['variance_ratio']:.1f}% "
           f"| Pred Std: {report['pred_std']:.4g} | Val Loss: {val_loss:.4g}")
    score = report["r2"] if cfg.monitor == "r2" else -val_loss
    score = score if math.isfinite(score) else -math.inf
    if p.best_epoch is None or score > p.best_score + cfg.min_delta:
        p.best_score, p.best_epoch, p.since_best = score, epoch, 0
        s.best_state = state()
    else:
        p.since_best += 1
    low = report["variance_ratio"] < cfg.guard_threshold
    p.collapsed_for = p.collapsed_for + 1 if (low and epoch > cfg.guard_warmup) else 0
    if cfg.guard and p.collapsed_for >= cfg.guard_patience:
        s.status, s.stop_reason = "stopped_collapse", "collapse_guard"
        log_fn(f"Epoch {epoch} | collapse guard: val variance ratio < {cfg.guard_threshold:.1%} "
               f"for {p.collapsed_for} epochs, stopping")
        return False
    if cfg.patience and p.since_best >= cfg.patience:
        s.stop_reason = "early_stopping"
        return False
    return epoch < cfg.epochs


class _Stacked:
    """The live members' data and per-member loss knobs, stacked along the member axis."""

    def __init__(self, slots: Sequence[_Slot], live: Sequence[_Slot], device):
        self.slots = slots
        self._all = {
            "X_train": torch.stack([s.member.X_train for s in slots]),
            "y_train": torch.stack([s.member.y_train for s in slots]),
            "w_train": torch.stack([s.member.w_train if s.member.w_train is not None
                                    else torch.ones_like(s.member.y_train) for s in slots]),
            "X_val": torch.stack([s.member.X_val for s in slots]),
            "y_val": torch.stack([s.member.y_val for s in slots]),
            "lam": torch.tensor([float(s.member.variance_lambda) for s in slots], device=device),
            "target_var": torch.tensor([float(s.member.train_target_var) if s.member.train_target_var is not None
                                        else math.nan for s in slots], device=device),
        }
        self.has_target_var = all(s.member.train_target_var is not None for s in slots)
        self.select(live)

    def select(self, live: Sequence[_Slot]) -> None:
        self.live = list(live)
        index = torch.tensor([s.index for s in live], device=self._all["X_train"].device)
        for k, v in self._all.items():
            setattr(self, k, v[index] if len(live) < len(self.slots) else v)
        if not self.has_target_var:
            self.target_var = None

    def position(self, s: _Slot) -> int:
        return self.live.index(s)


def _leave(stack: StackedRegressor, opt: StackedOptimizer, stacked: _Stacked, live: Sequence[_Slot]) -> None:
    """Members not in `live` leave the stack (weights, optimizer state, data)."""
    keep = torch.tensor([stacked.position(s) for s in live])
    stack.keep(keep.to(next(iter(stack.params.values())).device))
    opt.keep(keep, stack.parameters())
    stacked.select(live)
