"""Read a sweep directory: one `Job` per job directory (numeric subdirectory).

For each job: `.hydra/overrides.yaml`, `.hydra/hydra.yaml` (`job.num`,
`runtime.choices`) and `metrics.json` - never `multirun.yaml`, which holds the sweep
unexpanded (shared/STYLE.md). A job that failed, is missing, still running, corrupt or
of an unknown schema gets a status and a line in `job.problems`, not an exception.
Also the vocabulary the statistics (collapse.summary) and the tables
(collapse.summary_report) share: job states, metric keys, diagnosis labels.
"""
from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from collapse import records

METRICS = ("r2", "variance_ratio", "pred_std", "rmse", "mae")
SPLITS = ("val", "test")
STAT_KEYS = tuple(f"{split}.{m}" for split in SPLITS for m in METRICS)
EFFECT_KEYS = ("val.r2", "val.variance_ratio")              # main effects, eta^2
PAIRED_KEYS = ("val.r2", "val.variance_ratio", "test.r2")   # differences vs baseline
STATISTICS_STATUSES = ("completed", "stopped_collapse")   # runs whose best-epoch metrics count
STATES = ("completed", "diverged", "stopped_collapse", "failed", "running", "interrupted",
          "unreadable", "missing")
DIAGNOSES = ("healthy", "collapsed", "no_signal")
NOT_FACTORS = ("seed", "resume")    # seed is the replicate axis; resume is bookkeeping
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Job:
    num: int
    path: Path
    status: str = "missing"                 # one of STATES
    settings: Optional[dict] = None         # key -> value (overrides + group choices); None: unknown
    override_keys: set = field(default_factory=set)
    seed: Optional[str] = None
    record: Optional[dict] = None
    problems: list = field(default_factory=list)

    @property
    def best(self) -> Optional[dict]:
        """The best-epoch metrics when this job is a result, else None. A diverged run is
        not: its "best" epoch is a snapshot on the way to blowing up (R² of -1e39 seen),
        and a config that diverges must not look good through it; it is counted instead."""
        if self.status in STATISTICS_STATUSES and self.record:
            return self.record.get("best") or None
        return None


# YAML construction is slow in Python even with libyaml (all of a job's ~4 kB hydra.yaml
# took ~1.3 ms, 1.3 s for 1,000 jobs). Hydra writes .hydra/ files in one layout (OmegaConf's
# 2-space YAML), so the few lines needed are matched directly: `- key=value` items in
# overrides.yaml, `job.num` and the `runtime.choices` lines in hydra.yaml. A line outside
# that plain form (quotes, comments, flow style, ...) sends the whole file to the YAML parser.
_PLAIN_ITEM = re.compile(r"- ([^\s'\"\[\]{}!&*|>%@`#,?:-][^#'\"]*)")
_HYDRA_BLOCK = re.compile(r"^  (job|runtime):\n((?:    .*\n|[ \t]*\n)*)", re.M)
_JOB_NUM = re.compile(r"^    num: (\d+)[ \t]*$", re.M)
_CHOICES = re.compile(r"^    choices:\n((?:      .*\n)*)", re.M)
_CHOICE = re.compile(r"      ([^\s:'\"#]+): (null|'[^']*'|[^\s'\"\[\]{}!&*|>%@`#,?:-][^#'\":]*)")


def _load_overrides(path: Path) -> list:
    """The override strings of a job's .hydra/overrides.yaml."""
    text = path.read_text()
    items = [_PLAIN_ITEM.fullmatch(line) for line in text.splitlines()]
    if items and all(items) and not any(": " in m.group(1) or " #" in m.group(1) for m in items):
        return [m.group(1) for m in items]
    return yaml.load(text, Loader=Loader) or []


def _hydra_job_info(path: Path) -> tuple[Optional[int], dict]:
    """(job.num, runtime.choices) from a job's .hydra/hydra.yaml."""
    text = path.read_text()
    blocks = dict(m.groups() for m in _HYDRA_BLOCK.finditer(text))
    num, block = _JOB_NUM.search(blocks.get("job", "")), _CHOICES.search(blocks.get("runtime", ""))
    lines = [_CHOICE.fullmatch(line) for line in block.group(1).splitlines()] if block else [None]
    if num and all(lines):
        return int(num.group(1)), {m.group(1): None if m.group(2) == "null" else m.group(2).strip("'")
                                   for m in lines}
    hydra = (yaml.load(text, Loader=Loader) or {}).get("hydra") or {}
    num = (hydra.get("job") or {}).get("num")
    return (int(num) if num is not None else None), (hydra.get("runtime") or {}).get("choices") or {}


