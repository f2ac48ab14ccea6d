"""The built wheel carries the configs: installed anywhere, `python -m collapse.train`
composes from the package's own collapse/conf, from any working directory."""
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_wheel_ships_conf_and_runs_from_an_empty_directory(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("collapse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("collapse/conf/") for n in names if n.startswith("collapse/conf/")}
    in_repo = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    assert "hydra_plugins/collapse_launcher.py" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)          # what pip install would put in site-packages
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}    # the wheel's collapse, not the checkout's
    # the console scripts (collapse-train, collapse-summary) name functions the wheel has
    resolve = ("import collapse.train as t, importlib.metadata as m; print(t.CONF_DIR); "
               "print(sorted(e.name for e in m.entry_points(group='console_scripts') "
               "if e.value.startswith('collapse.') and callable(e.load())))")
    where = subprocess.run([sys.executable, "-c", resolve], cwd=empty, env=env, capture_output=True, text=True,
                           timeout=120)
    assert where.stdout.splitlines() == [str(site / "collapse" / "conf"), "['collapse-summary', 'collapse-train']"], \
        where.stderr
    job = subprocess.run([sys.executable, "-m", "collapse.train", "model=gru", "--cfg", "job"], cwd=empty,
                         env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0 and "name: gru" in job.stdout, job.stderr[-2000:]
