"""hydra/launcher=ensemble: phase4 against the default launcher, and members per stack
against samples/s.

- phase4 (36 jobs) under the default launcher and under the ensemble launcher, alternated,
  `repeats` times: the median speedup and every repeat's; the per-cell mean best val R² of
  the two side by side (the largest difference); whether two ensemble repeats computed
  identical metrics; how many distinct stop epochs the members had.
- scaling: Phase-1's model on the benchmark data, one thread, in this process: samples/s of
  M members stacked against the same M members trained one at a time (Trainer.fit).
"""
from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import Result, job_records, median, run_cmd, train_cmd
from benchmarks.processes import phase4_grid


def _cells(sweep_dir: Path) -> dict:
    cells: dict = {}
    for r in job_records(sweep_dir):
        c = r["config"]
        key = (c["data"]["temporal_frames"], c["loss"]["variance_lambda"])
        cells.setdefault(key, []).append(r["best"]["val"]["r2"])
    return {k: statistics.mean(v) for k, v in cells.items()}


def _computed(sweep_dir: Path) -> list:
    keep = ("status", "stop_reason", "best_epoch", "best", "final", "monitor_value", "epochs_run")
    return [json.dumps({k: r.get(k) for k in keep}, sort_keys=True) for r in job_records(sweep_dir)]


def bench_ensemble(quick: bool, repeats: int, tmp: Path, epochs: int = 0, ctx: Optional[dict] = None) -> Result:
    res = Result()
    grid = phase4_grid(quick, epochs)
    variants = {"default": [], "ensemble": ["hydra/launcher=ensemble"]}
    times: dict = {k: [] for k in variants}
    dirs: dict = {k: [] for k in variants}
    stacks = set()
    reused = (ctx or {}).get("quick_default_phase4") if quick else None
    if reused:          # --quick: parallel_sweep's default sweep of the same grid is the baseline
        times["default"].append(reused["seconds"])
        dirs["default"].append(reused["dir"])
    for i in range(repeats):
        for name in (list(variants) if i % 2 == 0 else list(reversed(variants))):
            if reused and name == "default":
                continue
            d = tmp / f"ensemble_item_phase4_{name}_{i}"      # apart from parallel_sweep's dirs
            timed = run_cmd(train_cmd(*grid, *variants[name], f"hydra.sweep.dir={d}", config_name="phase4"), tmp)
            times[name].append(timed.seconds)
            dirs[name].append(d)
            # the launcher's plan: "Launching 36 jobs as 6 stacked model(s) of 4/4/4/6/6/12 members ..."
            stacks |= set(re.findall(r"as (\d+) stacked model\(s\) of ([\d/]+) members", timed.stdout))
    speedup = [a / b for a, b in zip(times["default"], times["ensemble"])]
    default_cells, ensemble_cells = _cells(dirs["default"][0]), _cells(dirs["ensemble"][0])
    diffs = {k: ensemble_cells[k] - default_cells[k] for k in default_cells}
    identical = all(_computed(d) == _computed(dirs["ensemble"][0]) for d in dirs["ensemble"])
    members = job_records(dirs["ensemble"][0])
    stops = sorted({r["epochs_run"] for r in members})
    res.figures = {"repeats": repeats, "grid_overrides": grid, **{f"{k}_s": v for k, v in times.items()},
                   "speedup": speedup, "cells": {f"frames={k[0]} lambda={k[1]}": {
                       "default": default_cells[k], "ensemble": ensemble_cells[k]} for k in sorted(default_cells)},
                   "reruns_identical": identical, "stop_epochs": stops,
                   "stacks": sorted(f"{n}: {sizes}" for n, sizes in stacks),
                   "engines": sorted({r["engine"] for r in members})}
    label = f"phase4 grid ({len(members)} jobs)"
    res.add(f"{label}, default launcher", median(times["default"]), "s",
            note=", ".join(f"{x:.1f}" for x in times["default"]))
    res.add(f"{label}, ensemble launcher", median(times["ensemble"]), "s",
            note=", ".join(f"{x:.1f}" for x in times["ensemble"]) + "; stacks of "
            + "; ".join(sizes for _, sizes in sorted(stacks)) + " members")
    res.add("speedup, ensemble vs default (median)", median(speedup), "x", (">=", 1.8),
            note="repeats: " + ", ".join(f"{x:.2f}" for x in speedup))
    for k in sorted(default_cells):
        res.add(f"  mean val R², frames={k[0]} lambda={k[1]}: default / ensemble", ensemble_cells[k], "",
                note=f"{default_cells[k]:.4f} / {ensemble_cells[k]:.4f}")
    res.add("largest per-cell |difference| of mean val R²", max(abs(v) for v in diffs.values()), "", ("<=", 0.02))
    res.add("ensemble reruns with identical metrics", float(identical), "bool", (">=", 1.0),
            note=f"{len(dirs['ensemble'])} sweeps compared")
    res.add("distinct stop epochs among the members", len(stops), "epochs",
            note=", ".join(map(str, stops)))
    return res


