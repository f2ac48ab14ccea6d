"""Item 1 (and 9 on a GPU): samples/s of the shared Trainer against hand-written loops.

All loops train the same model (SequenceRegressor, mean_pool, default settings, same init seed)
on the same in-memory tensors with the same batch size, optimizer (Adam, lr 1e-3) and
loss, for the same number of epochs, in this process, in alternation.

- hand+val (the baseline of the target): shuffled index slicing of the tensors, and per
  epoch the least an early-stopping loop needs: eval-mode val predictions and val R².
- hand (train steps only): the same without validation; the cost of validating at all.
- DataLoader: `DataLoader(TensorDataset(X, y), batch_size, shuffle=True)` plus the same
  per-epoch validation as hand+val, the way most templates write it.
- Trainer: `collapse.trainer.Trainer.fit` (validation, full metrics report, history,
  best-state copy, collapse guard), early stopping off so every loop runs all epochs.
"""
from __future__ import annotations

import time

from benchmarks.common import Result, median

BATCH = 256


def _data(n_samples: int, device: str):
    """The default synthetic data set (config defaults, seed 0), prepared as a run does."""
    import torch

    from collapse.config import Config
    from collapse.data import load as load_data

    cfg = Config()
    if n_samples:
        cfg.data.n_samples = n_samples
    prepared = load_data(cfg.data, cfg.seed, unlabeled=cfg.ssl.enabled)
    to = lambda a: torch.from_numpy(a).to(device)   # noqa: E731 - shares memory on CPU
    # z: the standardised float32 targets a run trains on (y_* stay float64, original units)
    return (prepared, to(prepared.X_train), to(prepared.z_train), to(prepared.X_val), to(prepared.z_val))


def _model(prepared, device: str):
    import torch

    from collapse.models import SequenceRegressor

    torch.manual_seed(0)
    from collapse.config import ModelConfig

    # the study's mean_pool, as docs/performance.md measured it (the default is now gru)
    return SequenceRegressor(ModelConfig(name="mean_pool"), prepared.n_features,
                             output_bias=float(prepared.z_train.mean())).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _hand(model, loss_fn, Xt, yt, Xv, yv, epochs: int, validate: bool, device: str) -> float:
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(Xt), generator=shuffle).to(Xt.device)
        for i in range(0, len(Xt), BATCH):
            idx = perm[i:i + BATCH]
            loss = loss_fn(model(Xt[idx]), yt[idx], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if validate:
            model.eval()
            with torch.no_grad():
                pred = model(Xv)
            r2 = 1 - ((pred - yv) ** 2).sum() / ((yv - yv.mean()) ** 2).sum()
            r2.item()        # early stopping needs the number on the host
    _sync(device)
    return time.perf_counter() - start


def _dataloader(model, loss_fn, Xt, yt, Xv, yv, epochs: int, device: str) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(Xv)
        r2 = 1 - ((pred - yv) ** 2).sum() / ((yv - yv.mean()) ** 2).sum()
        r2.item()
    _sync(device)
    return time.perf_counter() - start


def _trainer(model, loss_fn, Xt, yt, Xv, yv, epochs: int, device: str) -> float:
    from collapse.config import TrainerConfig
    from collapse.trainer import Trainer

    trainer = Trainer(TrainerConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-3, patience=0,
                                    guard=False), seed=0)
    _sync(device)
    start = time.perf_counter()
    trainer.fit(model, loss_fn, Xt, yt, None, Xv, yv)
    _sync(device)
    return time.perf_counter() - start


def bench_throughput(quick: bool, repeats: int, device: str = "cpu") -> Result:
    import torch

    from collapse.losses import RegressionLoss
    from collapse.sweep.cores import threads_per_job

    res = Result()
    threads = threads_per_job(0, None)        # what a single run gets
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    n_samples, epochs = (600, 1) if quick else (0, 10)      # 0: the default data size
    prepared, Xt, yt, Xv, yv = _data(n_samples, device)
    from collapse.config import LossConfig

    loss_fn = RegressionLoss(LossConfig(), train_target_var=float(prepared.z_train.var()))
    args = (Xt, yt, Xv, yv, epochs)
    variants = {
        "hand": lambda m: _hand(m, loss_fn, *args, validate=False, device=device),
        "hand_val": lambda m: _hand(m, loss_fn, *args, validate=True, device=device),
        "dataloader": lambda m: _dataloader(m, loss_fn, *args, device=device),
        "trainer": lambda m: _trainer(m, loss_fn, *args, device=device),
    }
    for fn in variants.values():        # warm-up: first optimizer step, allocator, kernels
        fn(_model(prepared, device))
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:   # rotate the order
            times[name].append(variants[name](_model(prepared, device)))
    samples = epochs * len(Xt)
    sps = {k: samples / median(v) for k, v in times.items()}
    ratio = lambda a, b: median([tb / ta for ta, tb in zip(times[a], times[b])])   # noqa: E731 - speed a / speed b

    res.figures = {"device": device, "threads": threads, "n_train": len(Xt), "n_val": len(Xv),
                   "epochs": epochs, "batch_size": BATCH, "repeats": repeats,
                   "samples_per_s": {k: round(v) for k, v in sps.items()},
                   "trainer_vs_hand_val": ratio("trainer", "hand_val"),
                   "trainer_vs_hand_train_only": ratio("trainer", "hand"),
                   "dataloader_vs_hand_val": ratio("dataloader", "hand_val"),
                   "hand_val_vs_hand_train_only": ratio("hand_val", "hand"),
                   "seconds": times}
    tag = "" if device == "cpu" else f" [{device}]"
    res.add(f"hand loop, train steps only{tag}", sps["hand"], "samples/s")
    res.add(f"hand loop + per-epoch val R²{tag}", sps["hand_val"], "samples/s")
    res.add(f"DataLoader(TensorDataset) + val{tag}", sps["dataloader"], "samples/s")
    res.add(f"Trainer.fit{tag}", sps["trainer"], "samples/s")
    res.add(f"Trainer / hand+val{tag}", res.figures["trainer_vs_hand_val"], "x", (">=", 0.95))
    res.add(f"Trainer / hand train-only{tag}", res.figures["trainer_vs_hand_train_only"], "x",
            note="includes validating every epoch")
    res.add(f"DataLoader / hand+val{tag}", res.figures["dataloader_vs_hand_val"], "x")

    if device == "cpu" and threads > 1 and not quick:
        # does a tiny model gain from more than one intra-op thread? (sweep.threads_per_job)
        one, many = [], []
        for _ in range(repeats):
            torch.set_num_threads(1)
            one.append(variants["trainer"](_model(prepared, device)))
            torch.set_num_threads(threads)
            many.append(variants["trainer"](_model(prepared, device)))
        res.figures["trainer_1_thread_vs_default"] = median([m / o for o, m in zip(one, many)])
        res.add(f"Trainer, 1 thread / {threads} threads", res.figures["trainer_1_thread_vs_default"], "x",
                note="speed ratio; > 1: one thread is faster")
    torch.set_num_threads(previous_threads)
    return res
