"""An Optuna search on Optuna's ask-and-tell API (hydra/sweeper=optuna, sweeps/tune.yaml).

The published hydra-optuna-sweeper requires optuna < 3 and cannot store a study
(`storage=sqlite:///...` fails an assertion). This one, on Optuna >= 4:
- keeps the study in `storage` (default sqlite:///outputs/optuna.db, which
  `optuna-dashboard sqlite:///outputs/optuna.db` shows live) under `study_name`
  (default: the sweep directory, so every sweep is its own study);
- asks `n_jobs` trials at a time and runs them through the project's launcher (in
  parallel on its worker processes), then tells each its value; trial number = job number;
- resumes: `resume=true` loads the stored study, runs again the trials an interrupted
  sweep left running (same number, same directory, from their checkpoints) and asks only
  what is missing to reach `n_trials`;
- prunes on the per-epoch monitored metric: each job reports to its trial
  (collapse.run.pruning) and stops when the pruner says so; the run is recorded with
  stop_reason `pruned` and its trial told PRUNED;
- writes optimization_results.yaml (best value and params) for the search summary.

hydra_plugins/collapse_optuna.py holds the Hydra class; it delegates here. optuna is
imported only when a search runs.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from collapse import records

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///outputs/optuna.db"
SPEC_FILE = records.SEARCH_SPEC_FILE      # what a job needs to report to its trial (collapse.run.pruning)
RESULTS_FILE = "optimization_results.yaml"
ENV_SPEC, ENV_TRIAL = records.SEARCH_SPEC_ENV, records.SEARCH_TRIAL_ENV


class SearchError(ValueError):
    """A search that cannot start: the message names the key."""


def distribution(key: str, value: Any):
    """A Hydra sweep override's value -> an Optuna distribution; None for a fixed value.

    interval(a, b) -> float (int when both ends are ints), tag(log, ...) on a log scale;
    choice(...) -> categorical; range(a, b, step) -> int with that step."""
    import optuna
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if isinstance(low, int) and isinstance(high, int):
            return optuna.distributions.IntDistribution(low, high, log=log_scale)
        return optuna.distributions.FloatDistribution(float(low), float(high), log=log_scale)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)) and step > 0:
            last = start + step * ((stop - 1 - start) // step)        # range's last value
            return optuna.distributions.IntDistribution(start, last, step=step)
        raise SearchError(f"hydra.sweeper.params.{key}: range({start}, {stop}, {step}) is invalid for a search: "
                          "use an integer range or interval(low, high)")
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(value.list))
    return None


def search_space(params: Optional[DictConfig], arguments: Sequence[str]) -> tuple[dict, list[str]]:
    """The sweeper's `params` and the command line -> ({key: distribution}, fixed overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    strings = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(strings):
        key = override.get_key_element()
        dist = distribution(key, override.value()) if override.is_sweep_override() else None
        if dist is None:
            fixed.append(override.input_line)
        else:
            space[key] = dist
    return space, fixed


def make_sampler(spec: Optional[dict]):
    import optuna

    spec = dict(spec or {})
    name, seed = str(spec.pop("name", "tpe")).lower(), spec.pop("seed", None)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "qmc": optuna.samplers.QMCSampler}
    if name not in samplers:
        raise SearchError(f"hydra.sweeper.sampler.name={name!r} is invalid: one of {', '.join(samplers)}")
    return samplers[name](seed=seed, **spec)


def storage_url(storage: Optional[str]) -> str:
    """The storage URL; a sqlite file's directory is created (outputs/ for the default)."""
    url = storage or DEFAULT_STORAGE
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def trial_value(job_return) -> tuple[str, Optional[float]]:
    """What a finished job tells its trial: ('complete', value), ('pruned', last value) or
    ('fail', None), from its return value and its metrics.json."""
    record = None
    try:
        job_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        record = records.read_record(job_dir / records.METRICS_FILE)
    except (AttributeError, FileNotFoundError, records.RecordError):
        pass
    try:
        value = float(job_return.return_value)
    except Exception:  # noqa: BLE001 - a job that raised has no value
        value = math.nan
    if record is not None and record.get("stop_reason") == "pruned":
        return "pruned", value if math.isfinite(value) else None
    if not math.isfinite(value) or (record is not None and record.get("status") not in records.RESULT_STATUSES):
        return "fail", None
    return "complete", value


