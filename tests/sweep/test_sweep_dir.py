"""A sweep directory that one sweep owns: the lock, the manifest of planned jobs, job
discovery whatever the subdir, and the sweep's exit status - with real processes racing
for the same directory."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collapse import records
from collapse.records import DirLock, DirLocked, ManifestError, job_dirs, read_manifest, write_manifest

from conftest import (
    N_SWEEP_JOBS,
    ROOT,
    SWEEP_GRID,
    SWEEP_TINY,
    TIMEOUT,
    cli,
    completed_fingerprints,
    kill_quietly,
    read_json,
    results,
    start_cli,
    statuses,
    wait_until,
)


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    with DirLock(tmp_path).acquire():
        with pytest.raises(DirLocked, match=r"in use by another process \(pid \d+ on "):
            DirLock(tmp_path).acquire()
    DirLock(tmp_path).acquire().release()        # released on exit from the block


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from collapse.records import DirLock; "
                               f"DirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirLocked, match=f"pid {holder.pid}"):
            DirLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)        # no cleanup runs: the kernel drops the flock
        holder.wait(timeout=30)
        DirLock(tmp_path).acquire().release()
    finally:
        holder.kill()


def test_job_dirs_whatever_their_names_and_stray_dirs_ignored(tmp_path):
    for name in ("10", "2", "lr=0.1,seed=0", "nested/deeper"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / records.METRICS_FILE).write_text("{}")
    (tmp_path / "²").mkdir()                      # isdigit() is True, int() raises
    (tmp_path / "notes").mkdir()                  # neither a record nor .hydra/
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    assert [p.relative_to(tmp_path).as_posix() for p in job_dirs(tmp_path)] == \
        ["2", "10", "lr=0.1,seed=0", "nested/deeper"]


def test_manifest_round_trips_and_a_damaged_one_is_named_never_absent(tmp_path):
    assert read_manifest(tmp_path) is None                     # absent: no manifest
    write_manifest(tmp_path, "config", ["a=1,2"], [["a=1"], ["a=2"]])
    manifest = read_manifest(tmp_path)
    assert [(j["num"], j["overrides"]) for j in manifest["jobs"]] == [(0, ["a=1"]), (1, ["a=2"])]
    for damaged in ('{"schema": 1, "jobs": ', '{"schema": 1, "jobs": 3}', "[]"):
        (tmp_path / "manifest.json").write_text(damaged)
        with pytest.raises(ManifestError, match=str(tmp_path / "manifest.json")):
            read_manifest(tmp_path)


def test_a_damaged_manifest_is_a_problem_line_and_missing_jobs_are_still_found(tmp_path, reference_sweep):
    from collapse.summary.build import build_summary

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(reference_sweep, sweep_dir)
    manifest = sweep_dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])            # truncated
    shutil.rmtree(sweep_dir / "3")                              # and the last job gone
    summary, _ = build_summary(sweep_dir)
    assert summary["problems"][0].startswith(f"{manifest}: unreadable")
    assert any(p.startswith("job 3:") and "missing" in p for p in summary["problems"]), summary["problems"]
    assert summary["jobs"]["manifest"] == "unreadable" and summary["jobs"]["absent"] == [3]


def test_resume_rewrites_a_damaged_manifest_and_says_so(tmp_path, reference_sweep):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(reference_sweep, sweep_dir)
    (sweep_dir / "manifest.json").write_text("{")
    proc = cli(sweep(sweep_dir, "resume=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{sweep_dir / 'manifest.json'}: unreadable" in proc.stderr and "rewrote it" in proc.stderr
    assert len(read_manifest(sweep_dir)["jobs"]) == N_SWEEP_JOBS


def test_a_dead_workers_running_record_becomes_interrupted_and_its_temp_file_goes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    base = {"schema": 2, "status": "running", "provenance": {"pid": dead.pid, "hostname": socket.gethostname()}}
    records.write_json(job / "metrics.json", base)
    (job / ".metrics.json.abc.tmp").write_text("{")
    other = tmp_path / "1"
    (other / ".hydra").mkdir(parents=True)
    records.write_json(other / "metrics.json", {**base, "provenance": {"pid": os.getpid(),
                                                                       "hostname": socket.gethostname()}})
    assert records.interrupt_orphaned(tmp_path, dead.pid, "its worker process died (signal SIGKILL)") == [job]
    record = read_json(job / "metrics.json")
    assert record["status"] == "interrupted" and "worker process died" in record["error"]
    assert not list(job.glob(".*.tmp"))
    assert read_json(other / "metrics.json")["status"] == "running"       # another process's job: untouched


# ---------------------------------------------------------------- real sweeps

def sweep(sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", *SWEEP_TINY, *SWEEP_GRID, *extra, f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.slow
def test_the_manifest_lists_what_each_job_ran(tmp_path, reference_sweep):
    manifest = read_manifest(reference_sweep)
    assert len(manifest["jobs"]) == N_SWEEP_JOBS
    for job in manifest["jobs"]:
        record = read_json(reference_sweep / str(job["num"]) / records.METRICS_FILE)
        assert sorted(job["overrides"]) == sorted(record["overrides"])
        assert record["job"]["num"] == job["num"]


@pytest.mark.slow
def test_two_different_sweeps_started_at_once_into_one_dir(tmp_path):
    """Before: both exited 0 in 4 tries of 6, and a job dir held one config's metrics.json
    next to the other's overrides. Now exactly one runs; the other is refused, exit 2."""
    sweep_dir = tmp_path / "sweep"
    procs = {h: start_cli(sweep(sweep_dir, f"model.hidden_dim={h}"), tmp_path, tmp_path / f"{h}.log")
             for h in (8, 24)}
    try:
        codes = {h: p.wait(timeout=TIMEOUT) for h, p in procs.items()}
    finally:
        for p in procs.values():
            kill_quietly(p)
    assert sorted(codes.values()) == [0, 2], codes
    [winner] = [h for h, c in codes.items() if c == 0]
    [loser] = [h for h, c in codes.items() if c == 2]
    log = (tmp_path / f"{loser}.log").read_text()
    assert "collapse: error:" in log and ("in use by another process" in log or "already holds a sweep" in log)
    for num in range(N_SWEEP_JOBS):
        record = read_json(sweep_dir / str(num) / records.METRICS_FILE)
        overrides = (sweep_dir / str(num) / ".hydra" / "overrides.yaml").read_text()
        assert record["config"]["model"]["hidden_dim"] == winner and f"model.hidden_dim={winner}" in overrides


