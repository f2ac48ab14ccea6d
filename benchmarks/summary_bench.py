"""Item 5 and the summary half of item 8: `collapse.summary.summarize` over fabricated
sweeps of 100 .. 10,000 run directories, and with plots over the real phase4 grid.

Alone, the scale benchmark (issue 19): the whole `python -m collapse.summary DIR --no-plots`
process over 1,000 runs (125 cells), 10,000 runs in 1,000 cells and 100,000 runs in 1,000
cells, wall and CPU seconds, against the targets 1 s (1k) and 3 s (10k):

    python -m benchmarks.summary_bench [--sizes 1000,10000,100000] [--repeats 3] [--template JOB_DIR]

Without --template, one short real run (collapse.train, 30 epochs) is the template.

Run directories are fabricated from one real job directory (its metrics.json, model.pt
and .hydra/ files) with varied overrides: a 3 x 4 x 5 grid (data.temporal_frames x
loss.variance_lambda x model.init_std) over as many seeds as it takes, metrics jittered
so that cells differ. Only the lines the summary reads are changed in hydra.yaml.
The timed summary is the whole statistics pass: cell statistics, the type II ANOVA and
EMMs of a 3-factor design with its two-factor interactions, paired tests with Holm and
power against the baseline; the factors come from each record's overrides and choices.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from pathlib import Path

from benchmarks.common import PY, Result, median, run_cmd

LEVELS = {"data.temporal_frames": ("1", "3", "7"),
          "loss.variance_lambda": ("0.0", "0.25", "0.5", "1.0"),
          "model.init_std": ("0.1", "0.25", "0.5", "1.0", "2.0")}
# time the summary call apart from the interpreter's start-up, in a fresh process
_TIMER = ("import json, sys, time\n"
          "t0 = time.perf_counter()\n"
          "from collapse.summary import summarize\n"
          "t1 = time.perf_counter()\n"
          "summarize(sys.argv[1], plots=sys.argv[2] == 'plots')\n"
          "print('BENCH', json.dumps([t1 - t0, time.perf_counter() - t1]))\n")


def _hydra_template(text: str) -> list:
    """hydra.yaml split into text and the placeholders task / dirname / num / output_dir."""
    parts, in_task, section = [], False, None
    for line in text.splitlines(keepends=True):
        if not line.startswith(" "):
            section = None
        elif not line.startswith("   "):
            section = line.strip().rstrip(":")          # overrides, job, runtime, ...
        if in_task and line.startswith("    - "):
            continue
        in_task = False
        if section == "overrides" and line == "    task:\n":
            parts += [line, ("task",)]
            in_task = True
        elif section == "job" and line.startswith("    num: "):
            parts.append(("num",))
        elif section == "job" and line.startswith("    override_dirname: "):
            parts.append(("dirname",))
        elif section == "runtime" and line.startswith("    output_dir: "):
            parts.append(("output_dir",))
        else:
            parts.append(line)
    return parts


def grid_levels(cells: int) -> dict:
    """A 3-factor grid of about `cells` cells (10 x 10 x 10 for 1,000): the three factors of
    LEVELS, each with as many levels as it takes."""
    side = max(2, round(cells ** (1 / 3)))
    return {"data.temporal_frames": tuple(str(1 + 2 * i) for i in range(side)),
            "loss.variance_lambda": tuple(f"{0.1 * i:g}" for i in range(side)),
            "model.init_std": tuple(f"{0.05 * (i + 1):g}" for i in range(side))}


def fabricate(template_dir: Path, sweep_dir: Path, n: int, seed: int = 0, levels: dict = LEVELS) -> Path:
    """Write `n` job directories 0..n-1 into `sweep_dir`, copied from `template_dir`: job i
    is cell i % cells, seed i // cells of the grid `levels` (Hydra's order)."""
    rng = random.Random(seed)
    keys = list(levels)
    cells = [tuple(c) for c in itertools.product(*(levels[k] for k in keys))]
    record = json.loads((template_dir / "metrics.json").read_text())
    hydra_parts = _hydra_template((template_dir / ".hydra" / "hydra.yaml").read_text())
    config_text = (template_dir / ".hydra" / "config.yaml").read_text()
    keep = [o for o in record["overrides"] if o.split("=")[0].lstrip("+~") not in (*keys, "seed")]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if (template_dir.parent / "multirun.yaml").exists():
        shutil.copy(template_dir.parent / "multirun.yaml", sweep_dir / "multirun.yaml")
    best = record.get("best") or {}
    weights = template_dir / "model.pt"
    for i in range(n):
        cell, seed_i = cells[i % len(cells)], i // len(cells)
        overrides = [f"{k}={v}" for k, v in zip(keys, cell)] + [f"seed={seed_i}"] + keep
        job_dir = sweep_dir / str(i)
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        values = {"task": "".join(f"    - {o}\n" for o in overrides),
                  "num": f"    num: {i}\n",
                  "dirname": f"    override_dirname: {','.join(sorted(overrides))}\n",
                  "output_dir": f"    output_dir: {job_dir}\n"}
        (job_dir / ".hydra" / "hydra.yaml").write_text(
            "".join(p if isinstance(p, str) else values[p[0]] for p in hydra_parts))
        (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (job_dir / ".hydra" / "config.yaml").write_text(config_text)
        shift = 0.05 * (i % len(cells)) / len(cells) + rng.gauss(0, 0.02)
        config = dict(record["config"])
        for key, value in zip(keys, cell):
            group, name = key.split(".")
            config[group] = {**config[group], name: float(value) if "." in value else int(value)}
        fake = {**record, "overrides": overrides, "config": config, "seed": seed_i,
                "job": {**record.get("job", {}), "num": i, "dir": str(job_dir)}}
        if best:
            fake["best"] = {**best, **{split: {k: (v + shift if isinstance(v, float) else v)
                                              for k, v in (best.get(split) or {}).items()}
                                       for split in ("val", "test")}}
        (job_dir / "metrics.json").write_text(json.dumps(fake, indent=1))
        if weights.exists():    # the summary checks each run's weights against its record's sha256
            try:
                os.link(weights, job_dir / weights.name)     # the same bytes to hash, no disk
            except OSError:
                shutil.copy(weights, job_dir / weights.name)
    os.sync()       # the timed summary must not share the disk with this write-back
    return sweep_dir


def time_summary(sweep_dir: Path, plots: bool, cwd: Path) -> dict:
    timed = run_cmd([PY, "-c", _TIMER, str(sweep_dir), "plots" if plots else "tables"], cwd)
    line = [ln for ln in timed.stdout.splitlines() if ln.startswith("BENCH ")][-1]
    import_s, call_s = json.loads(line[6:])
    return {"process_s": timed.seconds, "import_s": import_s, "call_s": call_s}


def summary_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("collapse.summary") is not None


def bench_summary(quick: bool, repeats: int, tmp: Path, template_dir: Path, phase4_dir: Path) -> Result:
    res = Result()
    n = 20 if quick else 1000
    fab = fabricate(template_dir, tmp / f"fabricated_{n}", n)
    tables = [time_summary(fab, False, tmp) for _ in range(repeats)]
    plots = [time_summary(phase4_dir, True, tmp) for _ in range(repeats)]
    res.figures = {"runs": n, "template": str(template_dir), "repeats": repeats, "tables": tables,
                   "phase4_plots": plots,
                   "phase4_jobs": sum(1 for p in phase4_dir.iterdir() if p.name.isascii() and p.name.isdigit())}
    res.add(f"summary of {n} runs, tables only, ANOVA/EMMs/paired tests included (whole process)",
            median([t["process_s"] for t in tables]), "s", ("<=", 1.0))
    res.add("  of which summarize() itself", median([t["call_s"] for t in tables]), "s")
    res.add(f"summary with plots, phase4 grid ({res.figures['phase4_jobs']} jobs, whole process)",
            median([t["process_s"] for t in plots]), "s", ("<=", 5.0))
    res.add("  of which summarize() itself", median([t["call_s"] for t in plots]), "s")
    return res


def summary_scaling(quick: bool, repeats: int, tmp: Path, template_dir: Path) -> tuple[dict, list]:
    sizes = (10, 20, 40) if quick else (100, 1000, 10000)
    points = []
    for n in sizes:
        fab = fabricate(template_dir, tmp / f"scaling_{n}", n)
        runs = [time_summary(fab, False, tmp) for _ in range(repeats if n < 10000 else max(2, repeats - 1))]
        points.append({"n": n, "seconds": median([r["call_s"] for r in runs]),
                       "process_s": median([r["process_s"] for r in runs])})
        shutil.rmtree(fab, ignore_errors=True)
    return {"sizes": list(sizes), "seconds": [p["seconds"] for p in points]}, points


# ---------------------------------------------------------------- the scale benchmark, alone

SCALE = {1000: 125, 10000: 1000, 100000: 1000}      # runs -> cells
TARGETS = {1000: 1.0, 10000: 3.0}                   # whole process, seconds


def time_cli(sweep_dir: Path, out_dir: Path, drop_caches: bool = False) -> dict:
    """Wall and CPU seconds of `python -m collapse.summary DIR --no-plots --out OUT`;
    `drop_caches`: with nothing in the page cache (the interpreter's own files neither),
    as a sweep read days after it ran."""
    import resource
    import subprocess
    import time

    from benchmarks.common import child_env

    if drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")     # PermissionError unless root
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([PY, "-m", "collapse.summary", str(sweep_dir), "--no-plots", "--out", str(out_dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"collapse.summary {sweep_dir} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def make_template(tmp: Path) -> Path:
    """One real job directory (30 epochs: a 24 kB metrics.json with its history)."""
    from benchmarks.common import train_cmd

    sweep = tmp / "template"
    run_cmd(train_cmd("seed=0", "trainer.epochs=30", "data.n_samples=400", "hydra/launcher=basic",
                      f"hydra.sweep.dir={sweep}", multirun=True), tmp)
    return sweep / "0"


def power_table() -> None:
    """The detectable difference (in SDs of the paired differences, 80% power, α 0.05) that
    docs/summary.md quotes, beside statsmodels' TTestPower where it is installed."""
    from collapse.summary import stats

    try:
        from statsmodels.stats.power import TTestPower
    except ImportError:
        TTestPower = None
    for n in (2, 3, 4, 10):
        ours = stats.detectable_difference(1.0, n)
        line = f"detectable difference at {n} pairs: {ours:.2f} SDs"
        if TTestPower is not None:
            ref = abs(float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8)))
            if abs(ours - ref) > 1e-4 * ref:
                raise RuntimeError(f"{line}, statsmodels {ref:.4f}: they disagree")
            line += f" (statsmodels {ref:.2f})"
        print(line)


def main(argv=None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary_bench", description=__doc__.split("\n\n")[2])
    parser.add_argument("--sizes", default="1000,10000,100000", help="run counts (default 1000,10000,100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed summaries per size; the median is shown")
    parser.add_argument("--template", type=Path, default=None, help="a job directory to copy (default: one real run)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to fabricate the sweeps (default: a temp dir)")
    parser.add_argument("--cold", action="store_true",
                        help="also time each size with the page cache dropped first (root: /proc/sys/vm/drop_caches)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    power_table()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        template = args.template or make_template(tmp)
        print(f"template {template} ({(template / 'metrics.json').stat().st_size / 1e3:.1f} kB metrics.json)")
        print(f"{'runs':>7} {'cells':>6} {'wall s (median)':>16} {'cpu s':>7} {'target':>8}  repeats (wall)")
        for n in sizes:
            cells = SCALE.get(n, min(1000, max(8, n // 10)))
            sweep = fabricate(template, tmp / f"sweep_{n}", n, levels=grid_levels(cells))
            cells = len(list(itertools.product(*grid_levels(cells).values())))
            runs = [time_cli(sweep, tmp / f"out_{n}") for _ in range(args.repeats if n < 100000 else 1)]
            wall, cpu = median([r["wall_s"] for r in runs]), median([r["cpu_s"] for r in runs])
            target = TARGETS.get(n)
            verdict = "" if target is None else f"<= {target:g} {'ok' if wall <= target else 'MISSED'}"
            print(f"{n:>7} {cells:>6} {wall:>16.2f} {cpu:>7.2f} {verdict:>8}  "
                  + " ".join(f"{r['wall_s']:.2f}" for r in runs), flush=True)
            if args.cold:
                cold = [time_cli(sweep, tmp / f"out_{n}", drop_caches=True) for _ in runs]
                print(f"{'':>7} {'cold':>6} {median([r['wall_s'] for r in cold]):>16.2f} "
                      f"{median([r['cpu_s'] for r in cold]):>7.2f} {'':>8}  "
                      + " ".join(f"{r['wall_s']:.2f}" for r in cold), flush=True)
            shutil.rmtree(sweep, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
