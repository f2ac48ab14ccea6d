"""model=custom and data=custom: a user's nn.Module and data callable, instantiated the
Hydra way, checked at start, and run through the same path (frames, splits, scaler,
init_std on the last nn.Linear) as the built-in options. The examples/ folder is run
for real through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from collapse.config import ConfigError

from conftest import cli

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": f"{ROOT}:{TESTS}"}     # `examples` and this module, from any cwd
MODEL = ("model=custom", "model._target_=examples.nets.FrameAttention", "+model.kwargs.width=16")
DATA = ("data=custom", "data._target_=examples.datasets.make_waves", "+data.kwargs.n_samples=300")
TINY = ("trainer.epochs=3",)


class WrongShape(nn.Module):
    """Forgets to squeeze: (B, T, C) -> (B, 1)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.head = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.head(x[:, -1])


def test_the_examples_run_through_the_cli(tmp_path):
    out = cli([*MODEL, *DATA, *TINY, "data.temporal_frames=2", "hydra.run.dir=run"], tmp_path, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["best"]["val"]["r2"] is not None
    assert record["config"]["model"]["kwargs"] == {"width": 16}
    assert record["target_scaler"]["mean"] == pytest.approx(10, abs=0.5)     # standardised on train
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["net.encoder.0.weight"].shape == (16, 4) and "target_std" in state


def test_a_model_of_the_wrong_shape_is_refused_at_start(tmp_path):
    out = cli(["model=custom", "model._target_=test_custom.WrongShape", *TINY, "data.n_samples=300",
               "hydra.run.dir=run"], tmp_path, env=ENV)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "test_custom.WrongShape maps a batch of shape" in line and "must return shape (2,)" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_init_std_and_the_output_bias_reach_the_last_linear():
    from collapse.config import ModelConfig
    from collapse.models import build_model

    cfg = ModelConfig(name="custom", _target_="examples.nets.FrameAttention", kwargs={"width": 8}, init_std=0.0)
    model = build_model(cfg, n_features=3, output_bias=0.25, target_mean=5.0, target_std=2.0)
    assert torch.all(model.net.head.weight == 0) and model.net.head.bias.item() == 0.25
    assert model.net.score.weight.abs().sum() > 0              # only the last nn.Linear
    assert model(torch.randn(4, 5, 3)).shape == (4,)
    assert torch.allclose(model.predict_original(torch.randn(4, 5, 3)), torch.full((4,), 5.5, dtype=torch.float64))


def test_a_model_without_a_linear_says_init_std_cannot_reach_it(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from collapse.train import run

    record = run(["model=custom", "model._target_=examples.nets.LastFrameConv", *TINY, "data.n_samples=300"])
    assert record.status == "completed"
    assert any("model.init_std has no effect" in w and "LastFrameConv" in w for w in record.warnings)


def test_custom_data_goes_through_prepare(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from collapse.data import load
    from collapse.train import run

    record = run(["data=custom", "data._target_=examples.datasets.make_waves_split", "+data.kwargs.n_samples=400",
                  "data.temporal_frames=3", "data.overweight_factor=2", *TINY])
    assert record.status == "completed"
    from collapse.config import Config, DataConfig

    cfg = Config(data=DataConfig(name="custom", _target_="examples.datasets.make_waves_split",
                                 kwargs={"n_samples": 400}, temporal_frames=3, overweight_factor=2.0))
    data = load(cfg.data, cfg.seed, unlabeled=cfg.ssl.enabled)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (280, 60, 60)   # its own split
    assert data.X_train.shape[1:] == (3, 4) and data.w_train.max() > data.w_train.min()


@pytest.mark.parametrize("override, key", [
    ("model._target_=examples.nets.FrameAttention", "model._target_"),      # not with model=mean_pool
    ("+model.kwargs.width=3", "model.kwargs"),
    ("data._target_=examples.datasets.make_waves", "data._target_"),
])
def test_target_is_refused_outside_the_custom_options(override, key):
    from hydra import compose, initialize_config_dir

    from collapse.train import CONF_DIR, to_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[override])
    with pytest.raises(ConfigError, match=f"^{key}="):
        to_config(cfg)


def test_custom_needs_a_target(tmp_path):
    out = cli(["model=custom", "--cfg", "job"], tmp_path)        # composes: the value is checked at run time
    assert out.returncode == 0
    out = cli(["model=custom", *TINY], tmp_path)
    assert out.returncode == 2 and "model._target_=None is invalid" in out.stderr


def test_the_config_hash_ignores_the_logger_and_unset_custom_keys():
    from collapse.records import config_hash

    base = {"model": {"name": "mean_pool", "init_std": 0.5}, "data": {"name": "synthetic"}, "seed": 0}
    unset = {"_target_": None, "kwargs": {}}
    # a run recorded before these keys existed is the same config (resume=true accepts it)
    assert config_hash({**base, "model": {**base["model"], **unset}, "data": {**base["data"], **unset},
                        "logger": {"names": ["mlflow"]}}) == config_hash(base)
    assert config_hash({**base, "model": {**base["model"], **unset, "_target_": "x.Y"}}) != config_hash(base)
    assert config_hash({**base, "model": {**base["model"], **unset, "kwargs": {"width": 3}}}) != config_hash(base)


@pytest.mark.parametrize("target, kwargs, message", [
    ("numpy.zeros", {"shape": 3}, "returned a ndarray; expected (X, y) or (X, y, split)"),
    ("examples.datasets.make_waves", {"n_samples": 0}, "the train split has 0 samples"),     # via prepare
    ("examples.datasets.nope", {}, "cannot be imported"),
])
def test_bad_custom_data_is_one_line(target, kwargs, message, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from collapse.config import DataConfig
    from collapse.data import DataError, load

    with pytest.raises((DataError, ConfigError)) as e:
        load(DataConfig(name="custom", _target_=target, kwargs=kwargs), seed=0, unlabeled=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_example_sweep_composes_to_the_custom_model(tmp_path):
    out = cli(["--config-dir", str(ROOT / "examples"), "--config-name", "custom_phase4", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    import yaml

    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["_target_"] == "examples.nets.FrameAttention" and cfg["model"]["kwargs"] == {"width": 32}
    assert cfg["sweep"]["factors"] == ["model.init_std", "data.temporal_frames"]