@pytest.mark.slow
def test_two_resumes_at_once_never_train_a_job_twice(tmp_path, reference_sweep):
    sweep_dir = tmp_path / "sweep"
    first = start_cli(sweep(sweep_dir), tmp_path, tmp_path / "first.log")
    try:
        wait_until(lambda: "completed" in statuses(sweep_dir).values(), TIMEOUT, "a first job")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=TIMEOUT)
    finally:
        kill_quietly(first)
    kept = completed_fingerprints(sweep_dir)
    resumes = [start_cli(sweep(sweep_dir, "resume=true"), tmp_path, tmp_path / f"resume{i}.log") for i in (0, 1)]
    try:
        codes = sorted(p.wait(timeout=TIMEOUT) for p in resumes)
    finally:
        for p in resumes:
            kill_quietly(p)
    assert codes == [0, 2], codes
    now = completed_fingerprints(sweep_dir)
    assert all(now[num] == fp for num, fp in kept.items()), "a completed record was rewritten"
    assert results(sweep_dir) == results(reference_sweep)
    # the refused resume was refused before it started a job (or a worker)
    [refused] = [p for p in resumes if p.returncode == 2]
    pids = {read_json(sweep_dir / str(n) / records.METRICS_FILE)["provenance"]["pid"] for n in range(N_SWEEP_JOBS)}
    assert refused.pid not in pids


