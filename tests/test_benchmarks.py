"""The benchmark suite's CI mode: `python -m benchmarks --quick` runs every benchmark
on tiny sizes and reports figures for each (no timing is asserted: CI machines vary)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = {"throughput", "startup", "multirun_overhead", "parallel_sweep", "summary", "memory",
              "main_job", "scaling", "ensemble", "gpu"}


@pytest.mark.slow
def test_quick_benchmarks_run_every_item_and_write_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and set(report["benchmarks"]) == BENCHMARKS
    for name, bench in report["benchmarks"].items():
        assert bench["error"] is None, f"{name}: {bench['error']}"
        if bench["skipped"]:                      # only the GPU items may skip, and say why
            assert name == "gpu" and "CUDA" in bench["skipped"]
            continue
        assert bench["rows"], f"{name} reported no figures"
        assert all(row["value"] is not None for row in bench["rows"]), name
        assert all(row["status"] in ("info", "n/a") for row in bench["rows"]), "--quick applies no target"
