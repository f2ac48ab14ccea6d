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

import copy
import dataclasses
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse import data as data_lib
from collapse import records
from collapse.config import Config
from collapse.errors import BAD_INPUT, ConfigError, Interrupted, RunExists
from collapse.metrics import diagnose, fit_affine, linear_reference, regression_report, to_original_units
from collapse.records import DirLock, DirLocked, RunRecord
from collapse.run.interrupts import Interrupts

log = logging.getLogger("collapse")


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
    set_deterministic(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def set_deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=True), without its import of
    torch._inductor: it imports the inductor and dynamo stack only to copy the flag into
    inductor's config, 1.2-1.3 s once per process on these machines (torch 2.13), which
    every sweep worker paid before its first job. Nothing here compiles; where inductor is
    loaded already (a custom model that compiles) torch's own call sets both flags."""
    import torch

    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        set_flag(mode, warn_only=True)


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
        damaged = records.weights_problem(run_dir, old)
        if damaged is None:
            return RunRecord.from_dict(old), None
        # the metrics stand, but a result is its weights too: run it again (seeded: the same result)
        log.warning(f"collapse: warning: {damaged}; running this config again")
        return None, None
    if old["status"] in ("interrupted", "running"):      # running: its process is gone (we hold the lock)
        checkpoint = run_dir / records.CHECKPOINT_FILE
        if checkpoint.is_file():
            import torch

            try:
                return None, torch.load(checkpoint, weights_only=True)
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint means: start over
                log.warning(f"{checkpoint}: unreadable ({type(e).__name__}); starting the run over")
    return None, None


class _Run:
    """One run's state between `execute`'s steps: what it writes to, what it trains on,
    and what an interrupt needs to record (the trainer's best weights so far)."""

    def __init__(self, cfg: Config, record: RunRecord, run_dir: Optional[Path]):
        self.cfg, self.record = cfg, record
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint: Optional[dict] = None
        self.data: Optional[data_lib.PreparedData] = None
        self.device = "cpu"
        self.trackers = None
        self.trainer = None
        self.interrupts: Optional[Interrupts] = None
        self.trial = None                   # a search's trial this run reports to (collapse.run.pruning)

    def write(self) -> None:
        if self.run_dir is not None:
            self.record.write(self.run_dir)

    def file(self, name: str) -> Optional[Path]:
        return self.run_dir / name if self.run_dir is not None else None


def execute(cfg: Config, record: RunRecord, run_dir: Optional[Path] = None, threads: int = 0,
            record_bad_input: bool = False) -> RunRecord:
    """Train and evaluate one configuration; write its record (and weights) to `run_dir`
    when given. `record` arrives with the caller's bookkeeping (config, overrides,
    choices, job, config_hash). `threads` > 0 sets torch's intra-op threads for the run.

    Raises BAD_INPUT errors before training (after recording them when
    `record_bad_input`), and re-raises whatever stopped training once it is recorded.
    The run directory's lock is released on every way out."""
    run = _Run(cfg, record, run_dir)
    lock = None
    try:
        if run.run_dir is not None:
            lock = DirLock(run.run_dir)
            previous = claim(run, lock)
            if previous is not None:
                return previous
        try:
            with Interrupts():          # SIGTERM while the data loads is a recorded interrupt too
                _prepare(run)
        except BAD_INPUT as e:
            if lock is not None and record_bad_input and not isinstance(e, RunExists):
                record.status, record.stop_reason, record.error = "failed", "bad_input", f"{type(e).__name__}: {e}"
                record.stage = "prepare"
                run.write()
            raise
        except (Exception, KeyboardInterrupt, Interrupted, SystemExit) as e:
            # not bad input (a MemoryError, an interrupt while the data loads): a record says so
            _record_stop(run, e, "prepare", time.time())
            raise
        return _run_tracked(run, threads)
    finally:
        if lock is not None:
            lock.release()


