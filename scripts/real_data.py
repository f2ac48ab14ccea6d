"""Real data through `data=npz`: scikit-learn's bundled sets against a tuned ridge.

    python scripts/real_data.py                      # checks, ~15 s on one core
    python scripts/real_data.py --seeds 0,1,2 --out outputs/real_data.md
    python scripts/real_data.py --budget 50,100,200,310   # the training-budget table
    python scripts/real_data.py --heldout --seeds 0,1     # the held-out study (docs/science.md, ~4 min)

Writes each bundled regression set (offline, shipped with scikit-learn) to an .npz as
X[:, None, :] (one frame) with a fixed seeded train/val/test split stored in the file,
fits RidgeCV (alphas 1e-3..1e3, leave-one-out on train) on the same split, runs
`collapse.train.run` on the file, and checks what the README claims for your own data:

- diabetes (442 samples, target std 77) with the defaults: test R² within 0.05 of ridge;
- the same target x1000 + 5e4 with the variance term (loss.variance_lambda=0.5): the
  same R², variance ratio and diagnosis as on the raw target (standardised targets);
- wine (178 samples; alcohol from the 12 other measurements): units only. Its ridge
  gap is printed, not checked: with the default output init (model.init_std 0.5, the
  study's knob) the network reaches test R² 0.14 ± 0.18 against ridge 0.31 (5 seeds);
  model.init_std=0.1 gives 0.26 ± 0.06.

`--heldout`: five public sets of different kinds (diabetes, star98, and the sunspots, El Niño
and CO2 series framed as "the previous 7 values -> the next", chronological 60/20/20) with
ridge and gradient boosting on the same split and frames, the default, its recorded linear
reference, the best model x lambda cell by val, the test labels and lambda's cost on test;
frames sweeps on sunspots summarised on test (gru and mean_pool); the budget against 200
epochs at patience 30; y + 1e8 in a float64 file. Every printed figure is checked.

Exit 1 if a check fails. scikit-learn is imported here, never on the run path.
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from checked_report import finish  # scripts/checked_report.py (scripts/ is on sys.path)

SPLIT_SEED = 0


def bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, C), y (N,)) float64 from scikit-learn's bundled files (no download)."""
    from sklearn import datasets

    if name == "diabetes":
        return datasets.load_diabetes(return_X_y=True)
    if name == "wine":             # a real continuous measurement: alcohol from the other 12
        X = datasets.load_wine().data
        return X[:, 1:], X[:, 0]
    if name == "linnerud":         # 20 samples: every answer must be "cannot tell"
        d = datasets.load_linnerud()
        return d.data, d.target[:, 0]
    raise ValueError(f"unknown data set {name!r}: diabetes, wine or linnerud")


SERIES = ("sunspots", "co2", "elnino")


def series(name: str) -> np.ndarray:
    """A real series (T,) float64 from statsmodels' bundled files (no download): yearly
    sunspot numbers 1700-2008, monthly mean Mauna Loa CO2 (the weekly file's gaps
    interpolated), monthly El Niño sea-surface temperatures 1950-2010."""
    import statsmodels.api as sm

    if name == "sunspots":
        return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
    if name == "co2":
        weekly = sm.datasets.co2.load_pandas().data["co2"].interpolate()
        return weekly.resample("MS").mean().dropna().to_numpy(np.float64)
    if name == "elnino":
        return sm.datasets.elnino.load_pandas().data.iloc[:, 1:].to_numpy(np.float64).reshape(-1)
    raise ValueError(f"unknown series {name!r}: {', '.join(SERIES)}")