class Search:
    """One search: the study, its space, and the loop that asks, launches and tells."""

    def __init__(self, *, direction: str, storage: Optional[str], study_name: Optional[str], n_trials: int,
                 n_jobs: int, sampler: Any, pruner: Any, params: Any, config: DictConfig,
                 launch: Callable[[list, int], list], make_pruner: Callable[[dict], Any]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)   # its set-up lines are noise in a sweep
        self.config, self.launch = config, launch
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        if str(direction).lower() not in ("maximize", "minimize"):
            raise SearchError(f"hydra.sweeper.direction={direction!r} is invalid: maximize or minimize")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise SearchError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be >= 1")
        self.direction, self.n_trials, self.n_jobs = str(direction).lower(), int(n_trials), int(n_jobs)
        try:
            self.storage = storage_url(storage)
        except OSError as e:
            raise SearchError(f"hydra.sweeper.storage={storage} cannot be used: {e.strerror or e}") from None
        self.study_name = str(study_name) if study_name else str(self.sweep_dir)
        self.pruner_spec = OmegaConf.to_container(pruner) if isinstance(pruner, DictConfig) else dict(pruner or {})
        try:
            self.pruner = make_pruner(self.pruner_spec)
        except (TypeError, ValueError) as e:
            raise SearchError(str(e) if "hydra.sweeper" in str(e) else f"hydra.sweeper.pruner: {e}") from None
        self.sampler_spec = OmegaConf.to_container(sampler) if isinstance(sampler, DictConfig) else dict(sampler or {})
        self.sampler_seed = self.sampler_spec.get("seed")
        self.sampler = make_sampler(self.sampler_spec)
        self.params = params

    def _study(self, resume: bool):
        import optuna

        try:
            names = {s.study_name for s in optuna.get_all_study_summaries(self.storage)}
        except Exception as e:  # noqa: BLE001 - sqlalchemy's and optuna's errors alike: one line
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise SearchError(f"hydra.sweeper.storage={self.storage} cannot be used: {type(e).__name__}: "
                              f"{reason}") from None
        if self.study_name in names and not resume:
            raise SearchError(f"hydra.sweeper.study_name={self.study_name!r} already exists in {self.storage}: "
                              "pass resume=true to continue it, or choose another study_name")
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, sampler=self.sampler,
                                    pruner=self.pruner, direction=self.direction, load_if_exists=True)
        if study.trials and self.sampler_seed is not None:
            # a seeded sampler restarts its random stream: offset by the trials the study holds,
            # or a resumed study would ask the first trials' parameters again
            study.sampler = make_sampler({**self.sampler_spec, "seed": self.sampler_seed + len(study.trials)})
        return study

    def run(self, arguments: Sequence[str]) -> list:
        import optuna
        from optuna.trial import TrialState

        space, fixed = search_space(self.params, arguments)
        if not space:
            raise SearchError("hydra.sweeper.params: nothing to search (give e.g. "
                              "trainer.lr='tag(log, interval(1e-4, 1e-2))')")
        study = self._study(bool(self.config.get("resume", False)))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        spec = {"storage": self.storage, "study_name": self.study_name, "pruner": self.pruner_spec}
        records.write_bytes(self.sweep_dir / SPEC_FILE, json.dumps(spec, indent=1).encode())
        # an interrupted sweep left these running: the same trials run again, into their own
        # directories, continuing from their checkpoints (resume=true)
        pending = [optuna.trial.Trial(study, t._trial_id) for t in study.get_trials(states=(TrialState.RUNNING,))]
        finished = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
        if pending or finished:
            log.info(f"study {self.study_name!r}: {finished} finished trials, {len(pending)} to run again")
        to_ask = max(0, self.n_trials - finished - len(pending))
        returns = []
        while pending or to_ask:
            batch = pending[: self.n_jobs]
            pending = pending[len(batch):]
            while len(batch) < self.n_jobs and to_ask:
                batch.append(study.ask(space))
                to_ask -= 1
            returns += self._run_batch(study, batch, fixed)
        self._write_results(study)
        return returns

    def _run_batch(self, study, batch: list, fixed: list[str]) -> list:
        # trial number = job number (= the job's directory): consecutive within a batch
        batch.sort(key=lambda t: t.number)
        returns = []
        start = 0
        while start < len(batch):
            end = start + 1
            while end < len(batch) and batch[end].number == batch[end - 1].number + 1:
                end += 1
            part = batch[start:end]
            overrides = [fixed + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in t.params.items()]
                         + [f"+hydra.job.env_set.{ENV_SPEC}='{self.sweep_dir.resolve() / SPEC_FILE}'",
                            f"+hydra.job.env_set.{ENV_TRIAL}={t.number}"] for t in part]
            results = self.launch(overrides, part[0].number)
            for trial, job_return in zip(part, results):
                state, value = trial_value(job_return)
                if state == "complete":
                    study.tell(trial, value)
                elif state == "pruned":
                    study.tell(trial, state=optuna_state("PRUNED"))
                else:
                    study.tell(trial, state=optuna_state("FAIL"))
            returns += results
            start = end
        return returns

    def _write_results(self, study) -> None:
        try:
            best = study.best_trial
        except ValueError:                  # no trial completed: the file still says it was a search
            best = None
        results = {"name": "optuna", "study_name": self.study_name, "storage": self.storage,
                   "best_params": dict(best.params) if best else {}, "best_value": best.value if best else None,
                   "best_trial": best.number if best else None}
        records.write_bytes(self.sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)).encode())
        if best is None:
            return
        print(f"best trial {best.number}: {best.value:.4g} at "
              + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
              + f" | study {self.study_name!r} in {self.storage}", file=sys.stdout, flush=True)


def optuna_state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)
