"""End to end: a tiny real run through the notebook API and through the CLI."""
import json
import math

import pytest
import torch

from collapse import records
from collapse.config import ModelConfig
from collapse.models import SequenceRegressor
from collapse.train import run

from conftest import cli

TINY = ["data.n_samples=300", "trainer.epochs=3", "model.hidden_dim=16", "ssl.epochs=2"]
REQUIRED = {"schema", "status", "stop_reason", "best_epoch", "best", "final", "history", "config",
            "config_hash", "overrides", "choices", "seed", "wall_time_s", "threads", "device",
            "provenance", "diagnosis", "monitor", "monitor_value"}


def test_api_run_writes_a_complete_record_and_loadable_weights(tmp_path):
    record = run(TINY, run_dir=tmp_path)
    on_disk = records.read_record(tmp_path / records.METRICS_FILE)
    assert REQUIRED <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["schema"] == records.SCHEMA_VERSION
    for split in ("val", "test"):
        assert {"r2", "variance_ratio", "pred_std", "pred_range", "rmse", "mae", "pearson_r", "ccc",
                "calibration_slope"} <= set(on_disk["best"][split])
    assert len(on_disk["history"]) == 3 and on_disk["history"][0]["epoch"] == 1
    assert on_disk["monitor_value"] == pytest.approx(record.best["val"]["r2"])
    assert on_disk["diagnosis"]["val"]["split"] == "val" and on_disk["diagnosis"]["test"]["split"] == "test"
    assert on_disk["provenance"]["versions"]["torch"] and on_disk["threads"] >= 1
    state = torch.load(tmp_path / records.WEIGHTS_FILE, weights_only=True)
    model = SequenceRegressor(ModelConfig(hidden_dim=16), 8)
    model.load_state_dict(state)


def test_same_seed_same_metrics_and_other_seed_differs():
    first, second = run(TINY), run(TINY)
    assert first.best == second.best
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    assert run(TINY + ["seed=1"]).best != first.best


def test_divergence_is_a_recorded_result():
    # mean_pool's ReLU path blows up at lr 1e8; the default gru's saturating gates may not
    record = run(TINY + ["model=mean_pool", "trainer.lr=1e8"])
    assert record.status == "diverged" and record.stop_reason == "non_finite_loss"


def test_cli_run_records_every_study_knob(tmp_path):
    knobs = ["model.init_std=0.01", "data.temporal_frames=7", "data.overweight_factor=1.5",
             "loss.variance_lambda=0.5", "ssl=on"]
    proc = cli([*TINY, *knobs], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Epoch 1 | R²:" in proc.stdout and "| Var Ratio:" in proc.stdout
    [path] = list((tmp_path / "outputs" / "runs").glob("*/*/metrics.json"))
    record = json.loads(path.read_text())
    cfg = record["config"]
    assert cfg["model"]["init_std"] == 0.01 and cfg["data"]["temporal_frames"] == 7
    assert cfg["data"]["overweight_factor"] == 1.5 and cfg["loss"]["variance_lambda"] == 0.5
    assert cfg["ssl"]["enabled"] is True and record["choices"]["ssl"] == "on"
    assert set(knobs) <= set(record["overrides"])
    assert len(record["ssl_history"]) == 2 and math.isfinite(record["ssl_history"][-1]["loss"])


def test_cli_bad_value_is_one_line_and_writes_no_result(tmp_path):
    proc = cli([*TINY, "data.temporal_frames=0"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "collapse: error: data.temporal_frames=0 is invalid: must be > 0"]
    assert not list(tmp_path.rglob("metrics.json"))