def framed(values: np.ndarray, frames: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """"The previous `frames` values -> the next": X (N, frames, 1), y (N,), and a
    chronological 60/20/20 split (train, then val, then test: no look-ahead)."""
    X = np.lib.stride_tricks.sliding_window_view(values[:-1], frames)[:, :, None]
    y = values[frames:]
    n = len(y)
    split = np.zeros(n, dtype=np.int64)
    split[round(0.6 * n):round(0.8 * n)], split[round(0.8 * n):] = 1, 2
    return np.ascontiguousarray(X), y, split


def star98() -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' star98 (303 California school districts, 1998): the share of pupils
    above the national median in maths from 20 district covariates (education, census)."""
    import statsmodels.api as sm

    d = sm.datasets.star98.load_pandas()
    return d.exog.to_numpy(np.float64), (d.endog["NABOVE"] / (d.endog["NABOVE"] + d.endog["NBELOW"])).to_numpy()


def heldout_sets() -> dict:
    """name -> (kind, X (N, T, C), y (N,), split): the held-out study's public sets, all offline."""
    X, y = bundled("diabetes")
    Xs, ys = star98()
    sets = {"diabetes": ("clinical, 10 covariates", X[:, None, :], y, split_for(len(y))),
            "star98": ("education census, 20 covariates", Xs[:, None, :], ys, split_for(len(ys)))}
    for name, kind in (("sunspots", "forecasting, yearly"), ("elnino", "forecasting, monthly"),
                       ("co2", "forecasting, monthly, trending")):
        sets[name] = (kind, *framed(series(name), 7))
    return sets


def baselines(X: np.ndarray, y: np.ndarray, split: np.ndarray, frames: int) -> dict:
    """Test R² of RidgeCV and HistGradientBoosting on the last `frames` frames, flattened,
    fitted on train (features standardised with train statistics), as collapse frames them."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    flat = X[:, X.shape[1] - frames:, :].reshape(len(X), -1)
    train, test = split == 0, split == 2
    mean, std = flat[train].mean(0), flat[train].std(0)
    flat = (flat - mean) / np.where(std > 0, std, 1.0)
    ridge = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(flat[train], y[train])
    hgb = HistGradientBoostingRegressor(random_state=0).fit(flat[train], y[train])
    return {"ridge": float(r2_score(y[test], ridge.predict(flat[test]))),
            "hgb": float(r2_score(y[test], hgb.predict(flat[test])))}


def heldout_study(seeds: list[int], tmp: Path) -> tuple[list[str], list[tuple[bool, str]]]:
    """Per set: ridge, gradient boosting, the default, its recorded reference, the best cell
    of model x lambda (chosen on val, reported on test), the labels; and what lambda 0.5 costs
    on test. Returns (report lines, checks)."""
    lines = ["| set | kind | n | ridge | gradient boosting | default (gru) | reference recorded | "
             "best cell (by val) | its test R² | default test labels | λ 0.5 − λ 0 (test, paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    checks = []
    cells = {f"{m}, λ {lam}": [f"model={m}", f"loss.variance_lambda={lam}"]
             for m in ("gru", "mean_pool", "temporal_conv") for lam in (0.0, 0.5)}
    for name, (kind, X, y, split) in heldout_sets().items():
        frames = X.shape[1]
        path = tmp / f"{name}.npz"
        np.savez(path, X=X.astype(np.float32), y=y, split=split)
        base = baselines(X, y, split, frames)
        got = {cell: [collapse_run(path, s, *over, frames=frames) for s in seeds]
               for cell, over in cells.items()}
        mean = lambda recs, part="test": statistics.fmean(r["best"][part]["r2"] for r in recs)   # noqa: E731
        default = got["gru, λ 0.0"]
        best = max(cells, key=lambda c: mean(got[c], "val"))
        ref = statistics.fmean(r["reference"]["test"]["r2"] for r in default)
        labels = [r["diagnosis"]["test"]["label"] for r in default]
        cost = [b["best"]["test"]["r2"] - a["best"]["test"]["r2"] for a, b in zip(default, got["gru, λ 0.5"])]
        lines.append(f"| {name} | {kind} | {len(y)} | {base['ridge']:.3f} | {base['hgb']:.3f} | "
                     f"{mean(default):.3f} | {ref:.3f} | {best} | {mean(got[best]):.3f} | {', '.join(labels)} | "
                     f"{statistics.fmean(cost):+.3f} ({', '.join(f'{c:+.3f}' for c in cost)}) |")
        print(lines[-1], file=sys.stderr, flush=True)
        checks.append((math.isclose(ref, base["ridge"], abs_tol=0.01),
                       f"{name}: the recorded reference (test R² {ref:.3f}) is the RidgeCV fitted here "
                       f"({base['ridge']:.3f}, within 0.01)"))
        if name == "diabetes":     # the benchmark's "λ costs at most 0.05 R² where there is signal" fails here
            checks.append((statistics.fmean(cost) < -0.05,
                           f"diabetes: λ 0.5 costs more than 0.05 test R² ({statistics.fmean(cost):+.3f}): "
                           "the benchmark's bound does not carry over"))
        elif name != "co2":
            checks.append((all(-0.05 <= c <= 0.05 for c in cost),
                           f"{name}: λ 0.5 moves test R² by at most 0.05 on each seed ({statistics.fmean(cost):+.3f})"))
        if name == "co2":    # test values above every train value: a trend no network extrapolates
            checks.append(("biased" in labels and "healthy" not in labels,
                           f"co2 (a trend): the default's test labels {labels} name the bias, none healthy"))
        else:
            checks.append((mean(default) >= base["ridge"] - 0.05,
                           f"{name}: the default's test R² {mean(default):.3f} >= ridge {base['ridge']:.3f} - 0.05"))
            checks.append(("healthy" not in labels or mean(default) > 0,
                           f"{name}: no healthy label on a run with test R² <= 0 ({labels})"))
    return lines, checks


def frames_sweep(name: str, seeds: list[int], tmp: Path, model: str) -> dict:
    """data.temporal_frames 1/3/7 x seeds on a real series, as a sweep directory the summary
    reads: mean test R² per frame count and the summary's test EMM contrast of 7 vs 1 frames."""
    from collapse.summary import build_summary
    from collapse.train import run

    X, y, split = framed(series(name), 7)
    path = tmp / f"{name}_frames.npz"
    np.savez(path, X=X.astype(np.float32), y=y, split=split)
    sweep = tmp / f"{name}_{model}_sweep"
    num = 0
    for frames in (1, 3, 7):
        for s in seeds:
            run(["data=npz", f"data.path={path}", f"data.temporal_frames={frames}", f"model={model}", f"seed={s}",
                 "trainer.threads=1"], run_dir=sweep / str(num))
            num += 1
    summary, _ = build_summary(sweep)
    (effect,) = summary["main_effects"]
    levels = {lvl["value"]: lvl for lvl in effect["levels"]}
    return {"emm": {f: levels[f]["test.r2"]["mean"] for f in ("1", "3", "7")},
            "contrast": levels["7"]["test.r2"]["vs_first"], "p": effect["p"]["test.r2"],
            "val_emm": {f: levels[f]["val.r2"]["mean"] for f in ("1", "3", "7")},
            "ref": {f: statistics.fmean(c["reference_r2"]["mean"] for c in summary["cells"]
                                        if c["settings"]["data.temporal_frames"] == f) for f in ("1", "3", "7")}}


def budget_check(seeds: list[int], tmp: Path) -> tuple[list[str], list[tuple[bool, str]]]:
    """The defaults against 200 epochs at patience 30 with a constant lr, on the small sets."""
    lines = ["| set | n | defaults: test R² (best / run epochs) | 200 epochs, patience 30 | budget_exhausted |",
             "|---|---|---|---|---|"]
    checks = []
    sets = heldout_sets()
    for name in ("star98", "sunspots", "elnino"):
        _, X, y, split = sets[name]
        path = tmp / f"{name}_budget.npz"
        np.savez(path, X=X.astype(np.float32), y=y, split=split)
        short = [collapse_run(path, s, frames=X.shape[1]) for s in seeds]
        long = [collapse_run(path, s, "trainer.epochs=200", "trainer.patience=30", "trainer.lr_schedule=none",
                             frames=X.shape[1]) for s in seeds]
        a = statistics.fmean(r["best"]["test"]["r2"] for r in short)
        b = statistics.fmean(r["best"]["test"]["r2"] for r in long)
        epochs = lambda recs: ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in recs)   # noqa: E731
        lines.append(f"| {name} | {len(y)} | {a:.3f} ({epochs(short)}) | {b:.3f} ({epochs(long)}) | "
                     f"{[r['budget_exhausted'] for r in short]} |")
        checks.append((a >= b - 0.02, f"{name}: defaults test R² {a:.3f} >= 200 epochs/patience 30 {b:.3f} - 0.02"))
    return lines, checks


