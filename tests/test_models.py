"""Model shapes, the output-layer init knob, and frame sensitivity of each aggregator."""
import pytest
import torch

from collapse.config import ModelConfig, ModelName
from collapse.models import SequenceRegressor


@pytest.mark.parametrize("name", [n for n in ModelName if n != "custom"])   # custom: tests/test_custom.py
def test_forward_shape(name):
    model = SequenceRegressor(ModelConfig(name=name, hidden_dim=8), 5)
    assert model(torch.randn(4, 7, 5)).shape == (4,)       # (B, T, C) -> (B,)
    assert model(torch.randn(4, 1, 5)).shape == (4,)       # one frame works too


def test_init_std_and_output_bias():
    torch.manual_seed(0)
    model = SequenceRegressor(ModelConfig(hidden_dim=512, init_std=0.2), 5, output_bias=0.72)
    assert model.head.weight.std().item() == pytest.approx(0.2, rel=0.1)
    assert model.head.bias.item() == pytest.approx(0.72)
    tiny = SequenceRegressor(ModelConfig(hidden_dim=16, init_std=0.0), 5, output_bias=0.72)
    assert torch.allclose(tiny(torch.randn(8, 3, 5)), torch.full((8,), 0.72))


def test_mean_pool_ignores_frame_order_but_gru_does_not():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    reversed_x = x.flip(1)
    pool = SequenceRegressor(ModelConfig(name="mean_pool", hidden_dim=8), 3)
    gru = SequenceRegressor(ModelConfig(name="gru", hidden_dim=8), 3)
    assert torch.allclose(pool(x), pool(reversed_x), atol=1e-6)
    assert not torch.allclose(gru(x), gru(reversed_x), atol=1e-6)


def test_the_target_scaler_travels_with_the_weights(tmp_path):
    torch.manual_seed(0)
    model = SequenceRegressor(ModelConfig(hidden_dim=8), 3, target_mean=5e4, target_std=250.0)
    x = torch.randn(6, 2, 3)
    expected = model(x).double() * 250.0 + 5e4
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["target_mean"].item() == 5e4 and state["target_std"].item() == 250.0
    loaded = SequenceRegressor(ModelConfig(hidden_dim=8), 3)                  # built from the config alone
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded.predict_original(x), expected)
