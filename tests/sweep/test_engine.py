"""The default launcher (collapse.sweep.engine, hydra_plugins/collapse_launcher.py) against
Hydra's own: the same refusals, the same jobs, with either sweeper. Killed workers and
interrupted sweeps are in test_faults.py, identical metrics in test_reproducibility.py."""
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from conftest import BASIC, cli

TINY = ["data.n_samples=300", "trainer.epochs=2", "model.hidden_dim=16"]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) \
        if sweep_dir.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], list(BASIC)], ids=["default", "basic"])
def test_an_uncomposable_cell_refuses_the_sweep_before_any_job_runs(tmp_path, launcher):
    """`model.hidden_dim=abc` cannot compose: the sweep stops before its first job, with
    Hydra's message naming the key, whichever launcher validates the grid."""
    sweep_dir = tmp_path / "sweep"
    proc = cli(["-m", *TINY, "seed=0,1", "model.hidden_dim=16,abc", *launcher, f"hydra.sweep.dir={sweep_dir}"],
               cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "model.hidden_dim=abc" in proc.stderr.strip().splitlines()[0], proc.stderr[-2000:]   # the first line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not [*tmp_path.rglob("metrics.json"), *tmp_path.rglob("model.pt")]


@pytest.mark.slow
@pytest.mark.parametrize("sweeper", ["grid", "basic"])
def test_the_parallel_launcher_runs_every_job_under_either_sweeper(in_process_sweep, tmp_path, sweeper):
    """hydra/sweeper=grid (the default) has the launcher compose the jobs; Hydra's basic
    sweeper composes them itself, and the workers compose again: the same jobs either way.
    In this process, as a notebook's sweep: its workers fork from this process's fork server."""
    sweep_dir = tmp_path / "sweep"
    sweep = in_process_sweep([*TINY, "seed=0,1,2", "loss.variance_lambda=0,0.5", f"hydra/sweeper={sweeper}",
                              "hydra.launcher.n_jobs=2"], sweep_dir)
    with sweep:
        assert len(sweep.returns[0]) == 6
        runs = [json.loads((job / "metrics.json").read_text()) for job in _job_dirs(sweep_dir)]
        hydra_dir = _job_dirs(sweep_dir)[0] / ".hydra"
        assert (hydra_dir / "config.yaml").exists() and (hydra_dir / "overrides.yaml").exists()
    assert [r["status"] for r in runs] == ["completed"] * 6
    assert [(r["seed"], r["config"]["loss"]["variance_lambda"]) for r in runs] == \
        [(s, lam) for s in (0, 1, 2) for lam in (0.0, 0.5)]
    assert [r["job"]["num"] for r in runs] == list(range(6))
    pids = {r["provenance"]["pid"] for r in runs}
    assert len(pids) <= 2 and os.getpid() not in pids            # worker processes, not this one


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="spawned workers")
def test_workers_fork_from_one_server_yet_see_the_environment_of_their_sweep(in_process_sweep, tmp_path,
                                                                               monkeypatch):
    """Two sweeps in one process (a notebook's): the fork server that preloaded torch for the
    first forks the second's workers too, and those read the environment as it is at the
    second sweep (the server's own is the first's)."""
    from multiprocessing import forkserver

    from collapse.sweep.engine import PRELOAD, _context

    servers, studies = [], []
    for value in ("first", "second"):
        monkeypatch.setenv("COLLAPSE_TEST_SWEEP_ENV", value)
        overrides = [*TINY, "seed=0,1", "hydra.launcher.n_jobs=2", "study=${oc.env:COLLAPSE_TEST_SWEEP_ENV}"]
        with in_process_sweep(overrides, tmp_path / value):
            jobs = [json.loads((job / "metrics.json").read_text()) for job in _job_dirs(tmp_path / value)]
        servers.append(forkserver._forkserver._forkserver_pid)
        studies.append({r["study"] for r in jobs})
        assert len({r["provenance"]["pid"] for r in jobs}) == 2          # two worker processes ran them
        assert all(r["provenance"]["pid"] != os.getpid() for r in jobs)
    assert servers[0] is not None and servers[0] == servers[1]
    assert studies == [{"first"}, {"second"}]
    assert set(PRELOAD) >= {"torch", "collapse.run.execute"}

    # what the server preloaded is frozen (out of the collector's reach) in what it forks
    context = _context()
    seen = context.SimpleQueue()
    probe = context.Process(target=_heap_as_forked, args=(seen,))
    probe.start()
    frozen, modules = seen.get()
    probe.join(30)
    assert forkserver._forkserver._forkserver_pid == servers[0]
    assert PRELOAD[-1] == "collapse.sweep.preloaded" and frozen > 100_000 and {"torch", *PRELOAD} <= modules


def _heap_as_forked(seen) -> None:
    import gc
    import sys

    seen.put((gc.get_freeze_count(), set(sys.modules)))