def split_for(n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    from collapse.data import split_indices

    return split_indices(n, 0.15, 0.15, seed)


def write_npz(path: Path, X: np.ndarray, y: np.ndarray, split: np.ndarray) -> Path:
    # y as float64: collapse keeps it so until standardised (a large offset loses nothing)
    np.savez(path, X=X[:, None, :].astype(np.float32), y=np.asarray(y, dtype=np.float64), split=split)
    return path


def ridge_reference(X: np.ndarray, y: np.ndarray, split: np.ndarray) -> dict:
    """RidgeCV on standardised train features (alpha by LOO on train), test R²."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = split == 0, split == 2
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 25)))
    model.fit(X[train], y[train])
    return {"test_r2": float(r2_score(y[test], model.predict(X[test]))),
            "alpha": float(model[-1].alpha_)}


def collapse_run(path: Path, seed: int, *extra: str, frames: int = 1) -> dict:
    from collapse.train import run

    return run(["data=npz", f"data.path={path}", f"data.temporal_frames={frames}", f"seed={seed}",
                "trainer.threads=1", *extra], quiet=True).to_dict()


def summary(rec: dict, part: str = "test") -> dict:
    best = rec["best"][part]
    return {"r2": best["r2"], "ratio": best["variance_ratio"], "r": best["pearson_r"],
            "label": rec["diagnosis"][part]["label"], "epoch": rec["best_epoch"]}


def budget_table(sizes: list[int], seeds: list[int], extra: list[str]) -> list[str]:
    """Diabetes with its train split subsampled to each size (val/test kept): ridge, the
    defaults (collapse.trainer's budget's batch cap) in raw and standardised units, and without the
    cap, as test R² mean ± sd over seeds and the best epochs."""
    from collapse.config import TrainerConfig
    from collapse.trainer import effective_batch_size

    X, y = bundled("diabetes")
    split = split_for(len(y))
    train_idx = np.flatnonzero(split == 0)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="collapse_budget_"))
    lines = ["| n_train | ridge | rule | batch | epochs | steps/epoch | test R² | best epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for n_train in sizes:
        keep = np.sort(rng.choice(train_idx, n_train, replace=False)) if n_train < len(train_idx) else train_idx
        mask = split != 0
        mask[keep] = True
        path = write_npz(tmp / f"diabetes_{n_train}.npz", X[mask], y[mask], split[mask])
        ridge = ridge_reference(X[mask], y[mask], split[mask])["test_r2"]
        t = TrainerConfig()
        capped = effective_batch_size(n_train, t.batch_size, t.min_batches_per_epoch)
        rules = [("raw units (standardize off)", capped, t.epochs, ["data.standardize_target=false"]),
                 ("no batch cap", min(t.batch_size, n_train), t.epochs, ["trainer.min_batches_per_epoch=0"]),
                 ("defaults (batch cap)", capped, t.epochs, [])]
        for rule, batch, epochs, over in rules:
            recs = [collapse_run(path, s, *over, *extra) for s in seeds]
            r2s = [r["best"]["test"]["r2"] for r in recs]
            lines.append(f"| {n_train} | {ridge:.3f} | {rule} | {batch} | {epochs} | {math.ceil(n_train / batch)} | "
                         f"{statistics.fmean(r2s):+.3f} ± {statistics.pstdev(r2s):.3f} | "
                         f"{', '.join(str(r['best_epoch']) for r in recs)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 5 seeds: the network's seed-to-seed sd on diabetes is ~0.035 of test R²
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (the split is fixed)")
    parser.add_argument("--sets", default="diabetes,wine", help="bundled sets to run")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides appended to every run")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--budget", default="", help="e.g. 50,100,200,310: the training-budget table "
                                                      "on diabetes subsampled to these train sizes (no checks)")
    parser.add_argument("--heldout", action="store_true",
                        help="the held-out study: five public sets (ridge, gradient boosting, the default, "
                             "the best cell, labels, λ on test), frames sweeps on sunspots, the budget, "
                             "the float64 offset; every figure checked (~10 min on one core)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    torch.set_num_threads(1)
    logging.getLogger("collapse").setLevel(logging.WARNING)
    if args.budget:
        print("\n".join(budget_table([int(n) for n in args.budget.split(",")], seeds, args.extra)))
        return 0
    started, lines, checks = time.time(), [], []
    tmp = Path(tempfile.mkdtemp(prefix="collapse_real_"))
    if args.heldout:
        lines, checks = heldout_study(seeds, tmp)
        for model in ("gru", "mean_pool"):
            got = frames_sweep("sunspots", seeds, tmp, model)
            c = got["contrast"]
            lines.append(f"\nsunspots frames sweep, model={model} (test R² EMM at 1/3/7 frames): "
                         + " / ".join(f"{got['emm'][f]:.3f}" for f in ("1", "3", "7"))
                         + "; val: " + " / ".join(f"{got['val_emm'][f]:.3f}" for f in ("1", "3", "7"))
                         + "; ridge: " + " / ".join(f"{got['ref'][f]:.3f}" for f in ("1", "3", "7"))
                         + f"; 7 vs 1 frames {c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
                         f"p {got['p']:.2g}")
            if model == "gru":
                checks.append((c["ci_low"] > 0 and got["emm"]["7"] >= got["ref"]["7"] - 0.05,
                               f"sunspots frames sweep, default model: the summary says more frames help on test "
                               f"(7 vs 1: {c['mean']:+.3f}, CI above 0), as ridge ({got['ref']['1']:.3f} -> "
                               f"{got['ref']['7']:.3f}); 7 frames within 0.05 of ridge"))
        budget_lines, budget_checks = budget_check(seeds, tmp)
        lines += ["", *budget_lines]
        checks += budget_checks
        X, y = bundled("diabetes")
        split = split_for(len(y))
        plain = collapse_run(write_npz(tmp / "d.npz", X, y, split), seeds[0])
        offset = collapse_run(write_npz(tmp / "d_1e8.npz", X, y + 1e8, split), seeds[0])
        same = (plain["best_epoch"] == offset["best_epoch"]
                and math.isclose(plain["best"]["test"]["r2"], offset["best"]["test"]["r2"], abs_tol=1e-4))
        lines.append(f"\ndiabetes y vs y + 1e8 (float64 file), seed {seeds[0]}: best epoch {plain['best_epoch']} vs "
                     f"{offset['best_epoch']}, test R² {plain['best']['test']['r2']:.4f} vs "
                     f"{offset['best']['test']['r2']:.4f}")
        checks.append((same, "diabetes: y + 1e8 stored as float64 gives the best epoch and test R² of y"))
    for name in ([] if args.heldout else args.sets.split(",")):
        X, y = bundled(name)
        split = split_for(len(y))
        ridge = ridge_reference(X, y, split)
        raw = write_npz(tmp / f"{name}.npz", X, y, split)
        scaled = write_npz(tmp / f"{name}_x1000.npz", X, y * 1000 + 5e4, split)
        cases = {"defaults": (raw, []), "lambda 0.5": (raw, ["loss.variance_lambda=0.5"]),
                 "x1000+5e4, lambda 0.5": (scaled, ["loss.variance_lambda=0.5"]),
                 # what standardisation prevents (printed, not checked)
                 "x1000+5e4, raw units": (scaled, ["data.standardize_target=false"])}
        got = {case: [summary(collapse_run(path, s, *over, *args.extra)) for s in seeds]
               for case, (path, over) in cases.items()}
        lines.append(f"\n{name}: n {len(y)} (train/val/test {np.bincount(split).tolist()}), target std "
                     f"{y.std():.3g}; ridge test R² {ridge['test_r2']:.3f} (alpha {ridge['alpha']:.3g})")
        for case, runs in got.items():
            r2s = [g["r2"] for g in runs]
            lines.append(f"  {case:22s} test R² {statistics.fmean(r2s):+.3f} ± {statistics.pstdev(r2s):.3f}  "
                         f"ratio {statistics.fmean(g['ratio'] for g in runs):.2f}  "
                         f"r {statistics.fmean(g['r'] for g in runs):+.2f}  labels {[g['label'] for g in runs]}  "
                         f"epochs {[g['epoch'] for g in runs]}")
        mean_r2 = statistics.fmean(g["r2"] for g in got["defaults"])
        if name == "diabetes":
            checks.append((mean_r2 >= ridge["test_r2"] - 0.05,
                           f"{name}: defaults test R² {mean_r2:.3f} >= ridge {ridge['test_r2']:.3f} - 0.05"))
        for s, a, b in zip(seeds, got["lambda 0.5"], got["x1000+5e4, lambda 0.5"]):
            same = (math.isclose(a["r2"], b["r2"], abs_tol=1e-3) and math.isclose(a["ratio"], b["ratio"], abs_tol=1e-3)
                    and a["label"] == b["label"] and a["epoch"] == b["epoch"])
            checks.append((same, f"{name} seed {s}: lambda 0.5 on y x1000 + 5e4 = on raw y "
                                 f"(R² {b['r2']:.4f} vs {a['r2']:.4f}, {b['label']} vs {a['label']}, "
                                 f"epoch {b['epoch']} vs {a['epoch']})"))
    return finish("\n".join(lines), checks, args.out,
                  footer=f"({time.time() - started:.0f} s, extra: {' '.join(args.extra) or 'none'})")


if __name__ == "__main__":
    sys.exit(main())
