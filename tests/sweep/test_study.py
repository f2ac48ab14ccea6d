"""collapse's Optuna sweeper (collapse.sweep.study, hydra_plugins/collapse_optuna.py,
collapse.run.pruning) on Optuna >= 4: a stored study read back by optuna, resumed with the
trials an interrupted sweep left running, parallel trials, pruning on the monitored metric."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from collapse import records

from conftest import ROOT, cli

optuna = pytest.importorskip("optuna")

TINY = ("data.n_samples=300", "trainer.epochs=3", "model.hidden_dim=16")
TUNE = ("--config-dir", str(ROOT / "sweeps"), "--config-name", "tune")


def test_optuna_is_current():
    assert int(optuna.__version__.split(".")[0]) >= 4


def _study(tmp_path: Path, sweep: str):
    return optuna.load_study(study_name=sweep, storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")


@pytest.mark.slow
def test_a_stored_study_runs_trials_in_parallel_and_resumes_what_was_left_running(tmp_path):
    out = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweep.dir=s"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    study = _study(tmp_path, "s")            # read back by optuna from outputs/optuna.db
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    records_ = [json.loads((tmp_path / "s" / str(t.number) / "metrics.json").read_text()) for t in study.trials]
    assert [t.value for t in study.trials] == pytest.approx([r["monitor_value"] for r in records_])
    assert len({r["provenance"]["pid"] for r in records_}) == 2          # two workers, one trial each
    assert [len(t.intermediate_values) for t in study.trials] == [3, 3]  # one report an epoch
    assert "best trial" in out.stdout and (tmp_path / "s" / "optimization_results.yaml").is_file()

    # the study's name is taken: another sweep into it is refused before it trains, naming the remedy
    refused = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweeper.study_name=s", "hydra.sweep.dir=b"],
                  tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "collapse: error: hydra.sweeper.study_name='s' already exists in sqlite:///outputs/optuna.db: "
        "pass resume=true to continue it")
    assert not list((tmp_path / "b").glob("*/metrics.json"))

    # a sweep killed mid-trial leaves the trial RUNNING in the storage: resume=true (here into
    # another directory; test_search resumes into the same one) runs that trial (same number, its
    # own directory), then asks only what is missing
    left = study.ask({"trainer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                      "loss.variance_lambda": optuna.distributions.FloatDistribution(0.0, 1.0),
                      "model.init_std": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
    resumed = cli([*TUNE, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweeper.study_name=s", "hydra.sweep.dir=b",
                   "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = _study(tmp_path, "s")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    record = json.loads((tmp_path / "b" / str(left.number) / "metrics.json").read_text())
    assert record["config"]["trainer"]["lr"] == pytest.approx(left.params["trainer.lr"])
    assert study.trials[left.number].value == pytest.approx(record["monitor_value"])
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.name.isdigit()) == ["2", "3"]


def _trial_env(tmp_path: Path, monkeypatch, pruner: dict):
    """A stored study whose trial 0 reached 0.9 every epoch; trial 1 asked, as the sweeper does."""
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    first = study.ask()
    for epoch in range(1, 6):
        first.report(0.9, epoch)
    study.tell(first, 0.9)
    trial = study.ask()
    spec = tmp_path / records.SEARCH_SPEC_FILE
    spec.write_text(json.dumps({"storage": storage, "study_name": "p", "pruner": pruner}))
    monkeypatch.setenv(records.SEARCH_SPEC_ENV, str(spec))
    monkeypatch.setenv(records.SEARCH_TRIAL_ENV, str(trial.number))
    return study, trial


def test_a_trial_below_the_median_is_pruned_and_recorded(tmp_path, monkeypatch):
    from collapse.run.pruning import TrialReporter
    from collapse.train import run

    study, trial = _trial_env(tmp_path, monkeypatch, {"name": "median", "n_startup_trials": 1,
                                                      "n_warmup_steps": 0})
    reporter = TrialReporter.from_env("r2")
    assert reporter.epoch({"epoch": 1, "val_r2": 0.95}) is False     # above trial 0 at epoch 1
    assert reporter.epoch({"epoch": 2, "val_r2": 0.10}) is False     # the median pruner keeps its best
    assert study.trials[trial.number].intermediate_values == {1: 0.95, 2: 0.10}
    (tmp_path / "low").mkdir()
    study, trial = _trial_env(tmp_path / "low", monkeypatch, {"name": "median", "n_startup_trials": 1,
                                                              "n_warmup_steps": 0})
    assert TrialReporter.from_env("r2").epoch({"epoch": 1, "val_r2": 0.10}) is True    # below: pruned

    # a whole run as the trial: stopped after its first epoch, recorded as a result
    (tmp_path / "run").mkdir()
    _trial_env(tmp_path / "run", monkeypatch, {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    record = run([*TINY, "trainer.epochs=5", "model.init_std=0.001", "data.temporal_frames=7"])
    assert (record.status, record.stop_reason, record.epochs_run) == ("completed", "pruned", 1)
    assert record.best is not None and record.diagnosis is not None


def test_no_pruner_never_prunes(tmp_path, monkeypatch):
    from collapse.run.pruning import TrialReporter

    _trial_env(tmp_path, monkeypatch, {"name": "none"})
    reporter = TrialReporter.from_env("val_loss")
    assert reporter.epoch({"epoch": 1, "val_loss": 10.0}) is False


def test_what_a_finished_job_tells_its_trial(tmp_path):
    from collapse.sweep.study import trial_value

    def job(value, **record):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        if record:
            records.write_json(d / records.METRICS_FILE, {"schema": 2, **record})
        return SimpleNamespace(return_value=value,
                               hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(d)}}}))

    assert trial_value(job(0.8, status="completed", stop_reason="max_epochs")) == ("complete", 0.8)
    assert trial_value(job(0.3, status="completed", stop_reason="pruned")) == ("pruned", 0.3)
    assert trial_value(job(float("-inf"), status="failed", stop_reason="bad_input")) == ("fail", None)
    assert trial_value(job(float("nan"))) == ("fail", None)


def test_search_space_from_hydra_sweep_syntax():
    from collapse.sweep.study import SearchError, search_space

    space, fixed = search_space(OmegaConf.create({"trainer.lr": "tag(log, interval(0.0001, 0.01))",
                                                  "data.temporal_frames": "choice(1, 3, 7)",
                                                  "trainer.epochs": "range(5, 20, 5)"}),
                                ["seed=3", "loss.variance_lambda=interval(0, 1)"])
    assert space["trainer.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["data.temporal_frames"] == optuna.distributions.CategoricalDistribution([1, 3, 7])
    assert space["trainer.epochs"] == optuna.distributions.IntDistribution(5, 15, step=5)
    assert space["loss.variance_lambda"] == optuna.distributions.FloatDistribution(0.0, 1.0)   # Hydra: floats
    assert fixed == ["seed=3"]
    with pytest.raises(SearchError, match="hydra.sweeper.params.trainer.lr"):
        search_space(OmegaConf.create({"trainer.lr": "range(0.1, 0.5, 0.1)"}), [])
