"""collapse.summary on fabricated sweep directories with known numbers.

Each job dir is written by hand the way Hydra and collapse.train write them:
.hydra/overrides.yaml and .hydra/hydra.yaml through OmegaConf (Hydra's own writer),
metrics.json through collapse.records.write_json. Expected statistics are computed by
hand (or, for eta squared on the grid, by a separate numpy formula) from the literals.
"""
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from collapse import records
from collapse.summary import Thresholds, stats, summarize
from collapse.summary import jobs as sweep_jobs
from collapse.summary.report import render_text
from collapse.summary.stats import describe, eta_squared, t975

FRAMES, LAMBDAS, SEEDS = (1, 7), (0.0, 0.5), (0, 1, 2)
# (temporal_frames, variance_lambda) -> per-seed val R², val variance ratio, diagnosis labels
GRID = {
    (1, 0.0): ([0.60, 0.70, 0.65], [0.75, 0.80, 0.85], ["healthy"] * 3),
    (1, 0.5): ([0.55, 0.75, 0.80], [0.05, 0.90, 0.99], ["healthy"] * 3),
    (7, 0.0): ([0.30, 0.40, 0.50], [0.50, 0.60, 0.70], ["healthy", "collapsed", "no_signal"]),
    (7, 0.5): ([0.20, 0.25, 0.39], [0.80, 0.90, 1.00], ["no_signal"] * 3),
}
SWEEP = {"name": "fab", "factors": ["data.temporal_frames", "loss.variance_lambda"],
         "baseline": ["data.temporal_frames=7", "loss.variance_lambda=0.0"]}
HELP = "${hydra.help.header}\n== Configuration groups ==\n\n$APP_CONFIG_GROUPS\n"


def write_job(sweep_dir: Path, num: int, overrides: list, choices: dict, status="completed",
              val_r2=0.5, val_ratio=0.8, label="healthy", sweep=None, seed=0, **record_extra) -> Path:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    hydra = {"hydra": {"help": {"template": HELP}, "mode": "MULTIRUN",
                       "job": {"name": "train", "override_dirname": ",".join(overrides), "id": str(num),
                               "num": num, "config_name": "fab", "env_set": {}},
                       "runtime": {"version": "1.3.8", "cwd": "/x",
                                   "config_sources": [{"path": "hydra.conf", "schema": "pkg"}],
                                   "choices": {**choices, "hydra/launcher": "basic", "hydra/callbacks": None}},
                       "verbose": False}}
    (job / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(hydra)))
    best = {"epoch": 3,
            "val": {"r2": val_r2, "variance_ratio": val_ratio, "pred_std": 0.1 * val_ratio, "rmse": 1 - val_r2,
                    "mae": 0.5 * (1 - val_r2)},
            "test": {"r2": val_r2 - 0.05, "variance_ratio": val_ratio, "pred_std": 0.1 * val_ratio,
                     "rmse": 1.1 - val_r2, "mae": 0.5}}
    history = [{"epoch": e, "val_r2": val_r2 * e / 3, "val_variance_ratio": val_ratio, "val_loss": 0.1}
               for e in (1, 2, 3)]
    record = {"schema": record_extra.pop("schema", 1), "status": status, "seed": seed, "overrides": overrides,
              "choices": choices,
              "job": {"num": num}, "config": {"seed": seed, "sweep": sweep or {"name": "adhoc"}},
              "best_epoch": 3, "best": best, "history": history, "diagnosis": {"label": label},
              "provenance": {"hostname": socket.gethostname(), "pid": 1}, "error": None, **record_extra}
    records.write_json(job / "metrics.json", record)
    return job


def make_grid(sweep_dir: Path, sweep=SWEEP, **overrides_by_num) -> Path:
    """The 2 x 2 x 3-seed sweep of GRID, job numbers in Hydra's order (last key fastest)."""
    num = 0
    for frames in FRAMES:
        for lam in LAMBDAS:
            r2s, ratios, labels = GRID[(frames, lam)]
            for i, seed in enumerate(SEEDS):
                overrides = [f"data.temporal_frames={frames}", f"loss.variance_lambda={lam}", f"seed={seed}",
                             "trainer.epochs=5"]
                write_job(sweep_dir, num, overrides, {"model": "mean_pool", "ssl": "off", "experiment": None},
                          val_r2=r2s[i], val_ratio=ratios[i], label=labels[i], sweep=sweep, seed=seed,
                          **overrides_by_num.get(f"job{num}", {}))
                num += 1
    return sweep_dir


def cell(summary: dict, frames, lam) -> dict:
    (found,) = [c for c in summary["cells"]
                if c["settings"] == {"data.temporal_frames": str(frames), "loss.variance_lambda": str(lam)}]
    return found


# ---------------------------------------------------------------- statistics by hand

