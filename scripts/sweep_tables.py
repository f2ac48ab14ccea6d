"""Regenerate the README's cures and phase4 tables from real sweeps, and check their claims.

    python scripts/sweep_tables.py --out outputs/sweep_tables.md            # runs both sweeps (~4 min, 2 cores)
    python scripts/sweep_tables.py --cures DIR --phase4 DIR                 # tables of sweeps already run
    python scripts/sweep_tables.py --split val ...                          # the older val-split tables

Runs `sweeps/cures.yaml` and `sweeps/phase4.yaml` through the CLI (the default parallel
launcher), reads every job's metrics.json, prints test R² (held out: it chose no epoch;
`--split val` for val) mean ± sd over seeds per cell with that split's diagnoses, checks
each claim the docs make seed by seed on that split, and exits 1 if any fails.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from checked_report import finish
from checked_report import mean_sd as fmt  # scripts/checked_report.py (scripts/ is on sys.path)

REPO = Path(__file__).resolve().parent.parent
CURES = ["none", "variance", "variance_study", "hinge_train", "ccc", "bmc", "lds_sqrt_inverse", "lds_inverse", "dense"]
CURE_NAMES = {"none": "none", "variance": "variance term λ 2", "variance_study": "variance term λ 0.5 (the study's)",
              "hinge_train": "hinge, train-split variance, λ 2", "ccc": "`loss=ccc`", "bmc": "`loss=bmc`",
              "lds_sqrt_inverse": "sqrt-inverse density weights", "lds_inverse": "inverse density weights",
              "dense": "DenseWeight"}


def run_sweep(name: str, sweep_dir: Path) -> None:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "collapse.train", "--config-dir", str(REPO / "sweeps"),
                           "--config-name", name, f"hydra.sweep.dir={sweep_dir}"], cwd=REPO,
                          capture_output=True, text=True)
    print(f"{name}: exit {proc.returncode} in {time.time() - t0:.0f} s ({sweep_dir})", file=sys.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/metrics.json"))]


SPLIT = "test"        # the split every figure and check reads (--split)


def r2(rec: dict) -> float:
    return rec["best"][SPLIT]["r2"] if rec.get("best") and rec["status"] in ("completed", "stopped_collapse") \
        else math.nan


def label(rec: dict) -> str:
    return ((rec.get("diagnosis") or {}).get(SPLIT) or {}).get("label") or rec["status"]




def labels(recs: list[dict]) -> str:
    found = [label(r) for r in recs]
    return ", ".join(f"{k} ×{found.count(k)}" for k in dict.fromkeys(found))


def cures_table(recs: list[dict]) -> tuple[str, list[tuple[bool, str]]]:
    cells: dict = defaultdict(dict)           # (experiment, cure) -> seed -> record
    for rec in recs:
        cells[(rec["choices"]["experiment"], rec["choices"]["cure"])][rec["seed"]] = rec
    lines = [f"| cure | overreg (pathological): {SPLIT} R² | diagnosis | run2 (no signal): {SPLIT} R² | diagnosis |",
             "|---|---|---|---|---|"]
    for cure in CURES:
        over, run2 = cells[("overreg", cure)], cells[("run2", cure)]
        lines.append(f"| {CURE_NAMES[cure]} | {fmt([r2(r) for r in over.values()])} | {labels(list(over.values()))} "
                     f"| {fmt([r2(r) for r in run2.values()])} | {labels(list(run2.values()))} |")
    checks = []
    for seed, base in sorted(cells[("overreg", "none")].items()):
        checks.append((label(base) == "collapsed", f"overreg seed {seed}: untreated run labelled {label(base)} "
                                                   "(expected collapsed)"))
        for cure, lift in (("variance", 0.3), ("hinge_train", 0.3), ("ccc", 0.1)):
            got = r2(cells[("overreg", cure)][seed])
            checks.append((got >= r2(base) + lift, f"overreg seed {seed}: {cure} lifts {SPLIT} R² by "
                                                   f"{got - r2(base):+.3f} >= {lift} ({r2(base):.3f} -> {got:.3f})"))
    for seed, base in sorted(cells[("run2", "none")].items()):
        checks.append((label(base) in ("no_signal", "inconclusive"),
                       f"run2 seed {seed}: untreated run labelled {label(base)} (no_signal or inconclusive)"))
        for cure in CURES[1:]:
            got = r2(cells[("run2", cure)][seed])
            checks.append((not got > r2(base) + 0.01, f"run2 seed {seed}: {cure} does not lift R² on no signal "
                                                      f"({r2(base):+.3f} -> {got:+.3f})"))
    return "\n".join(lines), checks


def phase4_table(recs: list[dict]) -> tuple[str, list[tuple[bool, str]]]:
    cells: dict = defaultdict(dict)
    for rec in recs:
        cfg = rec["config"]
        cells[(cfg["data"]["temporal_frames"], float(cfg["loss"]["variance_lambda"]))][rec["seed"]] = rec
    frames = sorted({f for f, _ in cells})
    lambdas = sorted({lam for _, lam in cells})
    lines = ["| frames | " + " | ".join(f"λ {lam:g}" for lam in lambdas) + " |", "|---|" + "---|" * len(lambdas)]
    for f in frames:
        lines.append(f"| {f} | " + " | ".join(f"{fmt([r2(r) for r in cells[(f, lam)].values()])} "
                                              f"({labels(list(cells[(f, lam)].values()))})" for lam in lambdas) + " |")
    checks = []
    for seed in sorted(cells[(7, 0.0)]):
        seven, three = r2(cells[(7, 0.0)][seed]), r2(cells[(3, 0.0)][seed])
        checks.append((seven < 0.1 and three > 0.8, f"seed {seed}: 7 frames see ~nothing ({seven:+.3f}), "
                                                    f"3 frames do ({three:+.3f})"))
        for f in (1, 3):
            base = r2(cells[(f, 0.0)][seed])
            for lam in lambdas[1:]:
                got = r2(cells[(f, lam)][seed])
                checks.append((got >= base - 0.05, f"seed {seed}, {f} frames: λ {lam:g} costs at most 0.05 {SPLIT} R² "
                                                   f"({base:+.3f} -> {got:+.3f}) with standardised targets"))
        for lam in lambdas[1:]:
            got = r2(cells[(7, lam)][seed])
            checks.append((got <= seven + 0.01, f"seed {seed}, 7 frames (no signal): λ {lam:g} does not lift R² "
                                                f"({seven:+.3f} -> {got:+.3f})"))
    return "\n".join(lines), checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cures", type=Path, help="a finished cures sweep (default: run one)")
    parser.add_argument("--phase4", type=Path, help="a finished phase4 sweep (default: run one)")
    parser.add_argument("--out", type=Path, help="also write the tables and checks to this file")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the split of every figure and check (default test: held out)")
    args = parser.parse_args(argv)
    global SPLIT
    SPLIT = args.split
    tmp = Path(tempfile.mkdtemp(prefix="collapse_sweeps_"))
    report, outcome = [], []
    for name, given, build in (("cures", args.cures, cures_table), ("phase4", args.phase4, phase4_table)):
        sweep_dir = given or tmp / name
        if given is None:
            run_sweep(name, sweep_dir)
        table, checks = build(records(sweep_dir))
        report.append(f"### {name} ({SPLIT} R² mean ± sd over seeds, {SPLIT} diagnoses; {sweep_dir})\n\n{table}\n")
        outcome += checks
    return finish("\n".join(report), outcome, args.out)


if __name__ == "__main__":
    sys.exit(main())