def claim(run: _Run, lock: DirLock) -> Optional[RunRecord]:
    """Take `run`'s directory: its lock (RunExists when another process holds it), a
    killed writer's temp files removed, what the directory already holds read. Returns a
    result to return instead of running (resume=true), else None with `run.checkpoint`
    set to what an unfinished run continues from. The caller releases `lock`."""
    try:
        lock.acquire("run directory")
    except DirLocked as e:
        raise RunExists(str(e)) from None
    # we hold the lock: a temp file here is a killed writer's, never a live one's
    records.remove_temp_files(run.run_dir)
    previous, run.checkpoint = _prior(run.run_dir, run.record.config_hash, run.cfg.resume)
    if previous is not None:
        log.info(f"resume: {run.file(records.METRICS_FILE)} already holds a {previous.status} "
                 "run of this config; skipped")
    return previous


def _prepare(run: _Run) -> None:
    """Everything that can refuse the run before training: data, device, a custom model's
    first batch, the trackers' packages. Raises BAD_INPUT errors."""
    cfg, record = run.cfg, run.record
    if run.data is None:            # runs trained together share one load per data config and seed
        run.data = data_lib.load(cfg.data, cfg.seed, unlabeled=cfg.ssl.enabled)
    run.device = resolve_device(cfg.trainer.device)        # cuda without CUDA is bad input
    if cfg.model.name == "custom":                          # one batch, (B, T, C) -> (B,)
        from collapse.models import check_model

        for warning in check_model(cfg.model, run.data.X_train):
            record.warnings.append(warning)
            log.warning(f"collapse: warning: {warning}")
    if os.environ.get(records.SEARCH_TRIAL_ENV):           # a trial of a search (collapse.sweep.study)
        from collapse.run.pruning import TrialReporter

        run.trial = TrialReporter.from_env(str(cfg.trainer.monitor))
    if cfg.logger.names:                                   # imported only when chosen
        from collapse.run.trackers import Loggers, LoggerUnavailable

        made = []
        for name in dict.fromkeys(cfg.logger.names):
            try:
                made += Loggers.create([name], cfg.logger, run.run_dir, record.warnings).loggers
            except LoggerUnavailable:
                raise                                      # a missing package is bad input
            except Exception as e:  # noqa: BLE001 - a tracker that cannot start never costs the run
                warning = (f"logger {name} could not start ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:300]}); it is off for this run, "
                           "metrics.json is unaffected")
                log.warning(f"collapse: warning: {warning}")
                record.warnings.append(warning)
        run.trackers = Loggers(made, record.warnings) if made else None


def _record_stop(run: _Run, e: BaseException, stage: str, started: float) -> None:
    """Record what stopped the run (an interrupt, or a failure) and at which stage, in
    metrics.json when the run has a directory. The caller re-raises."""
    record = run.record
    interrupted = isinstance(e, (KeyboardInterrupt, Interrupted, SystemExit))
    record.status = "interrupted" if interrupted else "failed"
    record.stop_reason = "interrupted" if interrupted else "exception"
    record.error = type(e).__name__ + (f": {e}" if str(e) else "")
    record.traceback = None if interrupted else traceback.format_exc()
    record.stage, record.wall_time_s = stage, time.time() - started
    if not record.provenance:
        record.provenance = records.provenance()
    run.write()


def _run_tracked(run: _Run, threads: int) -> RunRecord:
    """_run_recorded, with the trackers told before and after (they never raise)."""
    if run.trackers is None:
        return _run_recorded(run, threads)
    run.trackers.start(run.record.to_dict())
    try:
        return _run_recorded(run, threads)
    finally:
        failures = len(run.record.warnings)
        run.trackers.finish(run.record.to_dict())
        if len(run.record.warnings) > failures:
            run.write()                                    # the failure's warning into metrics.json


def _run_recorded(run: _Run, threads: int) -> RunRecord:
    """Train with torch's threads set and the signals handled; whatever stops training is
    recorded (interrupted, failed) before it is re-raised."""
    import torch  # only now: bad input fails above without paying torch's import (~1.5 s)

    record = run.record
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    started = time.time()
    start_record(run, started)
    try:
        with Interrupts() as run.interrupts:
            try:
                _train(run)
            except (KeyboardInterrupt, Interrupted, SystemExit) as e:
                # SystemExit: submitit requeues a pre-empted job by exiting from its signal
                # handler. Recorded with the handlers still installed: a second signal (Ctrl-C
                # reaches the whole process group, and the sweep then forwards SIGTERM) is dropped
                with run.interrupts.recording():
                    record_interrupted(run, e, started, getattr(run.trainer, "best_state_", None))
                log.warning(f"run interrupted ({record.error}) after {record.epochs_run} epochs: recorded; "
                            "resume=true continues it from its last checkpoint")
                raise
    except Exception as e:  # noqa: BLE001 - a crash mid-run is a recorded result
        record_failed(run, e, started)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    finish_record(run, started)
    return record


