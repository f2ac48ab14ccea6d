"""Trainer behaviour on small generated problems: fit, early stopping, guard, divergence."""
import math

import pytest
import torch

from collapse.config import LossConfig, ModelConfig, TrainerConfig
from collapse.losses import RegressionLoss
from collapse.models import SequenceRegressor
from collapse.trainer import Trainer


def _problem(n=600, signal=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 4, generator=g)                              # (N, T, C)
    y = X[:, :, 0].mean(1) * 0.5 + 0.7 if signal else 0.7 + 0.1 * torch.randn(n, generator=g)
    return X[:400], y[:400], X[400:], y[400:]


def _fit(trainer, model, X, y, Xv, yv, loss=None):
    return trainer.fit(model, loss or RegressionLoss(LossConfig()), X, y, None, Xv, yv)


def test_fits_a_learnable_problem():
    torch.manual_seed(0)
    X, y, Xv, yv = _problem()
    model = SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.1), 4, output_bias=0.7)
    result = _fit(Trainer(TrainerConfig(epochs=30, batch_size=32, lr=3e-3, patience=0), seed=0, log_fn=lambda s: None),
                  model, X, y, Xv, yv)
    assert result.status == "completed" and result.stop_reason == "max_epochs"
    assert result.history[result.best_epoch - 1]["val_r2"] > 0.9
    assert result.best_score == pytest.approx(result.history[result.best_epoch - 1]["val_r2"])


def test_early_stopping_on_the_monitor():
    torch.manual_seed(0)
    X, y, Xv, yv = _problem(signal=False)          # nothing to learn: val R² stops improving fast
    model = SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.5), 4, output_bias=0.7)
    cfg = TrainerConfig(epochs=100, batch_size=64, monitor="val_loss", patience=3, min_delta=0.0, guard=False)
    trainer = Trainer(cfg, seed=0, log_fn=lambda s: None)
    result = _fit(trainer, model, X, y, Xv, yv)
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == result.best_epoch + 3
    losses = [h["val_loss"] for h in result.history]
    assert min(losses) == pytest.approx(losses[result.best_epoch - 1])


def test_collapse_guard_fires_on_a_collapsing_model():
    torch.manual_seed(0)
    X, y, Xv, yv = _problem(signal=False)
    model = SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.0), 4, output_bias=0.7)
    # lr tiny + zero head: predictions stay (nearly) constant -> val variance ratio ~ 0
    cfg = TrainerConfig(epochs=50, lr=1e-6, patience=0, guard=True, guard_threshold=0.02, guard_warmup=2,
                        guard_patience=3)
    trainer = Trainer(cfg, seed=0, log_fn=lambda s: None)
    result = _fit(trainer, model, X, y, Xv, yv)
    assert result.status == "stopped_collapse" and result.stop_reason == "collapse_guard"
    assert len(result.history) == 2 + 3


def test_nan_loss_is_recorded_as_diverged():
    torch.manual_seed(0)
    X, y, Xv, yv = _problem()
    y = y.clone()
    y[5] = float("nan")
    model = SequenceRegressor(ModelConfig(hidden_dim=8), 4)
    result = _fit(Trainer(TrainerConfig(epochs=5), seed=0, log_fn=lambda s: None), model, X, y, Xv, yv)
    assert result.status == "diverged" and result.stop_reason == "non_finite_loss"
    assert result.best_epoch is None and math.isinf(result.best_score)


def test_best_weights_are_restored():
    torch.manual_seed(0)
    X, y, Xv, yv = _problem()
    model = SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.1), 4, output_bias=0.7)
    trainer = Trainer(TrainerConfig(epochs=8, batch_size=32, lr=3e-3, patience=0), seed=0, log_fn=lambda s: None)
    result = _fit(trainer, model, X, y, Xv, yv)
    for key, value in model.state_dict().items():
        assert torch.equal(value, trainer.best_state_[key])
    assert result.best_epoch is not None


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "plateau", "lr_patience": 0, "patience": 0}])
def test_a_fit_continued_from_a_checkpoint_equals_an_uninterrupted_fit(schedule):
    """Stop after epoch 4 (as a kill would, right after the checkpoint was saved), build
    everything anew as a new process would, continue: the same history and best weights,
    and with a plateau schedule the same learning rates (its state is in the checkpoint)."""
    X, y, Xv, yv = _problem()
    cfg = TrainerConfig(**{"epochs": 9, "batch_size": 32, "lr": 3e-3, "patience": 3, "min_delta": 0.0, **schedule})

    def fresh():
        torch.manual_seed(0)
        return SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.5, dropout=0.2), 4, output_bias=0.7)

    whole = _fit(Trainer(cfg, seed=0, log_fn=lambda s: None), fresh(), X, y, Xv, yv)

    saved = {}

    class Killed(BaseException):
        pass

    def stop_after_4(progress, checkpoint):
        if progress.epoch == 4:
            saved.update(checkpoint())
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg, seed=0, log_fn=lambda s: None).fit(fresh(), RegressionLoss(LossConfig()), X, y, None, Xv, yv,
                                                        on_epoch_end=stop_after_4)
    torch.manual_seed(123)              # the new process's global RNG: the checkpoint restores it
    model = fresh()
    trainer = Trainer(cfg, seed=0, log_fn=lambda s: None)
    continued = trainer.fit(model, RegressionLoss(LossConfig()), X, y, None, Xv, yv, resume=saved)

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(continued.history) == strip(whole.history) and len(whole.history) > 4
    lrs = [h["lr"] for h in whole.history]
    assert (len(set(lrs)) > 1 and min(lrs[5:]) < lrs[4]) if schedule else set(lrs) == {3e-3}
    assert (continued.status, continued.stop_reason, continued.best_epoch) == \
        (whole.status, whole.stop_reason, whole.best_epoch)
