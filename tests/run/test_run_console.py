"""run() in a notebook (collapse.train.run): its epoch lines show without any logging
set-up, quiet=True silences them, and logging the user set up is not doubled."""
import subprocess
import sys

from conftest import ROOT, TINY

CODE = "import logging\n{setup}\nfrom collapse.train import run\nrun({overrides!r}{quiet})\n"


def _python(setup: str = "", quiet: str = "") -> subprocess.CompletedProcess:
    code = CODE.format(setup=setup, overrides=[*TINY, "save_weights=false"], quiet=quiet)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_run_shows_its_epochs_without_logging_set_up_and_quiet_silences_them():
    shown = _python()
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert [x.split(" |")[0] for x in shown.stdout.splitlines() if x.startswith("Epoch")] == \
        ["Epoch 1", "Epoch 2", "Epoch 3"]
    quiet = _python(quiet=", quiet=True")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Epoch" not in quiet.stdout + quiet.stderr


def test_logging_the_user_set_up_is_used_not_doubled():
    proc = _python(setup="logging.basicConfig(level=logging.INFO)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("Epoch 1 |") == 1 and "Epoch 1 |" in proc.stderr
    muted = _python(setup="logging.getLogger('collapse').setLevel(logging.WARNING)")    # scripts/ do this
    assert muted.returncode == 0 and "Epoch" not in muted.stdout + muted.stderr
