"""Help that explains (collapse.config.schema_help, conf/config.yaml's hydra.help.template,
collapse.train.cli): every schema key with its one-line description, grouped by config
group; a misspelt key gets "did you mean"."""
from dataclasses import fields, is_dataclass

import pytest

from collapse.config import Config, ConfigError, check_known_keys, did_you_mean, schema_help, unknown_override

from conftest import cli


def _all_keys(node=None, prefix="") -> list[str]:
    node = Config() if node is None else node
    keys = []
    for f in fields(node):
        value = getattr(node, f.name)
        keys += _all_keys(value, f"{prefix}{f.name}.") if is_dataclass(value) else [f"{prefix}{f.name}"]
    return keys


def test_every_schema_key_has_a_one_line_description():
    rows = schema_help()
    assert sorted(k for k, *_ in rows) == sorted(_all_keys())
    missing = [k for k, _, _, text in rows if not text.strip()]
    assert missing == []
    assert all("\n" not in text for *_, text in rows)
    by_key = {k: (kind, default, text) for k, kind, default, text in rows}
    assert by_key["loss.variance_lambda"][:2] == ("float", 0.0)
    assert "variance term" in by_key["loss.variance_lambda"][2]
    assert by_key["trainer.monitor"][:2] == ("choice", "r2")


def test_help_lists_every_key_grouped_with_its_description(tmp_path):
    proc = cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for key, _, _, description in schema_help():
        line = next((x for x in text.splitlines() if x.split() and x.split()[0] == key), None)
        assert line is not None, key
        assert description.split()[0] in line
    assert text.index("model.*   (group model") < text.index("  model.hidden_dim") < text.index("data.*   (group data")
    assert "--info" in text and "--shell-completion" in text and "collapse-train" in text


@pytest.mark.parametrize("override, suggestion", [("loss.variance_lamda=0.5", "loss.variance_lambda"),
                                                  ("trainer.epoch=5", "trainer.epochs"),
                                                  ("data.temporal_frame=3", "data.temporal_frames")])
def test_a_misspelt_key_gets_did_you_mean(override, suggestion):
    message = unknown_override(override, ["model", "data", "loss"])
    assert message.startswith(f"{override.split('=')[0]} is not a config key (did you mean {suggestion}?)")


def test_keys_that_are_not_the_schemas_to_judge_pass():
    groups = ["model", "experiment", "logger"]
    for override in ("seed=0,1", "model=gru", "experiment=run2", "+model.kwargs.width=32", "hydra.sweep.dir=x",
                     "hydra/launcher=basic", "model.kwargs.width=3", "loss.variance_lambda=0,0.5", "-m"):
        assert unknown_override(override, groups) is None, override
    assert did_you_mean("zzz.qqq") == ""


def test_an_appended_typo_in_the_composed_config_also_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"trainer.epoch is not a config key \(did you mean trainer.epochs\?\)"):
        check_known_keys({"trainer": {"epoch": 5}})


def test_tab_completion_and_info_still_reach_hydra(tmp_path):
    completion = cli(["-sc", "install=bash"], cwd=tmp_path)
    assert completion.returncode == 0 and "complete" in completion.stdout, completion.stderr[-1000:]
    info = cli(["--info", "defaults"], cwd=tmp_path)
    assert info.returncode == 0 and "collapse_schema" in info.stdout, info.stderr[-1000:]


def test_the_cli_refuses_a_misspelt_key_in_one_line(tmp_path):
    proc = cli(["loss.variance_lamda=0.5"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("collapse: error: loss.variance_lamda is not a config key (did you mean "
                                   "loss.variance_lambda?); python -m collapse.train --help lists them")
    assert not (tmp_path / "outputs").exists()
