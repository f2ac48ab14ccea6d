"""The one execution path (collapse.run.execute) through the notebook API and the CLI:
run directories that refuse to be overwritten, interrupts that are results, runs that
continue from their checkpoint, thread counts restored, files that honour the umask."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from collapse import records
from collapse.errors import RunExists
from collapse.train import run

from conftest import ROOT, TIMEOUT, TINY, cli, fingerprint, read_json, start_cli, wait_until

# interrupted once past epoch 3: 17 epochs (~30 ms each) before the run could end on its own
LONG = ["data.n_samples=2000", "trainer.epochs=20", "trainer.patience=0", "model.hidden_dim=16",
        "checkpoint_every_s=0", "trainer.threads=1"]


def computed(record: dict) -> dict:
    return {"best": record["best"], "best_epoch": record["best_epoch"], "status": record["status"],
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]}


def test_a_second_config_into_a_used_run_dir_is_refused_and_the_first_kept(tmp_path):
    run(TINY, run_dir=tmp_path)
    before = fingerprint(tmp_path / records.METRICS_FILE)
    with pytest.raises(RunExists, match="another config"):
        run([*TINY, "seed=1"], run_dir=tmp_path)
    with pytest.raises(RunExists, match="resume=true"):
        run(TINY, run_dir=tmp_path)                 # the same config again, without resume
    assert fingerprint(tmp_path / records.METRICS_FILE) == before


def test_resume_returns_the_finished_result_without_training(tmp_path):
    first = run(TINY, run_dir=tmp_path)
    before = fingerprint(tmp_path / records.METRICS_FILE)
    again = run([*TINY, "resume=true"], run_dir=tmp_path)
    assert again.best == first.best and again.provenance["pid"] == first.provenance["pid"]
    assert fingerprint(tmp_path / records.METRICS_FILE) == before


def test_thread_count_is_restored_after_a_run():
    before = torch.get_num_threads()
    record = run([*TINY, f"trainer.threads={before + 1}"])
    assert record.threads == before + 1 and torch.get_num_threads() == before


def test_a_run_dir_in_use_by_a_live_process_is_refused(tmp_path):
    from collapse.records import DirLock

    with DirLock(tmp_path).acquire():
        with pytest.raises(RunExists, match="in use by another process"):
            run(TINY, run_dir=tmp_path)
    assert not (tmp_path / records.METRICS_FILE).exists()


def test_keyboard_interrupt_in_run_is_recorded_then_resume_continues_to_the_same_result(tmp_path):
    reference = run(LONG)
    # a real SIGINT, from another thread, while the main thread trains
    timer = threading.Timer(0.0, lambda: None)

    def interrupt_after_epoch_3():
        wait_until(lambda: (read_json(tmp_path / records.METRICS_FILE) or {}).get("epochs_run", 0) >= 3,
                   TIMEOUT, "epoch 3")
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=interrupt_after_epoch_3, daemon=True)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run(LONG, run_dir=tmp_path)
    timer.join()
    stopped = read_json(tmp_path / records.METRICS_FILE)
    assert stopped["status"] == "interrupted" and stopped["stop_reason"] == "interrupted"
    assert len(stopped["history"]) >= 3 and (tmp_path / records.WEIGHTS_FILE).exists()
    assert (tmp_path / records.CHECKPOINT_FILE).exists()

    resumed = run([*LONG, "resume=true"], run_dir=tmp_path)
    assert resumed.resumed_from_epoch >= 3 and resumed.status == "completed"
    assert computed(resumed.to_dict()) == computed(reference.to_dict())
    assert not (tmp_path / records.CHECKPOINT_FILE).exists()       # finished: nothing to continue


@pytest.mark.slow
def test_sigterm_of_a_cli_run_is_recorded_and_resume_continues_from_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_cli([*LONG, f"hydra.run.dir={run_dir}"], tmp_path, tmp_path / "run.log")
    try:
        wait_until(lambda: (read_json(run_dir / records.METRICS_FILE) or {}).get("epochs_run", 0) >= 3,
                   TIMEOUT, "epoch 3")
        proc.send_signal(signal.SIGTERM)            # what SLURM sends on pre-emption
        assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = read_json(run_dir / records.METRICS_FILE)
    assert stopped["status"] == "interrupted" and stopped["error"].startswith("Interrupted: SIGTERM")
    assert len(stopped["history"]) >= 3 and (run_dir / records.WEIGHTS_FILE).exists()

    resumed = cli([*LONG, f"hydra.run.dir={run_dir}", "resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_json(run_dir / records.METRICS_FILE)
    assert final["status"] == "completed" and final["resumed_from_epoch"] >= 3
    assert computed(final) == computed(run(LONG).to_dict())


@pytest.mark.slow
def test_files_honour_the_umask(single_cli_run):
    # conftest.single_cli_run ran under umask 027 -> 0640, which tells both wrong modes apart:
    # mkstemp's private 0600 and a fixed 0644
    for name in (records.METRICS_FILE, records.WEIGHTS_FILE):
        assert os.stat(single_cli_run / "run" / name).st_mode & 0o777 == 0o640, name


def test_the_record_is_typed_and_round_trips(tmp_path):
    record = run(TINY, run_dir=tmp_path)
    on_disk = json.loads((tmp_path / records.METRICS_FILE).read_text())
    assert records.RunRecord.from_dict(on_disk).to_dict() == on_disk
    assert record.is_result and on_disk["schema"] == records.SCHEMA_VERSION == 2
    assert set(on_disk["diagnosis"]) == {"val", "test"}
    assert isinstance(on_disk["recalibrated"]["raised_test_r2"], bool)


def test_deterministic_false_really_turns_determinism_off():
    run([*TINY, "trainer.deterministic=false"])
    assert not torch.are_deterministic_algorithms_enabled()
    run(TINY)
    assert torch.are_deterministic_algorithms_enabled()


def test_determinism_is_set_without_importing_torch_inductor():
    # torch.use_deterministic_algorithms imports torch._inductor (~1.2 s a process): a run
    # sets the same flags without it, and with torch's own call once inductor is loaded
    code = ("import sys, torch; from collapse.run.execute import set_deterministic; "
            "set_deterministic(True); a = (torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._inductor' in sys.modules); "
            "set_deterministic(False); b = torch.are_deterministic_algorithms_enabled(); "
            "import torch._inductor.config as ic; set_deterministic(True); "
            "print(a, b, ic.deterministic, torch.are_deterministic_algorithms_enabled())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(True,", "True,", "False)", "False", "True", "True"]


def test_config_values_are_recorded_as_resolved_and_interpolations_are_documented(tmp_path, monkeypatch):
    # the README's security note: `${oc.env:...}` in an override is resolved, and the value lands in
    # metrics.json; nothing on the command line runs code (see test_bad_input for the refusals)
    monkeypatch.setenv("COLLAPSE_TEST_LABEL", "from-the-environment")
    record = run([*TINY, "study=${oc.env:COLLAPSE_TEST_LABEL}"], run_dir=tmp_path)
    assert record.study == "from-the-environment" and record.config["study"] == "from-the-environment"
    assert "study=${oc.env:COLLAPSE_TEST_LABEL}" in record.overrides
    readme = (ROOT / "docs" / "reliability.md").read_text()
    assert "oc.env" in readme and "trusted code" in readme


def test_interrupts_wait_while_a_checkpoint_is_written():
    from collapse.errors import Interrupted
    from collapse.run.interrupts import Interrupts

    with Interrupts() as interrupts:
        with pytest.raises(Interrupted):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                written = True                   # the block runs to its end first
        assert written
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # restored


# ---------------------------------------------------------------- every way out of execute releases the lock

def _lock_is_free(run_dir) -> bool:
    try:
        records.DirLock(run_dir).acquire().release()
    except records.DirLocked:
        return False
    return True


def test_every_exit_of_execute_releases_the_run_directory_lock(tmp_path, monkeypatch):
    import collapse.run.execute as execute_module
    from collapse.errors import DataError

    # completed
    run(TINY, run_dir=tmp_path / "a")
    assert _lock_is_free(tmp_path / "a")
    # an existing result returned by resume=true (the return inside the try)
    run([*TINY, "resume=true"], run_dir=tmp_path / "a")
    assert _lock_is_free(tmp_path / "a")
    # and the directory is usable again from this process, and from another one
    assert run([*TINY, "resume=true"], run_dir=tmp_path / "a").status == "completed"
    proc = cli([*TINY, "resume=true", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # refused: another config's result
    with pytest.raises(RunExists):
        run([*TINY, "seed=3"], run_dir=tmp_path / "a")
    assert _lock_is_free(tmp_path / "a")
    # bad input found while preparing (a data file)
    with pytest.raises(DataError):
        run([*TINY, "data=npz", f"data.path={tmp_path / 'none.npz'}"], run_dir=tmp_path / "b")
    assert _lock_is_free(tmp_path / "b")
    # a failure, and an interrupt, before training: recorded with their stage
    for exc, status in ((MemoryError("Unable to allocate"), "failed"), (KeyboardInterrupt(), "interrupted")):
        def boom(*args, exc=exc, **kwargs):
            raise exc
        monkeypatch.setattr(execute_module.data_lib, "load", boom)
        with pytest.raises(type(exc)):
            run(TINY, run_dir=tmp_path / status)
        assert _lock_is_free(tmp_path / status)
        record = read_json(tmp_path / status / records.METRICS_FILE)
        assert (record["status"], record["stage"]) == (status, "prepare"), record
        assert record["error"].startswith(type(exc).__name__) and record["seed"] == 0
    monkeypatch.undo()
    # a failure while training
    monkeypatch.setattr(execute_module, "_train", lambda run_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        run(TINY, run_dir=tmp_path / "c")
    assert _lock_is_free(tmp_path / "c")
    record = read_json(tmp_path / "c" / records.METRICS_FILE)
    assert (record["status"], record["stage"], record["error"]) == ("failed", "train", "RuntimeError: boom")


def test_a_cli_failure_before_training_names_the_record_it_wrote(tmp_path):
    """A message names metrics.json only once it exists: here a MemoryError while the data
    is generated (under an address-space cap) is recorded first."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "collapse.train", "data.n_samples=300000000",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=cap)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "MemoryError" in line and f"(traceback in {run_dir / 'metrics.json'})" in line, line
    record = read_json(run_dir / "metrics.json")
    assert (record["status"], record["stage"]) == ("failed", "prepare") and "MemoryError" in record["traceback"]


