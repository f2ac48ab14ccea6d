"""Read a sweep directory: one `Job` per job directory, and the sweep's manifest.

A job's factors come from its own record: the `overrides` and group `choices` that
metrics.json stores. `.hydra/overrides.yaml` and `.hydra/hydra.yaml` are read only for
a job that has no usable record (it failed before writing one, or the file is corrupt),
to say which cell it belonged to; `multirun.yaml` never (it holds the sweep unexpanded).
A job that failed, is missing, still running, corrupt or of an unknown schema gets a
status and a line in `job.problems`, not an exception.
Also the vocabulary the statistics (collapse.summary.build) and the tables
(collapse.summary.report) share: job states, metric keys, diagnosis labels.
"""
from __future__ import annotations

import functools
import gc
import json
import math
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from collapse import records

METRICS = ("r2", "variance_ratio", "pred_std", "rmse", "mae")
SPLITS = ("val", "test")
STAT_KEYS = tuple(f"{split}.{m}" for split in SPLITS for m in METRICS)
# Effects are judged on the split that chose nothing: early stopping picked the epoch on
# val, so val R² is optimistic, and differently so per cell. The effects split (test by
# default, `--effects-split val`) ranks the cells and gives the verdicts; the other
# split's effects are computed beside it, and a sign disagreement gets a note.
EFFECT_SPLITS = ("test", "val")
EFFECT_KEYS = ("test.r2", "test.variance_ratio", "val.r2", "val.variance_ratio")   # main effects, ANOVA
PAIRED_KEYS = EFFECT_KEYS                                                         # differences vs baseline
RANK_METRIC = "r2"                  # cells are ranked by its mean on the effects split
STATISTICS_STATUSES = ("completed", "stopped_collapse")   # runs whose best-epoch metrics count
FAILURE_STATUSES = ("diverged", "failed", "interrupted")  # runs that ended without a result
STATES = ("completed", "diverged", "stopped_collapse", "failed", "running", "interrupted",
          "unreadable", "missing")
DIAGNOSES = records.LABELS
NOT_FACTORS = ("seed", "resume")    # seed is the replicate axis; resume is bookkeeping
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Job:
    num: Optional[int]                      # Hydra's job.num (None when nothing says it)
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

    def diagnosis(self, split: str = "val") -> Optional[str]:
        """The diagnosis label of a split. Schema 1 records hold one dict (the val split's);
        schema 2 one per split."""
        d = (self.record or {}).get("diagnosis")
        if not isinstance(d, dict):
            return None
        if "label" in d:
            return d.get("label") if split == "val" else None
        return (d.get(split) or {}).get("label") if isinstance(d.get(split), dict) else None

    def recalibration_held(self) -> Optional[bool]:
        """recalibrated.raised_test_r2 (schema 2): did the affine refit on val raise test R²?"""
        value = ((self.record or {}).get("recalibrated") or {}).get("raised_test_r2")
        return value if isinstance(value, bool) else None


def _load_overrides(path: Path) -> list:
    """The override strings of a job's .hydra/overrides.yaml."""
    return yaml.load(path.read_text(), Loader=Loader) or []


def _hydra_job_info(path: Path) -> tuple[Optional[int], dict]:
    """(job.num, runtime.choices) from a job's .hydra/hydra.yaml."""
    hydra = (yaml.load(path.read_text(), Loader=Loader) or {}).get("hydra") or {}
    num = (hydra.get("job") or {}).get("num")
    return (int(num) if num is not None else None), (hydra.get("runtime") or {}).get("choices") or {}


# The per-epoch histories are ~85% of a 60-epoch metrics.json, and parsing them is most of
# a summary's time. Tables need neither them nor the resolved config or the last epoch's
# metrics: these are cut out before parsing and read as None. records.write_json writes
# with indent=1, where a line that starts with exactly one space and a quote is a
# top-level key and nothing else (JSON escapes newlines inside strings, nested lines are
# indented further): one pass over those lines finds where each top-level value ends.
# Any other layout finds no such line and is parsed whole, which also words every error.
TRIMMED = frozenset(("history", "ssl_history", "config", "final"))
_KEY_LINE = '\n "'