def bench_scaling(quick: bool, sizes=(1, 2, 4, 8, 12, 24, 36), model: str = "mean_pool", device: str = "cpu",
                  threads: int = 1, repeats: int = 3) -> Result:
    """Samples/s of M members stacked vs the same M one at a time (Trainer.fit), alternated,
    the median of `repeats` (a shared machine: single timings swing 3x)."""
    import torch

    from collapse import data as data_lib
    from collapse.config import DataConfig, LossConfig, ModelConfig, TrainerConfig
    from collapse.ensemble import Member, StackedTrainer
    from collapse.losses import RegressionLoss
    from collapse.models import build_model
    from collapse.trainer import Trainer

    res = Result()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    sizes = (1, 2, 4) if quick else sizes
    n = 600 if quick else 10000
    data = data_lib.load(DataConfig(n_samples=n, temporal_frames=3), 0, unlabeled=False)
    mc = ModelConfig(name=model, init_std=0.5)
    cfg = TrainerConfig(epochs=1 if quick else 3, patience=0, guard=False)
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    X, y, Xv, yv = t(data.X_train), t(data.z_train), t(data.X_val), t(data.z_val)
    lams = (0.0, 0.25, 0.5, 1.0)

    def model_for(seed: int):
        torch.manual_seed(seed)
        return build_model(mc, data.n_features, output_bias=float(data.z_train.mean()),
                           target_mean=data.target_mean, target_std=data.target_std).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    # warm-up: torch's first optimizer and first batched matmul pay one-off costs
    Trainer(cfg, 0, log_fn=lambda s: None).fit(model_for(0), RegressionLoss(LossConfig()), X, y, None, Xv, yv)
    def one_by_one(m: int) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(m):
            loss = RegressionLoss(LossConfig(variance_lambda=lams[i % 4]))
            Trainer(cfg, i, log_fn=lambda s: None).fit(model_for(i), loss, X, y, None, Xv, yv)
        sync()
        return time.perf_counter() - t0

    def stacked(m: int) -> float:
        members = [Member(model_for(i), i, cfg.lr, cfg.weight_decay, lams[i % 4], None, X, y, None, Xv, yv,
                          log_fn=lambda s: None) for i in range(m)]
        sync()
        t0 = time.perf_counter()
        StackedTrainer(cfg).fit(RegressionLoss(LossConfig()), members)
        sync()
        return time.perf_counter() - t0

    points = []
    repeats = 1 if quick else repeats
    try:
        for m in sizes:
            times: dict = {"one": [], "stacked": []}
            for r in range(repeats):
                for kind in (("one", "stacked") if r % 2 == 0 else ("stacked", "one")):
                    times[kind].append(one_by_one(m) if kind == "one" else stacked(m))
            samples = m * cfg.epochs * len(X)
            ratios = [a / b for a, b in zip(times["one"], times["stacked"])]
            points.append({"members": m, "stacked_samples_per_s": samples / median(times["stacked"]),
                           "one_by_one_samples_per_s": samples / median(times["one"]),
                           "speedup": median(ratios), "speedups": ratios})
    finally:
        torch.set_num_threads(previous)
    res.figures = {"model": model, "device": device, "threads": threads, "train_samples": len(X),
                   "epochs": cfg.epochs, "points": points}
    for p in points:
        res.add(f"{model} on {device}, {p['members']:>2} members: stacked / one at a time",
                p["stacked_samples_per_s"], "samples/s",
                note=f"{p['one_by_one_samples_per_s']:,.0f} one at a time: {p['speedup']:.2f}x "
                     f"(" + ", ".join(f"{x:.2f}" for x in p["speedups"]) + ")")
    return res
