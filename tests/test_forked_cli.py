"""conftest.cli forks command lines from a server (tests/forked_cli): the child must look,
to the module it runs, like a fresh `python -m MODULE` would."""
import json

import pytest

from conftest import python_m

# A module that reports what a process started as `python -m probe` sees, then exits with
# the status argv[1] asks for; a non-daemon thread and an atexit handler print after it ends.
PROBE = '''
import atexit, json, multiprocessing, os, sys, threading, time

atexit.register(lambda: print("atexit ran", flush=True))

def late():
    time.sleep(0.2)
    print("thread ended", flush=True)

threading.Thread(target=late).start()
seen = {"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "name": __name__, "spec": __spec__.name,
        "cwd": os.getcwd(), "path0": sys.path[0], "on_path": [p for p in sys.path if p.endswith("extra")],
        "probe_env": os.environ.get("PROBE"), "stdin": sys.stdin.read(), "parent": multiprocessing.parent_process(),
        "process": multiprocessing.current_process().name, "start_method": multiprocessing.get_start_method(True),
        "streams": [(s.encoding, s.errors, s.line_buffering, s.write_through, type(s.buffer).__name__)
                    for s in (sys.stdin, sys.stdout, sys.stderr)]}
print(json.dumps(seen, default=str))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "raise":
    raise ValueError("boom")
sys.exit(how if how == "text" else int(how))
'''


@pytest.mark.parametrize("how, status", [("0", 0), ("3", 3), ("raise", 1), ("text", 1)])
def test_a_forked_command_line_sees_and_ends_as_a_fresh_one(how, status, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "extra").mkdir()
    env = {"PROBE": "yes", "PYTHONPATH": str(tmp_path / "extra")}
    fresh = python_m("probe", [how], tmp_path, env, timeout=60, fresh=True)
    forked = python_m("probe", [how], tmp_path, env, timeout=60)
    assert (forked.returncode, fresh.returncode) == (status, status), (forked.stderr, fresh.stderr)
    assert forked.stdout == fresh.stdout
    seen = json.loads(forked.stdout.splitlines()[0])
    assert seen["cwd"] == seen["path0"] == str(tmp_path) and seen["on_path"] == [str(tmp_path / "extra")]
    assert seen["parent"] is None and seen["process"] == "MainProcess" and seen["start_method"] is None
    assert (seen["argv"], seen["name"], seen["spec"], seen["probe_env"], seen["stdin"]) == ([how], "__main__",
                                                                                          "probe", "yes", "")
    assert forked.stdout.splitlines()[1:] == ["thread ended", "atexit ran"]      # Python's order of exit
    # stderr: the line, then the traceback or message (its file paths are the same in both)
    assert forked.stderr == fresh.stderr and forked.stderr.startswith("to stderr\n")
    if how == "raise":
        assert forked.stderr.rstrip().endswith("ValueError: boom")