def _trim(text: str) -> str:
    """`text` with the TRIMMED top-level values replaced by null."""
    parts, pos = [], 0
    at = text.find(_KEY_LINE)
    while at >= 0:
        following = text.find(_KEY_LINE, at + 3)
        colon = text.find('": ', at + 3, following if following >= 0 else len(text))
        if colon >= 0 and text[at + 3:colon] in TRIMMED:
            end = following if following >= 0 else text.rfind("\n}")
            if end < colon:
                break                       # no closing brace: not this layout, parsed as it is
            parts += [text[pos:colon + 3], "null"]
            pos = end - 1 if text[end - 1] == "," else end
        at = following
    return "".join(parts) + text[pos:] if parts else text


try:        # 3-5x faster than json on these float-heavy records; the stdlib parses the rest
    from orjson import loads as _fast_loads
except ImportError:                         # pragma: no cover - orjson is a dependency
    _fast_loads = json.loads


def read_metrics(path: Path, histories: bool = True) -> dict:
    """A metrics.json of a readable schema (without `histories`, the TRIMMED keys are
    None); raises FileNotFoundError, or records.RecordError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise records.RecordError(f"{path}: not valid JSON ({e})") from None
    light = text if histories else _trim(text)
    for parse in (_fast_loads, json.loads):
        try:
            return records.check_record(path, parse(light))
        except (ValueError, TypeError):
            pass        # NaN or Infinity (not JSON: orjson refuses them), or anything unusual
    try:                # the whole text, which words the error
        record = json.loads(text)
    except ValueError as e:
        raise records.RecordError(f"{path}: not valid JSON ({e})") from None
    return records.check_record(path, record)


def _is_hydra_key(key: str) -> bool:
    # and the logger group: where results are also sent never makes a factor (collapse.run.trackers)
    return key in ("hydra", "logger") or key.startswith(("hydra.", "hydra/", "logger."))


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


def _hydra_settings(job_dir: Path) -> tuple[Optional[list], Optional[dict], Optional[int], Optional[str]]:
    """(overrides, choices, job.num, problem) from a job's .hydra/ files."""
    hydra_dir = job_dir / ".hydra"
    try:
        overrides = _load_overrides(hydra_dir / "overrides.yaml")
        if not isinstance(overrides, list):
            raise ValueError("overrides.yaml is not a list")
        num, choices = _hydra_job_info(hydra_dir / "hydra.yaml")
        return overrides, choices, num, None
    except FileNotFoundError as e:
        return None, None, None, f"{e.filename if hydra_dir.is_dir() else hydra_dir}: missing"
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        return None, None, None, f"{hydra_dir}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})"


