"""Bad and hostile input through the real CLI: a clear error naming the key or file,
a non-zero exit, no traceback unless HYDRA_FULL_ERROR=1, and nothing written that looks
like a result (no metrics.json, no model.pt).

Two kinds of message. Errors collapse checks itself (ranges, data files, sweep
refusals) are one line, `collapse: error: ...`, exit 2. Errors Hydra finds while
composing (unknown key, wrong type, unknown group option) are Hydra's own few lines,
exit 1, with the key on the first line; they are left as Hydra prints them because
condensing them would mean parsing Hydra's stderr or re-implementing its CLI.

Every impossible value and every bad data file is checked in this process through
`run()`, which composes, checks and loads exactly as the CLI does (0.1 s a case against
0.5-0.8 s for a process); each way a refusal reaches the command line (a range check, a
key refused before composing, an appended key, an unresolvable interpolation, a data
file) is also run through the real CLI, which prints that same message as its one line.
A sweep with a cell that cannot compose: tests/sweep/test_engine.py, under either launcher.
"""
from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, cli, fingerprint, write_npz, xy

COLLAPSE_DIR = Path(__file__).resolve().parent.parent / "collapse"


def assert_nothing_written(root: Path) -> None:
    leftovers = [p for pattern in ("metrics.json", "model.pt") for p in root.rglob(pattern)]
    assert not leftovers, f"bad input left result files: {leftovers}"


def assert_ours(proc, *names: str) -> str:
    """collapse's own refusal: exit 2, one line, naming every one of `names`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("collapse: error: "), proc.stderr[-2000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def assert_hydras(proc, name: str) -> None:
    """Hydra's compose error: exit 1, the key on the first line, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert name in proc.stderr.strip().splitlines()[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- overrides

# (overrides, what the message must name): refused by collapse's own checks
CONFIG_CASES = {
    "temporal_frames_zero": (["data.temporal_frames=0"], ["data.temporal_frames=0", "> 0"]),
    "temporal_frames_negative": (["data.temporal_frames=-1"], ["data.temporal_frames=-1"]),
    "temporal_frames_more_than_T": (["data.temporal_frames=8"], ["data.temporal_frames=8", "data.n_frames"]),
    "variance_lambda_negative": (["loss.variance_lambda=-0.5"], ["loss.variance_lambda=-0.5", ">= 0"]),
    "init_std_negative": (["model.init_std=-1"], ["model.init_std=-1"]),
    "epochs_zero": (["trainer.epochs=0"], ["trainer.epochs=0"]),
    "batch_size_zero": (["trainer.batch_size=0"], ["trainer.batch_size=0"]),
    "lr_nan": (["trainer.lr=nan"], ["trainer.lr=nan"]),
    "dropout_one": (["model.dropout=1.0"], ["model.dropout=1.0", "[0, 1)"]),
    "split_fractions_sum_to_one": (["data.val_fraction=0.6", "data.test_fraction=0.5"], ["data.test_fraction"]),
    "seed_negative": (["seed=-1"], ["seed=-1"]),
    "ssl_mask_ratio": (["ssl=on", "ssl.mask_ratio=1.5"], ["ssl.mask_ratio=1.5"]),
    "seed_too_large_for_torch": (["seed=18446744073709551616"], ["seed=18446744073709551616", "2**63"]),
    "npz_without_path": (["data=npz"], ["data.path"]),
    # Hydra's own "not in struct" message tells users to append with `+`: still refused
    "appended_unknown_key": (["+trainer.epoch=5"], ["trainer.epoch", "epochs"]),
    "appended_unknown_top_level_key": (["+epochs=5"], ["epochs is not a config key"]),
    # a misspelt key: refused before Hydra composes, with a suggestion (collapse.train.cli)
    "unknown_key": (["trainer.epochz=3"], ["trainer.epochz is not a config key", "did you mean trainer.epochs?"]),
    "unknown_top_level_key": (["epochs=3"], ["epochs is not a config key"]),
    "unresolvable_interpolation": (["data=npz", "data.path=${oc.env:COLLAPSE_TEST_UNSET_VAR}"],
                                   ["data.path", "COLLAPSE_TEST_UNSET_VAR"]),
}

