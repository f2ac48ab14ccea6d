"""Experiment tracking: TensorBoard event files, MLflow and W&B runs, beside metrics.json.

    loggers = Loggers.create(["tensorboard", "mlflow"], cfg.logger, run_dir)
    loggers.start(record)          # before training: MLflow run, params, tags
    loggers.epoch(history)         # after each finished epoch (the history so far)
    loggers.finish(record)         # at the end, whatever the status

Plain numbers and dicts in (a RunRecord's fields), no Hydra. metrics.json stays the
record: a logger only copies it elsewhere, so a logger never loses a run. A logger
that raises (an unreachable tracking server, a full disk) is switched off for the rest
of the run with one warning that names it; the warning also goes into the record's
`warnings`. A missing package is refused by `create`, before anything trains, with the
command that installs it.

Runs are named by their cell, as the sweep's console names them (collapse.labels:
`frames=3 λ=0.5 seed=1`): the MLflow run name, the W&B run name and the TensorBoard run
directory. An MLflow sweep is one parent run with a nested child run per job.

mlflow, tensorboard, torch.utils.tensorboard and wandb are imported here, and only when a
logger is chosen: `import collapse.train` and a run with logger=none never load them.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Sequence

from collapse.config import ConfigError, LoggerConfig
from collapse.labels import cell_name

log = logging.getLogger("collapse")

INSTALL = 'pip install "collapse[tracking]"   (or: pip install {package})'
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
METRIC_KEYS = ("r2", "variance_ratio", "pred_std", "rmse", "mae", "pearson_r")


class LoggerUnavailable(ConfigError):
    """A chosen logger's package is not installed (raised before training: bad input)."""


def flatten(tree: Any, prefix: str = "") -> dict:
    """{"loss": {"variance_lambda": 0.5}} -> {"loss.variance_lambda": 0.5}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _finite(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def final_metrics(record: dict) -> dict:
    """The numbers a run ends with: best.{val,test}.*, recalibrated.test.*, and counts."""
    out: dict = {}
    for section in ("best", "recalibrated"):
        for split in ("val", "test"):
            for key, value in (((record.get(section) or {}).get(split)) or {}).items():
                if _finite(value) is not None:
                    out[f"{section}.{split}.{key}"] = float(value)
    for key in ("monitor_value", "best_epoch", "epochs_run", "wall_time_s"):
        if _finite(record.get(key)) is not None:
            out[key] = float(record[key])
    return out


def run_name(record: dict) -> str:
    """The run's cell (`frames=3 λ=0.5 seed=1`); a run without overrides: its directory's name."""
    name = cell_name(record.get("overrides") or [])
    job = record.get("job") or {}
    if name == "defaults" and job.get("dir") and job.get("num") is None:
        return Path(job["dir"]).name
    return name


def sweep_of(record: dict) -> Optional[Path]:
    """The sweep directory of a sweep job (its job directory's parent), else None."""
    job = record.get("job") or {}
    return Path(job["dir"]).resolve().parent if job.get("num") is not None and job.get("dir") else None


def _dir_name(name: str) -> str:
    return name.replace("/", "∕").replace("\0", "") or "run"      # one path component


def run_tags(record: dict) -> dict:
    """Status, stop reason, the diagnosis per split, the sweep a job belongs to, choices."""
    job = record.get("job") or {}
    diagnosis = record.get("diagnosis") or {}
    tags = {"status": record.get("status"), "stop_reason": record.get("stop_reason"),
            "study": record.get("study"), "seed": record.get("seed"), "config_hash": record.get("config_hash")}
    for split in ("val", "test"):
        tags[f"diagnosis.{split}"] = (diagnosis.get(split) or {}).get("label") if isinstance(diagnosis, dict) else None
    if job.get("num") is not None and job.get("dir"):
        # one sweep's jobs share their parent directory: filter on it in the MLflow UI
        tags["sweep_dir"] = str(Path(job["dir"]).resolve().parent)
        tags["sweep"] = ((record.get("config") or {}).get("sweep") or {}).get("name")
        tags["job_num"] = job.get("num")
    if job.get("dir"):
        tags["run_dir"] = str(Path(job["dir"]).resolve())
    tags.update({f"choice.{k}": v for k, v in (record.get("choices") or {}).items()})
    if record.get("error"):
        tags["error"] = str(record["error"])[:5000]
    return {k: str(v) for k, v in tags.items() if v is not None}


# ---------------------------------------------------------------- TensorBoard

class TensorBoardLogger:
    """Event files: train/loss, val/loss, val/r2, val/variance_ratio, val/pred_std, ... per
    epoch (step = epoch); at the end the best metrics with the flattened config as hparams
    (TensorBoard's HPARAMS tab). A single run writes into its run directory; a sweep's job
    into SWEEP_DIR/tensorboard/<its cell>, so `tensorboard --logdir SWEEP_DIR/tensorboard`
    lists the runs as `frames=3 λ=0.5 seed=1`, not as job numbers."""

    name = "tensorboard"

    def __init__(self, run_dir: Optional[Path]):
        self.run_dir, self.writer = run_dir, None

    def start(self, record: dict) -> None:
        if self.run_dir is None:
            raise RuntimeError("it writes into the run directory: pass run_dir to collapse.train.run")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir(record)))

    def log_dir(self, record: dict) -> Path:
        sweep = sweep_of(record)
        return sweep / "tensorboard" / _dir_name(run_name(record)) if sweep is not None else self.run_dir

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and _finite(value) is not None:
                split, _, metric = key.partition("_")
                tag = f"{split}/{metric}" if split in ("train", "val") and metric else f"epoch/{key}"
                self.writer.add_scalar(tag, float(value), step)

    def finish(self, record: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/{k}": v for k, v in final_metrics(record).items()}
        params = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
                  for k, v in flatten(record.get("config") or {}).items()}
        if metrics:
            # into this writer's own file (SummaryWriter.add_hparams would open a subdirectory)
            writer = self.writer._get_file_writer()
            for summary in hparams(params, metrics):
                writer.add_summary(summary)
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, int(record.get("best_epoch") or 0))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---------------------------------------------------------------- MLflow

