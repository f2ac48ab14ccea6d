"""In-process probes run in a fresh interpreter by the benchmarks:

    python -m benchmarks.probe memory N_SAMPLES EPOCHS   -> one JSON line

`memory`: RSS before and after the data are loaded and at the end of every epoch of
one run (collapse.run.execute, defaults except size/epochs, early stopping off), against
the bytes of the prepared arrays (a run that copied its data per epoch would grow by
about one train split per epoch), and whether the tensors the trainer receives share
the prepared arrays' memory (held once) or are copies.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def memory(n_samples: int, epochs: int) -> dict:
    import torch

    from collapse import data as data_mod
    from collapse.config import Config, validate
    from collapse.data import load as load_data
    from collapse.records import RunRecord
    from collapse.run import execute as runner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # memory only: one thread keeps it quick on a busy machine
    # torch's lazy imports (torch._dynamo at the first optimizer step, ~60 MB of modules)
    # happen before the baseline, so the growth below is the run's, not torch's
    warm = torch.nn.Linear(2, 1)
    torch.optim.Adam(warm.parameters()).step()
    cfg = Config()
    cfg.data.n_samples, cfg.trainer.epochs, cfg.trainer.patience = n_samples, epochs, 0
    cfg.trainer.guard, cfg.trainer.device, cfg.save_weights = False, "cpu", False
    validate(cfg)
    rss_start = rss_mb()
    data = load_data(cfg.data, cfg.seed, unlabeled=cfg.ssl.enabled)
    rss_loaded = rss_mb()
    per_epoch: list[float] = []

    class EpochRSS(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Epoch"):
                per_epoch.append(rss_mb())

    # what the runner hands the trainer: views of the prepared arrays, or copies?
    import collapse.trainer as trainer_mod

    fit, shared = trainer_mod.Trainer.fit, {}

    def spy(self, model, loss_fn, X_train, y_train, w_train, X_val, y_val, **kwargs):
        for name, t in (("X_train", X_train), ("y_train", y_train), ("X_val", X_val), ("y_val", y_val)):
            # the runner hands torch the standardised targets (z_*), the features as prepared
            source = getattr(data, name.replace("y_", "z_"))
            shared[name] = t.device.type == "cpu" and t.data_ptr() == source.ctypes.data
        shared["rss_fit_start_mb"] = rss_mb()
        return fit(self, model, loss_fn, X_train, y_train, w_train, X_val, y_val, **kwargs)

    trainer_mod.Trainer.fit, data_mod.load = spy, lambda *args, **kwargs: data     # the data measured above
    log = logging.getLogger("collapse")
    handler, level, propagate = EpochRSS(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        runner.execute(cfg, RunRecord())
    finally:
        trainer_mod.Trainer.fit, data_mod.load = fit, load_data
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    torch.set_num_threads(threads)
    # X_unlabeled is None without SSL (the prepared data then holds no copy of all frames)
    nbytes = {k: getattr(data, k).nbytes for k in ("X_train", "y_train", "w_train", "X_val", "y_val",
                                                   "X_test", "y_test", "X_unlabeled") if getattr(data, k) is not None}
    train_mb = (nbytes["X_train"] + nbytes["y_train"] + nbytes["w_train"]) / 2**20
    return {"n_samples": n_samples, "epochs": epochs, "rss_start_mb": rss_start, "rss_loaded_mb": rss_loaded,
            "rss_fit_start_mb": shared.pop("rss_fit_start_mb"), "rss_per_epoch_mb": per_epoch,
            "tensors_share_prepared_arrays": shared,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "prepared_mb": {k: v / 2**20 for k, v in nbytes.items()}, "train_mb": train_mb}


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        print("PROBE", json.dumps(memory(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown probe {sys.argv[1]!r}")