# refused by Hydra while composing: the first line names the key or the group option
HYDRA_CASES = {
    "wrong_type_int": (["trainer.epochs=abc"], "trainer.epochs=abc"),
    "wrong_type_float": (["trainer.lr=fast"], "trainer.lr=fast"),
    "wrong_type_bool": (["trainer.guard=maybe"], "trainer.guard=maybe"),
    "unknown_group_option": (["model=transformer"], "model/transformer"),
    # option names are Enums in the schema: refused while composing, the allowed values listed
    "unknown_value_of_a_choice": (["loss.name=nope"], "loss.name=nope"),
    "unknown_device": (["trainer.device=tpu"], "trainer.device=tpu"),
}


# only the command line says these: the keys refused before Hydra composes, and an
# unresolvable interpolation (its line names the key, OmegaConf's message does not)
CLI_ONLY = {"unknown_key", "unknown_top_level_key", "unresolvable_interpolation"}
# one case per way a refusal reaches the command line, run through the real CLI
CLI_CONFIG_CASES = {*CLI_ONLY, "temporal_frames_zero", "appended_unknown_key"}


def refusal_in_process(overrides) -> str:
    """What `run()` refuses `overrides` with: the CLI's compose, checks and data loading,
    in this process. The message is the CLI's line (`collapse: error: MESSAGE`)."""
    from collapse.errors import BAD_INPUT
    from collapse.train import run

    with pytest.raises(BAD_INPUT) as caught:
        run([*TINY, *overrides], quiet=True)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("case", sorted(set(CONFIG_CASES) - CLI_ONLY))
def test_impossible_value_is_refused_naming_the_key(case):
    overrides, names = CONFIG_CASES[case]
    message = refusal_in_process(overrides)
    assert all(name in message for name in names), (names, message)


@pytest.mark.parametrize("case", sorted(CLI_CONFIG_CASES))
def test_impossible_value_is_one_line_naming_the_key(case, tmp_path):
    overrides, names = CONFIG_CASES[case]
    assert_ours(cli([*TINY, *overrides], cwd=tmp_path), *names)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("case", sorted(HYDRA_CASES))
def test_compose_error_names_the_key(case, tmp_path):
    overrides, name = HYDRA_CASES[case]
    assert_hydras(cli([*TINY, *overrides], cwd=tmp_path), name)
    assert_nothing_written(tmp_path)


