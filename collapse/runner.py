"""The one execution path: a typed Config and a RunRecord in, a finished RunRecord out.

    execute(cfg, record, run_dir, threads, record_bad_input) -> RunRecord

Both entry points (collapse.train's CLI task function and its notebook `run()`) call
`execute`, so a run directory behaves the same whoever drives it:
- it is locked while a run uses it: a second process is refused (RunExists);
- a result of another config is never overwritten, one of the same config is returned
  with `resume=true` (else refused); a failed run is rerun;
- an unfinished run of the same config (`interrupted`, or `running` whose process is
  gone) continues from `checkpoint.pt`, its last saved epoch, and ends with the same
  metrics as an uninterrupted run: a SLURM job pre-empted and requeued by submitit
  continues where it stopped;
- metrics.json and checkpoint.pt are rewritten during training (every
  `checkpoint_every_s`), so a SIGKILL loses at most that much;
- SIGINT and SIGTERM are results: the record says `interrupted` and keeps the history
  and the best weights so far; the exception is then re-raised for the caller. They
  wait while a checkpoint is being written (`Interrupts`);
- torch's thread count and the SIGTERM handler are restored afterwards.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from collapse import data as data_lib
from collapse import records
from collapse.budget import budget_exhausted, effective_batch_size
from collapse.config import Config, ConfigError
from collapse.metrics import diagnose, fit_affine, regression_report, to_original_units
from collapse.records import RunRecord
from collapse.sweep_dir import DirLock, DirLocked

log = logging.getLogger("collapse")


class RunExists(RuntimeError):
    """Running here would overwrite a result, or another process is using the run dir."""


class Interrupted(BaseException):
    """SIGTERM arrived (what SLURM sends on pre-emption and at the time limit)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


BAD_INPUT = (ConfigError, data_lib.DataError, RunExists)


