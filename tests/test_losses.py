"""Base losses and the variance term of collapse.losses against hand-computed values."""
import pytest
import torch

from collapse.config import LossConfig
from collapse.losses import RegressionLoss, variance_term

PRED = torch.tensor([0.0, 1.0, 2.0, 3.0])
TARGET = torch.tensor([0.0, 2.0, 4.0, 6.0])


def test_mse_l1_huber_by_hand():
    errors = [0.0, 1.0, 2.0, 3.0]
    assert RegressionLoss(LossConfig(name="mse"))(PRED, TARGET).item() == pytest.approx(sum(e * e for e in errors) / 4)
    assert RegressionLoss(LossConfig(name="l1"))(PRED, TARGET).item() == pytest.approx(sum(errors) / 4)
    # huber, delta 1: 0.5 e^2 if |e| <= 1 else |e| - 0.5
    huber = (0 + 0.5 + 1.5 + 2.5) / 4
    assert RegressionLoss(LossConfig(name="huber", huber_delta=1.0))(PRED, TARGET).item() == pytest.approx(huber)


def test_weights_enter_as_weighted_mean():
    w = torch.tensor([1.0, 1.0, 1.0, 5.0])
    assert RegressionLoss(LossConfig(name="mse"))(PRED, TARGET, w).item() == pytest.approx((0 + 1 + 4 + 5 * 9) / 4)


def test_variance_term_by_hand():
    # var(pred) = 1.25, var(target) = 5.0 -> ratio 0.25 -> (1 - 0.25)^2
    assert variance_term(PRED, TARGET, "squared", None, eps=0.0).item() == pytest.approx(0.5625)
    total = RegressionLoss(LossConfig(name="mse", variance_lambda=0.5, eps=0.0))(PRED, TARGET).item()
    assert total == pytest.approx(3.5 + 0.5 * 0.5625)


def test_lambda_zero_is_the_base_loss():
    # a negative lambda is refused once, by collapse.config.validate (tests/test_config.py)
    assert RegressionLoss(LossConfig(name="mse", variance_lambda=0.0))(PRED, TARGET).item() == pytest.approx(3.5)


def test_variance_term_is_finite_for_constant_batch():
    const = torch.full((8,), 0.7, requires_grad=True)
    value = variance_term(const, torch.full((8,), 0.7), "squared", None, 1e-8)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(const.grad).all()


def test_variance_term_pushes_spread_up():
    pred = torch.tensor([0.9, 1.0, 1.1], requires_grad=True)
    variance_term(pred, torch.tensor([0.0, 1.0, 2.0]), "squared", None, 1e-8).backward()
    # gradient descent moves the outer predictions outward
    assert pred.grad[0] > 0 > pred.grad[2]
