"""hydra/launcher=ensemble: a sweep's jobs grouped and each group trained as one stacked model,
on the default launcher's worker processes (collapse.sweep.engine).

Launching side (`EnsembleEngine`): every job is composed first (as under the default
launcher), then jobs whose configs agree on everything but config.ENSEMBLE_MEMBER_KEYS
(seed, loss.variance_lambda, model.init_std, trainer.lr, trainer.weight_decay) form a
group; a group is cut into chunks of at most `max_members` (0: as many chunks as
workers need to stay busy, each small enough that its activations stay in cache:
`stack_cap`), and each chunk goes to a free worker, costliest first. A config the ensemble
engine cannot train (model=custom, a tracker) refuses the whole sweep up front, with one
line, before anything runs.

Worker side (`run_group`): each member goes through Hydra's run_job with
collapse.train.prepare_member as its task function (its job directory, .hydra/ files and
callbacks, as any launcher's), then collapse.train.train_members trains the chunk as one
model (collapse.run.ensemble) and each job's return value is filled in. A worker that
dies loses its chunk's jobs: each is reported and counted as not done (resume=true reruns
them). Nothing here imports torch or the science.
"""
from __future__ import annotations

import importlib
import json
import math
import pickle
import sys
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from collapse.config import ENSEMBLE_MEMBER_KEYS, ensemble_refusal
from collapse.sweep.engine import RUN, RUN_GROUP, Engine, _compose, _ended, _job_config, _planned_total

GROUP_MODULE = "collapse.train"        # prepare_member, train_members: the entry point's job side


def group_key(config: DictConfig) -> str:
    """What members of one group share: the job's config less hydra and the member keys."""
    tree = OmegaConf.to_container(config, resolve=False)
    tree.pop("hydra", None)
    for key in ENSEMBLE_MEMBER_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(tree, sort_keys=True, default=str)


# A stack's layer activation (members x batch x frames x hidden floats) at most this many
# floats, 2 MiB: past the cache, every elementwise op (ReLU, its backward, the mean) streams
# from memory. phase4's 7-frame group on 2 cores, one thread (12 members, 4 epochs): 1.83 s
# as one stack, 1.53 s as stacks of 4; its 3-frame group fastest as one stack of 12.
STACK_FLOATS = 512 << 10


# What a member costs a stack, in frames: its step's rows, plus what it costs whatever its
# frames (Hydra's run_job, its setup, record and files). phase4 at 20 epochs on 2 cores: 4
# members x 7 frames and 12 x 1 frame each took ~2.4 s, 6 x 3 ~2.0 s: ~0.066 s a frame,
# ~0.14 s a member, i.e. frames + 2.
MEMBER_COST_FRAMES = 2


def member_cost(frames: int) -> int:
    return frames + MEMBER_COST_FRAMES


