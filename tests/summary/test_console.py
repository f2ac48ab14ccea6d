"""The summary on the console (collapse.summary.report.render_console, the CLI): the ranked
cells and the main effects within COLUMNS; the wide tables in summary.txt."""
import subprocess
import sys

import pytest
from test_build import make_grid

from collapse.summary import build_summary
from collapse.summary.report import render_console, render_text


@pytest.mark.parametrize("width", [60, 80, 100, 140])
def test_the_console_summary_fits_the_width(tmp_path, width):
    summary, _ = build_summary(make_grid(tmp_path / "sweep"), None, False)
    text = render_console(summary, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert max(len(line) for line in render_text(summary).splitlines()) > 140     # what it replaces
    ranked = [line.split()[1] for line in text.splitlines() if line[:1].isdigit()][:4]
    assert ranked == ["frames=1", "frames=1", "frames=7", "frames=7"]               # rank order of the cells
    assert "main effects" in text and "\nframes  1 " in text and "\nλ       0.0" in text


def test_the_cli_honours_columns_and_writes_the_wide_tables(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    env = {"COLUMNS": "90", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "collapse.summary", str(sweep), "--no-plots"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 90
    wide = (sweep / "summary.txt").read_text()
    assert "type II ANOVA" in wide and "paired differences vs baseline" in wide
    assert "type II ANOVA" not in proc.stdout
