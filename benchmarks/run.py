"""Run every benchmark, print one table of figures, ratios and targets, write JSON.

    python -m benchmarks                      # full run (~10 min on 2 busy cores)
    python -m benchmarks --quick              # CI: tiny sizes, every benchmark once, no targets enforced
    python -m benchmarks --out bench.json --only throughput,startup
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import Result, Row, run_cmd, train_cmd

BENCHMARKS = ("throughput", "startup", "multirun_overhead", "parallel_sweep", "summary", "memory",
              "main_job", "scaling", "ensemble", "gpu")


def _slopes(points: list, unit: str, res: Result, label: str) -> None:
    """Per-item slope between consecutive sizes; growth is linear or better when the
    last slope is not above the first (25% allowed for noise)."""
    slopes = []
    for a, b in zip(points, points[1:]):
        slopes.append((b["seconds"] - a["seconds"]) / (b["n"] - a["n"]))
    for p in points:
        res.add(f"{label}: {p['n']} {unit}", p["seconds"], "s")
    for (a, b), s in zip(zip(points, points[1:]), slopes):
        res.add(f"{label}: slope {a['n']}->{b['n']}", s * 1000, f"ms/{unit[:-1] if unit.endswith('s') else unit}")
    growth = slopes[-1] / slopes[0] if slopes and slopes[0] > 0 else math.nan
    res.add(f"{label}: last slope / first slope", growth, "x", ("<=", 1.25), note="<= 1: linear or better")
    res.figures[label] = {"points": points, "slopes_s_per_item": slopes, "slope_growth": growth}


class Suite:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp, self.ctx = args, tmp, {}
        self.quick = args.quick
        self.repeats = args.repeats or (1 if args.quick else 5)

    def _phase4_dir(self) -> Path:
        if "phase4_dir" not in self.ctx:          # --only summary: make one grid to plot
            from benchmarks.processes import phase4_grid

            grid = phase4_grid(self.quick, self.args.phase4_epochs)
            d = self.tmp / "phase4_for_summary"
            run_cmd(train_cmd(*grid, f"hydra.sweep.dir={d}", config_name="phase4"), self.tmp)
            self.ctx["phase4_dir"] = d
        return self.ctx["phase4_dir"]

    def throughput(self) -> Result:
        from benchmarks.throughput import bench_throughput

        return bench_throughput(self.quick, 1 if self.quick else 3 * self.repeats)

    def startup(self) -> Result:
        from benchmarks.processes import bench_startup

        return bench_startup(self.quick, self.repeats, self.tmp, self.ctx)

    def multirun_overhead(self) -> Result:
        from benchmarks.processes import bench_multirun

        return bench_multirun(self.quick, 1 if self.quick else max(1, self.repeats // 2 + 1), self.tmp, self.ctx)

    def parallel_sweep(self) -> Result:
        from benchmarks.processes import bench_parallel

        return bench_parallel(self.quick, 1 if self.quick else self.args.parallel_repeats, self.tmp, self.ctx,
                              self.args.phase4_epochs)

    def summary(self) -> Result:
        from benchmarks.summary_bench import bench_summary, summary_available

        if not summary_available():
            return Result(skipped="collapse.summary is not there yet: summary benchmark skipped")
        phase4 = self._phase4_dir()
        return bench_summary(self.quick, self.repeats if self.quick else 3, self.tmp, phase4 / "0", phase4)

    def memory(self) -> Result:
        from benchmarks.memory import bench_memory

        self.ctx["phase4_epochs"] = self.args.phase4_epochs
        return bench_memory(self.quick, self.tmp, self.ctx)

    def main_job(self) -> Result:
        from benchmarks.processes import bench_main_job

        return bench_main_job(self.quick, self.tmp)

    def scaling(self) -> Result:
        from benchmarks.processes import bench_sweep_scaling
        from benchmarks.summary_bench import summary_available, summary_scaling

        res = Result()
        figures, points = bench_sweep_scaling(self.quick, self.tmp, self.ctx)
        _slopes(points, "jobs", res, "tiny sweep")
        if summary_available():
            figures, points = summary_scaling(self.quick, self.repeats if self.quick else 3, self.tmp,
                                              self._phase4_dir() / "0")
            _slopes(points, "runs", res, "summary (tables)")
        else:
            res.notes.append("collapse.summary is not there yet: summary scaling skipped")
        return res

    def ensemble(self) -> Result:
        from benchmarks.ensemble import bench_ensemble, bench_scaling

        res = bench_ensemble(self.quick, 1 if self.quick else self.args.parallel_repeats, self.tmp,
                             self.args.phase4_epochs, self.ctx)
        figures = {"phase4": res.figures}
        for model in (("mean_pool",) if self.quick else ("mean_pool", "temporal_conv", "gru")):
            scaling = bench_scaling(self.quick, model=model)
            res.rows += scaling.rows
            figures[f"scaling_{model}"] = scaling.figures
        res.figures = figures
        return res

    def gpu(self) -> Result:
        import torch

        if not torch.cuda.is_available():
            return Result(skipped="no CUDA device (torch.cuda.is_available() is False): "
                                  "GPU throughput and start-up skipped")
        from benchmarks.ensemble import bench_scaling
        from benchmarks.processes import bench_startup
        from benchmarks.throughput import bench_throughput

        res = bench_throughput(self.quick, 1 if self.quick else 3 * self.repeats, device="cuda")
        start = bench_startup(self.quick, self.repeats, self.tmp, self.ctx, device="cuda")
        res.rows += start.rows
        # members per stack against samples/s on the GPU, against one at a time there
        scaling = bench_scaling(self.quick, device="cuda")
        res.rows += scaling.rows
        start.figures["ensemble_scaling"] = scaling.figures
        res.figures = {"throughput": res.figures, "startup": start.figures,
                       "device_name": torch.cuda.get_device_name(0)}
        return res


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def print_table(results: dict, out=sys.stdout) -> None:
    lines = []
    for name, res in results.items():
        lines.append(f"== {name} ({res.seconds:.0f} s)")
        if res.skipped:
            lines.append(f"   SKIPPED: {res.skipped}")
        if res.error:
            lines.append(f"   ERROR: {res.error.splitlines()[0]}")
        for row in res.rows:
            target = "" if row.target is None else f"{row.target[0]} {row.target[1]:g}"
            status = row.status if row.target else ""
            lines.append(f"   {row.label:<58} {_fmt(row.value):>10} {row.unit:<10} {target:>8} {status:<4}"
                         + (f"  {row.note}" if row.note else ""))
        for note in res.notes:
            lines.append(f"   note: {note}")
    print("\n".join(lines), file=out, flush=True)


def machine() -> dict:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": os.getloadavg()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: tiny sizes, one repeat, targets not enforced")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per comparison (default 5; 1 with --quick)")
    parser.add_argument("--parallel-repeats", type=int, default=3,
                        help="repeats of the phase4 comparison (default 3: targets read at the median)")
    parser.add_argument("--phase4-epochs", type=int, default=20,
                        help="phase4 grid shortened to this many epochs, the same for both launchers, as the "
                             "issue allows (default 20; 0: as written, 60 with early stopping)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory of run outputs")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: unknown; choose from {', '.join(BENCHMARKS)}")

    Row.quick = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="collapse-bench-"))
    suite = Suite(args, tmp)
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    info = machine()
    print(f"collapse benchmarks{' (--quick)' if args.quick else ''}: {info['cores']} cores, {info['processor']}, "
          f"torch {info['torch']}, load average {info['loadavg_start'][0]:.2f}; outputs in {tmp}", flush=True)
    results: dict[str, Result] = {}
    try:
        for name in BENCHMARKS:
            if name not in names:
                continue
            b0 = time.perf_counter()
            try:
                res = getattr(suite, name)()
            except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
                res = Result(error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            res.seconds = time.perf_counter() - b0
            results[name] = res
            print_table({name: res})
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    rows = [r for res in results.values() for r in res.rows if r.target is not None]
    counts = {"pass": sum(r.status == "PASS" for r in rows), "miss": sum(r.status == "MISS" for r in rows),
              "errors": [n for n, r in results.items() if r.error],
              "skipped": [n for n, r in results.items() if r.skipped]}
    print(f"\n{counts['pass']} targets PASS, {counts['miss']} MISS"
          + (f", errors in: {', '.join(counts['errors'])}" if counts["errors"] else "")
          + f"; {time.perf_counter() - t0:.0f} s" + ("  (--quick: sizes are tiny, figures are not the targets')"
                                                     if args.quick else ""))
    for name in counts["errors"]:
        print(f"\n{name} failed:\n{results[name].error}", file=sys.stderr)
    if args.out:
        report = {"schema": 1, "command": " ".join(sys.argv), "quick": args.quick, "started_at": started,
                  "wall_s": time.perf_counter() - t0, "machine": info, "outcome": counts,
                  "benchmarks": {n: r.as_dict() for n, r in results.items()}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str, allow_nan=True))
        print(f"wrote {args.out}")
    return 1 if counts["errors"] else 0