def resolve_tracking_uri(uri: str) -> str:
    """A relative SQLite path (sqlite:///outputs/mlflow.db) against the cwd, made absolute,
    its directory created: a sweep's worker processes then share one store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    if uri.startswith(prefix + "/"):
        Path(uri[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


@contextmanager
def _store_lock(uri: str):
    """Concurrent jobs creating one SQLite store (its schema, the experiment) race;
    serialise that part with a lock file next to the database."""
    if not uri.startswith("sqlite:////"):
        yield
        return
    import fcntl

    with open(uri[len("sqlite:///"):] + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MlflowLogger:
    """One MLflow run per job: params = the composed config flattened (loss.variance_lambda,
    ...), per-epoch metrics with their step, best/test metrics at the end, status and
    diagnosis as tags, metrics.json and model.pt as artifacts. A sweep's jobs share the
    tag `sweep_dir`. Runs that ended without a result are FAILED or KILLED."""

    name = "mlflow"
    END_STATUS = {"failed": "FAILED", "interrupted": "KILLED", "running": "KILLED"}

    def __init__(self, run_dir: Optional[Path], tracking_uri: str, experiment: str):
        self.run_dir, self.experiment = run_dir, experiment
        self.uri = resolve_tracking_uri(tracking_uri)
        self.client, self.run_id = None, None

    def start(self, record: dict) -> None:
        if self.uri.startswith(("http://", "https://")):
            # MLflow retries a refused connection for minutes (7 tries, backoff 2): ask once
            # first, and keep its retries short for a server that goes away mid-run
            import socket
            from urllib.parse import urlsplit

            url = urlsplit(self.uri)
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname, port), timeout=10).close()
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with _store_lock(self.uri):
            # the client creates a new store's tables: inside the lock
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                location = None
                if self.uri.startswith("sqlite:////"):
                    # artifacts beside the store, not in ./mlruns of whatever the cwd is
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
                experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            tags = run_tags(record)
            sweep = sweep_of(record)
            if sweep is not None:           # one parent run per sweep: the jobs nest under it
                tags["mlflow.parentRunId"] = self._parent(experiment_id, sweep, record)
            run = self.client.create_run(experiment_id, run_name=run_name(record), tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(record.get("config") or {}).items()]
        for i in range(0, len(params), 100):            # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _parent(self, experiment_id: str, sweep: Path, record: dict) -> str:
        """The sweep's parent run, created by its first job. Jobs run in parallel: on SQLite
        the store's lock serialises this; against a server two first jobs may both create
        one, and the later drops its own and joins the earliest."""
        from mlflow.tracking import MlflowClient  # noqa: F401 - the client is made in start

        query = f"tags.`collapse.sweep_parent` = '{sweep}'"
        found = self.client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        name = ((record.get("config") or {}).get("sweep") or {}).get("name") or "sweep"
        created = self.client.create_run(experiment_id, run_name=f"{name} {sweep.name}",
                                         tags={"collapse.sweep_parent": str(sweep), "sweep_dir": str(sweep)})
        found = self.client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
        if found and found[0].info.run_id != created.info.run_id:
            self.client.delete_run(created.info.run_id)
            return found[0].info.run_id
        return created.info.run_id

    def epoch(self, row: dict) -> None:
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in row.items()
                   if k != "epoch" and _finite(v) is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, record: dict) -> None:
        import time

        from mlflow.entities import Metric, RunTag

        now, step = int(time.time() * 1000), int(record.get("best_epoch") or 0)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in final_metrics(record).items()],
                              tags=[RunTag(k, v) for k, v in run_tags(record).items()])
        if self.run_dir is not None:
            for name in ("metrics.json", "model.pt"):
                # model.pt exists unless save_weights=false (or no epoch finished)
                if (Path(self.run_dir) / name).is_file():
                    self.client.log_artifact(self.run_id, str(Path(self.run_dir) / name))
        else:
            self.client.log_dict(self.run_id, record, "metrics.json")
        self.client.set_terminated(self.run_id, self.END_STATUS.get(record.get("status"), "FINISHED"))
        parent = self.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
        if parent:
            # the parent ends with its latest job (a resumed sweep reopens and ends it again)
            self.client.set_terminated(parent, "FINISHED")
        self.run_id = None

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, "FAILED")
            except Exception:  # noqa: BLE001 - already failing: nothing more to say
                pass


# ---------------------------------------------------------------- Weights & Biases

def wandb_mode() -> str:
    """WANDB_MODE when set; else online when logged in (WANDB_API_KEY or a netrc entry for
    the W&B host), offline otherwise: the run is kept under wandb/ and `wandb sync` uploads it."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbLogger:
    """One W&B run per job, named by its cell and grouped by its sweep directory: config
    = the composed config flattened, per-epoch metrics at step = epoch, the final metrics
    in the summary, status and diagnosis as tags. Offline unless logged in (wandb_mode);
    the run's files go under the run directory's wandb/ (a sweep's: the sweep's)."""

    name = "wandb"

    def __init__(self, run_dir: Optional[Path], project: str):
        self.run_dir, self.project, self.run = run_dir, project, None

    def start(self, record: dict) -> None:
        import wandb

        sweep = sweep_of(record)
        where = sweep if sweep is not None else (self.run_dir or Path("outputs"))
        Path(where).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=run_name(record), mode=wandb_mode(), dir=str(where),
                              group=str(sweep) if sweep is not None else None,
                              config={k: v for k, v in flatten(record.get("config") or {}).items()},
                              reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def epoch(self, row: dict) -> None:
        self.run.log({k: float(v) for k, v in row.items() if k != "epoch" and _finite(v) is not None},
                     step=int(row["epoch"]))

    def finish(self, record: dict) -> None:
        self.run.summary.update(final_metrics(record))
        tags = run_tags(record)
        self.run.tags = tuple(f"{k}={tags[k]}"[:64] for k in ("status", "diagnosis.val", "diagnosis.test")
                              if k in tags)
        self.run.finish(exit_code=0 if record.get("status") in ("completed", "diverged", "stopped_collapse") else 1)
        self.run = None

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already failing: nothing more to say
                pass


