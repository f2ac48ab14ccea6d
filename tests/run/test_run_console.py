"""run() in a notebook (collapse.train.run): its epoch lines show without any logging
set-up, quiet=True silences them (logging set up or not), and logging the user set up is
not doubled.

One fresh process (pytest's own logging set-up would hide what a notebook sees) calls run()
several times, as a notebook session does: each call must leave logging as it found it,
or a later cell would print twice or not at all."""
import subprocess
import sys

from conftest import ROOT, TINY

MARK = "#cell# "        # printed to stdout and stderr before each cell
CELLS = {
    "plain": "run(OVERRIDES)",
    "quiet": "run(OVERRIDES, quiet=True)",
    # scripts/ do this: a level the user set on collapse's logger is theirs
    "muted": "logging.getLogger('collapse').setLevel(logging.WARNING); run(OVERRIDES); "
             "logging.getLogger('collapse').setLevel(logging.NOTSET)",
    "configured": "logging.basicConfig(level=logging.INFO); run(OVERRIDES)",
    "configured_quiet": "run(OVERRIDES, quiet=True)",
}


def _notebook() -> dict[str, tuple[str, str]]:
    """Run CELLS in order in one process: cell name -> (its stdout, its stderr)."""
    lines = ["import logging, sys", "from collapse.train import run", f"OVERRIDES = {[*TINY, 'save_weights=false']!r}"]
    for name, cell in CELLS.items():
        lines += [f"print('{MARK}{name}', flush=True); print('{MARK}{name}', file=sys.stderr, flush=True)", cell]
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, err = ({name: text for name, text in (part.split("\n", 1) for part in stream.split(MARK)[1:])}
                for stream in (proc.stdout, proc.stderr))
    return {name: (out[name], err[name]) for name in CELLS}


def test_run_shows_its_epochs_unless_quiet_or_muted_and_uses_logging_the_user_set_up_once():
    cells = _notebook()
    out, _ = cells["plain"]
    assert [x.split(" |")[0] for x in out.splitlines() if x.startswith("Epoch")] == ["Epoch 1", "Epoch 2", "Epoch 3"]
    for name in ("quiet", "muted", "configured_quiet"):
        assert "Epoch" not in "".join(cells[name]), name
    out, err = cells["configured"]
    assert (out + err).count("Epoch 1 |") == 1 and "Epoch 1 |" in err
