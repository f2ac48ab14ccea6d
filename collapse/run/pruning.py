"""A search's trial, from the job's side: report the monitored metric after every epoch
and stop when the study's pruner says so (collapse.sweep.study runs the search).

A job is a trial when its environment names the study's spec file and the trial number
(records.SEARCH_SPEC_ENV, SEARCH_TRIAL_ENV: set through hydra.job.env_set by the sweeper).
The study is read from its storage (sqlite by default), so a job in a worker process
reports to the same trial the sweeper asked. A storage error never fails the run: the
trial then just is not pruned.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Optional

from collapse import records

log = logging.getLogger("collapse")


PRUNERS = ("median", "percentile", "hyperband", "none")


def make_pruner(spec: Optional[dict]):
    """hydra.sweeper.pruner ({'name': one of PRUNERS, ...its arguments}) -> an Optuna pruner.
    Here, not in collapse.sweep.study: the job builds the same pruner to ask it."""
    import optuna

    spec = dict(spec or {})
    name = str(spec.pop("name", "median")).lower()
    pruners = dict(zip(PRUNERS, (optuna.pruners.MedianPruner, optuna.pruners.PercentilePruner,
                                 optuna.pruners.HyperbandPruner, optuna.pruners.NopPruner)))
    if name not in pruners:
        raise ValueError(f"hydra.sweeper.pruner.name={name!r} is invalid: one of {', '.join(PRUNERS)}")
    return pruners[name](**spec)


class TrialReporter:
    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor

    @classmethod
    def from_env(cls, monitor: str) -> Optional["TrialReporter"]:
        path, number = os.environ.get(records.SEARCH_SPEC_ENV), os.environ.get(records.SEARCH_TRIAL_ENV)
        if not path or not number:
            return None
        try:
            import optuna

            spec = json.loads(Path(path).read_text())
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=spec["study_name"], storage=spec["storage"],
                                      pruner=make_pruner(spec.get("pruner")))
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
            return cls(optuna.trial.Trial(study, trial_id), monitor)
        except Exception as e:  # noqa: BLE001 - reporting is a bonus: the run goes on unpruned
            log.warning(f"collapse: warning: cannot report to search trial {number} ({type(e).__name__}: {e}); "
                        "it will not be pruned")
            return None

    def epoch(self, entry: dict) -> bool:
        """Report one epoch's monitored metric (higher is better, as the trial's objective);
        True when the pruner stops the trial."""
        value = entry.get("val_r2") if self.monitor == "r2" else -entry.get("val_loss", math.nan)
        if value is None or not math.isfinite(value):
            return False
        try:
            self.trial.report(float(value), int(entry["epoch"]))
            return bool(self.trial.should_prune())
        except Exception as e:  # noqa: BLE001 - as above
            log.warning(f"collapse: warning: search trial report failed ({type(e).__name__}: {e})")
            return False
