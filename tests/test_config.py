"""Every option of every config group composes, validates and builds; bad values are
rejected at compose time (typos, types, options) or by `validate` (ranges), naming the key."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from collapse.config import ConfigError
from collapse.losses import RegressionLoss
from collapse.models import build_model
from collapse.train import CONF_DIR, to_config

GROUPS = ("model", "data", "loss", "ssl", "trainer", "logger", "experiment")
# model=custom / data=custom need a callable: the examples' (tests run from the repository root)
CUSTOM = {"model": "model._target_=examples.nets.FrameAttention",
          "data": "data._target_=examples.datasets.make_waves"}


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def composed(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "user.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(60, 5, 3)), y=rng.normal(size=60))
    return str(path)


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_validates_and_builds(group, option, npz_file):
    overrides = [f"{group}={option}"]
    if option == "npz":
        overrides.append(f"data.path={npz_file}")
    if option == "custom":
        overrides.append(CUSTOM[group])
    cfg = to_config(composed(overrides))
    model = build_model(cfg.model, 3)
    pred = model(torch.randn(4, cfg.data.temporal_frames, 3))
    loss = RegressionLoss(cfg.loss, train_target_var=1.0)(pred, torch.randn(4))
    assert pred.shape == (4,) and torch.isfinite(loss)


# The option keys that pick an option: `group=x` must equal setting these (each default once:
# the schema holds every default, a group file only what differs)
SELECTOR = {"model": "name", "data": "name", "loss": "name"}


@pytest.mark.parametrize("group, option", [(g, o) for g in SELECTOR for o in options(g)])
def test_an_option_and_its_name_compose_to_the_same_config(group, option):
    # loss=bmc once set bmc_sigma 0.5 while the schema said 0.1: loss.name=bmc trained another model
    extra = [CUSTOM[group]] if option == "custom" else []
    by_option = OmegaConf.to_container(composed([f"{group}={option}", *extra]), resolve=True)
    by_name = OmegaConf.to_container(composed([f"{group}.{SELECTOR[group]}={option}", *extra]), resolve=True)
    assert by_option == by_name


def test_ssl_options_are_the_enabled_switch():
    assert composed(["ssl=on"]) == composed(["ssl.enabled=true"])
    assert composed(["ssl=off"]) == composed([])


@pytest.mark.parametrize("group, option", [(g, o) for g in ("model", "data", "loss", "ssl", "trainer", "logger")
                                           for o in options(g)])
def test_group_files_hold_only_what_differs_from_the_schema(group, option):
    from collapse.config import Config

    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=True)[group]
    written = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")) or {}
    restated = {k: v for k, v in written.items() if k != SELECTOR.get(group) and schema.get(k) == v}
    assert not restated, f"conf/{group}/{option}.yaml restates schema defaults: {restated}"


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


def test_cli_overrides_reach_the_typed_config():
    cfg = to_config(composed(["model.init_std=0.01", "data.temporal_frames=7", "data.overweight_factor=1.5",
                              "loss.variance_lambda=0.5", "ssl=on"]))
    assert (cfg.model.init_std, cfg.data.temporal_frames, cfg.data.overweight_factor) == (0.01, 7, 1.5)
    assert cfg.loss.variance_lambda == 0.5 and cfg.ssl.enabled is True


@pytest.mark.parametrize("override, key", [
    ("model.init_sd=0.1", "init_sd"),                 # typo
    ("trainer.epochs=ten", "epochs"),                 # wrong type
    ("loss.variance_lambda=[1]", "variance_lambda"),  # wrong type
    ("model=transformer", "transformer"),             # option that does not exist
    ("data=csv", "csv"),
    ("trainer.monitor=mae", "monitor"),              # option names are Enums in the schema
    ("loss.variance_mode=cubic", "variance_mode"),
    ("model.name=transformer", "model.name"),
])
def test_compose_time_errors_name_the_key(override, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        composed([override])
    assert key in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("data.temporal_frames=0", "data.temporal_frames"),
    ("data.temporal_frames=8", "data.temporal_frames"),
    ("loss.variance_lambda=-0.5", "loss.variance_lambda"),
    ("model.init_std=-1", "model.init_std"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.lr=nan", "trainer.lr"),
    ("data.overweight_factor=0.5", "data.overweight_factor"),
    ("data=npz", "data.path"),
    ("seed=18446744073709551616", "seed"),           # 2**64: torch cannot seed it
])
def test_range_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(composed([override]))


def test_a_bad_option_name_fails_at_compose_time_listing_the_allowed_values():
    with pytest.raises(HydraException) as err:
        composed(["trainer.optimizer=lbfgs"])
    cause = err.value.__cause__
    assert "[adam, adamw, sgd]" in str(cause) and cause.full_key == "trainer.optimizer"


@pytest.mark.parametrize("overrides, key", [
    (["data=npz", "data.path=x.npz", "data.n_samples=50"], "data.n_samples"),
    (["loss=ccc", "data.overweight_factor=2"], "data.overweight_factor"),
    (["loss.variance_mode=hinge"], "loss.variance_mode"),
    (["ssl.epochs=5"], "ssl.epochs"),
    (["model.kernel_size=5"], "model.kernel_size"),
])
def test_a_key_without_effect_in_the_chosen_path_is_named(overrides, key):
    from collapse.config import ineffective_keys

    keys = {o.split("=")[0] for o in overrides}
    [warning] = ineffective_keys(to_config(composed(overrides)), keys)
    assert warning.startswith(f"{key} has no effect")


def test_keys_that_matter_give_no_warning():
    from collapse.config import ineffective_keys

    overrides = ["model=temporal_conv", "model.kernel_size=5", "ssl=on", "ssl.epochs=5",
                 "loss.variance_lambda=0.5", "loss.variance_mode=hinge", "data.overweight_factor=2"]
    assert ineffective_keys(to_config(composed(overrides)), {o.split("=")[0] for o in overrides}) == []
