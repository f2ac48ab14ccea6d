"""collapse.ensemble: members trained as one stacked model behave as their single runs."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from collapse import data as data_lib
from collapse.config import DataConfig, LossConfig, ModelConfig, TrainerConfig
from collapse.ensemble import Member, StackedOptimizer, StackedRegressor, StackedTrainer
from collapse.losses import RegressionLoss
from collapse.models import build_model
from collapse.trainer import Trainer
from tests.conftest import torch_optimizer

DATA = DataConfig(n_samples=600, temporal_frames=3)
TRAINER = TrainerConfig(epochs=4, batch_size=64, patience=0, lr_schedule="none")


def _run(seed: int, model_cfg: ModelConfig, lam: float = 0.0):
    d = data_lib.load(DATA, seed, unlabeled=False)
    torch.manual_seed(seed)
    model = build_model(model_cfg, d.n_features, output_bias=float(d.z_train.mean()),
                        target_mean=d.target_mean, target_std=d.target_std)
    t = torch.from_numpy
    return model, (t(d.X_train), t(d.z_train), None, t(d.X_val), t(d.z_val))


def _member(seed, model_cfg, lam=0.0, lr=1e-3, wd=0.0, resume=None) -> Member:
    model, (X, y, w, Xv, yv) = _run(seed, model_cfg)
    return Member(model, seed, lr, wd, lam, None, X, y, w, Xv, yv, resume=resume, log_fn=lambda s: None)


def _single(seed, model_cfg, cfg=TRAINER, lam=0.0, lr=1e-3, wd=0.0):
    model, tensors = _run(seed, model_cfg)
    cfg = dataclasses.replace(cfg, lr=lr, weight_decay=wd)
    result = Trainer(cfg, seed, log_fn=lambda s: None).fit(model, RegressionLoss(LossConfig(variance_lambda=lam)),
                                                            *tensors)
    return result, model


@pytest.mark.parametrize("name", ["mean_pool", "temporal_conv", "gru"])
def test_stacked_forward_is_each_members_forward(name):
    cfg = ModelConfig(name=name, hidden_dim=8, kernel_size=5)      # kernel > frames: the causal zero padding
    models = [build_model(cfg, 4) for _ in range(3)]
    x = torch.randn(3, 10, 3, 4)
    stacked = StackedRegressor(models).predict(x)
    for m, model in enumerate(models):
        torch.testing.assert_close(stacked[m], model.eval()(x[m]), rtol=1e-5, atol=1e-6)
        assert StackedRegressor(models).member_state(m).keys() == model.state_dict().keys()


@pytest.mark.parametrize("loss", ["mse", "huber", "l1", "ccc", "bmc"])
def test_loss_per_row_is_each_members_loss(loss):
    pred, target, w = torch.randn(3, 32), torch.randn(3, 32), torch.rand(3, 32)
    lams = [0.0, 0.5, 2.0]
    rows = RegressionLoss(LossConfig(name=loss))
    rows.variance_lambda = torch.tensor(lams)
    got = rows(pred, target, w)
    for m, lam in enumerate(lams):
        one = RegressionLoss(LossConfig(name=loss, variance_lambda=lam))(pred[m], target[m], w[m])
        torch.testing.assert_close(got[m], one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_members_match_their_single_runs(optimizer):
    """Same init, data, shuffle order, per-member lr, weight decay and lambda as the single
    run: the same history up to float rounding (not bit-identical: batched matmuls)."""
    cfg, mc = dataclasses.replace(TRAINER, optimizer=optimizer), ModelConfig(hidden_dim=16)
    knobs = [(0, 0.0, 1e-3, 0.0), (1, 0.5, 3e-3, 1e-3), (2, 1.0, 1e-3, 1e-2)]
    members = [_member(s, mc, lam, lr, wd) for s, lam, lr, wd in knobs]
    results = StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), members)
    for (seed, lam, lr, wd), got, member in zip(knobs, results, members):
        want, model = _single(seed, mc, cfg, lam, lr, wd)
        assert got.best_epoch == want.best_epoch and got.stop_reason == want.stop_reason
        for a, b in zip(got.history, want.history):
            assert a["val_r2"] == pytest.approx(b["val_r2"], abs=1e-4)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for k, v in model.state_dict().items():        # the best weights, in the single run's format
            torch.testing.assert_close(member.model.state_dict()[k], v, rtol=1e-3, atol=1e-4)


def test_members_stop_on_their_own_epochs_and_are_independent_of_their_stack():
    """Early stopping per member (stops after 6, 12 and 2 epochs here); a member's results
    do not depend on who else is in the stack, even as members leave it: bit for bit."""
    cfg, mc = dataclasses.replace(TRAINER, epochs=12, patience=1, min_delta=0.01), ModelConfig(hidden_dim=16)
    knobs = [(0, 0.0, 3e-2), (1, 0.0, 1e-3), (2, 2.0, 1e-2)]
    together = StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), [_member(s, mc, lam, lr) for s, lam, lr in knobs])
    stops = {len(r.history) for r in together}
    assert len(stops) > 1, f"every member stopped at the same epoch ({stops}): the test shows nothing"
    for (s, lam, lr), got in zip(knobs, together):
        alone = StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), [_member(s, mc, lam, lr)])[0]
        assert [h["val_r2"] for h in got.history] == [h["val_r2"] for h in alone.history]
        assert (got.best_epoch, got.stop_reason) == (alone.best_epoch, alone.stop_reason)


def test_resume_from_checkpoints_ends_as_uninterrupted():
    """Checkpoints taken after epoch 2, then a new stack resumed from them: the same
    histories as one uninterrupted fit; a single run (Trainer) continues one as well."""
    cfg, mc = TRAINER, ModelConfig(name="temporal_conv", hidden_dim=16)
    knobs = [(0, 0.0), (1, 0.5)]
    saved = {}

    def grab(indices, checkpoint):
        for i in indices:
            if len(saved) < len(knobs) and i not in saved:
                saved[i] = checkpoint(i)

    straight = StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), [_member(s, mc, lam) for s, lam in knobs],
                                       on_epoch_end=grab)
    assert all(c["progress"]["epoch"] == 1 for c in saved.values())
    again = [_member(s, mc, lam, resume=copy.deepcopy(saved[i])) for i, (s, lam) in enumerate(knobs)]
    resumed = StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), again)
    for a, b in zip(straight, resumed):
        assert [h["val_r2"] for h in a.history] == [h["val_r2"] for h in b.history]
    model, tensors = _run(1, mc)
    single = Trainer(cfg, 1, log_fn=lambda s: None).fit(model, RegressionLoss(LossConfig(variance_lambda=0.5)),
                                                         *tensors, resume=copy.deepcopy(saved[1]))
    assert np.allclose([h["val_r2"] for h in single.history], [h["val_r2"] for h in straight[1].history], atol=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_members_optimizer_state_is_torchs_own_state_dict(optimizer):
    """Built without a torch optimizer (whose first use imports torch._dynamo, ~1 s a
    process): equal to the state_dict torch's optimizer holds after the same steps, loadable
    by it, and read back into a stack unchanged."""
    torch.manual_seed(0)
    shapes = [(3, 4), (3,), (1, 3)]
    inits = [[torch.randn(*sh) for sh in shapes] for _ in range(2)]
    grads = [[[torch.randn(*sh) for sh in shapes] for _ in range(2)] for _ in range(3)]       # step, member, param
    lr, wd = torch.tensor([1e-2, 3e-3]), torch.tensor([0.0, 1e-2])
    stacked = [torch.stack([inits[m][j] for m in range(2)]).requires_grad_() for j in range(len(shapes))]
    opt = StackedOptimizer(optimizer, stacked, lr, wd)
    fresh = opt.member_state_dict(1, stacked)
    singles = []
    for m in range(2):
        params = [torch.nn.Parameter(t.clone()) for t in inits[m]]
        single = torch_optimizer(optimizer, params, float(lr[m]), float(wd[m]))
        if m == 1:
            assert fresh == single.state_dict()                     # before any step: no state
        singles.append((params, single))
    for step in grads:
        for j, p in enumerate(stacked):
            p.grad = torch.stack([step[m][j] for m in range(2)])
        opt.step()
        for m, (params, single) in enumerate(singles):
            for p, g in zip(params, step[m]):
                p.grad = g.clone()
            single.step()
    for m, (params, single) in enumerate(singles):
        ours, theirs = opt.member_state_dict(m, [p[m] for p in stacked]), single.state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        assert ours["state"].keys() == theirs["state"].keys()
        for i in theirs["state"]:
            assert ours["state"][i].keys() == theirs["state"][i].keys()
            for k, v in theirs["state"][i].items():
                torch.testing.assert_close(ours["state"][i][k], v, rtol=1e-5, atol=1e-7)
        other = torch_optimizer(optimizer, [torch.nn.Parameter(p.clone()) for p in params], 1.0, 0.0)
        other.load_state_dict(copy.deepcopy(ours))                     # torch takes it
        assert other.state_dict()["param_groups"] == theirs["param_groups"]
    # read back (the resume path): member 0 takes member 1's state, then writes it out the same
    back = opt.member_state_dict(1, [p[1] for p in stacked])
    opt.load_member(0, back, [p[0] for p in stacked])
    again = opt.member_state_dict(0, [p[0] for p in stacked])
    for i in back["state"]:
        for k, v in back["state"][i].items():
            assert torch.equal(again["state"][i][k], v)