@pytest.mark.slow
def test_a_sweep_killed_before_its_last_jobs_started_reports_them(tmp_path):
    from collapse.sweep.callback import SweepStatus

    sweep_dir = tmp_path / "sweep"
    proc = start_cli(sweep(sweep_dir), tmp_path, tmp_path / "sweep.log")
    try:
        wait_until(lambda: read_manifest(sweep_dir) is not None and (sweep_dir / "0" / "metrics.json").exists(),
                   TIMEOUT, "the first job")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        kill_quietly(proc)
    started = {n for n, s in statuses(sweep_dir).items() if s != "missing"}
    assert len(read_manifest(sweep_dir)["jobs"]) == N_SWEEP_JOBS and len(started) < N_SWEEP_JOBS
    bad = SweepStatus._report(sweep_dir)
    never = sorted(set(range(N_SWEEP_JOBS)) - started)
    assert f"{len(never)} never started ({', '.join(map(str, never))})" in bad


@pytest.mark.slow
@pytest.mark.parametrize("subdir", ["${hydra.job.override_dirname}", "${hydra.job.num}"])
def test_a_failed_job_fails_the_sweep_whatever_the_subdir(tmp_path, subdir):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "²").mkdir()                    # a stray dir that crashed the end-of-sweep callback
    proc = cli(["-m", "data.n_samples=300", "trainer.epochs=2", "model.hidden_dim=8", "trainer.lr=1e-3,-1",
                f"hydra.sweep.dir={sweep_dir}", f"hydra.sweep.subdir={subdir}"], cwd=tmp_path)
    # trainer.lr=-1 is refused in its job: recorded as failed, the other job runs
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "jobs that did not complete" in proc.stderr and "failed" in proc.stderr
    found = {read_json(d / records.METRICS_FILE)["status"] for d in job_dirs(sweep_dir)}
    assert found == {"completed", "failed"}


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_continues_from_its_checkpoint(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    long = ["data.n_samples=2000", "trainer.epochs=30", "trainer.patience=0", "model.hidden_dim=16",
            "checkpoint_every_s=0", "trainer.threads=1"]
    sweep_dir = tmp_path / "sweep"
    proc = start_cli(["-m", *long, "seed=0", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}"],
                     tmp_path, tmp_path / "sweep.log")
    metrics = sweep_dir / "0" / records.METRICS_FILE
    try:
        record = wait_until(lambda: (lambda r: r if r and r.get("epochs_run", 0) >= 3 else None)(read_json(metrics)),
                            TIMEOUT, "epoch 3 of the submitit job")
        # submitit's pre-emption signal (what SLURM sends before the time limit), to the job's process
        os.kill(record["provenance"]["pid"], signal.SIGUSR2)
        assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        kill_quietly(proc)
    final = read_json(metrics)
    assert final["status"] == "completed" and final["resumed_from_epoch"] >= 3
    from collapse.train import run

    reference = run(long)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in final["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in reference.history]
    assert final["best"] == json.loads(json.dumps(records.finite_or_none(reference.best)))


# ---------------------------------------------------------------- launchers and sweepers that cannot start

def test_slurm_without_sbatch_is_one_line(tmp_path):
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    proc = cli(["-m", "seed=0,1", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
               env={"PATH": path})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "sbatch" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_an_unusable_optuna_storage_is_one_line(tmp_path):
    pytest.importorskip("optuna")
    (tmp_path / "a_file").write_text("")          # collapse's sweeper creates a missing directory, not this
    storage = f"sqlite:///{tmp_path}/a_file/x.db"
    proc = cli(["--config-dir", str(ROOT / "sweeps"), "--config-name", "tune", "hydra.sweeper.n_trials=2",
                f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("collapse: error: hydra.sweeper.storage=") and storage in line


def test_a_worker_whose_sweep_is_gone_exits_without_a_traceback():
    """What each worker did when its sweep was SIGKILLed while they started: writing to
    the dead parent's pipe raised BrokenPipeError with a traceback."""
    code = ("import multiprocessing as mp\n"
            "from collapse.sweep.engine import _send\n"
            "a, b = mp.Pipe()\n"
            "a.close()\n"
            "_send(b, ('ready', 1))\n"
            "print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and proc.stderr == "" and proc.stdout == "", (proc.stdout, proc.stderr)