def load_data(cfg: Config) -> data_lib.PreparedData:
    d = cfg.data
    if d.name == "synthetic":
        X, y = data_lib.make_synthetic(d.n_samples, d.n_frames, d.n_features, d.signal,
                                       d.noise_std, d.period_jitter, seed=cfg.seed)
        split, source = None, "synthetic data"
    elif d.name == "custom":                               # --- custom data (collapse.custom)
        from collapse import custom

        X, y, split = custom.load_data(d, cfg.seed)
        source = f"data._target_={d._target_}"
    else:
        X, y, split = data_lib.load_npz(d.path)
        source = d.path
    if split is None:
        split = data_lib.split_indices(len(y), d.val_fraction, d.test_fraction, seed=cfg.seed)
    return data_lib.prepare(X, y, split, d.temporal_frames, source=source,
                            overweight_factor=d.overweight_factor, rare_quantile=d.rare_quantile,
                            weighting=d.weighting, bins=d.weighting_bins, sigma=d.weighting_sigma,
                            dense_alpha=d.dense_alpha, unlabeled=cfg.ssl.enabled,
                            standardize_target=d.standardize_target, label_fraction=d.label_fraction,
                            seed=cfg.seed)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' is invalid: CUDA is not available on this machine")
    return str(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator a job touches and set determinism either way: a sweep's
    worker processes run one job after another, so nothing may carry over from the previous job."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS needs it before use
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


class Interrupts:
    """While a run trains, in the main thread: SIGINT raises KeyboardInterrupt and SIGTERM
    raises Interrupted, except inside `deferred()` (a checkpoint being written: torch.save
    turns an exception raised inside it into a RuntimeError, which would read as a
    failure), where they wait for the block to end. Under submitit, which owns the job's
    signals (it bypasses SIGTERM; on its pre-emption signal it requeues the job and exits
    from the handler), SIGTERM is left alone and that handler is deferred the same way."""

    def __init__(self) -> None:
        self._depth, self._pending, self._recording = 0, [], False
        self._handlers: dict = {}
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self                        # Python allows handlers only there
        self._handlers[signal.SIGINT] = self._raise
        if os.environ.get("SUBMITIT_EXECUTOR"):
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
            if preempt is not None and callable(signal.getsignal(preempt)):
                self._handlers[preempt] = signal.getsignal(preempt)
        else:
            self._handlers[signal.SIGTERM] = self._raise
        for signum in self._handlers:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @staticmethod
    def _raise(signum: int, frame) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    def _handle(self, signum: int, frame) -> None:
        if self._recording:
            return                             # the interrupt being recorded already stops the run
        if self._depth:
            self._pending.append((signum, frame))
        else:
            self._handlers[signum](signum, frame)

    @contextmanager
    def recording(self):
        """While an interrupt is recorded: further signals are dropped."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    @contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                signum, frame = self._pending.pop(0)
                self._pending.clear()
                self._handlers[signum](signum, frame)


def _prior(run_dir: Path, config_hash: Optional[str], resume: bool) -> tuple[Optional[RunRecord], Optional[dict]]:
    """What the run dir already holds: (a result to return instead of running, a
    checkpoint to continue from). Raises RunExists where running would overwrite a result."""
    path = run_dir / records.METRICS_FILE
    try:
        old = records.read_record(path)
    except (FileNotFoundError, records.RecordError):
        return None, None              # nothing there, or a torn/corrupt file: not a result
    if old["status"] == "failed" and old.get("stop_reason") == "bad_input":
        return None, None              # a refused config left nothing worth keeping
    if old.get("config_hash") != config_hash:
        raise RunExists(f"{path} holds a run of another config (hash {old.get('config_hash')}, this one "
                        f"{config_hash}); refusing to overwrite it - use another output dir")
    if old["status"] in records.RESULT_STATUSES:
        if not resume:
            raise RunExists(f"{path} already holds a result of this config; pass resume=true to skip it "
                            "or use another output dir")
        return RunRecord.from_dict(old), None
    if old["status"] in ("interrupted", "running"):      # running: its process is gone (we hold the lock)
        checkpoint = run_dir / records.CHECKPOINT_FILE
        if checkpoint.is_file():
            import torch

            try:
                return None, torch.load(checkpoint, weights_only=True)
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint means: start over
                log.warning(f"{checkpoint}: unreadable ({type(e).__name__}); starting the run over")
    return None, None


def execute(cfg: Config, record: RunRecord, run_dir: Optional[Path] = None, threads: int = 0,
            record_bad_input: bool = False) -> RunRecord:
    """Train and evaluate one configuration; write its record (and weights) to `run_dir`
    when given. `record` arrives with the caller's bookkeeping (config, overrides,
    choices, job, config_hash). `threads` > 0 sets torch's intra-op threads for the run.

    Raises BAD_INPUT errors before training (after recording them when
    `record_bad_input`), and re-raises whatever stopped training once it is recorded."""
    write: Callable[[], None] = (lambda: record.write(run_dir)) if run_dir else (lambda: None)
    lock = None
    try:
        if run_dir is not None:
            try:
                lock = DirLock(run_dir).acquire("run directory")
            except DirLocked as e:
                raise RunExists(str(e)) from None
            previous, checkpoint = _prior(Path(run_dir), record.config_hash, cfg.resume)
            if previous is not None:
                log.info(f"resume: {run_dir / records.METRICS_FILE} already holds a {previous.status} "
                         "run of this config; skipped")
                return previous
        else:
            checkpoint = None
        data = load_data(cfg)
        device = resolve_device(cfg.trainer.device)       # cuda without CUDA is bad input
        if cfg.model.name == "custom":                     # --- custom model: one batch, (B, T, C) -> (B,)
            from collapse.custom import check_model

            for warning in check_model(cfg.model, data.X_train):
                record.warnings.append(warning)
                log.warning(f"collapse: warning: {warning}")
        # --- tracking (collapse.loggers, imported only when chosen); a missing package is bad input
        loggers = None
        if cfg.logger.names:
            from collapse.loggers import Loggers
            loggers = Loggers.create(cfg.logger.names, dataclasses.asdict(cfg.logger), run_dir, record.warnings)
        # --- end tracking
    except BaseException as e:
        if lock is not None:
            if record_bad_input and isinstance(e, BAD_INPUT) and not isinstance(e, RunExists):
                record.status, record.stop_reason, record.error = "failed", "bad_input", f"{type(e).__name__}: {e}"
                write()
            lock.release()         # nothing started: the directory is free again
        raise
    try:
        if loggers is not None:                            # --- tracking: never raises
            loggers.start(record.to_dict())
        return _run_locked(cfg, data, device, record, run_dir, checkpoint, threads, write, loggers)
    finally:
        if loggers is not None:                            # --- tracking: after the last write
            failures = len(record.warnings)
            loggers.finish(record.to_dict())
            if len(record.warnings) > failures:
                write()                                    # the failure's warning into metrics.json
        if lock is not None:
            lock.release()


def _run_locked(cfg, data, device, record, run_dir, checkpoint, threads, write, loggers=None) -> RunRecord:
    import torch  # only now: bad input fails above without paying torch's import (~1.5 s)

    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    live: dict = {"loggers": loggers}  # the trainer (best weights at an interrupt), the interrupts, tracking
    started = time.time()
    record.status, record.error, record.traceback = "running", None, None
    record.device, record.threads, record.started_at = device, torch.get_num_threads(), started
    record.provenance = records.provenance()
    try:
        with Interrupts() as live["interrupts"]:
            try:
                _train(cfg, data, device, record, run_dir, checkpoint, write, live)
            except (KeyboardInterrupt, Interrupted, SystemExit) as e:
                # SystemExit: submitit requeues a pre-empted job by exiting from its signal
                # handler. Recorded with the handlers still installed: a second signal (Ctrl-C
                # reaches the whole process group, and the sweep then forwards SIGTERM) is dropped
                with live["interrupts"].recording():
                    record.status, record.stop_reason = "interrupted", "interrupted"
                    record.error = type(e).__name__ + (f": {e}" if str(e) else "")
                    trainer = live.get("trainer")
                    if run_dir is not None and cfg.save_weights and getattr(trainer, "best_state_", None) is not None:
                        records.save_weights(Path(run_dir) / records.WEIGHTS_FILE, trainer.best_state_)
                    record.wall_time_s = time.time() - started
                    write()
                log.warning(f"run interrupted ({record.error}) after {record.epochs_run} epochs: recorded; "
                            "resume=true continues it from its last checkpoint")
                raise
    except Exception as e:  # noqa: BLE001 - a crash mid-run is a recorded result
        record.status, record.stop_reason = "failed", "exception"
        record.error, record.traceback = f"{type(e).__name__}: {e}", traceback.format_exc()
        record.wall_time_s = time.time() - started
        write()
        raise
    finally:
        torch.set_num_threads(previous_threads)
    record.wall_time_s = time.time() - started
    write()
    if run_dir is not None:
        (Path(run_dir) / records.CHECKPOINT_FILE).unlink(missing_ok=True)   # finished: nothing to continue
    return record


def _train(cfg: Config, data: data_lib.PreparedData, device: str, record: RunRecord,
           run_dir: Optional[Path], checkpoint: Optional[dict], write: Callable[[], None], live: dict) -> None:
    import torch

    from collapse.custom import build_model
    from collapse.losses import RegressionLoss
    from collapse.ssl import pretrain_encoder
    from collapse.trainer import Trainer, predict

    t = cfg.trainer
    seed_everything(cfg.seed, t.deterministic)
    write()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)    # shares memory on CPU: data is held once

    # Loss, model and trainer see standardised targets z = (y - mean) / std (the labelled
    # train split's scaler; identity with data.standardize_target=false), so the loss,
    # bmc_sigma and huber_delta are in train-std units. The model keeps the scaler as
    # buffers; every metric is in the file's units.
    X_train, y_train, w_train = tensor(data.X_train), tensor(data.z_train), tensor(data.w_train)
    X_val, y_val, X_test = tensor(data.X_val), tensor(data.z_val), tensor(data.X_test)
    weighted = bool(np.any(data.w_train != 1.0))
    record.target_scaler = data.scaler
    model = build_model(cfg.model, data.n_features, output_bias=float(data.z_train.mean()),
                        target_mean=data.target_mean, target_std=data.target_std).to(device)
    if checkpoint is not None:
        # the checkpoint holds the weights after SSL and every finished epoch
        record.ssl_history, record.resumed_from_epoch = checkpoint.get("ssl_history"), checkpoint["progress"]["epoch"]
        log.info(f"continuing from {records.CHECKPOINT_FILE}: epoch {record.resumed_from_epoch} finished")
    elif cfg.ssl.enabled:
        record.ssl_history = pretrain_encoder(model.encoder, tensor(data.X_unlabeled), cfg.ssl, cfg.seed, log.info)
    loss_fn = RegressionLoss(cfg.loss, train_target_var=float(data.z_train.var()))
    # the budget: a batch capped so that an epoch has >= trainer.min_batches_per_epoch steps
    # (130 train samples at batch 256 were one step an epoch, 60 steps a run)
    batch_size = effective_batch_size(len(data.z_train), t.batch_size, t.min_batches_per_epoch)
    if batch_size != t.batch_size:
        log.info(f"trainer.batch_size {t.batch_size} -> {batch_size}: {len(data.z_train)} labelled train "
                 f"samples, >= {t.min_batches_per_epoch} steps an epoch (trainer.min_batches_per_epoch)")
    record.batch_size = batch_size
    trainer = live["trainer"] = Trainer(dataclasses.replace(t, batch_size=batch_size), seed=cfg.seed)
    last_write = time.monotonic()

    def original_units(history: list) -> list:
        # the trainer's val metrics are on z; pred_std, rmse, ... back in the file's units
        return [to_original_units(h, data.target_std, data.target_mean, "val_") for h in history]

    def on_epoch_end(progress, make_checkpoint) -> None:
        nonlocal last_write
        record.history, record.epochs_run = original_units(progress.history), progress.epoch
        record.best_epoch = progress.best_epoch
        if live.get("loggers") is not None:
            live["loggers"].epoch(record.history)          # --- tracking: never raises
        if run_dir is not None and time.monotonic() - last_write >= cfg.checkpoint_every_s:
            # checkpoint first: a record never points past the checkpoint it continues from
            with live["interrupts"].deferred():
                records.save_torch(Path(run_dir) / records.CHECKPOINT_FILE,
                                   {**make_checkpoint(), "ssl_history": record.ssl_history})
                write()
            last_write = time.monotonic()

    result = trainer.fit(model, loss_fn, X_train, y_train, w_train if weighted else None, X_val, y_val,
                         resume=checkpoint, on_epoch_end=on_epoch_end)

    record.status, record.stop_reason = result.status, result.stop_reason
    record.best_epoch, record.epochs_run = result.best_epoch, len(result.history)
    record.history = original_units(result.history)
    # the best epoch was the last one allowed: still improving, under-trained
    record.budget_exhausted = budget_exhausted(result.best_epoch, len(result.history), result.stop_reason)
    last = record.history[-1] if record.history else {}
    record.final = {"epoch": last.get("epoch"), "val": {k[4:]: v for k, v in last.items() if k.startswith("val_")}}
    if result.best_epoch is None:
        record.best, record.monitor_value, record.diagnosis = None, math.nan, None
        return
    # the model now holds the best epoch's weights; predictions in original units
    pred_val = data.unscale(predict(model, X_val).double().cpu().numpy())
    pred_test = data.unscale(predict(model, X_test).double().cpu().numpy())
    record.best = {"epoch": result.best_epoch, "val": regression_report(data.y_val, pred_val),
                   "test": regression_report(data.y_test, pred_test)}
    # the trainer's score is "higher is better": r2 itself, or -val_loss
    record.monitor_value = result.best_score if t.monitor == "r2" else -result.best_score
    # val chose the best of the epochs run (its r is optimistic: its intervals are
    # Bonferroni-widened for that); test is untouched
    candidates = len(result.history) if cfg.diagnosis.correct_selection else 1
    record.diagnosis = {"val": diagnose(data.y_val, pred_val, cfg.diagnosis, candidates, split="val"),
                        "test": diagnose(data.y_test, pred_test, cfg.diagnosis, 1, split="test")}
    if cfg.recalibrate:
        # affine refit on val only, applied to test: what a squeeze costs, undone post hoc
        a, b = fit_affine(data.y_val, pred_val)
        test = regression_report(data.y_test, a + b * pred_test)
        record.recalibrated = {"intercept": a, "slope": b, "val": regression_report(data.y_val, a + b * pred_val),
                               "test": test, "raised_test_r2": bool(test["r2"] > record.best["test"]["r2"])}
    if run_dir is not None and cfg.save_weights:
        records.save_weights(Path(run_dir) / records.WEIGHTS_FILE, trainer.best_state_)
