"""Experiment tracking: TensorBoard event files and MLflow runs, beside metrics.json.

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

mlflow, tensorboard and torch.utils.tensorboard are imported here, and only when a
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

log = logging.getLogger("collapse")

INSTALL = 'pip install "collapse[tracking]"   (or: pip install {package})'
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
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
    """Event files in the run directory: train/loss, val/loss, val/r2, val/variance_ratio,
    val/pred_std, ... per epoch (step = epoch); at the end the best metrics with the
    flattened config as hparams (TensorBoard's HPARAMS tab)."""

    name = "tensorboard"

    def __init__(self, run_dir: Optional[Path]):
        self.run_dir, self.writer = run_dir, None

    def start(self, record: dict) -> None:
        if self.run_dir is None:
            raise RuntimeError("it writes into the run directory: pass run_dir to collapse.train.run")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir))

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
            job = record.get("job") or {}
            name = Path(job["dir"]).name if job.get("dir") else None
            if job.get("num") is not None and job.get("dir"):
                name = f"{Path(job['dir']).parent.name}/{job['num']}"
            run = self.client.create_run(experiment_id, run_name=name, tags=run_tags(record))
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(record.get("config") or {}).items()]
        for i in range(0, len(params), 100):            # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

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
        self.run_id = None

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, "FAILED")
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