def _num(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_job(job_dir: Path, histories: bool = True) -> Job:
    """Everything the summary needs from one job directory; problems go in job.problems.
    Factors from the record's overrides and choices; from .hydra/ only without a record."""
    job_dir = Path(job_dir)
    job = Job(num=int(job_dir.name) if records.NUMBER.fullmatch(job_dir.name) else None, path=job_dir)
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
    overrides, choices = record.get("overrides"), record.get("choices")
    num = _num((record.get("job") or {}).get("num"))
    if not isinstance(overrides, list):         # no usable record: which cell was it?
        overrides, choices, hydra_num, problem = _hydra_settings(job_dir)
        num = num if num is not None else hydra_num
        if overrides is None:
            job.problems.append(f"{problem}; no usable metrics.json either: left out")
    elif not (job_dir / ".hydra").is_dir():     # not needed, but a sign of a damaged job dir
        job.problems.append(f"{job_dir / '.hydra'}: missing: factors taken from metrics.json")
    job.num = num if num is not None else job.num
    if overrides is not None:
        job.settings, job.override_keys, job.seed = _settings(overrides, choices if isinstance(choices, dict) else {})
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
    elif job.status == "interrupted":
        job.problems.append(f"{metrics}: interrupted at epoch {record.get('epochs_run')} (not a result)")
    elif job.status == "failed":
        error = str(record.get("error") or record.get("stop_reason") or "no error recorded")
        job.problems.append(f"{metrics}: failed: {error.splitlines()[0][:200]}")
    elif job.status == "diverged":
        job.problems.append(f"{metrics}: diverged at epoch {record.get('epochs_run')} (counted, not in the statistics)")
    if job.status in records.RESULT_STATUSES:
        damaged = records.weights_problem(job_dir, record)     # the metrics stand; the weights do not
        if damaged is not None:
            job.problems.append(damaged)
    return job


# Reading is most of a large summary's time (parsing, and hashing each model.pt): from this
# many jobs on, forked processes read slices of the sweep beside this one. Below it a
# fork and the Jobs' trip back cost more than they save.
PARALLEL_FROM = 2000


# Files the kernel is asked to fetch ahead of the reader (posix_fadvise WILLNEED): a sweep
# read days after it ran is on disk, not in the page cache, and one read at a time waits on
# each file in turn (10,000 records: 2.5 s cold, 1.3 s with the reads queued ahead).
READ_AHEAD = 256


def _advise(dirs: Sequence[Path]) -> None:
    for d in dirs:
        for name in (records.METRICS_FILE, records.WEIGHTS_FILE):
            try:
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
            except OSError:
                continue        # read_job says what is missing
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def _read_slice(dirs: list, histories: bool) -> list:
    if not hasattr(os, "posix_fadvise"):
        return [read_job(d, histories) for d in dirs]
    jobs: list[Job] = []
    _advise(dirs[:READ_AHEAD])
    for start in range(0, len(dirs), READ_AHEAD):
        _advise(dirs[start + READ_AHEAD:start + 2 * READ_AHEAD])
        jobs += [read_job(d, histories) for d in dirs[start:start + READ_AHEAD]]
    return jobs


def read_jobs(dirs: Sequence[Path], histories: bool = True) -> list[Job]:
    """read_job of every directory, in order; a large sweep on every usable core."""
    dirs = list(dirs)
    # Parsed records hold no cycles, so the collector's passes over them (triggered by
    # the allocations themselves) find nothing: a third of the reading time, saved. The
    # forked readers inherit the collector off.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        processes = min(cpus, 8, len(dirs) // (PARALLEL_FROM // 2))
        # fork (Linux) only a process with one thread: a lock another thread holds would stay held
        if processes < 2 or threading.active_count() > 1 or not sys.platform.startswith("linux"):
            return _read_slice(dirs, histories)
        import multiprocessing

        size = -(-len(dirs) // processes)
        slices = [dirs[k:k + size] for k in range(0, len(dirs), size)]
        with multiprocessing.get_context("fork").Pool(len(slices) - 1) as pool:
            others = pool.starmap_async(_read_slice, [(s, histories) for s in slices[1:]])
            first = _read_slice(slices[0], histories)               # this process reads too
            return first + [job for part in others.get() for job in part]
    finally:
        if was_enabled:
            gc.enable()


def manifest_jobs(manifest: Optional[dict]) -> Optional[list[tuple[int, dict, set, Optional[str]]]]:
    """The manifest's jobs as (num, settings, override keys, seed); None without a manifest."""
    if manifest is None:
        return None
    out = []
    for item in manifest["jobs"]:
        if isinstance(item, dict) and _num(item.get("num")) is not None and isinstance(item.get("overrides"), list):
            out.append((item["num"], *_settings(item["overrides"], {})))
    return out


def sweep_info(jobs: Sequence[Job]) -> dict:
    """The runs' `sweep` config (name, factors, baseline), from a record or .hydra/config.yaml."""
    for job in jobs:
        if job.record is not None and job.record.get("config") is None and "config" in job.record:
            try:        # read without its config (TRIMMED): this one record, whole
                job.record = {**job.record, "config": read_metrics(job.path / records.METRICS_FILE).get("config")}
            except (OSError, records.RecordError):
                pass
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


# ---------------------------------------------------------------- factors and levels

# Hydra's override grammar (hydra/grammar/OverrideLexer.g4) for the primitive values a
# level can be: its INT and FLOAT (underscores between digits, "1." and ".5", inf, nan;
# "01" and "0x10" are strings), BOOL and NULL in any case. `~` is YAML's null (Hydra's
# own files, choices written as YAML).
_DIGITS = r"(?:0|[1-9](?:_?[0-9])*)"
_POINT_FLOAT = rf"(?:{_DIGITS}\.|{_DIGITS}?\.[0-9](?:_?[0-9])*)"
_NUMBER = re.compile(rf"[+-]?(?:(?:{_DIGITS}|{_POINT_FLOAT})[eE][+-]?[0-9](?:_?[0-9])*|{_POINT_FLOAT}|{_DIGITS}"
                     r"|[Ii][Nn][Ff]|[Nn][Aa][Nn])")
_BOOL = {"true": True, "false": False}


@functools.lru_cache(maxsize=None)       # a sweep spells each level thousands of times
def level_value(text: Optional[str]) -> tuple:
    """The value Hydra reads from an override's value text, tagged so that True and 1 stay
    apart: ("missing",) for no value, ("null",), ("bool", b), ("number", x) (ints and
    floats alike: 1 and 1.0 are one level; NaN as the string "nan"), ("string", s) (a
    quoted value is the string inside its quotes)."""
    if text is None:
        return ("missing",)
    value = str(text).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return ("string", value[1:-1])
    lower = value.lower()
    if lower == "null" or value == "~":
        return ("null",)
    if lower in _BOOL:
        return ("bool", _BOOL[lower])
    if _NUMBER.fullmatch(value):
        x = float(value.replace("_", ""))
        return ("number", "nan" if math.isnan(x) else x)
    return ("string", value)


_ORDER = {"missing": 0, "null": 1, "bool": 2, "number": 3, "string": 4}


@functools.lru_cache(maxsize=None)
def level_key(value: Optional[str]):
    """Sort key of a level: a missing value first, then null, false, true, numbers in
    numeric order (NaN last), strings."""
    kind, *rest = level_value(value)
    x = rest[0] if rest else 0.0
    if kind == "number":
        return (_ORDER[kind], math.inf if x == "nan" else x, 0 if x != "nan" else 1, str(value))
    return (_ORDER[kind], float(x) if kind == "bool" else 0.0, 0, x if kind == "string" else str(value))


def same_level(a: Optional[str], b: Optional[str]) -> bool:
    """One value to Hydra: "0" and "0.0", "1e-3" and "0.001", "true" and "True", "null" and "NULL"."""
    return a == b or level_value(a) == level_value(b)


def find_factors(jobs: Sequence[Job], declared: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keys whose values vary across the jobs -> (factors, notes).

    Order: `declared` (sweep.factors) first, then varying override keys, then varying
    group choices. A group choice that no override names and whose value follows from
    the factors already kept (one an `experiment=` option sets, say) adds no cells and
    is left out."""
    known = [j for j in jobs if j.settings is not None]
    keys = sorted(set().union(*(j.settings for j in known))) if known else []
    values = {k: [j.settings.get(k) for j in known] for k in keys}
    varying = {k for k in keys if len(set(values[k])) > 1}
    overridden = set().union(*(j.override_keys for j in known)) if known else set()
    notes = [f"sweep.factors names {k}, which does not vary across the jobs: not a factor"
             for k in declared if k not in varying]
    candidates = [k for k in declared if k in varying]
    rest = varying - set(candidates)
    candidates += sorted(rest & overridden) + sorted(rest - overridden)
    factors: list[str] = []
    for key in candidates:
        seen: dict[tuple, Optional[str]] = {}
        follows = bool(factors) and key not in overridden and key not in declared and all(
            seen.setdefault(tuple(values[f][i] for f in factors), values[key][i]) == values[key][i]
            for i in range(len(known)))
        if follows:
            notes.append(f"{key} varies but follows from {', '.join(factors)}: not a separate factor")
            continue
        if declared and key not in declared:
            notes.append(f"{key} varies but is not in sweep.factors: treated as a factor")
        factors.append(key)
    return factors, notes


def number(value) -> Optional[float]:
    """`value` as a finite float, None when it is no number (NaN and inf included)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def unify_numeric_levels(settings_lists: Sequence[dict]) -> list[str]:
    """Make spellings of one value (as Hydra parses it: "0" and "0.0", "1e-3" and "0.001",
    "true" and "True", "null" and "~") one level, in place: each key's spellings of a
    value become its most common one. Returns a note per value with several spellings."""
    spellings: dict[str, dict[tuple, dict[str, int]]] = {}
    for settings in settings_lists:
        for key, value in settings.items():
            if value is not None:
                counts = spellings.setdefault(key, {}).setdefault(level_value(value), {})
                counts[value] = counts.get(value, 0) + 1
    canon: dict[str, dict[str, str]] = {}
    notes = []
    for key, by_value in spellings.items():
        for counts in by_value.values():
            if len(counts) > 1:
                best = sorted(counts, key=lambda v: (-counts[v], len(v), v != v.lower(), v))[0]
                canon.setdefault(key, {}).update({v: best for v in counts})
                notes.append(f"{key}: {', '.join(sorted(counts))} are one value to Hydra: one level {best}")
    for settings in settings_lists:
        for key, mapping in canon.items():
            if settings.get(key) in mapping:
                settings[key] = mapping[settings[key]]
    return notes