# The per-epoch histories are ~85% of a 60-epoch metrics.json, and json.loads of 1,000
# whole records took 1.2 s here. Tables do not need them: they are cut out before
# parsing (they are lists of flat dicts, so the first "]" ends one). Anything unusual
# goes through records.read_record, which also words every error.
_HISTORIES = re.compile(r'"(history|ssl_history)": \[[^\]]*\]')


def read_metrics(path: Path, histories: bool = True) -> dict:
    """records.read_record, faster when `histories` is False (they come back as None)."""
    if histories:
        return records.read_record(path)
    try:
        record = json.loads(_HISTORIES.sub(r'"\1": null', path.read_text()))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("schema") in records.READABLE_SCHEMAS \
            and record.get("status") in records.STATUSES:
        return record
    return records.read_record(path)


def _is_hydra_key(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _settings(overrides: Sequence[str], choices: dict) -> tuple[dict, set, Optional[str]]:
    """Group choices updated by the overrides -> (settings, override keys, seed)."""
    settings = {k: "null" if v is None else str(v) for k, v in choices.items() if not _is_hydra_key(k)}
    keys, seed = set(), None
    for override in overrides:
        key, _, value = str(override).partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
        if key == "seed":
            seed = value
        elif key not in NOT_FACTORS and not _is_hydra_key(key):
            settings[key] = "~deleted" if deleted else value
            keys.add(key)
    return settings, keys, seed


def read_job(job_dir: Path, histories: bool = True) -> Job:
    """Everything the summary needs from one job directory; problems go in job.problems."""
    job = Job(num=int(job_dir.name), path=job_dir)
    hydra_dir = job_dir / ".hydra"
    overrides = choices = hydra_problem = None
    try:
        overrides = _load_overrides(hydra_dir / "overrides.yaml")
        if not isinstance(overrides, list):
            raise ValueError("overrides.yaml is not a list")
        num, choices = _hydra_job_info(hydra_dir / "hydra.yaml")
        job.num = num if num is not None else job.num
    except FileNotFoundError as e:
        hydra_problem = f"{e.filename if hydra_dir.is_dir() else hydra_dir}: missing"
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        overrides = choices = None
        hydra_problem = f"{hydra_dir}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})"

    metrics = job_dir / records.METRICS_FILE
    try:
        job.record = read_metrics(metrics, histories)
        job.status = job.record["status"]
    except FileNotFoundError:
        job.problems.append(f"{metrics}: missing (the job never wrote a record)")
    except records.RecordError as e:
        job.status = "unreadable"
        job.problems.append(str(e))

    record = job.record or {}
    if hydra_problem and overrides is None:
        overrides = record.get("overrides")
        job.problems.append(hydra_problem + (": factors taken from metrics.json" if overrides is not None
                                             else "; no usable metrics.json either: left out"))
    elif hydra_problem:
        job.problems.append(hydra_problem + ": group choices taken from metrics.json")
    if overrides is not None:
        choices = choices if choices is not None else record.get("choices") or {}
        job.settings, job.override_keys, job.seed = _settings(overrides, choices)
        if job.seed is None and record.get("seed") is not None:
            job.seed = str(record["seed"])

    if job.status == "running":
        prov = record.get("provenance") or {}
        host, pid = prov.get("hostname"), prov.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not records.pid_alive(pid):
            job.status = "interrupted"
            job.problems.append(f"{metrics}: status running but pid {pid} on {host} is gone: interrupted")
        else:
            job.problems.append(f"{metrics}: still running (pid {pid} on {host})")
    elif job.status == "failed":
        error = str(record.get("error") or record.get("stop_reason") or "no error recorded")
        job.problems.append(f"{metrics}: failed: {error.splitlines()[0][:200]}")
    elif job.status == "diverged":
        job.problems.append(f"{metrics}: diverged at epoch {record.get('epochs_run')} (counted, not in the statistics)")
    return job


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep (numeric subdirectories), in job order."""
    return sorted((p for p in Path(sweep_dir).iterdir() if p.name.isdigit() and p.is_dir()),
                  key=lambda p: int(p.name))


def sweep_info(jobs: Sequence[Job]) -> dict:
    """The runs' `sweep` config (name, factors, baseline), from a record or .hydra/config.yaml."""
    for job in jobs:
        config = (job.record or {}).get("config")
        if isinstance(config, dict):
            return config.get("sweep") or {}
    for job in jobs:
        try:
            config = yaml.load((job.path / ".hydra" / "config.yaml").read_text(), Loader=Loader)
        except (OSError, yaml.YAMLError):
            continue
        return (config or {}).get("sweep") or {}
    return {}
