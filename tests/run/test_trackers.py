"""Experiment tracking (collapse.run.trackers): what TensorBoard, MLflow and W&B readers find, a
logger that fails does not cost the run, a missing package is refused before training,
and nothing is imported unless a logger is chosen."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collapse.labels import cell_name

from conftest import cli

TINY = ("data.n_samples=300", "trainer.epochs=3", "model.hidden_dim=16")
HEAVY = ("mlflow", "tensorboard", "optuna", "pandas", "torch.utils.tensorboard", "wandb")


def _heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith("torch.utils.tensorboard"))


def test_nothing_heavy_is_imported_without_a_logger(modules_after_a_run):
    imported = subprocess.run([sys.executable, "-c", "import sys, collapse.train, collapse.summary; "
                               "print(' '.join(sys.modules))"], capture_output=True, text=True, timeout=240)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert _heavy(imported.stdout.split()) == []
    # a fresh process after run() trained a model, logger none (conftest.modules_after_a_run)
    assert _heavy(modules_after_a_run) == []


def _client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


@pytest.mark.slow
def test_a_sweep_reads_back_in_mlflow_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # two joblib workers at once (the default launcher): one SQLite store created and written by two processes
    out = cli(["-m", *TINY, "logger=both", "hydra.sweep.dir=sw", "loss.variance_lambda=0,0.5",
               "hydra.launcher.n_jobs=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("collapse")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3                                         # the sweep's parent and a child per job
    sweep_dir = str((tmp_path / "sw").resolve())
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.info.run_name == "adhoc sw" and parent.data.tags["sweep_dir"] == sweep_dir
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for run in children:
        job = int(run.data.tags["job_num"])
        record = json.loads((tmp_path / "sw" / str(job) / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep_dir"] == sweep_dir            # one sweep, one tag value
        assert run.data.tags["status"] == record["status"] == "completed"
        assert run.data.tags["diagnosis.val"] == record["diagnosis"]["val"]["label"]
        assert run.data.tags["diagnosis.test"] == record["diagnosis"]["test"]["label"]
        assert float(run.data.params["loss.variance_lambda"]) == record["config"]["loss"]["variance_lambda"]
        assert run.data.params["model.hidden_dim"] == "16"
        history = client.get_metric_history(run.info.run_id, "val_r2")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(h["epoch"], pytest.approx(h["val_r2"])) for h in record["history"]]
        assert run.data.metrics["best.test.r2"] == pytest.approx(record["best"]["test"]["r2"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "model.pt"}

        assert run.info.run_name == cell_name(record["overrides"])       # the cell, as the console says it
        assert "λ=" in run.info.run_name
        events = EventAccumulator(str(tmp_path / "sw" / "tensorboard" / run.info.run_name))
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"train/loss", "val/loss", "val/r2", "val/variance_ratio", "val/pred_std"} <= scalars
        assert [(e.step, e.value) for e in events.Scalars("val/r2")] == \
            [(h["epoch"], pytest.approx(h["val_r2"], rel=1e-6)) for h in record["history"]]
        assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_a_failing_logger_loses_nothing(tmp_path):
    with socket.socket() as s:           # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cli([*TINY, "logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}", "hydra.run.dir=run"],
              tmp_path, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["best"]["val"]["r2"] is not None
    [warning] = [w for w in record["warnings"] if "logger mlflow failed" in w]
    assert (out.stdout + out.stderr).count("logger mlflow failed") == 1


def test_a_missing_package_is_refused_before_training(tmp_path):
    hide = ("import importlib.util as u, runpy, sys\n"
            "find = u.find_spec\n"
            "u.find_spec = lambda name, *a: None if name == 'mlflow' else find(name, *a)\n"
            f"sys.argv = ['collapse.train', *{list(TINY)!r}, 'logger=mlflow', 'hydra.run.dir=run']\n"
            "runpy.run_module('collapse.train', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("collapse: error: logger=mlflow needs the mlflow package") and "pip install" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_logger_names_are_typed(tmp_path):
    out = cli(["logger.names=[mlflow,comet]", "--cfg", "job"], tmp_path)
    assert out.returncode != 0 and "comet" in out.stderr


def test_a_logger_that_raises_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch):
    from collapse.run import trackers as loggers
    from collapse.train import run

    def boom(self, row):
        raise OSError("No space left on device")

    monkeypatch.setattr(loggers.TensorBoardLogger, "epoch", boom)
    record = run([*TINY, "logger=tensorboard"], run_dir=tmp_path / "run")
    assert record.status == "completed"
    [warning] = [w for w in record.warnings if w.startswith("logger tensorboard failed in epoch")]
    assert "OSError: No space left on device" in warning
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["status"] == "completed" and warning in on_disk["warnings"]


@pytest.mark.parametrize("overrides, key, warned", [
    (["logger.tracking_uri=http://127.0.0.1:5000"], "logger.tracking_uri", True),     # logger=none
    (["logger=tensorboard", "logger.experiment=x"], "logger.experiment", True),
    (["logger=mlflow", "logger.experiment=x"], "logger.experiment", False),
])
def test_mlflow_keys_without_mlflow_are_named(overrides, key, warned):
    from hydra import compose, initialize_config_dir

    from collapse.config import ineffective_keys
    from collapse.train import CONF_DIR, to_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    assert ineffective_keys(cfg, {key}) == ([f"{key} has no effect without the mlflow logger"] if warned else [])


def test_an_interrupted_run_ends_killed_in_mlflow(tmp_path, monkeypatch):
    from collapse.run import trackers as loggers
    from collapse.train import run

    sent = loggers.MlflowLogger.epoch

    def ctrl_c_after_epoch_2(self, row):       # as if Ctrl-C landed while epoch 2 was being logged
        sent(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers.MlflowLogger, "epoch", ctrl_c_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run([*TINY, "trainer.epochs=5", "logger=mlflow"], run_dir=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    client = _client(tmp_path)
    [mlrun] = client.search_runs([client.get_experiment_by_name("collapse").experiment_id])
    assert record["status"] == mlrun.data.tags["status"] == "interrupted" and mlrun.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val_r2")] == [1, 2]


def read_wandb(path: Path) -> list:
    """The records of a .wandb file (W&B's own protobuf Record, in its leveldb-log framing:
    a 7-byte header, then 32 KiB blocks of chunks with a 7-byte header each)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunks, pending = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:                 # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(payload)
        elif kind in (2, 3):
            pending += payload
        elif kind == 4:
            chunks.append(pending + payload)
            pending = b""
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


@pytest.mark.slow
def test_a_wandb_run_offline_reads_back(tmp_path):
    pytest.importorskip("wandb")
    env = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}      # not logged in
    out = cli([*TINY, "logger=wandb", "loss.variance_lambda=0.5", "seed=1", "hydra.run.dir=run"], tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    [path] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")      # offline: not logged in
    records = read_wandb(path)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].display_name == "n_samples=300 epochs=3 hidden_dim=16 λ=0.5 seed=1"
    config = {u.key: json.loads(u.value_json) for u in runs[-1].config.update}
    assert config["loss.variance_lambda"] == 0.5 and config["seed"] == 1
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num] = items
    assert sorted(history) == [h["epoch"] for h in record["history"]]
    for h in record["history"]:
        assert history[h["epoch"]]["val_r2"] == pytest.approx(h["val_r2"])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary[u.nested_key[0] if u.nested_key else u.key] = json.loads(u.value_json)
    assert summary["best.test.r2"] == pytest.approx(record["best"]["test"]["r2"])
