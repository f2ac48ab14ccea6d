"""Optuna through hydra/sweeper=optuna (sweeps/tune.yaml), the search summary (ranked
trials, best trial, importance, objective-vs-parameter plot) and collapse.summary.load_runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from collapse.summary import build_summary, load_runs
from collapse.summary import main as summary_main
from collapse.sweep.cores import usable_cores

from conftest import ROOT, cli

TINY = ("data.n_samples=300", "trainer.epochs=3", "model.hidden_dim=16")
TUNE = ("--config-dir", str(ROOT / "sweeps"), "--config-name", "tune")


def _trials(sweep: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("[0-9]*/metrics.json"))]
    return [{"lambda": r["config"]["loss"]["variance_lambda"], "init_std": r["config"]["model"]["init_std"],
             "lr": r["config"]["trainer"]["lr"]} for r in records]


@pytest.mark.slow
def test_a_seeded_optuna_search_and_its_summary(tmp_path, capsys):
    out = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweep.dir=tune"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "tune"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    assert not (sweep / "manifest.json").exists()        # trials are decided as the search goes
    assert (sweep / "multirun.yaml").exists()            # written by collapse.sweep.callback.SweepStatus
    # one trial at a time (the sweeper's n_jobs 1): run in the sweep's process, with every core
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("[0-9]*/metrics.json"))]
    assert {r["threads"] for r in records} == {usable_cores()}
    assert {r["provenance"]["pid"] for r in records} == {records[0]["provenance"]["pid"]}
    optuna_best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())

    assert summary_main([str(sweep)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"search {sweep}: 4 trials (4 completed); objective val R²")
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["kind"] == "search" and [t["rank"] for t in summary["trials"]] == [1, 2, 3, 4]
    objectives = [t["objective"] for t in summary["trials"]]
    assert objectives == sorted(objectives, reverse=True)
    best = summary["best"]
    assert best["objective"] == pytest.approx(optuna_best["best_value"])
    assert best["params"] == pytest.approx(optuna_best["best_params"])
    assert set(summary["importance"]) <= {"loss.variance_lambda", "model.init_std", "trainer.lr"}
    assert (sweep / "summary_search.png").stat().st_size > 0

    # seeded: the same first trials again (each sweep is its own study); the same directory
    # only with resume=true, which continues the stored study: the finished trials stay,
    # only the missing ones run, with new parameters
    again = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=2", "hydra.sweep.dir=again"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _trials(tmp_path / "again") == _trials(sweep)[:2]
    first = [(tmp_path / "again" / str(n) / "metrics.json").read_bytes() for n in (0, 1)]
    refused = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweep.dir=again"], tmp_path)
    assert refused.returncode == 2 and "already holds a sweep; pass resume=true" in refused.stderr
    resumed = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweep.dir=again", "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _trials(tmp_path / "again")
    assert len(trials) == 4 and trials[:2] == _trials(sweep)[:2] and trials[2] not in trials[:2]
    assert [(tmp_path / "again" / str(n) / "metrics.json").read_bytes() for n in (0, 1)] == first

    # without Optuna's file, continuous factors with one job per cell still read as a search
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    (copy / "optimization_results.yaml").unlink()
    summary, _ = build_summary(copy)
    assert summary["kind"] == "search" and summary["best"]["job"] == best["job"]


@pytest.mark.slow
def test_load_runs_on_a_grid(reference_sweep):
    # the fault tests' grid (conftest.reference_sweep): variance_lambda 0, 0.5 x seed 0, 1, run once
    frame = load_runs(reference_sweep)
    assert len(frame) == 4 and list(frame["job"]) == list(range(4))
    assert {"loss.variance_lambda", "seed", "status", "val_r2", "test_r2", "val_variance_ratio",
            "diagnosis_val", "diagnosis_test"} <= set(frame.columns)
    assert frame["loss.variance_lambda"].dtype.kind == "f" and frame["val_r2"].dtype.kind == "f"
    assert frame.groupby(["loss.variance_lambda"]).size().tolist() == [2, 2]
    assert sorted(zip(frame["loss.variance_lambda"], frame["seed"])) == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    for row in frame.itertuples():
        record = json.loads((Path(row.path) / "metrics.json").read_text())
        assert row.diagnosis_test == record["diagnosis"]["test"]["label"]
        assert row.val_r2 == pytest.approx(record["best"]["val"]["r2"])
    assert build_summary(reference_sweep)[0].get("kind") is None     # a grid keeps the factorial summary


def test_failed_trials_do_not_stop_a_search(tmp_path):
    # a trial without a result is told FAIL and the search goes on; the records say failed
    out = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=2", "data.temporal_frames=99", "hydra.sweep.dir=fail"], tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "jobs that did not complete: 0 (failed), 1 (failed)" in out.stderr
    for job in ("0", "1"):
        record = json.loads((tmp_path / "fail" / job / "metrics.json").read_text())
        assert record["status"] == "failed" and "data.temporal_frames=99" in record["error"]
    summary, _ = build_summary(tmp_path / "fail")
    assert summary["kind"] == "search" and summary["best"] is None