def test_full_error_env_shows_the_traceback(tmp_path):
    proc = cli([*TINY, "trainer.batch_size=0"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "collapse: error: trainer.batch_size=0 is invalid: must be > 0"
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- data files

def _pickle_payload(marker: Path) -> np.ndarray:
    """An object array whose unpickling creates `marker`: code run by loading data."""
    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")
    arr = np.empty(3, dtype=object)
    arr[:] = [Payload(), Payload(), Payload()]
    return arr


def _data_file(case: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{case}.npz"
    X, y = xy(60)
    if case == "missing":
        return path
    if case == "not_an_npz":
        path.write_text("id,target\n1,0.5\n")
        return path
    if case == "a_directory":
        path.mkdir()
        return path
    if case == "symlink_loop":
        os.symlink(path, path)
        return path
    arrays = {
        "missing_X": dict(y=y),
        "missing_y": dict(X=X),
        "X_rank_2": dict(X=X[:, -1, :], y=y),
        "X_rank_4": dict(X=X[..., None], y=y),
        "y_rank_2": dict(X=X, y=y[:, None]),
        "length_mismatch": dict(X=X, y=y[:50]),
        "nan_in_X": dict(X=np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y=y),
        "inf_in_y": dict(X=X, y=np.r_[y[:-1], np.inf]),
        "overflows_float32": dict(X=X.astype(np.float64) * 1e39, y=y),
        "complex_X": dict(X=X + 1j, y=y),
        "no_features": dict(X=X[:, :, :0], y=y),
        "constant_targets": dict(X=X, y=np.full_like(y, 0.7)),
        # finite in float32, but squares overflow: reported as diverged before
        "huge_X": dict(X=np.where(np.arange(X.size).reshape(X.shape) == 7, 3e38, X).astype(np.float32), y=y),
        "huge_y": dict(X=X, y=y * 1e30),
        "constant_val_targets": dict(X=X, y=np.where(np.arange(60) % 3 == 1, 0.7, y),
                                     split=np.arange(60) % 3),
        "too_few_samples": dict(X=X[:4], y=y[:4]),
        "fewer_frames_than_temporal_frames": dict(X=X[:, :2], y=y),
        "bad_split_values": dict(X=X, y=y, split=np.full(len(y), 3)),
        "object_array_needs_pickle": dict(X=_pickle_payload(tmp_path / "PWNED"), y=y),
    }[case]
    return write_npz(path, **arrays)


# case -> what the one-line message must name besides the file
DATA_CASES = {
    "missing": ["data.path=", "file not found"],
    "not_an_npz": ["not an .npz file"],
    "missing_X": ["missing array 'X'"],
    "missing_y": ["missing array 'y'"],
    "X_rank_2": ["X has shape (60, 3)", "(N, T, C)"],
    "X_rank_4": ["X has shape (60, 5, 3, 1)"],
    "y_rank_2": ["y has shape (60, 1)"],
    "length_mismatch": ["X has 60 samples but y has 50"],
    "nan_in_X": ["X holds 1 NaN/inf"],
    "inf_in_y": ["y holds 1 NaN/inf"],
    "overflows_float32": ["X holds", "NaN/inf", "float32"],
    "complex_X": ["X has dtype complex"],
    "no_features": ["X has shape (60, 5, 0)"],
    "constant_targets": ["targets are constant"],
    "a_directory": ["is a directory"],
    "symlink_loop": ["cannot be opened", "symbolic links"],
    "huge_X": ["X holds values up to 3e+38", "float32"],
    "huge_y": ["y holds values up to", "float32"],
    "constant_val_targets": ["targets are constant on the val split"],
    "too_few_samples": ["split has"],
    "fewer_frames_than_temporal_frames": ["data.temporal_frames=3", "1..2"],
    "bad_split_values": ["split must be"],
    "object_array_needs_pickle": ["pickle"],
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file_is_refused_naming_the_file(case, tmp_path):
    path = _data_file(case, tmp_path)
    message = refusal_in_process(["data=npz", f"data.path={path}"])
    assert str(path) in message and all(name in message for name in DATA_CASES[case]), message


# through the real CLI: a file that cannot be read, and one whose contents are refused
@pytest.mark.parametrize("case", ["missing", "nan_in_X"])
def test_bad_data_file_is_one_line_naming_the_file(case, tmp_path):
    path = _data_file(case, tmp_path)
    line = assert_ours(cli([*TINY, "data=npz", f"data.path={path}"], cwd=tmp_path), *DATA_CASES[case])
    assert str(path) in line
    assert_nothing_written(tmp_path)


def test_data_error_traceback_only_when_asked(tmp_path):
    path = _data_file("length_mismatch", tmp_path)
    proc = cli([*TINY, "data=npz", f"data.path={path}"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "DataError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"collapse: error: {path}: X has 60 samples")


# ---------------------------------------------------------------- sweep commands

SWEEP_ARGS = ("data.n_samples=400", "trainer.epochs=8", "model.hidden_dim=16",
              "loss.variance_lambda=0,0.5", "seed=0,1")


@pytest.fixture
def finished_sweep(tmp_path, reference_sweep) -> Path:
    """A copy of a finished 4-job sweep (run by conftest's session fixture)."""
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(reference_sweep, sweep_dir)
    return sweep_dir


def _metrics_fingerprints(sweep_dir: Path) -> dict:
    return {p: fingerprint(p) for p in sorted(sweep_dir.rglob("metrics.json"))}


def test_reusing_a_sweep_dir_without_resume_is_refused(tmp_path, finished_sweep):
    before = _metrics_fingerprints(finished_sweep)
    proc = cli(["-m", *SWEEP_ARGS, f"hydra.sweep.dir={finished_sweep}"], cwd=tmp_path)
    assert_ours(proc, str(finished_sweep), "already holds a sweep", "resume=true")
    assert _metrics_fingerprints(finished_sweep) == before


def test_resuming_into_another_sweeps_dir_is_refused_with_the_reason(tmp_path, finished_sweep):
    before = _metrics_fingerprints(finished_sweep)
    other = ["data.n_samples=400", "trainer.epochs=8", "model.hidden_dim=16", "loss.variance_lambda=0,1", "seed=0,1"]
    proc = cli(["-m", *other, f"hydra.sweep.dir={finished_sweep}", "resume=true"], cwd=tmp_path)
    line = assert_ours(proc, "cannot resume into", "another sweep's runs")
    # the reason: both sweeps' overrides, so the user sees what differs
    assert "loss.variance_lambda=0,0.5" in line and "loss.variance_lambda=0,1" in line
    assert _metrics_fingerprints(finished_sweep) == before


# ---------------------------------------------------------------- hostile input

def test_pickled_data_file_never_runs_its_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = write_npz(tmp_path / "evil.npz", X=_pickle_payload(marker), y=np.zeros(3))
    # the payload is real: an unsafe load would run it
    with np.load(path, allow_pickle=True) as archive:
        archive["X"]
    assert marker.exists()
    marker.unlink()
    assert_ours(cli([*TINY, "data=npz", f"data.path={path}"], cwd=tmp_path), str(path), "pickle")
    assert not marker.exists()


def test_override_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "PWNED"
    code = f"__import__('pathlib').Path('{marker}').touch()"
    # unquoted: not valid override grammar, refused by Hydra's parser
    proc = cli([*TINY, f"study={code}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # no `eval` resolver exists; an appended `_target_` is an unknown key, never instantiated
    assert_ours(cli([*TINY, "study=${eval:1+1}"], cwd=tmp_path), "study", "eval")
    assert_ours(cli([*TINY, "+model._target_=pathlib.Path.touch"], cwd=tmp_path), "model._target_")
    assert_nothing_written(tmp_path)
    # quoted: a plain string, recorded as typed (in-process: the same compose as the CLI)
    from collapse.train import run

    assert run([*TINY, "trainer.epochs=1", f'study="{code}"']).study == code
    assert not marker.exists()


def test_checkpoints_are_plain_tensors_loadable_with_weights_only(reference_sweep):
    import torch

    for weights in sorted(reference_sweep.glob("*/model.pt")):
        state = torch.load(weights, weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            dotted = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute)
                      and isinstance(func.value, ast.Name) else getattr(func, "id", None))
            if dotted == name:
                yield node


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_package_never_unpickles_or_evaluates():
    """Static guard for what the tests above show at runtime: every torch.load passes
    weights_only=True, every np.load allow_pickle=False; no eval/exec/pickle/yaml.load
    with an unsafe loader anywhere in the package - except pickle in the launcher, which
    pickles only over the pipes to the worker processes it spawned (as multiprocessing
    itself does) and opens no file."""
    sources = sorted([*COLLAPSE_DIR.rglob("*.py"), *(COLLAPSE_DIR.parent / "hydra_plugins").glob("*.py")])
    assert len(sources) > 20 and COLLAPSE_DIR / "sweep" / "engine.py" in sources     # the whole package
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        # the launchers' engines pickle only over the pipes to the worker processes they spawned
        ipc_only = source.relative_to(COLLAPSE_DIR.parent).as_posix() in ("collapse/sweep/engine.py",
                                                                          "collapse/sweep/ensemble.py")
        if ipc_only:
            assert not list(_calls(tree, "open")) and "Path" not in source.read_text(), source.name
        for call in _calls(tree, "torch.load"):
            assert _keyword(call, "weights_only") is True, f"{source.name}:{call.lineno}"
        for call in _calls(tree, "np.load"):
            assert _keyword(call, "allow_pickle") is False, f"{source.name}:{call.lineno}"
        for name in ("eval", "exec", "pickle.load", "yaml.unsafe_load", *(() if ipc_only else ("pickle.loads",))):
            assert not list(_calls(tree, name)), f"{source.name} calls {name}"
        for call in _calls(tree, "yaml.load"):
            loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
            assert loader is not None and "Unsafe" not in ast.unparse(loader), f"{source.name}:{call.lineno}"
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not ({"dill"} if ipc_only else {"pickle", "dill", "cloudpickle"}) & imported, source.name


# ---------------------------------------------------------------- files that are not files, and files too big

def _capped_cli(args, cwd, env=None):
    """cli() under a 4 GB address-space cap: a data path that never ends must not be able
    to take the machine down even if the loader regresses."""
    import resource
    import subprocess
    import sys

    from conftest import TIMEOUT, _env

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run([sys.executable, "-m", "collapse.train", *args], cwd=cwd, env=_env(env),
                          capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=cap)


def _special_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.npz"
    if kind == "dev_zero_symlink":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        import socket

        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))          # the file stays after close
        server.close()
    return path


@pytest.mark.parametrize("kind, what", [("dev_zero_symlink", "character device"), ("fifo", "FIFO"),
                                        ("socket", "socket")])
def test_a_data_path_that_is_no_regular_file_is_refused_before_it_is_opened(kind, what, tmp_path):
    path = _special_file(kind, tmp_path)
    run_dir = tmp_path / "run"
    line = assert_ours(_capped_cli([*TINY, "data=npz", f"data.path={path}", f"hydra.run.dir={run_dir}"], tmp_path),
                       str(path), what, "refused", "bytes")
    assert "(-> /dev/zero)" in line if kind == "dev_zero_symlink" else True
    assert not run_dir.exists()                 # a refused run leaves no directory behind


def test_a_file_that_unpacks_past_the_limit_is_refused_before_loading(tmp_path):
    """The limit is checked against what np.load would allocate: each array's header
    (shape x item size), not the compressed file - a 1 kB file can declare 8 TB."""
    import zipfile

    from numpy.lib import format as npy

    from collapse.data import load_npz, memory_limit
    from collapse.errors import DataError

    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as archive:
        with archive.open("X.npy", "w") as f:
            npy.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12, 1, 1)})
            f.write(b"\0" * 64)
        with archive.open("y.npy", "w") as f:
            npy.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    with pytest.raises(DataError, match=r"unpack to 16000000000000 bytes, over the limit of \d+ bytes"):
        load_npz(str(forged))
    X, y = xy()
    ok = write_npz(tmp_path / "ok.npz", X=X, y=y)
    assert load_npz(str(ok))[0].shape == X.shape
    with pytest.raises(DataError, match=rf"{ok}' is \d+ bytes, over the limit of 100 bytes"):
        load_npz(str(ok), limit=100)
    assert 0 < memory_limit() < 2 ** 62


# ---------------------------------------------------------------- a refused run touches nothing

def test_a_refused_run_leaves_no_directory_and_an_existing_one_unchanged(tmp_path, single_cli_run):
    new = tmp_path / "outputs" / "new" / "run"
    for bad in (["data.temporal_frames=0"], ["trainer.epochs=abc"], ["trainer.device=cuda"]):
        proc = cli([*TINY, *bad, f"hydra.run.dir={new}"], cwd=tmp_path)
        assert proc.returncode in (1, 2), proc.stderr[-2000:]
        if proc.returncode == 2:
            assert not (tmp_path / "outputs").exists(), (bad, sorted(tmp_path.rglob("*")))
    used = tmp_path / "used"
    shutil.copytree(single_cli_run / "run", used)         # what `python -m collapse.train TINY` left
    before = {p: p.read_bytes() for p in used.rglob("*") if p.is_file()}
    # another config's result is there: refused, and its .hydra/ still says what ran
    assert_ours(cli([*TINY, "seed=7", f"hydra.run.dir={used}"], cwd=tmp_path), "another config")
    assert {p: p.read_bytes() for p in used.rglob("*") if p.is_file()} == before
    assert "seed=7" not in (used / ".hydra" / "overrides.yaml").read_text()


# ---------------------------------------------------------------- the command line runs no callables

@pytest.mark.parametrize("override", [
    "+hydra.callbacks.x._target_=shutil.copyfile",
    "+hydra.callbacks.x={_target_:builtins.open,file:PWNED,mode:w}",
    "hydra.launcher._target_=pathlib.Path.touch",
    "+model.encoder._target_=pathlib.Path.touch",
    "+study={_target_:pathlib.Path.touch}",
    "~hydra.callbacks.sweep_status",
    "hydra.job_logging.handlers.console.class=pathlib.Path",
])
def test_overrides_that_name_a_callable_are_found(override):
    from collapse.train import cli_callable_overrides

    assert cli_callable_overrides(["-m", override, "seed=1"]) == [override]


@pytest.mark.parametrize("override", [
    "model._target_=examples.nets.FrameAttention", "+model.kwargs.width=32", "+data.kwargs.net={_target_:a.b}",
    "data._target_=examples.datasets.make_waves", "study=_target_", "seed=0,1", "hydra.sweep.dir=x",
])
def test_overrides_that_name_no_callable_or_a_custom_one_pass(override):
    from collapse.train import cli_callable_overrides

    assert cli_callable_overrides(["--config-dir", "sweeps", override]) == []


def test_a_callback_from_the_command_line_is_refused_unless_allowed(tmp_path):
    source, copied = tmp_path / "source.txt", tmp_path / "COPIED"
    source.write_text("x")
    args = [*TINY, "trainer.epochs=1", "+hydra.callbacks.x._target_=shutil.copyfile",
            f"+hydra.callbacks.x.src={source}",
            f"+hydra.callbacks.x.dst={copied}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert_ours(cli(args, cwd=tmp_path), "hydra.callbacks.x._target_", "COLLAPSE_ALLOW_CLI_TARGETS=1")
    assert not copied.exists() and not (tmp_path / "run").exists()
    proc = cli(args, cwd=tmp_path, env={"COLLAPSE_ALLOW_CLI_TARGETS": "1"})        # opted in: as documented
    assert proc.returncode == 0 and copied.read_text() == "x", proc.stderr[-2000:]
