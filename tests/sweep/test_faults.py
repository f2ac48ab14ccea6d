"""Faults injected for real: killed workers, killed and interrupted sweeps, kills in the
middle of a write, diverging and raising cells, and a summary over damaged directories.

The kill tests run real sweeps in subprocesses and send real signals to real pids found
in /proc. After every kill: every metrics.json on disk is complete JSON, no completed
run was rewritten (inode, mtime and content hash of metrics.json and model.pt), and no
process of the killed sweep is left running. Resumed to the end, a sweep's results equal
those of the same sweep run once without interruption (conftest.reference_sweep).
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collapse import records
from collapse.summary import summarize

from conftest import (
    BASIC,
    MID_RUN,
    N_SWEEP_JOBS,
    SWEEP_GRID,
    SWEEP_TINY,
    TIMEOUT,
    alive,
    children,
    cli,
    completed_fingerprints,
    descendants,
    kill_quietly,
    read_json,
    results,
    start_cli,
    statuses,
    wait_until,
    write_npz,
    xy,
)

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process trees from /proc")


def sweep_args(sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", *SWEEP_TINY, *SWEEP_GRID, *extra, f"hydra.sweep.dir={sweep_dir}"]


def running_pids(sweep_dir: Path) -> dict[int, int]:
    """job number -> pid recorded by a job whose metrics.json says `running`."""
    out = {}
    for num in range(N_SWEEP_JOBS):
        r = read_json(sweep_dir / str(num) / "metrics.json")
        if r and r["status"] == "running":
            out[num] = r["provenance"]["pid"]
    return out


def n_completed(sweep_dir: Path) -> int:
    return sum(s == "completed" for s in statuses(sweep_dir).values())


def assert_unchanged(sweep_dir: Path, kept: dict, when: str) -> None:
    now = completed_fingerprints(sweep_dir)
    for num, fp in kept.items():
        assert now.get(num) == fp, f"{when}: completed job {num} was rewritten"


def wait_gone(pids, what: str) -> None:
    wait_until(lambda: not any(alive(p) for p in pids), 10, f"{what} to exit: "
               f"{[p for p in pids if alive(p)]} still alive")


# ---------------------------------------------------------------- killed processes

def worker_training(proc, sweep_dir: Path):
    """(job, pid) of a job that a worker process of `proc` is training right now, or None."""
    workers = set(descendants(proc.pid))      # forked by the sweep's fork server
    busy = [(num, pid) for num, pid in running_pids(sweep_dir).items() if pid in workers]
    return busy[0] if busy else None


@pytest.mark.slow
@needs_proc
def test_parallel_sweep_survives_a_killed_worker(tmp_path, reference_sweep):
    """Under the default (parallel) launcher, SIGKILL one worker mid-job (the OOM killer,
    kill -9 on its pid): its job is reported, the other jobs all run, the sweep exits 1
    naming the job; no result is lost or rewritten, and a resume runs only that job."""
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(sweep_dir)
    proc = start_cli(args, tmp_path, tmp_path / "stage1.log")
    try:
        victim, pid = wait_until(lambda: worker_training(proc, sweep_dir), TIMEOUT, "a job training in a worker")
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        kill_quietly(proc)
    log = (tmp_path / "stage1.log").read_text()
    after_kill = statuses(sweep_dir)                  # every file that exists is whole JSON
    # the launching process marks the dead worker's job interrupted (completed: it won the race)
    assert after_kill[victim] in ("interrupted", "completed"), after_kill
    assert not list((sweep_dir / str(victim)).glob(".*.tmp"))
    others = {n: s for n, s in after_kill.items() if n != victim}
    assert set(others.values()) == {"completed"}, after_kill
    kept = completed_fingerprints(sweep_dir)
    if after_kill[victim] == "interrupted":
        assert proc.returncode == 1, log[-3000:]
        assert f"job {victim} (" in log and "its worker process died (signal SIGKILL)" in log, log[-3000:]
        assert f"jobs that did not complete: {victim} (interrupted)" in log, log[-3000:]
        assert "its worker process died" in read_json(sweep_dir / str(victim) / "metrics.json")["error"]
        summary = summarize(sweep_dir, plots=False)
        assert any(p.startswith(f"job {victim}:") and "interrupted" in p for p in summary["problems"])

    resumed = cli(args + ["resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_unchanged(sweep_dir, kept, "resume")
    assert statuses(sweep_dir) == dict.fromkeys(range(N_SWEEP_JOBS), "completed")
    assert results(sweep_dir) == results(reference_sweep)


def _worker_starters(pid: int) -> list[int]:
    """Processes under `pid` that are starting its workers: the fork server while it imports
    torch for them (Linux), or workers spawned where there is none; not the resource tracker."""
    found = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if (b"forkserver" in cmdline or b"spawn_main" in cmdline) and b"resource_tracker" not in cmdline:
            found.append(child)
    return found


@pytest.mark.slow
@needs_proc
def test_a_worker_killed_while_starting_stops_the_sweep_with_one_line(tmp_path):
    """A worker that dies before it can take a job (killed while importing torch) would
    die the same way again: the sweep stops with one line saying so, before any job ran."""
    sweep_dir = tmp_path / "sweep"
    proc = start_cli(sweep_args(sweep_dir), tmp_path, tmp_path / "start.log")
    try:
        [victim, *_] = wait_until(lambda: _worker_starters(proc.pid), TIMEOUT, "a worker process", poll=0.005)
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        kill_quietly(proc)
    log = (tmp_path / "start.log").read_text()
    assert proc.returncode == 1, log[-3000:]
    assert "collapse: error: a sweep worker process died while starting (" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert not list(sweep_dir.glob("*/metrics.json"))


@pytest.mark.slow
@needs_proc
def test_whole_sweep_killed_repeatedly_then_resumed_equals_an_uninterrupted_sweep(tmp_path, reference_sweep):
    """The default launcher's sweep, stopped three times at random moments - kill -9 of
    its main process, Ctrl-C to its process group, kill -9 again - each time resumed:
    nothing completed is rewritten, and the last resume ends equal to an uninterrupted sweep.
    (The basic launcher: SIGTERM and SIGKILL in the mid-run test below.)"""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(sweep_dir)
    kept: dict = {}
    seen = []
    # how long a job trains: the kill lands within the jobs that start as the first ones finish
    job_s = min(read_json(reference_sweep / str(n) / "metrics.json")["wall_time_s"] for n in range(N_SWEEP_JOBS))
    for round_, sig in enumerate((signal.SIGKILL, signal.SIGINT, signal.SIGKILL)):
        proc = start_cli(args + (["resume=true"] if round_ else []), tmp_path, tmp_path / f"round{round_}.log")
        try:
            # at least one more job finishes in every round (progress), then a random moment
            wait_until(lambda proc=proc: proc.poll() is not None or n_completed(sweep_dir) > len(kept), TIMEOUT,
                       f"round {round_}: a job to finish")
            # a job's time as this sweep runs it: the reference sweep ran beside other tests, on a
            # machine as busy or not, and a delay sized on it could outlast this whole sweep
            here = [r["wall_time_s"] for r in (read_json(sweep_dir / str(n) / "metrics.json")
                                               for n in range(N_SWEEP_JOBS))
                    if r and r.get("status") == "completed" and r.get("wall_time_s")]
            time.sleep(rng.uniform(0.0, 0.4 * min([job_s, *here])))
            tree = descendants(proc.pid)
            if proc.poll() is None:
                if sig == signal.SIGINT:
                    os.killpg(proc.pid, sig)     # Ctrl-C: the terminal signals the whole group
                else:
                    os.kill(proc.pid, sig)       # kill -9 PID: only the sweep's main process
            proc.wait(timeout=TIMEOUT)
            # a SIGKILLed parallel sweep must not leave workers that go on writing into its
            # dir (checked before the teardown's killpg, which would hide them)
            wait_gone(tree, f"round {round_}: the killed sweep's processes")
        finally:
            kill_quietly(proc)
        state = statuses(sweep_dir)
        seen.append((proc.returncode, state))
        assert_unchanged(sweep_dir, kept, f"round {round_} (seed {seed})")
        kept.update(completed_fingerprints(sweep_dir))
        if proc.returncode != 0:
            # the job in flight records `interrupted` (SIGINT) or stays `running` (SIGKILL: the
            # summary calls it interrupted), never truncated
            assert set(state.values()) <= {"completed", "running", "interrupted", "missing"}, state

    assert any(rc != 0 for rc, _ in seen), f"nothing was killed: {seen}"
    resumed = cli(args + ["resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_unchanged(sweep_dir, kept, f"final resume (seed {seed}, rounds {seen})")
    assert results(sweep_dir) == results(reference_sweep), f"seed {seed}, rounds {seen}"


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("launcher", ["basic", "default"])
def test_sweep_sigtermed_and_sigkilled_mid_run_resumes_from_checkpoints_to_the_same_result(
        tmp_path, launcher, mid_run_reference):
    """SIGTERM (pre-emption) lands while a job is past its second epoch: the job records
    `interrupted`; a resume SIGKILLed at a random point; the last resume continues the
    interrupted jobs from their checkpoints and ends equal to an uninterrupted sweep."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    extra = (*MID_RUN, *(BASIC if launcher == "basic" else ()))
    sweep_dir = tmp_path / "sweep"
    kept: dict = {}
    interrupted: dict = {}              # job -> epochs it had finished when SIGTERM landed
    for round_, sig in enumerate((signal.SIGTERM, signal.SIGKILL)):
        proc = start_cli(sweep_args(sweep_dir, *extra, *(["resume=true"] if round_ else [])), tmp_path,
                         tmp_path / f"round{round_}.log")
        try:
            def past_epoch_2():
                return [n for n in range(N_SWEEP_JOBS)
                        if (r := read_json(sweep_dir / str(n) / "metrics.json")) and r["status"] == "running"
                        and 2 <= r.get("epochs_run", 0) <= 6 and n not in kept]
            wait_until(lambda proc=proc: proc.poll() is not None or past_epoch_2(), TIMEOUT, f"round {round_}: epoch 2")
            time.sleep(rng.uniform(0.0, 0.05))
            tree = descendants(proc.pid)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, sig)
            proc.wait(timeout=TIMEOUT)
            wait_gone(tree, f"round {round_}: the killed sweep's processes")
            if killed and sig == signal.SIGTERM:        # recorded, then 128 + 15, like a single run
                assert proc.returncode == 143, (tmp_path / f"round{round_}.log").read_text()[-3000:]
        finally:
            kill_quietly(proc)
        assert_unchanged(sweep_dir, kept, f"round {round_} (seed {seed})")
        kept.update(completed_fingerprints(sweep_dir))
        state = statuses(sweep_dir)
        if sig == signal.SIGTERM:
            # the job past epoch 2 (parallel: and the other worker's, which may have just begun)
            interrupted = {n: len(read_json(sweep_dir / str(n) / "metrics.json")["history"])
                           for n, s in state.items() if s == "interrupted"}
            interrupted = {n: epochs for n, epochs in interrupted.items() if epochs >= 2}
            assert interrupted, f"SIGTERM left no interrupted record past epoch 2: {state} (seed {seed})"
            assert all((sweep_dir / str(n) / records.CHECKPOINT_FILE).exists() for n in interrupted)
    resumed = cli(sweep_args(sweep_dir, *extra, "resume=true"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_unchanged(sweep_dir, kept, f"final resume (seed {seed})")
    assert results(sweep_dir) == results(mid_run_reference), f"seed {seed}"
    resumed_from = {n: read_json(sweep_dir / str(n) / "metrics.json")["resumed_from_epoch"] for n in interrupted}
    assert all(epoch is not None and epoch >= interrupted[n] for n, epoch in resumed_from.items()), \
        (resumed_from, interrupted)


# A writer looping over the same target, killed at random moments. The payload's size
# changes every write, so a torn file cannot pass for a whole one.
WRITER = """
import itertools, sys
from pathlib import Path
from collapse import records
path, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "weights":
    import torch
for i in itertools.count():
    if kind == "json":
        records.write_json(path, {"schema": 1, "status": "running", "i": i, "pad": "x" * (i % 7 * 40000)})
    else:
        records.save_weights(path, {"w": torch.full((64 * (1 + i % 5), 64), float(i))})
    if i == 1:
        print("ready", flush=True)
"""


def _check_whole(path: Path, kind: str) -> None:
    if kind == "json":
        record = json.loads(path.read_text())
        assert len(record["pad"]) == record["i"] % 7 * 40000
    else:
        import torch

        w = torch.load(path, weights_only=True)["w"]
        i = int(w[0, 0])
        assert w.shape == (64 * (1 + i % 5), 64) and bool((w == i).all())


@pytest.mark.slow
@pytest.mark.parametrize("kind, sig, rounds", [("json", signal.SIGKILL, 6), ("json", signal.SIGINT, 3),
                                               ("weights", signal.SIGKILL, 3)])
def test_a_kill_during_a_write_never_leaves_a_torn_file(tmp_path, kind, sig, rounds):
    rng = random.Random()
    target = tmp_path / ("metrics.json" if kind == "json" else "model.pt")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, str(script), str(target), kind], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0
        _check_whole(target, kind)
        # only the writer's hidden temp files may be left next to the target (nothing reads
        # them). Even SIGINT can leave one: the interrupt may land between mkstemp and the
        # `try` that would remove it, so their absence is not a guarantee.
        stray = [p.name for p in tmp_path.iterdir() if p not in (target, script)]
        assert all(n.startswith(f".{target.name}.") and n.endswith(".tmp") for n in stray), stray


def test_a_failing_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    records.write_json(target, {"schema": 1, "status": "completed"})
    before = target.read_bytes()

    def torn(f):
        f.write(b'{"schema": 1, "stat')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        records._atomic_write_bytes(target, torn)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ---------------------------------------------------------------- failing cells

@pytest.mark.slow
def test_diverging_and_raising_cells_are_recorded_counted_and_the_sweep_goes_on(tmp_path):
    X, y = xy(200)
    good = write_npz(tmp_path / "good.npz", X=X, y=y)          # 5 frames a sample
    missing = tmp_path / "missing.npz"
    sweep_dir = tmp_path / "sweep"
    # two ways a job raises - its data file is missing, its config asks for more frames than the
    # file has - and one way it diverges; the failing cells come first: the jobs after them must run
    proc = cli(["-m", "data=npz", f"data.path={missing},{good}", "trainer.lr=1e-3,1e6", "data.temporal_frames=3,99",
                "trainer.epochs=3",
                # mean_pool: its ReLU head blows up at lr 1e6 (a GRU's saturating gates stay finite)
                "model=mean_pool", "model.hidden_dim=16", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "jobs that did not complete" in proc.stderr
    by_cell = {}
    for num in range(8):
        r = read_json(sweep_dir / str(num) / "metrics.json")
        data = r["config"]["data"]
        by_cell[(Path(data["path"]).name, r["config"]["trainer"]["lr"], data["temporal_frames"])] = (num, r)
    failed = [cell for cell in by_cell if cell[0] == "missing.npz" or cell[2] == 99]
    for cell in failed:                  # a failed job leaves nothing that looks like a result
        num, r = by_cell[cell]
        assert r["status"] == "failed" and r["stop_reason"] == "bad_input", (cell, r["status"])
        assert not (sweep_dir / str(num) / "model.pt").exists() and r["best"] is None
        if cell[0] == "missing.npz" and cell[2] == 3:
            assert str(missing) in r["error"] and "file not found" in r["error"]
        if cell[0] == "good.npz":
            assert "data.temporal_frames=99" in r["error"], r["error"]
    assert by_cell[("good.npz", 1e-3, 3)][1]["status"] == "completed"
    diverged_num, diverged = by_cell[("good.npz", 1e6, 3)]
    assert diverged["status"] == "diverged" and diverged["stop_reason"] == "non_finite_loss"

    summary = summarize(sweep_dir, plots=False)
    assert {k: v for k, v in summary["jobs"]["by_status"].items() if v} == \
        {"completed": 1, "failed": 6, "diverged": 1}
    for cell in failed:
        num = by_cell[cell][0]
        assert any(p.startswith(f"job {num}:") and "failed" in p for p in summary["problems"]), summary["problems"]
    for lr in (1e-3, 1e6):
        num = by_cell[("missing.npz", lr, 3)][0]
        assert any(p.startswith(f"job {num}:") and "file not found" in p for p in summary["problems"])
    assert any(p.startswith(f"job {diverged_num}:") and "diverged" in p for p in summary["problems"])


# ---------------------------------------------------------------- damaged sweep directories

def _damaged_copy(reference_sweep: Path, dst: Path, running_pid: int) -> Path:
    import shutil

    shutil.copytree(reference_sweep, dst)
    m0 = dst / "0" / "metrics.json"
    m0.write_text(m0.read_text()[: len(m0.read_text()) // 2])          # torn JSON
    shutil.rmtree(dst / "1" / ".hydra")                                 # no .hydra/
    r2 = json.loads((dst / "2" / "metrics.json").read_text())
    (dst / "2" / "metrics.json").write_text(json.dumps({**r2, "schema": 99}))   # from the future
    r3 = json.loads((dst / "3" / "metrics.json").read_text())
    r3.update(status="running", best=None, provenance={**r3["provenance"], "pid": running_pid,
                                                       "hostname": socket.gethostname()})
    (dst / "3" / "metrics.json").write_text(json.dumps(r3))             # in progress
    return dst


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("in_progress", ["alive", "dead"])
def test_summary_reports_each_damaged_job_and_summarises_the_rest(tmp_path, reference_sweep, in_progress):
    pid = os.getpid() if in_progress == "alive" else _dead_pid()
    sweep_dir = _damaged_copy(reference_sweep, tmp_path / "sweep", pid)
    summary = summarize(sweep_dir, plots=False)
    state3 = "running" if in_progress == "alive" else "interrupted"
    assert {k: v for k, v in summary["jobs"]["by_status"].items() if v} == \
        {"unreadable": 2, "completed": 1, state3: 1}
    problems = summary["problems"]

    def reported(num, *words):
        return any(p.startswith(f"job {num}:") and all(w in p for w in words) for p in problems)

    assert reported(0, "not valid JSON")
    assert reported(1, ".hydra")
    assert reported(2, "schema", "99")
    assert reported(3, "running" if in_progress == "alive" else "interrupted", str(pid))
    # job 1 has no .hydra/ but a whole metrics.json: still summarised, in its own cell
    [cell] = [c for c in summary["cells"] if 1 in c["jobs"]]
    assert cell["n_results"] == 1 and cell["metrics"]["val.r2"]["n"] == 1

    # the command line: exit 0, one problem per line on stderr, the table on stdout
    proc = subprocess.run([sys.executable, "-m", "collapse.summary", str(sweep_dir), "--no-plots"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("problem: ") for line in lines), lines
    for num in range(4):
        assert any(line.startswith(f"problem: job {num}:") for line in lines), (num, lines)
    assert "Traceback" not in proc.stderr
