"""One experiment from a typed Config to a metrics record, without Hydra.

    load_data(cfg)                        -> PreparedData (raises DataError: nothing written yet)
    run_experiment(cfg, data, run_dir)    -> record dict (metrics.json + model.pt in run_dir)

The entry points (collapse.train: CLI and notebook API) compose and validate the
config, then call these two. Failures *during* training are the caller's to record.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from collapse import data as data_lib
from collapse import records
from collapse.budget import budget_exhausted
from collapse.config import Config, ConfigError
from collapse.metrics import diagnose, fit_affine, regression_report, to_original_units

log = logging.getLogger("collapse")


def load_data(cfg: Config) -> data_lib.PreparedData:
    d = cfg.data
    if d.name == "synthetic":
        X, y = data_lib.make_synthetic(d.n_samples, d.n_frames, d.n_features, d.signal,
                                       d.noise_std, d.period_jitter, seed=cfg.seed)
        split, source = None, "synthetic data"
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
    return name


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator a job touches: joblib's loky reuses worker processes,
    so nothing may carry over from the previous job in the same process."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS needs it before use
        torch.use_deterministic_algorithms(True, warn_only=True)


def run_experiment(cfg: Config, data: data_lib.PreparedData, run_dir: Optional[Path] = None,
                   record: Optional[dict] = None,
                   write: Callable[[dict], None] = lambda record: None) -> dict:
    """Train and evaluate one configuration. `record` carries the caller's bookkeeping
    (config, overrides, ...); `write(record)` is called at start (status running) and
    at the end, so a sweep can see runs in progress."""
    import torch

    from collapse.losses import RegressionLoss
    from collapse.models import SequenceRegressor
    from collapse.ssl import pretrain_encoder
    from collapse.trainer import Trainer, predict

    started = time.time()
    t = cfg.trainer
    device = resolve_device(t.device)
    seed_everything(cfg.seed, t.deterministic)
    record = dict(record or {})
    record.update({"schema": records.SCHEMA_VERSION, "status": "running", "study": cfg.study,
                   "seed": cfg.seed, "monitor": t.monitor, "device": device,
                   "threads": torch.get_num_threads(), "started_at": started,
                   "provenance": records.provenance()})
    write(record)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)    # shares memory on CPU: data is held once

    # [units] loss, model and trainer see standardised targets (z = (y - mean) / std, the
    # labelled train split's scaler; identity when data.standardize_target=false), so
    # the loss, bmc_sigma and huber_delta are in train-std units; metrics in original units.
    X_train, y_train, w_train = tensor(data.X_train), tensor(data.z_train), tensor(data.w_train)
    X_val, y_val, X_test = tensor(data.X_val), tensor(data.z_val), tensor(data.X_test)
    weighted = bool(np.any(data.w_train != 1.0))
    record["target_scaler"] = data.scaler

    model = SequenceRegressor(data.n_features, output_bias=float(data.z_train.mean()),
                              target_mean=data.target_mean, target_std=data.target_std,
                              **asdict(cfg.model)).to(device)
    if cfg.ssl.enabled:
        s = cfg.ssl
        record["ssl_history"] = pretrain_encoder(
            model.encoder, tensor(data.X_unlabeled), epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
            mask_ratio=s.mask_ratio, corruption_std=s.corruption_std, seed=cfg.seed, log_fn=log.info)
    loss_fn = RegressionLoss(train_target_var=float(data.z_train.var()), **asdict(cfg.loss))
    trainer = Trainer(epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr,
                      weight_decay=t.weight_decay, monitor=t.monitor, patience=t.patience,
                      min_delta=t.min_delta, guard=t.guard, guard_threshold=t.guard_threshold,
                      guard_warmup=t.guard_warmup, guard_patience=t.guard_patience, seed=cfg.seed)
    result = trainer.fit(model, loss_fn, X_train, y_train, w_train if weighted else None, X_val, y_val)

    # [units] the history's pred_std/rmse/... back in original units (losses stay standardised)
    history = [to_original_units(h, data.target_std, data.target_mean, "val_") for h in result.history]
    record.update({"status": result.status, "stop_reason": result.stop_reason,
                   "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "history": history, "error": None})
    # [budget] the best epoch was the last one allowed: still improving, under-trained
    record["budget_exhausted"] = budget_exhausted(result.best_epoch, len(result.history), result.stop_reason)
    last = history[-1] if history else {}
    record["final"] = {"epoch": last.get("epoch"),
                       "val": {k[4:]: v for k, v in last.items() if k.startswith("val_")}}
    if result.best_epoch is not None:
        # the model now holds the best epoch's weights
        pred_val = data.unscale(predict(model, X_val).double().cpu().numpy())      # [units] original
        pred_test = data.unscale(predict(model, X_test).double().cpu().numpy())
        best = {"epoch": result.best_epoch, "val": regression_report(data.y_val, pred_val),
                "test": regression_report(data.y_test, pred_test)}
        record["best"] = best
        # the trainer's score is "higher is better": r2 itself, or -val_loss
        record["monitor_value"] = result.best_score if t.monitor == "r2" else -result.best_score
        # [diagnosis] val chose the best of len(history) epochs (its r is optimistic: its
        # intervals are Bonferroni-widened for that); test is untouched
        dg = cfg.diagnosis
        thresholds = dict(min_r=dg.min_r, collapse_ratio_of_r=dg.collapse_ratio_of_r,
                          inflate_ratio_of_r=dg.inflate_ratio_of_r, confidence=dg.confidence)
        record["diagnosis"] = {
            "val": diagnose(data.y_val, pred_val, split="val", **thresholds,
                            candidates=len(result.history) if dg.correct_selection else 1),
            "test": diagnose(data.y_test, pred_test, split="test", **thresholds)}
        if cfg.recalibrate:
            # affine refit on val only, applied to test: what a squeeze costs, undone post hoc
            a, b = fit_affine(data.y_val, pred_val)
            recal_test = regression_report(data.y_test, a + b * pred_test)
            record["recalibrated"] = {"intercept": a, "slope": b,
                                      "val": regression_report(data.y_val, a + b * pred_val),
                                      "test": recal_test,
                                      "raised_test_r2": bool(recal_test["r2"] > best["test"]["r2"])}
        if run_dir is not None and cfg.save_weights:
            records.save_weights(Path(run_dir) / records.WEIGHTS_FILE, trainer.best_state_)
    else:
        record["best"], record["monitor_value"], record["diagnosis"] = None, math.nan, None
    record["wall_time_s"] = time.time() - started
    write(record)
    return record