# ---------------------------------------------------------------- the set a run uses

class Loggers:
    """The loggers of one run. Every call is guarded: a logger that raises is closed,
    dropped, and named in one warning (logged and appended to `warnings`)."""

    def __init__(self, loggers: Sequence[Any], warnings: Optional[list] = None):
        self.loggers, self.sent = list(loggers), 0
        self.warnings = warnings if warnings is not None else []

    @classmethod
    def create(cls, names: Sequence[str], options: LoggerConfig, run_dir: Optional[Path],
               warnings: Optional[list] = None) -> "Loggers":
        """`warnings`: the list a failure's warning is appended to (the record's).
        Raises LoggerUnavailable naming the package and its install command."""
        names = list(dict.fromkeys(str(n) for n in names))
        for name in names:
            package = PACKAGES[name]
            if importlib.util.find_spec(package) is None:
                raise LoggerUnavailable(f"logger={name} needs the {package} package, which is not installed: "
                                        + INSTALL.format(package=package))
        run_dir = Path(run_dir) if run_dir is not None else None
        made = []
        for name in names:
            if name == "tensorboard":
                made.append(TensorBoardLogger(run_dir))
            elif name == "wandb":
                made.append(WandbLogger(run_dir, options.experiment))
            else:
                made.append(MlflowLogger(run_dir, options.tracking_uri, options.experiment))
        return cls(made, warnings)

    def _call(self, logger, method: str, *args) -> None:
        try:
            getattr(logger, method)(*args)
        except Exception as e:  # noqa: BLE001 - a logger never costs the run
            message = (f"logger {logger.name} failed in {method} ({type(e).__name__}: "
                       f"{(str(e).splitlines() or [''])[0][:300]}); it is off for the rest of this run, "
                       "metrics.json is unaffected")
            log.warning(f"collapse: warning: {message}")
            self.warnings.append(message)
            self.loggers.remove(logger)
            try:
                logger.close()
            except Exception:  # noqa: BLE001
                pass

    def start(self, record: dict) -> None:
        for logger in list(self.loggers):
            self._call(logger, "start", record)

    def epoch(self, history: Sequence[dict]) -> None:
        """Send the epochs of `history` not sent yet (the trainer hands over all so far)."""
        rows, self.sent = list(history[self.sent:]), len(history)
        for logger in list(self.loggers):
            for row in rows:
                if logger not in self.loggers:
                    break
                self._call(logger, "epoch", row)

    def finish(self, record: dict) -> None:
        self.epoch(record.get("history") or [])     # the last epochs (the trainer skips the hook on a stop)
        for logger in list(self.loggers):
            self._call(logger, "finish", record)
        self.loggers = []
