"""The summary judges effects on the test split by default (val chose the epoch), shows
val beside it, notes where the two disagree in sign, and `--effects-split val` switches."""
import gc
import json
import socket

import pytest

from collapse import records
from collapse.summary import build_summary
from collapse.summary.cli import main

# frames -> per-seed (val R², test R²): more frames look better on val, worse on test
GRID = {1: [(0.50, 0.60), (0.52, 0.62), (0.48, 0.58)],
        7: [(0.70, 0.30), (0.72, 0.32), (0.74, 0.28)]}


def _write(sweep):
    num = 0
    for frames, seeds in GRID.items():
        for seed, (val, test) in enumerate(seeds):
            report = lambda r2: {"r2": r2, "variance_ratio": 0.8, "pred_std": 0.1, "rmse": 1 - r2, "mae": 0.5}  # noqa: E731
            records.write_json(sweep / str(num) / "metrics.json", {
                "schema": 2, "status": "completed", "seed": seed, "job": {"num": num},
                "overrides": [f"data.temporal_frames={frames}", f"seed={seed}"], "choices": {},
                "config": {"seed": seed, "sweep": {"name": "signs", "factors": ["data.temporal_frames"],
                                                   "baseline": ["data.temporal_frames=1"]}},
                "best_epoch": 3, "best": {"epoch": 3, "val": report(val), "test": report(test)},
                "diagnosis": {"val": {"label": "healthy"}, "test": {"label": "healthy"}},
                "reference": {"model": "ridge", "val": report(0.8), "test": report(0.9)},
                "provenance": {"hostname": socket.gethostname(), "pid": 1}})
            num += 1
    return sweep


def test_effects_ranks_and_verdicts_use_test_with_val_beside_and_a_note_on_sign(tmp_path):
    s, _ = build_summary(_write(tmp_path / "sweep"))
    assert s["effects_split"] == "test"
    assert [c["settings"]["data.temporal_frames"] for c in s["cells"]] == ["1", "7"]    # by test R²
    (frames,) = s["main_effects"]
    one, seven = frames["levels"]
    assert seven["test.r2"]["vs_first"]["mean"] == pytest.approx(0.30 - 0.60)
    assert seven["val.r2"]["vs_first"]["mean"] == pytest.approx(0.72 - 0.50)          # val beside it
    assert frames["p"]["test.r2"] < 0.001 and "test.r2" in s["anova"] and "val.r2" in s["anova"]
    assert [c["verdict"] for c in s["cells"]] == ["good", "minimum"]                     # test R² .60 / .30
    seven_cell = s["cells"][1]
    assert seven_cell["vs_baseline"]["test.r2"]["mean"] == pytest.approx(-0.30)
    signs = [n for n in s["notes"] if "disagree in sign" in n]
    assert len(signs) == 2 and signs[0].startswith("data.temporal_frames=7 vs data.temporal_frames=1: test R² EMM")


def test_effects_split_val_chooses_val(tmp_path, capsys):
    sweep = _write(tmp_path / "sweep")
    s, _ = build_summary(sweep, effects_split="val")
    assert [c["settings"]["data.temporal_frames"] for c in s["cells"]] == ["7", "1"]
    assert main([str(sweep), "--no-plots", "--effects-split", "val"]) == 0
    out = capsys.readouterr().out
    assert "effects, ranks and verdicts on the val split (test beside it)" in out
    written = json.loads((sweep / "summary.json").read_text())
    assert written["effects_split"] == "val" and written["cells"][0]["settings"]["data.temporal_frames"] == "7"
    with pytest.raises(ValueError, match="effects_split='train' is invalid"):
        build_summary(sweep, effects_split="train")


def test_main_in_process_leaves_the_collector_as_it_found_it(tmp_path, capsys):
    # main() turns the collector off while it builds (a notebook or a test calls it, not only the CLI)
    sweep = _write(tmp_path / "sweep")
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            assert main([str(sweep), "--no-plots"]) == 0
            assert gc.isenabled() is enabled
            assert main([str(tmp_path / "nope")]) == 2          # an early return too
            assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_each_cell_shows_its_linear_reference_and_the_headroom(tmp_path):
    s, _ = build_summary(_write(tmp_path / "sweep"))
    one, seven = s["cells"]
    assert one["reference_r2"]["mean"] == pytest.approx(0.9) and one["headroom"]["mean"] == pytest.approx(0.3)
    assert seven["headroom"]["mean"] == pytest.approx(0.6) and seven["headroom"]["n"] == 3
    from collapse.summary.report import render_text
    assert "ridge R²" in render_text(s) and "+0.600" in render_text(s)
