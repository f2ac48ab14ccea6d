"""collapse.optim against torch.optim: the same weights bit for bit, the same state_dicts, and
checkpoints that continue in either; and a training process that never imports torch._dynamo."""
import copy

import pytest
import torch

from collapse.config import ModelConfig
from collapse.models import SequenceRegressor
from collapse.optim import Optimizer, PlateauSchedule
from tests.conftest import torch_optimizer


def _model(seed: int = 0) -> SequenceRegressor:
    torch.manual_seed(seed)
    return SequenceRegressor(ModelConfig(name="gru", hidden_dim=8), 3, output_bias=0.5)


def _steps(model, opt, n_steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        X, y = torch.randn(16, 4, 3, generator=g), torch.randn(16, generator=g)      # (B, T, C), (B,)
        loss = ((model(X) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _assert_same_state(ours: dict, theirs: dict) -> None:
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for i, state in theirs["state"].items():
        assert ours["state"][i].keys() == state.keys()
        for k, v in state.items():
            assert ours["state"][i][k].dtype == v.dtype and torch.equal(ours["state"][i][k], v), (i, k)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_same_weights_bit_for_bit_and_torchs_state_dict(name, weight_decay):
    ours_model, torch_model = _model(), _model()
    ours = Optimizer(name, ours_model.parameters(), 3e-3, weight_decay)
    theirs = torch_optimizer(name, torch_model.parameters(), 3e-3, weight_decay)
    _assert_same_state(ours.state_dict(), theirs.state_dict())           # before any step
    _steps(ours_model, ours, 25, seed=1)
    _steps(torch_model, theirs, 25, seed=1)
    for (k, a), b in zip(ours_model.state_dict().items(), torch_model.state_dict().values()):
        assert torch.equal(a, b), k
    _assert_same_state(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_a_checkpoint_of_either_continues_in_the_other(name):
    # a checkpoint.pt written before collapse.optim (torch's state) resumes here, and back
    first, second = _model(), _model()
    torch_first = torch_optimizer(name, first.parameters(), 1e-2, 1e-3)
    ours_second = Optimizer(name, second.parameters(), 1e-2, 1e-3)
    _steps(first, torch_first, 10, seed=2)
    _steps(second, ours_second, 10, seed=2)
    torch_first.param_groups[0]["lr"] = ours_second.param_groups[0]["lr"] = 5e-3     # a schedule lowered it

    resumed_ours, resumed_torch = _model(1), _model(1)
    resumed_ours.load_state_dict(first.state_dict())
    resumed_torch.load_state_dict(second.state_dict())
    ours = Optimizer(name, resumed_ours.parameters(), 1.0, 0.0)
    ours.load_state_dict(copy.deepcopy(torch_first.state_dict()))
    theirs = torch_optimizer(name, resumed_torch.parameters(), 1.0, 0.0)
    theirs.load_state_dict(copy.deepcopy(ours_second.state_dict()))
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 5e-3
    _steps(resumed_ours, ours, 10, seed=3)
    _steps(resumed_torch, theirs, 10, seed=3)
    for a, b in zip(resumed_ours.state_dict().values(), resumed_torch.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_for_another_model_is_refused():
    opt = Optimizer("adam", _model().parameters(), 1e-3, 0.0)
    state = Optimizer("adam", [torch.nn.Parameter(torch.zeros(3))], 1e-3, 0.0).state_dict()
    with pytest.raises(ValueError, match="holds 1 parameters in 1 group"):
        opt.load_state_dict(state)


def test_an_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ValueError, match="optimizer='rmsprop' is invalid"):
        Optimizer("rmsprop", _model().parameters(), 1e-3, 0.0)


def test_the_plateau_schedule_is_torchs_reduce_lr_on_plateau():
    # stalls, a rise inside the threshold, -inf (a NaN R²), the floor; then a resume from torch's state
    scores = [0.1, 0.2, 0.2, 0.205, 0.19, -float("inf"), 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3,
              0.31, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    param = torch.nn.Parameter(torch.zeros(1))
    theirs_opt = torch.optim.SGD([param], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs_opt, mode="max", factor=0.5, patience=2,
                                                        threshold=0.01, threshold_mode="abs", min_lr=0.02)
    ours_opt = Optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.0)
    ours = PlateauSchedule(ours_opt, factor=0.5, patience=2, threshold=0.01, min_lr=0.02)
    lrs_ours, lrs_theirs = [], []
    for score in scores:
        ours.step(score)
        theirs.step(score)
        lrs_ours.append(ours_opt.param_groups[0]["lr"])
        lrs_theirs.append(theirs_opt.param_groups[0]["lr"])
    assert lrs_ours == lrs_theirs and min(lrs_ours) == 0.02 and len(set(lrs_ours)) == 4
    resumed = PlateauSchedule(ours_opt, factor=0.5, patience=2, threshold=0.01, min_lr=0.0)
    resumed.load_state_dict(theirs.state_dict())
    assert resumed.state_dict() == {k: theirs.state_dict()[k] for k in ("best", "num_bad_epochs", "last_epoch")}


def test_a_training_process_never_imports_torchs_compiler(modules_after_a_run):
    # torch.optim's first use imports torch._dynamo (~1.2 s of CPU a process); a run, with
    # pretraining and the plateau schedule, needs neither (conftest.modules_after_a_run)
    assert {"torch", "collapse.trainer", "collapse.optim"} <= modules_after_a_run       # it trained
    assert not {"torch._dynamo", "torch._inductor"} & modules_after_a_run
