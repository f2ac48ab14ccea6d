"""Multiruns for real: in-process through the basic and the default (parallel) launcher,
the documented sweep command in a subprocess, resume, submitit_local, and how many workers
and threads a sweep gets. Failing and diverging jobs are in test_faults.py."""
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import collapse.train as train
from collapse.sweep.cores import CONCURRENT_ENV, threads_per_job, usable_cores

from conftest import ROOT, cli

TINY = ["data.n_samples=300", "trainer.epochs=2", "model.hidden_dim=16"]
SWEEPS_DIR = str(ROOT / "sweeps")


def _records(sweep_dir):
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((job / "metrics.json").read_text()) for job in jobs]


@pytest.mark.parametrize("launcher", [["hydra/launcher=basic"], []], ids=["basic", "default"])
def test_in_process_multirun(in_process_sweep, tmp_path, launcher):
    sweep = in_process_sweep(TINY + ["data.temporal_frames=1,3", "seed=0,1"] + launcher, tmp_path / "sweep")
    with sweep:
        returns = sweep.returns[0]
        assert len(returns) == 4
        runs = _records(tmp_path / "sweep")
        assert [r["status"] for r in runs] == ["completed"] * 4
        assert [(r["config"]["data"]["temporal_frames"], r["seed"]) for r in runs] == \
            [(1, 0), (1, 1), (3, 0), (3, 1)]
        # the task function returns the monitored metric, for Hydra's optimising sweepers
        assert [ret.return_value for ret in returns] == pytest.approx([r["monitor_value"] for r in runs])
        workers = 1 if launcher else min(usable_cores(), 4)
        assert [r["threads"] for r in runs] == [max(1, usable_cores() // workers)] * 4


@pytest.mark.slow
def test_documented_sweep_command(tmp_path):
    sweep_dir = tmp_path / "quick"
    proc = cli(["--config-dir", SWEEPS_DIR, "--config-name", "quick", f"hydra.sweep.dir={sweep_dir}", *TINY],
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = _records(sweep_dir)
    assert len(runs) == 12 and {r["status"] for r in runs} == {"completed"}
    assert {r["config"]["sweep"]["name"] for r in runs} == {"quick"}
    assert f"summary: python -m collapse.summary {sweep_dir}" in proc.stdout
    # job directories are job numbers; factors live in the JSON
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(str(i) for i in range(12))


@pytest.mark.slow
def test_resume_runs_only_what_is_missing_and_never_rewrites(in_process_sweep, tmp_path):
    # the sweep runs in this process (a notebook's), the refusals and the resume on the command line
    sweep_dir = tmp_path / "sweep"
    with in_process_sweep([*TINY, "seed=0,1,2"], sweep_dir):
        done = {i: os.stat(sweep_dir / str(i) / "metrics.json").st_mtime_ns for i in (0, 2)}
        before = _records(sweep_dir)
        # 3 jobs on the default launcher: no more workers than jobs, the usable cores split among them
        workers = min(usable_cores(), 3)
        assert len({r["provenance"]["pid"] for r in before}) <= workers
        assert {r["threads"] for r in before} == {max(1, usable_cores() // workers)}
        (sweep_dir / "1" / "metrics.json").unlink()          # as if job 1 never finished

        args = ["-m", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"]
        refused = cli(args, cwd=tmp_path)                     # same dir without resume=true
        assert refused.returncode == 2 and "resume=true" in refused.stderr
        other = cli(["-m", *TINY, "seed=5,6", f"hydra.sweep.dir={sweep_dir}", "resume=true"], cwd=tmp_path)
        assert other.returncode == 2 and "another sweep" in other.stderr

        resumed = cli(args + ["resume=true"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert {i: os.stat(sweep_dir / str(i) / "metrics.json").st_mtime_ns for i in (0, 2)} == done
        after = _records(sweep_dir)
    assert [r["best"] for r in after] == [r["best"] for r in before]   # same seed, same metrics


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    proc = cli(["-m", *TINY, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = _records(sweep_dir)
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert [r["threads"] for r in runs] == [1, 1]        # torch threads = the job's cpus_per_task


def test_slurm_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=train.CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == 2
    assert threads_per_job(0, cfg.hydra.launcher) == 2


def test_threads_per_job_never_oversubscribes(monkeypatch):
    monkeypatch.delenv(CONCURRENT_ENV, raising=False)
    cores = usable_cores()
    assert threads_per_job(3, None) == 3
    assert threads_per_job(0, None) == cores
    assert threads_per_job(0, {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher",
                               "n_jobs": -1}) == 1
    assert threads_per_job(0, {"_target_": "x.JoblibLauncher", "n_jobs": 2}) == max(1, cores // min(cores, 2))
    monkeypatch.setenv(CONCURRENT_ENV, "1")         # the sweep said: one job at a time
    assert threads_per_job(0, {"_target_": "x.JoblibLauncher", "n_jobs": 0}) == cores


def test_usable_cores_honour_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")        # half a core: one
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")   # more than the mask allows
    assert usable_cores(tmp_path) == affinity


@pytest.mark.slow
def test_usable_cores_honour_the_affinity_mask(tmp_path):
    script = "from collapse.sweep.cores import usable_cores; print(usable_cores())"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert out.stdout.strip() == "1", out.stderr


@pytest.mark.slow
def test_a_one_job_sweep_takes_every_core(tmp_path):
    # a sweep of 3 jobs gets no more workers than jobs: test_resume_runs_only_what_is_missing_and_never_rewrites
    one = tmp_path / "one"
    proc = cli(["-m", *TINY, "seed=0", f"hydra.sweep.dir={one}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [run] = _records(one)
    assert run["threads"] == usable_cores()            # one job: run in-process with every core