def test_a_tracker_that_cannot_start_is_switched_off_and_the_run_completes(tmp_path):
    record = run([*TINY, "logger=mlflow", "logger.tracking_uri=sqlite:////proc/nope/mlflow.db"], run_dir=tmp_path)
    assert record.status == "completed"
    [warning] = [w for w in read_json(tmp_path / records.METRICS_FILE)["warnings"] if "mlflow" in w]
    assert "could not start" in warning and "/proc/nope" in warning


def test_run_from_two_threads_gives_two_records():
    out = {}

    def go(seed):
        out[seed] = run([*TINY, f"seed={seed}"]).status

    threads = [threading.Thread(target=go, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {1: "completed", 2: "completed"}


def test_weights_hash_is_recorded_and_garbage_weights_are_noticed(tmp_path):
    from collapse.summary.jobs import read_job

    first = run(TINY, run_dir=tmp_path)
    weights = tmp_path / records.WEIGHTS_FILE
    assert first.weights_sha256 == records.file_sha256(weights)
    assert records.weights_problem(tmp_path, read_json(tmp_path / records.METRICS_FILE)) is None
    weights.write_bytes(b"garbage")
    # the summary's reader says so
    assert any("sha256" in p and str(weights) in p for p in read_job(tmp_path).problems)
    # resume does not hand the damaged result back: it runs the config again, to the same result
    again = run([*TINY, "resume=true"], run_dir=tmp_path)
    assert again.provenance["pid"] == os.getpid() and again.started_at != first.started_at
    assert again.best == first.best and records.file_sha256(weights) == first.weights_sha256
    assert torch.load(weights, weights_only=True)


def test_a_killed_writers_temp_file_does_not_outlive_the_next_run(tmp_path):
    run(TINY, run_dir=tmp_path)
    stray = tmp_path / ".metrics.json.k1ll3d.tmp"
    stray.write_text('{"schema": 2, "sta')
    run([*TINY, "resume=true"], run_dir=tmp_path)
    assert not stray.exists()


def test_a_full_disk_or_a_file_size_limit_is_named(tmp_path):
    code = ("import resource, sys\n"
            "from collapse import records\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "records.write_json(sys.argv[1], {'pad': 'x' * 10000})\n")
    target = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        f"collapse.records.WriteError: {target}: file too large (the file size limit, ulimit -f, is 4096 bytes)"
    assert not target.exists() and not list(tmp_path.iterdir())       # no temp file left either
    import errno

    error = records._no_room(target, OSError(errno.ENOSPC, "No space left on device"))
    assert str(error) == f"{target}: disk full (No space left on device) while writing it"