# The steps of recording a run, shared with collapse.run.ensemble (runs trained together).

def start_record(run: _Run, started: float) -> None:
    import torch

    record = run.record
    record.status, record.error, record.traceback, record.stage = "running", None, None, None
    record.device, record.threads, record.started_at = run.device, torch.get_num_threads(), started
    record.provenance = records.provenance()


def record_interrupted(run: _Run, e: BaseException, started: float, best: Optional[dict]) -> None:
    """The run stopped by a signal: recorded with its history and best weights so far."""
    if run.run_dir is not None and run.cfg.save_weights and best is not None:
        run.record.weights_sha256 = records.save_weights(run.file(records.WEIGHTS_FILE), best)
    _record_stop(run, e, "train", started)


def record_failed(run: _Run, e: Exception, started: float) -> None:
    """A crash while training: recorded as failed, with its traceback."""
    _record_stop(run, e, "train", started)


def finish_record(run: _Run, started: float) -> None:
    run.record.wall_time_s = time.time() - started
    run.write()
    if run.run_dir is not None:
        run.file(records.CHECKPOINT_FILE).unlink(missing_ok=True)   # finished: nothing to continue


def _train(run: _Run) -> None:
    from collapse.trainer import Trainer

    s = setup_training(run)
    trainer = run.trainer = Trainer(s.trainer_cfg, seed=run.cfg.seed)
    result = trainer.fit(s.model, s.loss_fn, s.X_train, s.y_train, s.w_train, s.X_val, s.y_val,
                         resume=run.checkpoint, on_epoch_end=epoch_hook(run))
    record_result(run, s, result, trainer.best_state_)


@dataclasses.dataclass
class Setup:
    """What a run trains with: its model (seeded, SSL done), loss, tensors and trainer settings."""
    model: Any
    loss_fn: Any
    X_train: Any
    y_train: Any
    w_train: Any            # None when every weight is 1
    X_val: Any
    y_val: Any
    X_test: Any
    trainer_cfg: Any        # cfg.trainer with the budget's batch size


def setup_training(run: _Run) -> Setup:
    import torch

    from collapse.losses import RegressionLoss
    from collapse.models import build_model
    from collapse.ssl import pretrain_encoder
    from collapse.trainer import effective_batch_size

    cfg, record, data, device, checkpoint = run.cfg, run.record, run.data, run.device, run.checkpoint
    t = cfg.trainer
    seed_everything(cfg.seed, t.deterministic)
    run.write()

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
    return Setup(model, loss_fn, X_train, y_train, w_train if weighted else None, X_val, y_val, X_test,
                 dataclasses.replace(t, batch_size=batch_size))


def _original_units(run: _Run, history: list) -> list:
    # the trainer's val metrics are on z; pred_std, rmse, ... back in the file's units
    return [to_original_units(h, run.data.target_std, run.data.target_mean, "val_") for h in history]


def epoch_hook(run: _Run, write: bool = True):
    """Trainer.fit's on_epoch_end for this run: the record follows the history; every
    checkpoint_every_s (with `write`) checkpoint.pt, then metrics.json, are rewritten."""
    last_write = time.monotonic()
    record = run.record

    def on_epoch_end(progress, make_checkpoint) -> bool:
        nonlocal last_write
        record.history, record.epochs_run = _original_units(run, progress.history), progress.epoch
        record.best_epoch = progress.best_epoch
        if run.trackers is not None:
            run.trackers.epoch(record.history)             # never raises
        pruned = run.trial is not None and run.trial.epoch(record.history[-1])
        if write and run.run_dir is not None and time.monotonic() - last_write >= run.cfg.checkpoint_every_s:
            write_checkpoint(run, make_checkpoint())
            last_write = time.monotonic()
        return pruned

    return on_epoch_end


