"""The sweep's Hydra callback: the sweep directory's lock and manifest, the resume guard,
sizing the launcher, and the sweep's exit status.

Hydra runs `SweepStatus` (conf/config.yaml: hydra.callbacks) in the launching process.
Two Hydra facts shape it: an exception raised in a callback only becomes a warning,
so refusals raise SystemExit (a BaseException, which Hydra lets through); and
`on_multirun_end` is skipped when a job raised, so jobs never raise (collapse.train
records failures in metrics.json instead) and this callback reads those files.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from collapse import records
from collapse.records import DirLock, DirLocked, ManifestError, job_dirs, read_manifest, write_manifest
from collapse.sweep.cores import size_launcher

NOT_DONE = ("failed", "diverged", "interrupted", "running")


def refuse(message: str) -> None:
    print(f"collapse: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _task_overrides(overrides) -> list[str]:
    # `resume=...` is how a sweep is continued, not part of what it computes
    return sorted(o for o in overrides if not o.lstrip("+~").startswith("resume="))


def planned_overrides(config: DictConfig) -> Optional[list[list[str]]]:
    """The override lists of every job the sweep will launch, in job-number order, as
    Hydra's BasicSweeper expands them (its `params` first, then the command line);
    None for another sweeper (Optuna decides its trials as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith((".BasicSweeper", ".GridSweeper")):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    [jobs] = BasicSweeper.split_arguments(overrides, None)
    return [[o for o in job if not o.lstrip("+~").startswith("resume=")] for job in jobs]


class RunDirSnapshot:
    """A single run's directory as it was before Hydra wrote its job files into it
    (`.hydra/*.yaml`, the job's log) - Hydra writes them before the task function can
    check anything. A refused run puts back what was there and removes what it created
    (files, then the directories, if empty), so a refusal leaves nothing behind.
    Measured against checking before Hydra writes (docs/reliability.md): this costs a
    few small reads on every run, the alternative a second data load and config check."""

    def __init__(self, config: DictConfig):
        self.dir = Path(str(config.hydra.run.dir)).absolute()
        subdir = config.hydra.get("output_subdir")
        hydra_files = [self.dir / str(subdir) / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")] \
            if subdir is not None else []
        self.files = {p: _read_or_none(p) for p in [*hydra_files, self.dir / records.LOCK_FILE,
                                                    self.dir / f"{config.hydra.job.name}.log"]}
        # the directories Hydra (or the lock) may create: the run dir, .hydra/, new parents
        self.new_dirs = [d for d in [*(p.parent for p in hydra_files[:1]), self.dir, *self.dir.parents]
                         if not d.exists()]

    def restore(self) -> None:
        for path, content in self.files.items():
            try:
                if content is None:
                    path.unlink(missing_ok=True)
                elif _read_or_none(path) != content:
                    path.write_bytes(content)
            except OSError:
                pass                   # as much as can be put back; the refusal still stands
        for directory in self.new_dirs:        # deepest first
            try:
                directory.rmdir()
            except OSError:
                pass                   # not empty (something else wrote there) or gone


def _read_or_none(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except OSError:
        return None


_snapshot: Optional[RunDirSnapshot] = None


def restore_run_dir() -> None:
    """Undo what Hydra wrote for the single run now refused (a no-op in a sweep's job)."""
    global _snapshot
    if _snapshot is not None:
        _snapshot.restore()
        _snapshot = None


class SweepStatus(Callback):
    """Own the sweep directory (lock + manifest); exit non-zero when a job did not complete.

    The lock is taken before any job starts and held by this (launching) process until
    it exits, so a second sweep into the same directory - a different one, or the same
    one resumed twice at once - is refused instead of racing this one job for job."""

    def __init__(self) -> None:
        self._lock: Optional[DirLock] = None

    def __getstate__(self) -> dict:
        # launchers send the callbacks to their workers: a copy holds no lock
        return {**self.__dict__, "_lock": None}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _snapshot
        try:
            _snapshot = RunDirSnapshot(config)
        except Exception:  # noqa: BLE001 - an unresolvable run dir: Hydra reports it next
            _snapshot = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _check_launcher(config)
        try:
            self._lock = DirLock(sweep_dir).acquire("hydra.sweep.dir")
        except DirLocked as e:
            refuse(f"{e}; wait for it to finish or choose another hydra.sweep.dir")
        except OSError as e:
            refuse(f"hydra.sweep.dir={sweep_dir} cannot be used: {e.strerror} ({e.filename})")
        if not os.access(sweep_dir, os.W_OK):
            refuse(f"hydra.sweep.dir={sweep_dir} is not writable: the sweep cannot record its jobs there")
        jobs = planned_overrides(config)
        damaged = None
        try:
            manifest = read_manifest(sweep_dir)
        except ManifestError as e:
            manifest, damaged = None, str(e)
        previous = sweep_dir / "multirun.yaml"
        if previous.exists() or manifest is not None or damaged:
            if not config.get("resume", False):
                refuse(f"hydra.sweep.dir={sweep_dir} already holds a sweep; pass resume=true to "
                       "continue it, or choose another hydra.sweep.dir")
            self._check_same_sweep(config, sweep_dir, previous, manifest, jobs)
        if jobs is not None:
            write_manifest(sweep_dir, config.hydra.job.config_name,
                           _task_overrides(config.hydra.overrides.task), jobs)
            if damaged:
                print(f"collapse: note: {damaged}; rewrote it from this command's plan ({len(jobs)} jobs)",
                      file=sys.stderr)
        elif damaged:
            print(f"collapse: note: {damaged}; left as it is (this sweeper plans no jobs up front)",
                  file=sys.stderr)
        # a search (Optuna) launches its trials in batches of the sweeper's n_jobs
        size_launcher(config, len(jobs) if jobs is not None else config.hydra.sweeper.get("n_jobs"))
        if jobs is None:
            # another sweeper (Optuna) writes no multirun.yaml, which the guard above and the
            # summary read: write it as the BasicSweeper does
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(config, previous)

    @staticmethod
    def _check_same_sweep(config: DictConfig, sweep_dir: Path, previous: Path,
                          manifest: Optional[dict], jobs: Optional[list]) -> None:
        if manifest is not None and jobs is not None:
            if [job.get("overrides") for job in manifest["jobs"]] != jobs:
                refuse(f"cannot resume into {sweep_dir}: it holds another sweep's runs "
                       f"(config {manifest.get('config_name')!r} with overrides {manifest.get('task_overrides')}, "
                       f"{len(manifest['jobs'])} jobs; this command: config {config.hydra.job.config_name!r} "
                       f"with overrides {_task_overrides(config.hydra.overrides.task)}, {len(jobs)} jobs)")
            return
        if not previous.exists():
            return
        old = OmegaConf.load(previous)
        old_name, new_name = old.hydra.job.config_name, config.hydra.job.config_name
        old_over = _task_overrides(old.hydra.overrides.task)
        new_over = _task_overrides(config.hydra.overrides.task)
        if (old_name, old_over) != (new_name, new_over):
            refuse(f"cannot resume into {sweep_dir}: it holds another sweep's runs "
                   f"(config {old_name!r} with overrides {old_over}; this command: "
                   f"config {new_name!r} with overrides {new_over})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception raised here into a warning and exits 0: whatever
        # goes wrong while counting must still fail the sweep
        try:
            bad = self._report(Path(str(config.hydra.sweep.dir)))
        except Exception as e:  # noqa: BLE001
            print(f"collapse: error: could not check the sweep's jobs: {type(e).__name__}: {e}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            if self._lock is not None:
                self._lock.release()
        if bad:
            print(f"collapse: error: jobs that did not complete: {', '.join(bad)}", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _report(sweep_dir: Path) -> list[str]:
        """Print the sweep's status counts; return the jobs that did not complete."""
        counts: dict[str, int] = {}
        bad: list[str] = []
        seen: set[int] = set()
        for job in job_dirs(sweep_dir):
            try:
                record = records.read_record(job / records.METRICS_FILE)
                status, num = record["status"], (record.get("job") or {}).get("num")
            except (FileNotFoundError, records.RecordError):
                status, num = "missing", None
            if isinstance(num, int):
                seen.add(num)
            counts[status] = counts.get(status, 0) + 1
            if status in NOT_DONE or status == "missing":
                bad.append(f"{job.name} ({status})")
        try:
            manifest = read_manifest(sweep_dir)
        except ManifestError as e:
            manifest = None
            bad.append(f"{e} (jobs that never started cannot be listed)")
        if manifest is not None:
            never = [job["num"] for job in manifest["jobs"] if job.get("num") not in seen]
            if never:
                counts["never started"] = len(never)
                bad.append(f"{len(never)} never started ({', '.join(map(str, never))})")
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep {sweep_dir}: {sum(counts.values())} jobs: {parts}")
        print(f"summary: python -m collapse.summary {sweep_dir}")
        return bad


def _check_launcher(config: DictConfig) -> None:
    """What a launcher or sweeper needs and can be checked before anything starts: one
    line each instead of the plugin's traceback once the sweep is under way."""
    launcher = str(config.hydra.launcher.get("_target_", ""))
    if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        refuse("hydra/launcher=slurm needs SLURM's sbatch and srun, which are not on this machine's PATH; "
               "run it on a SLURM login node, or use hydra/launcher=submitit_local (or parallel) here")
    sweeper = config.hydra.sweeper
    if "optuna" in str(sweeper.get("_target_", "")).lower() and sweeper.get("storage"):
        _check_optuna_storage(str(sweeper.storage))


def _check_optuna_storage(storage: str) -> None:
    """Open hydra.sweeper.storage as Optuna will: an unusable one is one line, not the
    sweeper's AssertionError."""
    try:
        import optuna

        optuna.storages.get_storage(storage)
    except ImportError:
        return                         # the sweeper itself says how to install it
    except Exception as e:  # noqa: BLE001 - any failure to open it is the same answer
        message = (str(e).splitlines() or [type(e).__name__])[0][:300]
        refuse(f"hydra.sweeper.storage={storage!r} cannot be opened ({type(e).__name__}: {message})")
