"""The sweep's console (collapse.sweep.progress, the job side in collapse.sweep.job): one line
per finished job with a running count and an ETA, epoch lines in the job logs only, no line
over 120 columns; a single run still shows its epochs."""
import io
import json
import re
from pathlib import Path

import pytest

from collapse.labels import cell_name, fit
from collapse.sweep.progress import LINE_WIDTH, SweepProgress, eta, job_line

from conftest import TINY, cli

RECORD = {"schema": 2, "status": "completed", "best": {"val": {"r2": 0.9341}, "test": {"r2": 0.9123}},
          "diagnosis": {"val": {"label": "healthy"}, "test": {"label": "healthy"}}}


def test_cell_names_are_short_and_skip_resume():
    assert cell_name(["data.temporal_frames=3", "loss.variance_lambda=0.5", "seed=1", "resume=true"]) == \
        "frames=3 λ=0.5 seed=1"
    assert cell_name(["loss=bmc", "+model.kwargs.width=32"]) == "loss=bmc width=32"
    assert cell_name([]) == "defaults"
    assert fit("x" * 10, 5) == "xxxx…" and fit("abc", 5) == "abc"


def test_job_line_says_number_cell_status_r2_and_diagnosis():
    line = job_line(6, ["data.temporal_frames=3", "seed=0"], RECORD)
    assert line == "job 6  frames=3 seed=0: completed, test R² 0.912, val R² 0.934, healthy"
    split = {**RECORD, "diagnosis": {"val": {"label": "healthy"}, "test": {"label": "collapsed"}}}
    assert job_line(1, [], split).endswith("val healthy, test collapsed")
    failed = {"status": "failed", "error": "DataError: data.path: no such file"}
    assert job_line(2, ["seed=1"], failed) == "job 2  seed=1: failed (DataError: data.path: no such file)"
    assert job_line(3, ["seed=1"], None, "lost: its worker process died (signal SIGKILL)").endswith("SIGKILL)")
    pruned = {**RECORD, "stop_reason": "pruned"}
    assert job_line(4, ["trainer.lr=0.0016051911330"], pruned).startswith("job 4  lr=0.001605: completed (pruned), ")


def test_eta_from_the_rate_so_far():
    assert eta(0, 12, 0.0) == "0/12 done"
    assert eta(7, 12, 28.0) == "7/12 done, ~20 s left"          # 4 s a job, 5 left
    assert eta(3, 12, 600.0) == "3/12 done, ~30 min left"
    assert eta(12, 12, 61.0) == "12/12 done in 61 s"
    assert eta(5, None, 3.0) == "5 done"


def test_progress_prints_plain_lines_into_a_file_and_never_wider_than_120(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    (job / "metrics.json").write_text(json.dumps(RECORD))
    out = io.StringIO()                     # not a terminal: no bar, no control characters
    progress = SweepProgress(total=2, stream=out)
    assert progress.bar is None
    long_cell = [f"model.kwargs.option_{i}=value_{i}" for i in range(12)]
    progress.job_done(0, ["seed=0"], job)
    progress.job_done(1, long_cell, tmp_path / "missing")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("job 0  seed=0: completed, test R² 0.912") and "| 1/2 done, ~" in lines[0]
    assert "…" in lines[1] and lines[1].endswith("| 2/2 done in 0 s")
    assert max(map(len, lines)) <= LINE_WIDTH
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
def test_a_parallel_sweep_prints_a_line_per_job_and_keeps_epochs_in_the_job_logs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = cli(["-m", *TINY, "loss.variance_lambda=0,0.5", "seed=0,1", "hydra.launcher.n_jobs=2",
                f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("job ")]
    assert sorted(int(x.split()[1]) for x in lines) == [0, 1, 2, 3]
    assert [re.search(r"\| (\d)/4 done", x).group(1) for x in lines] == ["1", "2", "3", "4"]
    assert all("completed, test R² " in x for x in lines)
    assert "Epoch" not in console
    assert max(len(x) for x in console.splitlines()) <= LINE_WIDTH
    for job in _job_dirs(sweep_dir):       # each job's log keeps its epochs, unmixed
        log = next(job.glob("*.log")).read_text()
        assert log.count("Epoch 1 |") == 1 and "Epoch 3 |" in log


@pytest.mark.slow
def test_another_launcher_shows_each_jobs_closing_line_without_epochs(reference_sweep):
    # conftest.reference_sweep: 4 jobs through the basic launcher, its console kept
    console = (reference_sweep.parent / "console.txt").read_text()
    assert "Epoch" not in console
    assert all(f"[job {n}][INFO] completed" in console for n in range(4)), console[-3000:]


def test_a_single_run_still_shows_its_epochs(single_cli_run):
    assert "Epoch 1 | R²" in (single_cli_run / "console.txt").read_text()