def stack_cap(batch_size: int, frames: int, hidden_dim: int) -> int:
    """Members per stack whose layer activation stays within STACK_FLOATS (at least 2: a
    stack of one computes a duplicate row, twice the work of one run)."""
    return max(2, STACK_FLOATS // max(1, batch_size * frames * hidden_dim))


def chunks(groups: Sequence[list], n_workers: int, max_members: int, cost=len, caps=None) -> list[list]:
    """Cut groups into even chunks, costliest first (`cost(chunk)`): the pool hands the next
    chunk to the first free worker, so the cheap ones fill the gaps at the end
    (longest-processing-time first).

    A chunk holds at most `max_members`; with 0, at most the group's cap (`caps[i]`, the
    members whose activations fit the cache: `stack_cap`) and the sweep's jobs / workers
    (so a sweep of one group still keeps every worker busy)."""
    out = []
    total = sum(len(g) for g in groups)
    per_worker = max(1, math.ceil(total / max(1, n_workers)))
    for i, group in enumerate(groups):
        if max_members > 0:
            cap = max_members
        else:
            cap = min(per_worker, caps[i]) if caps is not None and caps[i] > 0 else per_worker
        n = math.ceil(len(group) / cap)
        size = math.ceil(len(group) / n)             # even chunks: 12 at cap 9 -> 6 + 6, not 9 + 3
        out += [group[j:j + size] for j in range(0, len(group), size)]
    return sorted(out, key=cost, reverse=True)


def run_group(state: dict, jobs: Sequence[tuple]) -> list:
    """Worker side: prepare each member through Hydra's run_job, train them together, return
    one JobReturn per job (in order)."""
    from hydra.core.utils import JobStatus, configure_log, run_job

    task = importlib.import_module(state.get("group_module", GROUP_MODULE))
    returns = []
    try:
        for job_num, composed, overrides in jobs:
            config = _job_config(state, job_num, composed, overrides)
            returns.append(run_job(hydra_context=state["hydra_context"], task_function=task.prepare_member,
                                   config=config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
    finally:
        configure_log(state["config"].hydra.hydra_logging, state["config"].hydra.verbose)
    ok = [r for r in returns if r.status == JobStatus.COMPLETED]
    values = task.train_members([r._return_value for r in ok])
    for r, value in zip(ok, values):
        r.return_value = value
    return returns


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _member_value(override) -> bool:
    """A plain `key=value` of a member key (a number or a bool): composing it into a job is
    one OmegaConf.update, as Hydra applies it after the defaults."""
    from hydra.core.override_parser.types import OverrideType, ValueType

    return (override.get_key_element() in ENSEMBLE_MEMBER_KEYS and override.type == OverrideType.CHANGE
            and override.package is None and override.value_type == ValueType.ELEMENT
            and isinstance(override.value(), (int, float)))


def derivable(batch: Sequence[Sequence[str]]) -> dict[int, int]:
    """job index -> the index of an earlier job whose overrides differ from its own only in
    member-key values (see `derive`); jobs not in it are composed by Hydra."""
    first: dict[tuple, int] = {}
    out = {}
    for i, overrides in enumerate(batch):
        try:
            parsed = _parse(overrides)
        except Exception:  # noqa: BLE001 - Hydra's composition reports it, in job order
            continue
        signature = tuple(o.get_key_element() if _member_value(o) else o.input_line for o in parsed)
        if signature in first:
            out[i] = first[signature]
        else:
            first[signature] = i
    return out


def derive(composed: bytes, overrides: Sequence[str]) -> bytes:
    """A job's config from the config Hydra composed for a job whose overrides differ only in
    member-key values: those values set as Hydra sets an override, and what Hydra derives
    from the override list (hydra.overrides.task, hydra.job.override_dirname) redone.
    ~5 ms against ~90 ms a composition (phase4: 3 compositions, not 36); a test checks the
    result against Hydra's own composition, file for file."""
    import cloudpickle
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config = pickle.loads(composed)
    parsed = _parse(overrides)
    for o in parsed:
        if _member_value(o):
            try:
                OmegaConf.update(config, o.key_or_group, o.value(), merge=True)
            except OmegaConfBaseException as e:
                raise ConfigCompositionException(f"Error merging override {o.input_line}") from e
    task = [o for o in parsed if not o.is_hydra_override()]
    config.hydra.overrides.task = [o.input_line for o in task]
    named = config.hydra.job.config.override_dirname
    config.hydra.job.override_dirname = get_overrides_dirname(
        overrides=task, kv_sep=named.kv_sep, item_sep=named.item_sep, exclude_keys=named.exclude_keys)
    return cloudpickle.dumps(config)


class EnsembleEngine(Engine):
    def __init__(self, n_workers: int, hydra_context, task_function, config, max_members: int = 0):
        self.max_members = int(max_members)
        super().__init__(n_workers, hydra_context, task_function, config)

    def compose(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose one job of each set whose overrides differ only in member-key values (the
        configs of a would-be group), on the workers; derive the others from it here, in
        job order, raising the first error before anything runs."""
        keys = [tuple(o) for o in batch]
        source = derivable(keys)
        super().compose([k for i, k in enumerate(keys) if i not in source])
        for i, key in enumerate(keys):
            if i in source and keys[source[i]] in self._composed:
                self._composed[key] = derive(self._composed[keys[source[i]]], key)

    def _payload(self) -> bytes:
        import cloudpickle
        from hydra.core.singleton import Singleton

        return cloudpickle.dumps({"hydra_context": self.hydra_context, "config": self.config,
                                  "task_function": self.task_function, "singletons": Singleton.get_state(),
                                  "group_module": GROUP_MODULE})

    def launch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        import logging
        import os

        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        log = logging.getLogger(__name__)
        setup_globals()
        hydra = self.config.hydra
        configure_log(hydra.hydra_logging, hydra.verbose)
        os.makedirs(str(hydra.sweep.dir), exist_ok=True)
        state = {"hydra_context": self.hydra_context, "config": self.config}
        groups: dict[str, list] = {}
        jobs, frames, seeds, caps = [], [], [], {}
        for i, overrides in enumerate(batch):
            composed = self._composed.pop(tuple(overrides), None)
            if composed is None:
                composed = _compose(state, overrides)
            config = pickle.loads(composed)
            why = ensemble_refusal(str(config.model.name), [str(n) for n in (config.logger.names or [])],
                                   str(config.trainer.lr_schedule))
            if why is not None:
                print(f"collapse: error: hydra/launcher=ensemble: job {initial_job_idx + i} "
                      f"({' '.join(filter_overrides(overrides))}): {why}", file=sys.stderr)
                raise SystemExit(2)
            jobs.append((initial_job_idx + i, composed, list(overrides)))
            frames.append(int(config.data.temporal_frames))
            seeds.append(int(config.seed))
            key = group_key(config)
            groups.setdefault(key, []).append(i)
            caps[key] = stack_cap(int(config.trainer.batch_size), frames[-1], int(config.model.hidden_dim))
        # a group's members by seed: a chunk then holds few seeds, whose members share one
        # data load and one linear reference (collapse.run.ensemble)
        ordered = {k: sorted(g, key=lambda i: seeds[i]) for k, g in groups.items()}
        parts = chunks(list(ordered.values()), self.n_workers, self.max_members,
                       cost=lambda part: sum(member_cost(frames[i]) for i in part), caps=[caps[k] for k in ordered])
        where = f"on {self.n_workers} worker processes" if self.pool else "in this process"
        log.info(f"Launching {len(batch)} jobs as {len(parts)} stacked model(s) of "
                 f"{'/'.join(str(len(p)) for p in parts)} members {where}")
        if self.progress is None:           # a line per finished member, as the default launcher prints
            from collapse.sweep.progress import SweepProgress

            self.progress = SweepProgress(_planned_total(self.config), fixed=list(self.config.hydra.overrides.task))
        tasks = [(g, RUN_GROUP, [jobs[i] for i in part]) for g, part in enumerate(parts)]
        if self.pool is None:
            full = {**state, "task_function": self.task_function, "group_module": GROUP_MODULE}
            replies = {}
            for task in tasks:
                replies[task[0]] = ("ok", run_group(full, task[2]))
                self._group_done(task, replies[task[0]])
        else:
            replies = self.pool.map(tasks, on_lost=self._lost_group, on_done=self._group_done)
        returns: list[Optional[object]] = [None] * len(batch)
        for g, part in enumerate(parts):
            kind, value = replies[g]
            if kind == "error":
                raise value
            for i, ret in zip(part, value):
                returns[i] = ret
        return returns

    def _group_done(self, task: tuple, reply: tuple) -> None:
        """A stack finished: each member's progress line (Engine._job_done)."""
        kind, value = reply
        for k, job in enumerate(task[2]):
            self._job_done((k, RUN, job), (kind, value[k]) if kind == "ok" else reply)

    def _lost_group(self, task: tuple, code: int, pid: int) -> list:
        from hydra.core.utils import JobReturn, JobStatus

        from collapse.records import interrupt_orphaned
        from collapse.sweep.job import failed_objective

        # the dead worker's members say `running` (and a write may have left a temp file)
        interrupt_orphaned(str(self.config.hydra.sweep.dir), pid, f"its worker process died ({_ended(code)})")
        value = failed_objective(self.config.hydra.sweeper)
        out = []
        for job_num, _, overrides in task[2]:
            print(f"collapse: error: job {job_num} ({' '.join(overrides)}): its worker process died "
                  f"({_ended(code)}); the sweep goes on without it and resume=true runs it again", file=sys.stderr)
            out.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=value))
        return out