def write_checkpoint(run: _Run, checkpoint: dict) -> None:
    # checkpoint first: a record never points past the checkpoint it continues from
    with run.interrupts.deferred():
        records.save_torch(run.file(records.CHECKPOINT_FILE), {**checkpoint, "ssl_history": run.record.ssl_history})
        run.write()


def reference_for(data: data_lib.PreparedData) -> tuple[dict, dict]:
    """The linear reference on `data`: (record.reference, its val and test predictions)."""
    started = time.perf_counter()
    reference = linear_reference(data.X_train, data.z_train,
                                 {"val": (data.X_val, data.y_val), "test": (data.X_test, data.y_test)}, data.unscale)
    predictions = reference.pop("predictions", {})
    return {**reference, "seconds": time.perf_counter() - started}, predictions


def record_result(run: _Run, s: Setup, result, best_state: Optional[dict],
                  references: Optional[dict] = None) -> None:
    """A finished fit into the record: status, best and final metrics, diagnosis,
    recalibration; the best weights to model.pt. The model holds the best weights.
    `references`: linear references by id(run.data), for runs that share their data (an
    ensemble's members of one seed): the ridge fit depends on the data alone."""
    from collapse.trainer import budget_exhausted, predict

    cfg, record, data, t = run.cfg, run.record, run.data, run.cfg.trainer
    record.status, record.stop_reason = result.status, result.stop_reason
    record.best_epoch, record.epochs_run = result.best_epoch, len(result.history)
    record.history = _original_units(run, result.history)
    # the best epoch was the last one allowed: still improving, under-trained
    # or its monitored val score still rising over the last epochs (a trend, not one epoch)
    scores = [h.get("val_r2") if t.monitor == "r2" else -h["val_loss"] for h in result.history]
    record.budget_exhausted = budget_exhausted(result.best_epoch, len(result.history), result.stop_reason,
                                               [s if s is not None else math.nan for s in scores], t.trend_window,
                                               t.min_delta)
    last = record.history[-1] if record.history else {}
    record.final = {"epoch": last.get("epoch"), "val": {k[4:]: v for k, v in last.items() if k.startswith("val_")}}
    if result.best_epoch is None:
        record.best, record.monitor_value, record.diagnosis = None, math.nan, None
        return
    # the model now holds the best epoch's weights; predictions in original units
    pred_val = data.unscale(predict(s.model, s.X_val).double().cpu().numpy())
    pred_test = data.unscale(predict(s.model, s.X_test).double().cpu().numpy())
    record.best = {"epoch": result.best_epoch, "val": regression_report(data.y_val, pred_val),
                   "test": regression_report(data.y_test, pred_test)}
    # the trainer's score is "higher is better": r2 itself, or -val_loss
    record.monitor_value = result.best_score if t.monitor == "r2" else -result.best_score
    # val chose the best of the epochs run (its r is optimistic: its intervals are
    # Bonferroni-widened for that); test is untouched
    candidates = len(result.history) if cfg.diagnosis.correct_selection else 1
    # the linear reference: ridge on the same standardised frames, fitted on the labelled
    # train split (milliseconds next to training; the diagnosis' `underfit` needs it)
    if references is None:
        reference, ref_pred = reference_for(data)
    else:
        if id(data) not in references:
            references[id(data)] = reference_for(data)
        reference, ref_pred = references[id(data)]
    record.reference = copy.deepcopy(reference)         # its own copy, not one shared among members
    record.diagnosis = {"val": diagnose(data.y_val, pred_val, cfg.diagnosis, candidates, split="val",
                                        y_reference=ref_pred.get("val")),
                        "test": diagnose(data.y_test, pred_test, cfg.diagnosis, 1, split="test",
                                         y_reference=ref_pred.get("test"))}
    if cfg.recalibrate:
        # affine refit on val only, applied to test: what a squeeze costs, undone post hoc
        a, b = fit_affine(data.y_val, pred_val)
        test = regression_report(data.y_test, a + b * pred_test)
        record.recalibrated = {"intercept": a, "slope": b, "val": regression_report(data.y_val, a + b * pred_val),
                               "test": test, "raised_test_r2": bool(test["r2"] > record.best["test"]["r2"])}
    if run.run_dir is not None and cfg.save_weights:
        record.weights_sha256 = records.save_weights(run.file(records.WEIGHTS_FILE), best_state)
