"""Same seed and config -> identical metrics: run after run, process after process, and
across the basic launcher and the default one (its worker processes take job after job, so
anything a job leaves behind in its process - RNG state, torch threads, deterministic
flags - would show up as a difference in the next job it runs)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from collapse import records
from collapse.sweep.cores import usable_cores
from collapse.train import run

from conftest import N_SWEEP_JOBS, SWEEP_GRID, SWEEP_TINY, TINY, read_json, results, statuses


def computed(record) -> dict:
    """What a run computed, without wall-clock and provenance fields."""
    record = record if isinstance(record, dict) else record.to_dict()
    return {"status": record["status"], "config_hash": record["config_hash"], "best": record["best"],
            "final": record["final"], "best_epoch": record["best_epoch"],
            "recalibrated": record.get("recalibrated"),
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]}


def test_same_process_again_after_a_different_run_gives_identical_metrics():
    first = run(TINY)
    # a run that touches every piece of global state a job can: other RNG draws (SSL,
    # a GRU), a thread count, no deterministic algorithms
    run([*TINY, "ssl=on", "ssl.epochs=1", "model=gru", "trainer.threads=1", "trainer.deterministic=false",
         "seed=7"])
    again = run(TINY)
    assert computed(again) == computed(first)


@pytest.mark.slow
def test_cli_process_and_notebook_api_give_identical_metrics_and_weights(tmp_path, single_cli_run):
    cli_dir = single_cli_run / "run"                # `python -m collapse.train TINY`, run once (conftest)
    # run() keeps the process's torch threads (trainer.threads=0); a fresh CLI process takes every
    # usable core, and a test process may have been given one (conftest: OMP_NUM_THREADS under xdist)
    previous = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        in_process = run(TINY, run_dir=tmp_path / "api")
    finally:
        torch.set_num_threads(previous)
    assert computed(read_json(cli_dir / "metrics.json")) == computed(in_process)
    # the whole record, not only the metrics: one execution path writes both
    volatile = ("wall_time_s", "started_at", "provenance", "job", "history")
    on_disk = read_json(cli_dir / "metrics.json")
    api = read_json(tmp_path / "api" / "metrics.json")
    in_memory = json.loads(json.dumps(records.finite_or_none(in_process.to_dict())))
    for record in (on_disk, api, in_memory):
        record["reference"].pop("seconds")          # how long the ridge fit took: a timing
    assert {k: v for k, v in on_disk.items() if k not in volatile} == \
        {k: v for k, v in api.items() if k not in volatile}
    assert api == in_memory
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (cli_dir, tmp_path / "api"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_basic_and_default_parallel_launchers_give_identical_metrics(in_process_sweep, tmp_path, reference_sweep):
    """The reference sweep (basic launcher, every job in one process, every core's threads)
    against the default launcher's, run here as a notebook's sweep: its workers fork from
    this process's fork server, one thread each, and each takes a job after another."""
    sweep_dir = tmp_path / "sweep"
    with in_process_sweep([*SWEEP_TINY, *SWEEP_GRID], sweep_dir):
        assert statuses(sweep_dir) == dict.fromkeys(range(N_SWEEP_JOBS), "completed")
        computed_here = results(sweep_dir)
        pids = [read_json(sweep_dir / str(n) / "metrics.json")["provenance"]["pid"] for n in range(N_SWEEP_JOBS)]
    # 4 jobs on 2 workers: at least one worker ran a second job after a first one
    assert len(set(pids)) < N_SWEEP_JOBS and os.getpid() not in pids, pids
    reference_pids = {read_json(Path(reference_sweep) / str(n) / "metrics.json")["provenance"]["pid"]
                      for n in range(N_SWEEP_JOBS)}
    assert len(reference_pids) == 1         # basic launcher: every job in the one process
    assert computed_here == results(reference_sweep)
