"""hydra/launcher=ensemble end to end: real sweeps in subprocesses (slow); how a sweep is cut into stacks."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from collapse import records
from collapse.sweep.ensemble import chunks, derivable, derive, member_cost, stack_cap

from conftest import (
    BASIC,
    MID_RUN,
    N_SWEEP_JOBS,
    SWEEP_GRID,
    SWEEP_TINY,
    TIMEOUT,
    cli,
    descendants,
    kill_quietly,
    read_json,
    results,
    start_cli,
    statuses,
    wait_until,
)

ENSEMBLE = ("hydra/launcher=ensemble",)


def sweep_args(sweep_dir: Path, *extra: str) -> list[str]:
    # a constant lr: the stacked loop has no per-member plateau schedule (the default's is refused)
    return ["-m", *SWEEP_TINY, *SWEEP_GRID, "trainer.lr_schedule=none", *extra, f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.slow
def test_ensemble_sweep_records_each_member_as_a_run_equal_to_single_training_and_reproducible(
        tmp_path, in_process_sweep):
    basic, ensemble, again = tmp_path / "basic", tmp_path / "ensemble", tmp_path / "again"
    for sweep_dir, extra in ((basic, BASIC), (ensemble, ENSEMBLE)):
        proc = cli(sweep_args(sweep_dir, *extra), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # run again, in this process as a notebook's sweep (workers from this process's fork server)
    with in_process_sweep(sweep_args(again, *ENSEMBLE)[1:-1], again):
        assert results(again) == results(ensemble)               # a rerun: identical metrics
    console = proc.stdout + proc.stderr
    assert "as 2 stacked model(s) of 2/2 members" in console
    # the console as the default launcher's: a line per job, no member's epochs
    assert "Epoch" not in console, console[-3000:]
    done = sorted(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("job "))
    assert done == list(range(N_SWEEP_JOBS)), proc.stdout
    for num in range(N_SWEEP_JOBS):
        single, member = read_json(basic / str(num) / "metrics.json"), read_json(ensemble / str(num) / "metrics.json")
        assert (single["engine"], member["engine"]) == ("single", "ensemble")
        assert member["status"] == "completed" and member["config_hash"] == single["config_hash"]
        assert member["overrides"] == single["overrides"] and member["job"]["num"] == num
        # its job's .hydra files are Hydra's own, though most members' configs were derived
        for name in ("config.yaml", "overrides.yaml"):
            texts = [(d / str(num) / ".hydra" / name).read_text() for d in (basic, ensemble)]
            assert texts[0] == texts[1]
        hydras = [OmegaConf.load(d / str(num) / ".hydra" / "hydra.yaml").hydra for d in (basic, ensemble)]
        assert hydras[0].job == hydras[1].job and hydras[0].overrides.task == hydras[1].overrides.task
        assert (ensemble / str(num) / records.WEIGHTS_FILE).is_file()
        # its job log holds its own epochs and closing line, as a single run's does
        logs = [[line.split("] - ", 1)[1].split(" |")[0]
                 for line in (d / str(num) / "train.log").read_text().splitlines() if "] - " in line]
                for d in (basic, ensemble)]
        assert logs[1] == logs[0] and "Epoch 1" in logs[1] and logs[1][-1].startswith("completed"), logs
        # same init, data and shuffle order: equal up to float rounding, not bit for bit
        assert member["best_epoch"] == single["best_epoch"]
        assert member["best"]["val"]["r2"] == pytest.approx(single["best"]["val"]["r2"], abs=1e-3)
        assert member["best"]["test"]["r2"] == pytest.approx(single["best"]["test"]["r2"], abs=1e-3)


@pytest.mark.slow
def test_a_custom_model_refuses_the_ensemble_sweep_up_front_with_one_line(tmp_path):
    proc = cli(sweep_args(tmp_path / "sweep", *ENSEMBLE, "model=custom",
                          "model._target_=examples.nets.FrameAttention"), cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("collapse: error:")]
    assert len(errors) == 1 and "hydra/launcher=ensemble: job 0" in errors[0] and "model=custom is refused" in errors[0]
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))
    # the default lr schedule (plateau) is refused the same way, naming the key to set
    proc = cli(["-m", *SWEEP_TINY, *SWEEP_GRID, *ENSEMBLE, f"hydra.sweep.dir={tmp_path / 'plateau'}"], cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("collapse: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "trainer.lr_schedule=plateau is refused" in errors[0]


@pytest.mark.slow
def test_a_killed_ensemble_sweep_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path):
    """SIGKILL the launching process while its members train: the workers record their
    members `interrupted` (with checkpoints); resume=true continues them from there and ends
    with the metrics of an uninterrupted ensemble sweep, bit for bit."""
    reference, sweep_dir = tmp_path / "reference", tmp_path / "sweep"
    proc = cli(sweep_args(reference, *ENSEMBLE, *MID_RUN), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = start_cli(sweep_args(sweep_dir, *ENSEMBLE, *MID_RUN), tmp_path, tmp_path / "first.log")
    try:
        def training():
            return [n for n in range(N_SWEEP_JOBS) if (r := read_json(sweep_dir / str(n) / "metrics.json"))
                    and r["status"] == "running" and 2 <= r.get("epochs_run", 0) <= 6]
        wait_until(lambda: proc.poll() is not None or training(), TIMEOUT, "members past epoch 2")
        assert proc.poll() is None, "the sweep ended before it could be killed"
        tree = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() and
                                   "Z" not in (Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3])
                                   for p in tree), 30, "the killed sweep's workers to exit")
    finally:
        kill_quietly(proc)
    state = statuses(sweep_dir)
    assert "interrupted" in state.values(), state
    # members that had finished an epoch (a stack still being prepared has none: it starts over)
    interrupted = [n for n, s in state.items()
                   if s == "interrupted" and read_json(sweep_dir / str(n) / "metrics.json")["history"]]
    assert interrupted, state
    assert all((sweep_dir / str(n) / records.CHECKPOINT_FILE).is_file() for n in interrupted)
    resumed = cli(sweep_args(sweep_dir, *ENSEMBLE, *MID_RUN, "resume=true"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(sweep_dir) == results(reference)
    assert all(read_json(sweep_dir / str(n) / "metrics.json")["resumed_from_epoch"] for n in interrupted)


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_stack_which_a_resume_runs_again(tmp_path):
    """SIGKILL one worker process mid-stack (the OOM killer): its members are marked
    interrupted, the other stack completes, the sweep exits 1 naming the jobs, and a
    resume runs only those."""
    sweep_dir = tmp_path / "sweep"
    proc = start_cli(sweep_args(sweep_dir, *ENSEMBLE, *MID_RUN), tmp_path, tmp_path / "first.log")
    try:
        def a_worker_training():
            workers = set(descendants(proc.pid))      # forked by the sweep's fork server
            pids = {r["provenance"]["pid"] for n in range(N_SWEEP_JOBS)
                    if (r := read_json(sweep_dir / str(n) / "metrics.json")) and r["status"] == "running"}
            return sorted(pids & workers)
        [pid, *_] = wait_until(lambda: proc.poll() is not None or a_worker_training(), TIMEOUT, "a stack training")
        assert proc.poll() is None, "the sweep ended before a worker could be killed"
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        kill_quietly(proc)
    log = (tmp_path / "first.log").read_text()
    state = statuses(sweep_dir)
    records_now = {n: read_json(sweep_dir / str(n) / "metrics.json") for n in range(N_SWEEP_JOBS)}
    # the killed stack: members it had started (its pid), and any it had not prepared yet (no record)
    victims = [n for n, r in records_now.items() if r is None or r["provenance"]["pid"] == pid]
    assert victims and all(state[n] in ("interrupted", "completed", "missing") for n in victims), (state, log[-3000:])
    assert {state[n] for n in range(N_SWEEP_JOBS) if n not in victims} == {"completed"}, state
    if any(state[n] == "interrupted" for n in victims):
        assert proc.returncode == 1, log[-3000:]
        assert "its worker process died (signal SIGKILL)" in log and "Traceback" not in log, log[-3000:]
    resumed = cli(sweep_args(sweep_dir, *ENSEMBLE, *MID_RUN, "resume=true"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert statuses(sweep_dir) == dict.fromkeys(range(N_SWEEP_JOBS), "completed")

def test_stacks_are_cut_to_fit_the_cache_and_handed_out_costliest_first():
    # phase4: 3 groups of 12 (frames 1, 3, 7), batch 256, hidden 64, 2 workers. Whole groups
    # left one worker the 7-frame stack and the 7-frame stack's 5.5 MB activations streamed
    # from memory; cut to <= 2 MiB of activations, 6 stacks balance
    frames = [1] * 12 + [3] * 12 + [7] * 12
    groups = [list(range(0, 12)), list(range(12, 24)), list(range(24, 36))]
    caps = [stack_cap(256, f, 64) for f in (1, 3, 7)]
    assert caps == [32, 10, 4]
    cost = lambda part: sum(member_cost(frames[i]) for i in part)  # noqa: E731
    parts = chunks(groups, 2, 0, cost=cost, caps=caps)
    assert sorted(len(p) for p in parts) == [4, 4, 4, 6, 6, 12] and sorted(sum(parts, [])) == list(range(36))
    assert [cost(p) for p in parts] == [36, 36, 36, 36, 30, 30]          # costliest first
    # longest-processing-time first over 2 workers: 102 and 102 units; whole groups: 108 and 96
    loads = [0, 0]
    for p in parts:
        loads[loads.index(min(loads))] += cost(p)
    assert loads == [102, 102]
    # hydra.launcher.max_members is the user's cap, the cache's is not applied over it
    assert [len(p) for p in chunks(groups, 2, 12, cost=cost, caps=caps)] == [12, 12, 12]
    # a stack of one computes a duplicate row: the cache never cuts below 2 members
    assert stack_cap(4096, 7, 256) == 2
    # a sweep of one small group still feeds every worker (jobs / workers)
    assert [len(p) for p in chunks([list(range(8))], 4, 0, caps=[32])] == [2, 2, 2, 2]


def test_a_job_derived_from_its_groups_composition_is_hydras_own_composition():
    """The ensemble launcher composes one job of each would-be group and derives the others
    (member-key values, hydra.overrides.task, hydra.job.override_dirname): equal to what
    Hydra composes, key for key; a bad member value fails as Hydra's composition does."""
    import pickle

    import cloudpickle
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from collapse import train

    grid = [[f"data.temporal_frames={f}", f"loss.variance_lambda={lam}", f"seed={seed}", "trainer.epochs=5"]
            for f in (1, 3) for lam in ("0.0", "0.25", "1") for seed in (0, 2)]
    grid.append(["data.temporal_frames=3", "loss.variance_lambda=0.5", "seed=1", "model.init_std=0.01",
                 "trainer.lr=3e-3", "trainer.weight_decay=0"])          # other member keys: its own set
    grid.append(["data.temporal_frames=3", "loss.variance_lambda=2", "seed=7", "model.init_std=0.5",
                 "trainer.lr=0.01", "trainer.weight_decay=1e-4"])
    grid.append(["data.temporal_frames=3", "+loss.variance_lambda=2", "seed=7"])   # not a plain value: composed
    source = derivable(grid)
    assert set(source.values()) == {0, 6, 12} and len(source) == 11 and 14 not in source
    with initialize_config_dir(config_dir=train.CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["hydra/launcher=ensemble", "experiment=phase1"],
                                           RunMode.MULTIRUN)
        for i, j in source.items():
            want = loader.load_sweep_config(master, grid[i])
            got = pickle.loads(derive(cloudpickle.dumps(loader.load_sweep_config(master, grid[j])), grid[i]))
            assert OmegaConf.to_container(got, resolve=False) == OmegaConf.to_container(want, resolve=False)
            assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(want)        # types too (0 -> 0.0)
            assert got.loss.variance_lambda == float(grid[i][1].split("=")[1])
        base = cloudpickle.dumps(loader.load_sweep_config(master, grid[0]))
        bad = ["data.temporal_frames=1", "loss.variance_lambda=0.0", "seed=1.5", "trainer.epochs=5"]
        with pytest.raises(ConfigCompositionException):
            loader.load_sweep_config(master, bad)
        with pytest.raises(ConfigCompositionException, match="seed=1.5"):
            derive(base, bad)
