"""collapse.trainer's budget: the batch cap for small splits, and the under-training flag."""
import math

import numpy as np
import pytest

from collapse.trainer import effective_batch_size


@pytest.mark.parametrize("n_train, batch, expected", [
    (7000, 256, 256),    # the synthetic benchmark: 28 steps an epoch already, unchanged
    (2048, 256, 256),    # exactly 8 steps an epoch: unchanged
    (310, 256, 39),      # diabetes: ceil(310 / 8) = 39 -> 8 steps an epoch
    (130, 256, 17),      # the 130 samples: 1 step an epoch becomes 8
    (50, 256, 16),       # floor: batches below 16 are noise, not more steps
    (10, 256, 10),       # never above the split itself
    (310, 32, 32),       # a small batch asked for is kept
])
def test_effective_batch_size(n_train, batch, expected):
    assert effective_batch_size(n_train, batch, 8) == expected


def test_no_cap_when_turned_off():
    assert effective_batch_size(130, 256, 0) == 130 and effective_batch_size(7000, 256, 0) == 256


def test_bad_sizes_name_the_argument():
    with pytest.raises(ValueError, match="n_train=0"):
        effective_batch_size(0, 256, 8)


def test_budget_exhausted_only_when_the_last_epoch_was_the_best_at_the_limit():
    from collapse.trainer import budget_exhausted

    assert budget_exhausted(60, 60, "max_epochs")
    assert not budget_exhausted(45, 60, "max_epochs")          # plateaued before the limit
    assert not budget_exhausted(20, 20, "early_stopping")      # cannot happen, but is not the limit
    assert not budget_exhausted(None, 0, "max_epochs")


def test_a_run_stopped_while_its_score_still_rises_is_flagged_by_the_trend():
    """Early stopping cut a noisy climb: the best epoch is not the last, yet the last 10
    val scores rise (slope interval above min_delta): under-trained all the same."""
    from scipy import stats

    from collapse.trainer import budget_exhausted, still_rising

    g = np.random.default_rng(0)
    climb = list(0.5 + 0.01 * np.arange(30) + 0.004 * g.normal(size=30))
    flat = list(0.8 + 0.004 * g.normal(size=30))
    creep = [0.99 + 1e-5 * i for i in range(30)]           # significant, but below min_delta 1e-4
    fit = stats.linregress(range(10), climb[-10:])
    assert fit.slope - stats.t.ppf(0.975, 8) * fit.stderr > 1e-4 and still_rising(climb, 10, 1e-4)
    assert budget_exhausted(27, 30, "early_stopping", climb, 10, 1e-4)
    assert not budget_exhausted(20, 30, "early_stopping", flat, 10, 1e-4)
    assert still_rising(creep, 10) and not budget_exhausted(29, 30, "early_stopping", creep, 10, 1e-4)
    assert not budget_exhausted(27, 30, "collapse_guard", climb, 10, 1e-4)      # stopped for another reason
    assert not still_rising(climb[:5], 10) and not still_rising(climb[:-1] + [math.nan], 10)