def test_t_quantiles_and_small_statistics():
    assert t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t975(2) == pytest.approx(4.3027, abs=1e-4)
    assert t975(30) == pytest.approx(2.0423, abs=1e-4)
    assert t975(31) == pytest.approx(2.0395, abs=1e-4)      # first value from the expansion
    assert t975(120) == pytest.approx(1.9799, abs=1e-4)
    assert t975(10**6) == pytest.approx(1.96, abs=1e-3)
    assert math.isnan(t975(0))

    s = describe([1.0, 2.0, 3.0, None, float("nan")])      # undefined values are left out
    assert (s["n"], s["mean"], s["std"]) == (3, 2.0, 1.0)
    assert s["ci_high"] - 2.0 == pytest.approx(4.30265 / math.sqrt(3), rel=1e-5)
    one = describe([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    # grand mean 2.5; SS_total = 2.25 + .25 + .25 + 2.25 = 5; SS_between = 2 * 1 + 2 * 1 = 4
    assert eta_squared([[1, 2], [3, 4]]) == pytest.approx(0.8)
    assert math.isnan(eta_squared([[1.0, 1.0], [1.0]]))


def test_thresholds_and_verdicts():
    th = Thresholds()
    assert th.verdict(0.65, 0.90) == "excellent"
    assert th.verdict(0.65, 0.80) == "good"          # variance ratio holds it back
    assert th.verdict(0.20, 0.95) == "minimum"       # R² holds it back
    assert th.verdict(-0.1, 0.95) == "fail"
    assert th.verdict(float("nan"), 0.9) == "n/a"
    parsed = Thresholds.parse(["r2=0.1,0.2,0.3", "collapse=0.2"])
    assert parsed.r2 == (0.1, 0.2, 0.3) and parsed.ratio == th.ratio and parsed.collapse == 0.2
    for bad in (["r2=0.5,0.3,0.1"], ["r2=1,2"], ["ratio=a,b,c"], ["collapse=0.1,0.2"], ["alpha=1"]):
        with pytest.raises(ValueError, match="invalid"):
            Thresholds.parse(bad)


# ---------------------------------------------------------------- a complete sweep

@pytest.fixture
def grid_summary(tmp_path):
    return summarize(make_grid(tmp_path / "sweep"), plots=False)


def test_factors_baseline_and_cell_statistics(grid_summary):
    s = grid_summary
    assert [f["key"] for f in s["factors"]] == ["data.temporal_frames", "loss.variance_lambda"]  # not seed, not epochs
    assert s["seeds"] == ["0", "1", "2"]
    assert s["baseline"] == {"label": "data.temporal_frames=7 loss.variance_lambda=0.0",
                             "settings": {"data.temporal_frames": "7", "loss.variance_lambda": "0.0"},
                             "source": "sweep.baseline"}
    assert s["problems"] == [] and s["jobs"]["by_status"]["completed"] == 12

    base = cell(s, 7, 0.0)
    assert base["baseline"] and base["n_results"] == 3
    r2 = base["metrics"]["val.r2"]                     # 0.3, 0.4, 0.5
    assert r2["mean"] == pytest.approx(0.4) and r2["std"] == pytest.approx(0.1)
    assert r2["ci_high"] - 0.4 == pytest.approx(4.30265 * 0.1 / math.sqrt(3), rel=1e-5)
    assert base["metrics"]["test.r2"]["mean"] == pytest.approx(0.35)
    assert base["metrics"]["val.variance_ratio"]["mean"] == pytest.approx(0.6)
    assert base["metrics"]["val.rmse"]["mean"] == pytest.approx(0.6)
    assert base["diagnosis"] == {"healthy": 1, "collapsed": 1, "no_signal": 1, "inflated": 0, "biased": 0,
                                 "underfit": 0, "inconclusive": 0}
    assert base["collapse_rate"] == pytest.approx(1 / 3)             # the "collapsed" label
    assert cell(s, 1, 0.5)["collapse_rate"] == 0.0                  # ratio 0.05 < 0.1 but labelled healthy
    assert cell(s, 1, 0.5)["ratio_below_cutoff_rate"] == pytest.approx(1 / 3)    # its own column
    assert cell(s, 1, 0.0)["collapse_rate"] == 0.0
    assert cell(s, 7, 0.5)["collapse_rate"] == 0.0                  # every label no_signal: no collapse

    # verdicts: (mean R², mean ratio) = (.65, .80) good; (.70, .647) minimum; (.40, .60) minimum; (.28, .90) minimum
    assert [cell(s, *c)["verdict"] for c in GRID] == ["good", "minimum", "minimum", "minimum"]
    # ranked by mean val R²: .70, .65, .40, .28
    assert [c["settings"]["data.temporal_frames"] + "/" + c["settings"]["loss.variance_lambda"]
            for c in s["cells"]] == ["1/0.5", "1/0.0", "7/0.0", "7/0.5"]
    assert [c["rank"] for c in s["cells"]] == [1, 2, 3, 4]


def test_paired_differences_and_warning(grid_summary):
    s = grid_summary
    d = cell(s, 7, 0.5)["vs_baseline"]
    # R²: [.20-.30, .25-.40, .39-.50] = [-.10, -.15, -.11]: mean -.12, std sqrt((.02²+.03²+.01²)/2)
    std = math.sqrt((0.02**2 + 0.03**2 + 0.01**2) / 2)
    assert d["val.r2"]["n_pairs"] == 3 and d["val.r2"]["mean"] == pytest.approx(-0.12)
    assert d["val.r2"]["ci_low"] == pytest.approx(-0.12 - 4.30265 * std / math.sqrt(3), rel=1e-5)
    assert d["val.variance_ratio"]["mean"] == pytest.approx(0.30)     # [.3, .3, .3]: no spread
    assert d["val.variance_ratio"]["ci_low"] == pytest.approx(0.30)
    assert d["test.r2"]["mean"] == pytest.approx(-0.12)
    # only this cell raised the variance ratio and lowered R²
    assert [c["warning"] for c in s["cells"]] == [False, False, False, True]
    assert len(s["warnings"]) == 1 and s["warnings"][0].startswith("data.temporal_frames=7 loss.variance_lambda=0.5")


def test_main_effects_and_eta_squared(grid_summary):
    s = grid_summary
    frames, lam = s["main_effects"]
    assert frames["factor"] == "data.temporal_frames"
    level1, level7 = frames["levels"]
    assert (level1["value"], level1["val.r2"]["n"]) == ("1", 6)
    assert level1["val.r2"]["mean"] == pytest.approx((0.60 + 0.70 + 0.65 + 0.55 + 0.75 + 0.80) / 6)
    assert level7["val.r2"]["mean"] == pytest.approx((0.30 + 0.40 + 0.50 + 0.20 + 0.25 + 0.39) / 6)
    x = np.array([[GRID[(f, lam)][0] for lam in LAMBDAS] for f in FRAMES])      # [frames, lambda, seed]
    ss_total = ((x - x.mean()) ** 2).sum()
    for effect, axis in ((frames, 0), (lam, 1)):
        level_means = x.mean(axis=tuple(a for a in (0, 1, 2) if a != axis))
        ss_between = 6 * ((level_means - x.mean()) ** 2).sum()
        assert effect["eta_squared"]["val.r2"] == pytest.approx(ss_between / ss_total)
    cell_means = x.mean(axis=2)
    between = 3 * ((cell_means - x.mean()) ** 2).sum() / ss_total
    assert s["variance_explained"]["cells"]["val.r2"] == pytest.approx(between)
    assert np.allclose(s["heatmap"]["mean_val_r2"], cell_means)


def test_outputs_written_and_custom_thresholds(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    s = summarize(sweep, thresholds={"r2": (0.5, 0.6, 0.7), "collapse": 0.6}, plots=False)
    assert cell(s, 7, 0.0)["verdict"] == "fail"
    assert cell(s, 7, 0.0)["collapse_rate"] == pytest.approx(1 / 3)    # the label only
    assert cell(s, 7, 0.0)["ratio_below_cutoff_rate"] == pytest.approx(1 / 3)    # ratio .5 < .6
    for name in ("summary.csv", "summary.md", "summary.json"):
        assert (sweep / name).stat().st_size > 0
    assert json.loads((sweep / "summary.json").read_text())["cells"][0]["rank"] == 1
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("rank,cell,data.temporal_frames,loss.variance_lambda")
    assert "## Cells, ranked by mean test R²" in (sweep / "summary.md").read_text()
    assert not list(sweep.glob(".summary*.tmp")) and not list(sweep.glob("*.png"))


def test_without_declared_sweep_factors_are_found_and_baseline_is_first_cell(tmp_path):
    s = summarize(make_grid(tmp_path / "sweep", sweep={"name": "adhoc"}), plots=False)
    assert [f["key"] for f in s["factors"]] == ["data.temporal_frames", "loss.variance_lambda"]
    assert s["baseline"]["settings"] == {"data.temporal_frames": "1", "loss.variance_lambda": "0.0"}
    assert s["baseline"]["source"] == "first cell"
    assert any("baseline = first cell" in n for n in s["notes"])


def test_group_choices_as_factors_and_choices_that_follow_another_factor(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (exp, model) in enumerate([("run1", "gru"), ("run2", "mean_pool"), ("run3", "mean_pool")]):
        write_job(sweep, num, [f"experiment={exp}", "seed=0"], {"experiment": exp, "model": model})
    s = summarize(sweep, plots=False)
    assert [f["key"] for f in s["factors"]] == ["experiment"]
    assert any(n.startswith("model varies but follows from experiment") for n in s["notes"])

    sweep = tmp_path / "sweep2"
    for num, (model, seed) in enumerate([("gru", 0), ("gru", 1), ("mean_pool", 0), ("mean_pool", 1)]):
        write_job(sweep, num, [f"model={model}", f"seed={seed}"], {"model": model}, seed=seed)
    s = summarize(sweep, plots=False)
    assert [f["key"] for f in s["factors"]] == ["model"] and s["heatmap"] is None
    assert [c["n_results"] for c in s["cells"]] == [2, 2]


def test_sampled_settings_are_not_taken_for_a_grid(tmp_path):
    settings = [(0.1, 0.0), (0.01, 0.1), (0.001, 0.2), (0.3, 0.3)]
    sweep = tmp_path / "sweep"                     # as an optimising sweeper would leave it
    for num, (lr, wd) in enumerate(settings):
        write_job(sweep, num, [f"trainer.lr={lr}", f"trainer.weight_decay={wd}", "seed=0"], {})
    s = summarize(sweep, plots=False)              # one job per cell, numbers: a search (collapse.summary.search)
    assert s["kind"] == "search" and len(s["trials"]) == 4 and s["problems"] == [] and s["jobs"]["total"] == 4
    assert s["best"]["objective"] == 0.5 and [t["rank"] for t in s["trials"]] == [1, 2, 3, 4]

    sweep = tmp_path / "replicated"                # the same settings, each with 2 seeds: cells, not a grid
    for num, ((lr, wd), seed) in enumerate((x, seed) for x in settings for seed in (0, 1)):
        write_job(sweep, num, [f"trainer.lr={lr}", f"trainer.weight_decay={wd}", f"seed={seed}"], {}, seed=seed)
    s = summarize(sweep, plots=False)
    assert len(s["cells"]) == 4 and s["problems"] == [] and s["jobs"]["total"] == 8
    assert any("4 of 16 factor combinations, not a grid" in n for n in s["notes"])


# ---------------------------------------------------------------- broken sweeps

def test_every_problem_is_reported_and_the_rest_summarised(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    sweep = make_grid(tmp_path / "sweep",
                      job3={"status": "running", "provenance": {"hostname": host, "pid": os.getpid()}},
                      job4={"status": "running", "provenance": {"hostname": host, "pid": dead.pid}},
                      job6={"status": "failed", "best": None, "error": "ValueError: boom"},
                      job8={"status": "diverged"})
    (sweep / "0" / "metrics.json").write_text('{"schema": 1, "status": "compl')          # corrupt
    shutil.rmtree(sweep / "1" / ".hydra")                                                 # factors from the record
    records.write_json(sweep / "2" / "metrics.json", {"schema": 99, "status": "completed"})
    (sweep / "5" / "metrics.json").unlink()                                               # never wrote a record
    shutil.rmtree(sweep / "7")                                                            # a gap in the numbers
    shutil.rmtree(sweep / "9" / ".hydra")
    (sweep / "9" / "metrics.json").write_text("not json")                                # cannot be placed
    shutil.rmtree(sweep / "11")                                                           # the grid's tail

    s = summarize(sweep, plots=False)
    problems = "\n".join(s["problems"])
    for expected in ("job 0: " + str(sweep / "0" / "metrics.json") + ": not valid JSON",
                     "job 1: " + str(sweep / "1" / ".hydra") + ": missing: factors taken from metrics.json",
                     "job 2: " + str(sweep / "2" / "metrics.json") + ": unknown schema version 99",
                     "job 3: " + str(sweep / "3" / "metrics.json") + ": still running",
                     "job 4: " + str(sweep / "4" / "metrics.json") + f": status running but pid {dead.pid}",
                     "job 5: " + str(sweep / "5" / "metrics.json") + ": missing",
                     "job 6: " + str(sweep / "6" / "metrics.json") + ": failed: ValueError: boom",
                     "job 7: " + str(sweep / "7") + ": missing (no job directory)",
                     "job 8: " + str(sweep / "8" / "metrics.json") + ": diverged at epoch",
                     "job 9: " + str(sweep / "9" / ".hydra") + ": missing; no usable metrics.json either: left out",
                     "job 11: " + str(sweep / "11") + ": missing (no job directory)"):
        assert expected in problems
    assert all("\n" not in p for p in s["problems"])
    assert s["jobs"]["total"] == 12
    assert s["jobs"]["by_status"] == {"completed": 2, "diverged": 1, "stopped_collapse": 0, "failed": 1,
                                      "running": 1, "interrupted": 1, "unreadable": 3, "missing": 3}

    assert cell(s, 1, 0.0)["counts"]["unreadable"] == 2 and cell(s, 1, 0.0)["n_results"] == 1  # job 1 only
    assert cell(s, 1, 0.0)["metrics"]["val.r2"]["mean"] == pytest.approx(0.70)
    c = cell(s, 1, 0.5)
    assert (c["counts"]["running"], c["counts"]["interrupted"], c["counts"]["missing"], c["n_results"]) == (1, 1, 1, 0)
    assert c["verdict"] == "incomplete" and c["incomplete"] and c["rank"] is None   # no results: no verdict
    base = cell(s, 7, 0.0)                      # job 6 failed, 7 absent, 8 diverged: counted, no statistics
    assert (base["counts"]["failed"], base["counts"]["missing"], base["counts"]["diverged"]) == (1, 1, 1)
    assert base["n_results"] == 0 and math.isnan(base["metrics"]["val.r2"]["mean"])
    last = cell(s, 7, 0.5)                      # job 9 unplaceable (seed 0), 10 fine, 11 absent
    assert (last["counts"]["missing"], last["n_results"], last["missing_seeds"]) == (2, 1, ["0", "2"])
    assert [p.split(":")[0] for p in s["problems"]] == [f"job {n}" for n in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 11)]
    assert last["vs_baseline"]["val.r2"]["n_pairs"] == 0         # seed 1 vs the baseline's seed 2
    assert cell(s, 1, 0.0)["vs_baseline"]["val.r2"]["n_pairs"] == 0


def test_hydra_files_in_another_layout_are_parsed_whole(tmp_path):
    job = write_job(tmp_path / "sweep", 0, ["model=gru", "seed=0"], {"model": "gru"})
    (job / "metrics.json").unlink()       # .hydra/ is read only for a job without a record
    flow_style = "{hydra: {job: {num: 0}, runtime: {choices: {model: gru, ssl: 'off'}}}}\n"
    (job / ".hydra" / "hydra.yaml").write_text(flow_style)
    (job / ".hydra" / "overrides.yaml").write_text("- model=gru\n- 'seed=0'  # quoted, commented\n")
    parsed = sweep_jobs.read_job(job)
    assert (parsed.num, parsed.seed, parsed.settings) == (0, "0", {"model": "gru", "ssl": "off"})
    # Hydra's own layout takes the fast path and agrees with a full parse
    job = write_job(tmp_path / "sweep", 1, ["+experiment=run1", "seed=3"], {"experiment": "run1", "ssl": "off",
                                                                              "data": None})
    full = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert sweep_jobs._hydra_job_info(job / ".hydra" / "hydra.yaml") == (1, full["runtime"]["choices"])
    assert sweep_jobs._load_overrides(job / ".hydra" / "overrides.yaml") == ["+experiment=run1", "seed=3"]


def test_tables_skip_histories_without_changing_the_record(tmp_path):
    job = write_job(tmp_path / "sweep", 0, ["seed=0"], {}, ssl_history=[{"epoch": 1, "loss": 0.5}],
                    final={"epoch": 3, "val": {"r2": 0.1, "x": [1, 2]}}, traceback='Traceback "x"\n  y\\')
    whole = records.read_record(job / "metrics.json")
    light = sweep_jobs.read_metrics(job / "metrics.json", histories=False)
    assert all(light[k] is None for k in ("history", "ssl_history", "config", "final"))
    assert {k: v for k, v in light.items() if k not in sweep_jobs.TRIMMED} == \
        {k: v for k, v in whole.items() if k not in sweep_jobs.TRIMMED}
    # a record of another layout (one line) is parsed whole, and still trimmed of nothing it needs
    (job / "metrics.json").write_text(json.dumps(whole))
    assert sweep_jobs.read_metrics(job / "metrics.json", histories=False)["best"] == whole["best"]
    # empty or one-line values are left to the parser, never cut into the next key
    for layout in ({"config": {}, "final": {}}, {"config": {"a": 1}, "history": []}):
        records.write_json(job / "metrics.json", {**whole, **layout})
        text = (job / "metrics.json").read_text().replace('"config": {\n  "a": 1\n }', '"config": {"a": 1}')
        (job / "metrics.json").write_text(text)
        light = sweep_jobs.read_metrics(job / "metrics.json", histories=False)
        assert {k: v for k, v in light.items() if k not in sweep_jobs.TRIMMED} == \
            {k: v for k, v in whole.items() if k not in sweep_jobs.TRIMMED}
    records.write_json(job / "metrics.json", whole)
    # the sweep's config is still found (one record is read whole for it)
    assert sweep_jobs.sweep_info([sweep_jobs.read_job(job, histories=False)]) == {"name": "adhoc"}


def test_a_record_the_fast_parser_refuses_is_read_by_the_stdlib(tmp_path):
    job = write_job(tmp_path / "sweep", 0, ["seed=0"], {})
    text = (job / "metrics.json").read_text()
    # NaN is not JSON, but Python's json wrote it before records turned it into null
    (job / "metrics.json").write_text(text.replace('"r2": 0.5', '"r2": NaN', 1))
    light = sweep_jobs.read_metrics(job / "metrics.json", histories=False)
    assert math.isnan(light["best"]["val"]["r2"]) and light["history"] is None
    (job / "metrics.json").write_text(text[:-40])                     # truncated: still one line naming it
    with pytest.raises(records.RecordError, match="not valid JSON"):
        sweep_jobs.read_metrics(job / "metrics.json", histories=False)


def test_reading_in_parallel_gives_the_jobs_of_reading_in_order(tmp_path, monkeypatch):
    import gc

    sweep = make_grid(tmp_path / "sweep", job2={"status": "failed"})
    (sweep / "5" / "metrics.json").write_text("{")
    dirs = records.job_dirs(sweep)
    serial = [sweep_jobs.read_job(d, histories=False) for d in dirs]
    read_job, pids = sweep_jobs.read_job, []

    def read_job_saying_where(d, histories):
        job = read_job(d, histories)
        job.reader = os.getpid()
        return job

    monkeypatch.setattr(sweep_jobs, "read_job", read_job_saying_where)
    monkeypatch.setattr(sweep_jobs, "PARALLEL_FROM", 4)     # 12 jobs: read by 2 processes here
    parallel = sweep_jobs.read_jobs(dirs, histories=False)
    pids = {j.reader for j in parallel}
    if len(os.sched_getaffinity(0)) > 1:
        assert len(pids) == 2 and os.getpid() in pids, pids
    assert [(j.num, j.status, j.settings, j.seed, j.record, j.problems) for j in parallel] == \
        [(j.num, j.status, j.settings, j.seed, j.record, j.problems) for j in serial]
    assert gc.isenabled()           # the reader leaves the collector as it found it

# ---------------------------------------------------------------- CLI and plots

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "collapse.summary", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_the_files_and_exit_codes(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    (sweep / "4" / "metrics.json").write_text("{")
    proc = _cli(sweep, "--no-plots", "--thresholds", "r2=0,0.3,0.5", "ratio=0.4,0.7,0.85", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"problem: job 4: {sweep / '4' / 'metrics.json'}: not valid JSON "
                                        + proc.stderr.split("not valid JSON ", 1)[1].strip()]
    assert "rank" in proc.stdout and "warning: data.temporal_frames=7 loss.variance_lambda=0.5" in proc.stdout
    assert all((sweep / f).is_file() for f in ("summary.csv", "summary.md", "summary.json"))

    missing = _cli(tmp_path / "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"collapse: error: {tmp_path / 'nope'}: no such directory"
    (tmp_path / "empty").mkdir()
    empty = _cli(tmp_path / "empty", cwd=tmp_path)
    assert empty.returncode == 2 and str(tmp_path / "empty") in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    bad = _cli(sweep, "--thresholds", "r2=1,0", cwd=tmp_path)
    assert bad.returncode == 2 and "--thresholds 'r2=1,0' is invalid" in bad.stderr

    # a sweep with more problems than a console should scroll: the first ones, then a count
    for num in range(12, 12 + 30):
        write_job(sweep, num, [f"data.temporal_frames={FRAMES[0]}", f"loss.variance_lambda={LAMBDAS[0]}",
                               f"seed={SEEDS[num % len(SEEDS)]}"], {"model": "mean_pool"})
        (sweep / str(num) / "metrics.json").write_text("[")
    many = _cli(sweep, "--no-plots", cwd=tmp_path)
    lines, problems = many.stderr.splitlines(), json.loads((sweep / "summary.json").read_text())["problems"]
    assert many.returncode == 0 and len(problems) > 31, problems
    assert lines[:-1] == [f"problem: {p}" for p in problems[:30]]
    assert lines[-1] == f"problem: ... and {len(problems) - 30} more: summary.md and summary.json list them all"


def test_cli_into_a_closed_pipe_exits_without_a_traceback(tmp_path):
    # `collapse-summary SWEEP | head -1`: the reader is gone before the table is written
    sweep = make_grid(tmp_path / "sweep")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "collapse.summary", str(sweep), "--no-plots"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert (sweep / "summary.json").is_file()


def test_tables_only_import_no_heavy_modules(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    code = ("import sys; from collapse.summary import summarize; summarize(sys.argv[1], plots=False); "
            "print(sorted(m for m in ('matplotlib', 'scipy.stats', 'statsmodels', 'pandas', 'sklearn', 'torch', "
            "'hydra') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_plots_are_pngs(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    s = summarize(sweep, plots=True)
    pngs = ["summary_heatmap.png", "summary_interaction.png", "summary_main_effects.png", "summary_curves.png"]
    assert [f for f in s["files"] if f.endswith(".png")] == pngs
    for name in pngs:
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![summary_heatmap.png](summary_heatmap.png)" in (sweep / "summary.md").read_text()
    # the same statistics as the tables-only path, which skips the histories
    assert [c["metrics"] for c in summarize(sweep, plots=False)["cells"]] == [c["metrics"] for c in s["cells"]]

    one = tmp_path / "one"
    for num, seed in enumerate((0, 1)):
        for j, model in enumerate(("gru", "mean_pool")):
            write_job(one, 2 * num + j, [f"model={model}", f"seed={seed}"], {"model": model}, seed=seed)
    s = summarize(one, plots=True)
    assert "heatmap skipped: it needs at least 2 factors" in s["notes"]
    assert (one / "summary_main_effects.png").is_file() and not (one / "summary_heatmap.png").exists()


# ---------------------------------------------------------------- the issue's defects, one test each

def write_manifest(sweep_dir: Path, jobs: list) -> None:
    """<sweep_dir>/manifest.json as collapse.records writes it: job number = position."""
    records.write_json(sweep_dir / "manifest.json", {"schema": 1, "config_name": "fab", "task_overrides": [],
                                                     "jobs": [{"num": n, "overrides": o} for n, o in enumerate(jobs)]})


def make_study_sweep(sweep_dir: Path, manifest: bool = True, kept: int = 1) -> Path:
    """study=a,b x data.temporal_frames=1,7 x seed=0..5 where `study` is a label that changes
    nothing; cells (b, 1 frame) and (a, 7 frames) keep only seeds below `kept` (the rest
    diverged or never started). R² = 0.8 with 1 frame, 0.3 with 7, plus seed noise."""
    rng = np.random.default_rng(1)
    plan, num = [], 0
    for study in ("a", "b"):
        for frames in (1, 7):
            for seed in range(6):
                overrides = [f"study={study}", f"data.temporal_frames={frames}", f"seed={seed}"]
                plan.append(overrides)
                lost = (study, frames) in (("b", 1), ("a", 7)) and seed >= kept
                r2 = (0.8 if frames == 1 else 0.3) + rng.normal(0, 0.03)
                if not lost:
                    write_job(sweep_dir, num, overrides, {}, val_r2=r2, val_ratio=0.7 + rng.normal(0, 0.03), seed=seed)
                elif seed % 2:
                    write_job(sweep_dir, num, overrides, {}, status="diverged", best=None, seed=seed)
                num += 1
    if manifest:
        write_manifest(sweep_dir, plan)
    return sweep_dir


def test_defect1_a_label_that_changes_nothing_has_no_effect_in_an_unbalanced_sweep(tmp_path):
    # 3 of 6 seeds in two cells: unbalanced, not incomplete
    s = summarize(make_study_sweep(tmp_path / "sweep", kept=3), plots=False)
    study = next(e for e in s["main_effects"] if e["factor"] == "study")
    a, b = study["levels"]
    assert abs(a["val.r2"]["mean"] - b["val.r2"]["mean"]) < 0.05     # old: pooled means 0.63 vs 0.37
    assert study["eta_squared"]["val.r2"] <= 0.05                     # old: 0.69
    diff = b["val.r2"]["vs_first"]
    assert abs(diff["mean"]) < 0.05 and diff["ci_low"] < 0 < diff["ci_high"]   # old: a 0.34, b -0.06
    assert study["eta_squared"]["val.r2"] <= 0.05 and study["p"]["val.r2"] > 0.05
    frames = next(e for e in s["main_effects"] if e["factor"] == "data.temporal_frames")
    assert frames["levels"][1]["val.r2"]["vs_first"]["mean"] == pytest.approx(-0.5, abs=0.05)
    shares = [t["eta_sq"] for t in s["anova"]["val.r2"]["terms"]]
    assert sum(shares) <= 1 + 1e-9


def test_defect1_effects_match_statsmodels_on_the_unbalanced_study_sweep(tmp_path):
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    sweep = make_study_sweep(tmp_path / "sweep", kept=3)
    s = summarize(sweep, plots=False)
    rows = [(r["overrides"][0].split("=")[1], r["overrides"][1].split("=")[1], r["best"]["val"]["r2"])
            for r in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")) if r["status"] == "completed"]
    data = pd.DataFrame(rows, columns=["study", "frames", "y"])
    table = anova_lm(smf.ols("y ~ C(study, Sum) * C(frames, Sum)", data).fit(), typ=2)
    got = {frozenset(t["factors"]): t for t in s["anova"]["val.r2"]["terms"]}
    for term, row in (({"study"}, "C(study, Sum)"), ({"data.temporal_frames"}, "C(frames, Sum)"),
                      ({"study", "data.temporal_frames"}, "C(study, Sum):C(frames, Sum)")):
        term = frozenset(term)
        assert got[term]["ss"] == pytest.approx(table.loc[row, "sum_sq"], rel=1e-9, abs=1e-15)
        assert got[term]["f"] == pytest.approx(table.loc[row, "F"], rel=1e-9)
        assert got[term]["p"] == pytest.approx(table.loc[row, "PR(>F)"], rel=1e-7)


def test_defect2_main_effect_intervals_come_from_the_pooled_within_cell_error(grid_summary):
    x = np.array([[GRID[(f, lam)][0] for lam in LAMBDAS] for f in FRAMES])      # [frames, lambda, seed]
    ms_within = ((x - x.mean(axis=2, keepdims=True)) ** 2).sum() / (12 - 4)
    half = t975(8) * math.sqrt(ms_within * (1 / 3 + 1 / 3) / 4)   # mean of 2 cell means of 3
    frames = grid_summary["main_effects"][0]
    for level in frames["levels"]:
        assert level["val.r2"]["ci_high"] - level["val.r2"]["mean"] == pytest.approx(half)
    assert grid_summary["anova"]["val.r2"]["error"] == pytest.approx(
        {"source": "within cells", "df": 8, "ss": ms_within * 8, "ms": ms_within})


def test_defect3_survivors_only_cells_are_incomplete_and_ranked_apart(tmp_path):
    sweep = tmp_path / "sweep"
    num = 0
    for lam in (0.0, 0.5):
        for seed in range(3):
            survivor_cell = lam == 0.5
            status = "diverged" if survivor_cell and seed > 0 else "completed"
            write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={seed}"], {}, status=status,
                      val_r2=0.95 if survivor_cell else 0.5 + 0.01 * seed, val_ratio=0.9, seed=seed,
                      **({"best": None} if status == "diverged" else {}))
            num += 1
    s = summarize(sweep, plots=False)
    survivor = next(c for c in s["cells"] if c["settings"]["loss.variance_lambda"] == "0.5")
    assert survivor["verdict"] == "incomplete" and s["cells"][0] is not survivor     # old: #1, "excellent"
    assert survivor["incomplete"] and survivor["verdict"] == "incomplete" and survivor["rank"] is None
    assert survivor["failure_rate"] == pytest.approx(2 / 3) and survivor["collapse_rate"] == 0.0
    assert s["cells"][0]["settings"]["loss.variance_lambda"] == "0.0" and s["cells"][0]["rank"] == 1
    text = render_text(s)
    assert text.index("incomplete cells") < text.index("0.950")    # listed apart, after the ranked table


def test_defect3_one_result_of_six_planned_seeds_gets_no_verdict(tmp_path):
    s = summarize(make_study_sweep(tmp_path / "sweep"), plots=False)
    thin = [c for c in s["cells"] if c["n_results"] == 1]
    assert len(thin) == 2 and all(c["verdict"] == "incomplete" for c in thin)       # old: a verdict
    assert all(c["n_planned"] == 6 for c in thin)
    assert all(c["rank"] is None for c in thin) and [c["rank"] for c in s["cells"][:2]] == [1, 2]


def test_defect4_one_seed_per_cell_leaves_the_within_cell_share_undefined(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (frames, r2) in enumerate(((1, 0.8), (3, 0.6), (7, 0.3))):
        write_job(sweep, num, [f"data.temporal_frames={frames}", "seed=0"], {}, val_r2=r2)
    s = summarize(sweep, plots=False)
    assert math.isnan(s["variance_explained"]["within_cells"]["val.r2"])
    assert "within cells (seeds): —" in render_text(s)


def test_defect5_the_variance_warning_needs_paired_intervals_that_support_it(tmp_path):
    sweep = tmp_path / "sweep"
    num = 0
    # lambda 0.5 raises the ratio and lowers R² on average, but R²'s interval holds 0;
    # lambda 1.0 does the same with one shared seed only
    values = {"0.0": ([0.50, 0.60, 0.55], [0.5, 0.5, 0.5]), "0.5": ([0.40, 0.65, 0.50], [0.7, 0.8, 0.75]),
              "1.0": ([0.40, None, None], [0.9, None, None])}
    for lam, (r2s, ratios) in values.items():
        for seed, (r2, ratio) in enumerate(zip(r2s, ratios)):
            if r2 is not None:
                write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={seed}"], {}, val_r2=r2,
                          val_ratio=ratio, seed=seed)
            num += 1
    s = summarize(sweep, plots=False)
    assert s["warnings"] == [] and not any(c["warning"] for c in s["cells"])
    tentative = [n for n in s["notes"] if n.startswith("tentative:")]
    assert len(tentative) == 2 and any("n 1" in n for n in tentative) and any("n 3" in n for n in tentative)


def test_defect6_every_figure_says_how_many_values_it_rests_on(tmp_path):
    sweep = make_grid(tmp_path / "sweep", job9={"best": {"epoch": 3, "val": {"r2": None, "variance_ratio": 0.9},
                                                         "test": {"r2": 0.1, "variance_ratio": 0.9}}})
    s = summarize(sweep, plots=False)
    c = cell(s, 7, 0.5)
    assert c["n_results"] == 3 and c["metrics"]["val.r2"]["n"] == 2 and c["metrics"]["test.r2"]["n"] == 3
    assert c["vs_baseline"]["val.r2"]["n_pairs"] == 2 and c["vs_baseline"]["test.r2"]["n_pairs"] == 3
    text = render_text(s)
    assert "(n 2)" in text.split("data.temporal_frames=7")[0] or "(n 2)" in text
    headers = [line for line in text.splitlines() if line.startswith("cell ")][0]
    assert headers.count("  n  ") == 3          # a pairs count per metric


def test_defect7_floating_point_noise_is_not_a_share_of_variance():
    assert math.isnan(eta_squared([[0.1 + 0.2] * 6, [0.3] * 6]))    # old: 1.0


def test_defect8_levels_that_are_numbers_compare_as_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (lam, seed) in enumerate([("0", 0), ("0.0", 1), ("0.5", 0), ("0.5", 1)]):
        write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={seed}"], {}, seed=seed)
    s = summarize(sweep, plots=False)
    assert s["factors"][0]["levels"] == ["0", "0.5"] or s["factors"][0]["levels"] == ["0.0", "0.5"]
    assert len(s["cells"]) == 2 and s["jobs"]["total"] == 4 and s["jobs"]["by_status"]["missing"] == 0
    assert all(c["n_results"] == 2 for c in s["cells"]) and s["problems"] == []


# ---------------------------------------------------------------- the plan, the record, the output

def test_manifest_names_the_jobs_that_never_started(tmp_path):
    sweep = make_study_sweep(tmp_path / "sweep")
    s = summarize(sweep, plots=False)
    never = [n for n in range(24) if not (sweep / str(n)).exists()]
    assert s["problems"][0] == f"{len(never)} of 24 planned jobs never started: {', '.join(map(str, never))}"
    assert s["jobs"]["planned"] == 24 and s["jobs"]["total"] == 24
    thin = next(c for c in s["cells"] if c["settings"] == {"study": "b", "data.temporal_frames": "1"})
    assert thin["counts"]["missing"] == 2 and thin["counts"]["diverged"] == 3      # seeds 2, 4; 1, 3, 5


def test_power_figures_for_the_next_sweep(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    s = summarize(sweep, plots=False, effect=0.05)
    d = cell(s, 7, 0.5)["vs_baseline"]["val.r2"]
    sd = math.sqrt((0.02**2 + 0.03**2 + 0.01**2) / 2)
    assert d["std"] == pytest.approx(sd)
    assert d["detectable"] == pytest.approx(stats.detectable_difference(sd, 3))
    assert d["seeds_needed"] == stats.seeds_needed(0.05, sd)
    # Holm over the three cells of each metric
    ps = [c["vs_baseline"]["val.r2"]["p"] for c in s["cells"] if not c["baseline"]]
    assert [c["vs_baseline"]["val.r2"]["p_holm"] for c in s["cells"] if not c["baseline"]] == \
        pytest.approx(stats.holm(ps))


def test_schema2_records_interrupted_runs_and_test_diagnoses(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (lam, status, val_label, test_label, held) in enumerate([
            ("0.0", "completed", "collapsed", "healthy", True), ("0.0", "completed", "collapsed", "collapsed", False),
            ("0.0", "interrupted", None, None, None), ("0.5", "completed", "healthy", "inflated", None)]):
        write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={num}"], {}, status=status, seed=num,
                  schema=2, diagnosis={"val": {"label": val_label}, "test": {"label": test_label}},
                  recalibrated={"raised_test_r2": held} if held is not None else None)
    s = summarize(sweep, plots=False)
    first = next(c for c in s["cells"] if c["settings"]["loss.variance_lambda"] == "0.0")
    assert first["counts"]["interrupted"] == 1 and first["failure_rate"] == pytest.approx(1 / 3)
    assert first["diagnosis"]["collapsed"] == 2 and first["recalibration"] == \
        {"collapsed_on_val": 2, "known": 2, "raised_test_r2": 1}
    by_test = summarize(sweep, plots=False, diagnosis_split="test")
    first = next(c for c in by_test["cells"] if c["settings"]["loss.variance_lambda"] == "0.0")
    assert (first["diagnosis"]["healthy"], first["diagnosis"]["collapsed"]) == (1, 1)
    assert any("interrupted" in p for p in s["problems"])


def test_factors_come_from_the_record_and_job_dirs_need_not_be_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    for i, lam in enumerate(("0.0", "0.5")):
        job = write_job(sweep, i, [f"loss.variance_lambda={lam}", "seed=0"], {"model": "gru"})
        (job / ".hydra" / "overrides.yaml").write_text("- something=else\n")      # ignored: the record rules
        job.rename(sweep / f"loss.variance_lambda={lam}")
    s = summarize(sweep, plots=False)
    assert [f["key"] for f in s["factors"]] == ["loss.variance_lambda"] and s["problems"] == []
    assert sorted(c["jobs"][0] for c in s["cells"]) == [0, 1]


def test_out_dir_modes_and_tables_printed_before_the_files(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    out = tmp_path / "report"
    proc = subprocess.run(["sh", "-c", f"umask 022 && {sys.executable} -m collapse.summary {sweep} --out {out} "
                           "--no-plots"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.csv", "summary.md", "summary.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644 and not (sweep / name).exists()
    assert json.loads((out / "summary.json").read_text())["schema"] == 2
    wrote = " ".join(line.strip() for line in proc.stdout.rstrip().split("\nwrote ")[-1].splitlines())
    assert wrote == f"summary.csv, summary.md, summary.txt, summary.json, summary.html in {out}"   # wrapped


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` unwritable for this user: mode 0555, and for root (whom modes do not stop)
    a read-only bind mount of it onto itself."""
    directory.chmod(0o555)
    mounted = False
    try:
        if os.geteuid() == 0:
            bind = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True)
            mounted = bind.returncode == 0
            if not mounted or subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)],
                                             capture_output=True).returncode != 0:
                pytest.skip(f"root, and no read-only bind mount here: {bind.stderr.decode().strip()}")
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=True)
        directory.chmod(0o755)


def test_read_only_sweep_dir_still_prints_its_summary(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    with read_only(sweep):
        proc = _cli(sweep, "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0 and "rank" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith(f"note: could not write the summary files in {sweep}")


def test_unwritable_out_dir_still_prints_its_summary(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _cli(sweep, "--no-plots", "--out", blocker / "sub", cwd=tmp_path)
    assert proc.returncode == 0 and "rank" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("note: could not write the summary files in")


def test_three_factors_with_an_empty_cell(tmp_path):
    sweep, num = tmp_path / "sweep", 0
    for a in (1, 2):
        for b in ("x", "y"):
            for c in (0.1, 0.3):
                for seed in range(2):
                    if (a, b, c) != (2, "y", 0.3):
                        write_job(sweep, num, [f"a={a}", f"b={b}", f"c={c}", f"seed={seed}"], {}, seed=seed,
                                  val_r2=0.1 * a + (0.02 if b == "x" else 0) + 0.01 * seed + 0.03 * c * seed)
                    num += 1
    s = summarize(sweep, plots=True)
    assert [len(e["levels"]) for e in s["main_effects"]] == [2, 2, 2]
    assert s["anova"]["val.r2"]["emm_model"] == "main effects + two-factor interactions"
    assert s["main_effects"][0]["levels"][1]["val.r2"]["vs_first"]["mean"] == pytest.approx(0.1)
    empty = next(c for c in s["cells"] if c["n_results"] == 0)
    assert empty["verdict"] == "incomplete" and empty["counts"]["missing"] == 2


def test_a_level_without_results_leaves_the_other_emms_defined(tmp_path):
    sweep, num = tmp_path / "sweep", 0
    for frames in (1, 3, 7):
        for lam in (0.0, 0.5):
            for seed in range(2):
                failed = frames == 7
                write_job(sweep, num, [f"data.temporal_frames={frames}", f"loss.variance_lambda={lam}",
                                       f"seed={seed}"], {}, seed=seed, status="failed" if failed else "completed",
                          val_r2=0.5 + 0.1 * lam + 0.01 * seed, **({"best": None} if failed else {}))
                num += 1
    s = summarize(sweep, plots=False)
    frames, lam = s["main_effects"]
    assert math.isnan(frames["levels"][2]["val.r2"]["mean"]) and frames["levels"][2]["val.r2"]["n"] == 0
    assert frames["levels"][0]["val.r2"]["mean"] == pytest.approx(0.53)
    assert lam["levels"][1]["val.r2"]["vs_first"]["mean"] == pytest.approx(0.05)
    assert any("data.temporal_frames=7 has no values" in n for n in s["notes"])


# ---------------------------------------------------------------- issue 19: statistics that never invent an effect

def make_empty_cell_sweep(sweep_dir: Path) -> Path:
    """loss.variance_lambda 0, 0.1, 0.5 x model gru, mean_pool x 4 seeds. λ has no effect; the one
    interaction is +0.3 at (0.1, mean_pool); the cell (0.5, mean_pool) never ran."""
    rng = np.random.default_rng(7)
    num = 0
    for lam in ("0", "0.1", "0.5"):
        for model in ("gru", "mean_pool"):
            for seed in range(4):
                if (lam, model) != ("0.5", "mean_pool"):
                    r2 = 0.5 + (0.1 if model == "mean_pool" else 0.0) + (0.3 if (lam, model) == ("0.1", "mean_pool")
                                                                         else 0.0) + rng.normal(0, 0.01)
                    write_job(sweep_dir, num, [f"loss.variance_lambda={lam}", f"model={model}", f"seed={seed}"],
                              {"model": model}, val_r2=r2, val_ratio=0.8 + rng.normal(0, 0.01), seed=seed)
                num += 1
    return sweep_dir


def test_issue19_an_empty_cell_under_an_interaction_gives_no_emm(tmp_path):
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    s = summarize(make_empty_cell_sweep(tmp_path / "sweep"), plots=False)
    lam, model = s["main_effects"]
    assert s["anova"]["val.r2"]["emm_model"] == "main effects + two-factor interactions"
    # old: λ 0.5 vs 0 +0.076 ± 0.010 (truth 0) from a silently smaller (main-effects) model
    half = lam["levels"][2]["val.r2"]
    assert not half["estimable"] and math.isnan(half["mean"]) and math.isnan(half["vs_first"]["mean"])
    assert not model["levels"][1]["val.r2"]["estimable"]
    assert any("no results in loss.variance_lambda=0.5 model=mean_pool" in n and "loss.variance_lambda=0.5" in n
               and "model=mean_pool" in n for n in s["notes"])
    # levels whose cells all ran: exactly the interaction model's estimates (statsmodels), which
    # for these levels are the means of their cell means (old: shifted by the smaller model)
    rows = [(r["overrides"][0].split("=")[1], r["overrides"][1].split("=")[1], r["best"]["val"]["r2"])
            for r in (json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json"))]
    data = pd.DataFrame(rows, columns=["lam", "model", "y"])
    fit = smf.ols("y ~ C(lam) * C(model)", data).fit()
    for j, level in ((0, "0"), (1, "0.1")):
        grid = pd.DataFrame({"lam": [level, level], "model": ["gru", "mean_pool"]})
        expected = float(fit.predict(grid).mean())
        assert lam["levels"][j]["val.r2"]["mean"] == pytest.approx(expected, rel=1e-9)
    assert lam["levels"][1]["val.r2"]["vs_first"]["mean"] == pytest.approx(0.15, abs=0.02)     # the planted 0.3 / 2
    text = render_text(s)
    effects = text.split("main effects:")[1].split("type II ANOVA")[0]
    row = next(line for line in effects.splitlines() if line.strip().startswith("0.5"))
    assert "—" in row and "nan" not in text
    saved = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert saved["main_effects"][0]["levels"][2]["val.r2"]["mean"] is None


def make_survivor_sweep(sweep_dir: Path, seeds: int, failing: dict, seed: int = 0) -> Path:
    """loss.variance_lambda 0, 0.5 x model gru, mean_pool x `seeds` seeds. Neither factor changes
    R²; at each λ the `failing[λ]` runs of a cell with the lowest R² diverge (no result)."""
    rng = np.random.default_rng(seed)
    num = 0
    for lam in ("0", "0.5"):
        for model in ("gru", "mean_pool"):
            r2s = 0.5 + rng.normal(0, 0.05, size=seeds)
            lowest = set(np.argsort(r2s)[:failing[lam]].tolist())
            for s in range(seeds):
                kwargs = {"status": "diverged", "best": None} if s in lowest else {}
                write_job(sweep_dir, num, [f"loss.variance_lambda={lam}", f"model={model}", f"seed={s}"],
                          {"model": model}, val_r2=float(r2s[s]), seed=s, **kwargs)
                num += 1
    return sweep_dir


@pytest.mark.parametrize("seeds, failing, p_failures", [
    (8, {"0": 0, "0.5": 4}, 0.002447163515),         # half the runs at λ 0.5 fail: Fisher 0/16 vs 8/16
    (16, {"0": 3, "0.5": 7}, 0.057676663098),        # failure rates 0.19 vs 0.44: 6/32 vs 14/32
], ids=["8-seeds-half-failing", "16-seeds-0.19-vs-0.44"])
def test_issue19_a_factor_that_chooses_the_survivors_is_flagged(tmp_path, seeds, failing, p_failures):
    scipy_stats = pytest.importorskip("scipy.stats")
    s = summarize(make_survivor_sweep(tmp_path / "sweep", seeds, failing), plots=False)
    lam = next(e for e in s["main_effects"] if e["factor"] == "loss.variance_lambda")
    model = next(e for e in s["main_effects"] if e["factor"] == "model")
    ended = 2 * seeds
    table = [[2 * failing["0"], ended - 2 * failing["0"]], [2 * failing["0.5"], ended - 2 * failing["0.5"]]]
    assert lam["failures"]["p"] == pytest.approx(scipy_stats.fisher_exact(table)[1], rel=1e-9)
    assert lam["failures"]["p"] == pytest.approx(p_failures, rel=1e-6)
    assert lam["failures"]["test"] == "fisher" and lam["survivors_only"]
    assert lam["failures"]["rate"] == pytest.approx([failing["0"] / seeds, failing["0.5"] / seeds])
    assert not model["survivors_only"] and model["failures"]["p"] == pytest.approx(1.0)
    assert all(not c["incomplete"] for c in s["cells"])                  # half or more of each cell has results
    assert any(n.startswith("loss.variance_lambda changes the failure rate") and "survivors only" in n
               for n in s["notes"])
    effects = render_text(s).split("main effects:")[1].split("type II ANOVA")[0]
    assert "SURVIVORS ONLY" in next(line for line in effects.splitlines() if line.startswith("loss.variance_lambda"))
    assert json.loads((tmp_path / "sweep" / "summary.json").read_text())["main_effects"][0]["survivors_only"]


def test_issue19_incomplete_cells_stay_out_of_the_anova(tmp_path):
    # 13 of 16 runs fail in each λ 0.5 cell: those cells are incomplete, their 3 survivors no
    # longer enter the ANOVA (old: they did, p 0.041 for a factor with no effect)
    s = summarize(make_survivor_sweep(tmp_path / "sweep", 16, {"0": 0, "0.5": 13}), plots=False)
    lam = next(e for e in s["main_effects"] if e["factor"] == "loss.variance_lambda")
    assert all(c["incomplete"] for c in s["cells"] if c["settings"]["loss.variance_lambda"] == "0.5")
    assert s["anova"]["val.r2"]["n"] == 32 and math.isnan(lam["p"]["val.r2"])
    assert math.isnan(lam["levels"][1]["val.r2"]["mean"]) and lam["survivors_only"]
    assert len(s["anova"]["val.r2"]["cells_left_out"]) == 2
    assert any(n.startswith("incomplete cells left out of the ANOVA and EMMs") for n in s["notes"])


def test_issue19_power_at_two_pairs(tmp_path):
    # 2 seeds per cell: the smallest ΔR² found with 80% power is 11.55 SDs of the differences
    sweep = tmp_path / "sweep"
    for num, (lam, seed, r2) in enumerate([("0", 0, 0.50), ("0", 1, 0.60), ("0.5", 0, 0.53), ("0.5", 1, 0.61)]):
        write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={seed}"], {}, val_r2=r2, seed=seed)
    s = summarize(sweep, plots=False, effect=0.06)
    d = next(c for c in s["cells"] if not c["baseline"])["vs_baseline"]["val.r2"]
    sd = float(np.std([0.03, 0.01], ddof=1))
    assert d["n_pairs"] == 2 and d["std"] == pytest.approx(sd)
    assert d["detectable"] / sd == pytest.approx(11.5499, abs=1e-3)           # old: 5.4705
    TTestPower = pytest.importorskip("statsmodels.stats.power").TTestPower
    assert d["detectable"] / sd == pytest.approx(TTestPower().solve_power(None, nobs=2, alpha=0.05, power=0.8),
                                                 rel=1e-5)
    assert stats.paired_power(0.06, sd, d["seeds_needed"]) >= 0.8


def test_issue19_spellings_of_one_value_are_one_level(tmp_path):
    sweep, num = tmp_path / "sweep", 0
    spell = {"on": ("true", "True", "TRUE"), "off": ("false", "False", "FALSE"), "small": ("1e-3", "0.001", "1e-3"),
             "big": ("0.01", "1e-2", "0.010")}
    for flag in ("on", "off"):
        for lr in ("small", "big"):
            for seed in range(3):
                write_job(sweep, num, [f"+data.flag={spell[flag][seed]}", f"trainer.lr={spell[lr][seed]}",
                                       f"seed={seed}"], {}, seed=seed, val_r2=0.5 + 0.01 * seed)
                num += 1
    s = summarize(sweep, plots=False)
    assert len(s["cells"]) == 4 and all(c["n_results"] == 3 for c in s["cells"])      # old: 16 cells (and 18 for lr)
    assert [len(f["levels"]) for f in s["factors"]] == [2, 2] and s["problems"] == []
    assert any("are one value to Hydra" in n for n in s["notes"])


def test_issue19_levels_are_read_as_hydras_override_grammar_reads_them():
    parser = pytest.importorskip("hydra.core.override_parser.overrides_parser").OverridesParser.create()
    spellings = ["true", "True", "TRUE", "false", "fAlSe", "null", "NULL", "1e-3", "0.001", "1_000", "1000", "1.",
                 ".5", "+1", "1", "1.0", "inf", "-inf", "1E3", "'true'", '"1"', "mean_pool", "0x10", "01", "-0",
                 "0.0", "1.5e+2", "150"]
    values = {v: parser.parse_override(f"k={v}").value() for v in spellings}
    for a in spellings:
        for b in spellings:
            hydra_same = type(values[a]) is type(values[b]) or {type(values[a]), type(values[b])} == {int, float}
            hydra_same = hydra_same and values[a] == values[b]
            assert sweep_jobs.same_level(a, b) == hydra_same, (a, b)
    assert sorted(["b", "1", "null", "true", "false", "0.5", "a"], key=sweep_jobs.level_key) == \
        ["null", "false", "true", "0.5", "1", "a", "b"]


def test_issue19_minor_printing(tmp_path):
    # one pair: the tentative note has no [+nan, +nan]; a baseline without results says why the
    # paired table is empty
    sweep, num = tmp_path / "sweep", 0
    for lam, seed, r2, ratio in (("0.0", 0, 0.6, 0.5), ("0.0", 1, 0.6, 0.5), ("0.5", 0, 0.5, 0.7)):
        write_job(sweep, num, [f"loss.variance_lambda={lam}", f"seed={seed}"], {}, val_r2=r2, val_ratio=ratio,
                  seed=seed)
        num += 1
    s = summarize(sweep, plots=False)
    (tentative,) = [n for n in s["notes"] if n.startswith("tentative:")]
    assert "nan" not in tentative and "one pair gives no interval" in tentative and "+0.200" in tentative

    sweep = tmp_path / "nobase"
    for num, (lam, status) in enumerate((("0.0", "failed"), ("0.5", "completed"))):
        write_job(sweep, num, [f"loss.variance_lambda={lam}", "seed=0"], {}, status=status,
                  **({"best": None} if status == "failed" else {}))
    s = summarize(sweep, plots=False)
    assert "the baseline loss.variance_lambda=0.0 has no results: no paired differences (—)" in s["notes"]

    # a term with no degrees of freedom prints — for its shares, not 0.000
    sweep = tmp_path / "aliased"
    for num, (a, b, seed, r2) in enumerate((("1", "x", 0, 0.1), ("1", "x", 1, 0.2), ("2", "y", 0, 0.5),
                                            ("2", "y", 1, 0.6), ("1", "x", 2, 0.15), ("2", "y", 2, 0.55))):
        write_job(sweep, num, [f"a={a}", f"b={b}", f"seed={seed}"], {}, val_r2=r2, seed=seed)
    s = summarize(sweep, plots=False)
    b_term = next(t for t in s["anova"]["val.r2"]["terms"] if t["term"] == "b")
    assert b_term["df"] == 0 and math.isnan(b_term["eta_sq"])
    row = next(line for line in render_text(s).split("type II ANOVA")[1].splitlines() if line.startswith("b "))
    assert "0.000" not in row and "—" in row
