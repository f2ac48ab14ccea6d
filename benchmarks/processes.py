"""Whole-process benchmarks: start-up (2, 9), multirun overhead (3), parallel sweeps (4),
the README's main job (7) and sweep scaling (8). Every command runs in a subprocess
with its working directory and all outputs in a temporary directory."""
from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.common import PY, TINY, Result, job_records, median, run_cmd, train_cmd

HEAVY = ("sklearn", "matplotlib", "scipy", "pandas", "mlflow", "tensorboard", "optuna")   # logger=none loads none
BASE = "import torch, hydra"
# A run's process ends as collapse.train.cli ends it: the garbage collected, the rest of the heap
# frozen, so CPython's shutdown does not walk torch's objects. The scripts it is compared with end
# the same way (the differences say what start-up costs); "process end" times Python's own ending.
END = "\nimport gc; gc.collect(); gc.freeze()"
# A hand-written torch script's least work before its first epoch can end: one torch.optim
# step. torch.optim imports torch._dynamo at its first use (~1.2 s here); a run trains with
# collapse.optim (the same arithmetic) and pays none of it: the figure says what that saves.
FLOOR = ("import torch, hydra\n"
         "m = torch.nn.Linear(8, 1).to('{device}')\n"
         "opt = torch.optim.Adam(m.parameters(), lr=1e-3)\n"
         "m(torch.zeros(4, 8, device='{device}')).sum().backward()\n"
         "opt.step()" + END)
WORKERS_READY = re.compile(r"worker processes ready in ([0-9.]+) s")
_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def _imports(output: str) -> dict[str, tuple[int, int]]:
    """`-X importtime` output -> {module: (depth, cumulative microseconds)}."""
    found = {}
    for line in output.splitlines():
        m = _IMPORT.match(line)
        if m:
            found[m.group(4)] = (len(m.group(3)) // 2, int(m.group(2)))
    return found


def bench_startup(quick: bool, repeats: int, tmp: Path, ctx: dict, device: str = "cpu") -> Result:
    res = Result()
    tag = "" if device == "cpu" else f" [{device}]"
    base, floor, run, plain_end, import_out = [], [], [], [], ""
    # --quick (CI) times what runs collapse's code; the two scripts that time torch and Python alone
    # (torch.optim's first step, CPython's own process end: ~5 s of CPU on 2 cores) wait for a full run
    ends = [(base, BASE + END), (plain_end, BASE)] if device == "cpu" and not quick else [(base, BASE + END)]
    for i in range(repeats):
        for times, script in (ends if i % 2 == 0 else ends[::-1]):
            times.append(run_cmd([PY, "-c", script], tmp).seconds)
        if not quick:
            floor.append(run_cmd([PY, "-c", FLOOR.format(device=device)], tmp).seconds)
        # --quick times the -X importtime run itself (one process less; figures are not targets there)
        importtime = ["-X", "importtime"] if quick and i == 0 and device == "cpu" else []
        cmd = train_cmd(*TINY, f"trainer.device={device}", f"hydra.run.dir={tmp}/run{i}_{device}")
        timed = run_cmd([PY, *importtime, *cmd[1:]], tmp)
        import_out = timed.stdout if importtime else import_out
        run.append(timed.seconds)
        ctx.setdefault(f"tiny_run_maxrss_mb_{device}", []).append(timed.maxrss_mb)
    overhead = median([r - b for r, b in zip(run, base)])
    res.figures = {"device": device, "repeats": repeats, "import_torch_hydra_s": base, "tiny_run_s": run,
                   "startup_overhead_s": overhead}
    res.add(f"python -c '{BASE}', ending as a run ends{tag}", median(base), "s")
    res.add(f"1-epoch tiny run (whole process){tag}", median(run), "s")
    res.add(f"start-up: run - import torch, hydra{tag}", overhead, "s", ("<=", 0.5))
    if floor:
        torch_share = median([f - b for f, b in zip(floor, base)])
        res.figures.update({"first_optimizer_step_script_s": floor, "torch_optim_first_step_s": torch_share})
        res.add(f"torch.optim's first step, which a run does not take{tag}", torch_share, "s",
                note="hand-written 1-step torch.optim script - import torch, hydra: torch._dynamo's import")
    else:
        res.notes.append("--quick: torch.optim's first step and Python's own process end are timed in a full run")
    if plain_end:
        res.figures["import_torch_hydra_python_ending_s"] = plain_end
        res.add("process end: Python's own - a run's (heap frozen)",
                median([p - b for p, b in zip(plain_end, base)]), "s",
                note="after import torch, hydra: CPython's shutdown walking the heap")

    if device == "cpu":
        # what the run path imports: nothing heavy unless the run needs it
        if not import_out:
            cmd = train_cmd(*TINY, f"hydra.run.dir={tmp}/imports")
            import_out = run_cmd([PY, "-X", "importtime", *cmd[1:]], tmp).stdout
        mods = _imports(import_out)
        base_mods = {} if quick else _imports(run_cmd([PY, "-X", "importtime", "-c", BASE], tmp).stdout)
        heavy = sorted({m.split(".")[0] for m in mods} & set(HEAVY))
        extra = sorted(((us, m) for m, (depth, us) in mods.items() if depth == 0 and m not in base_mods),
                       reverse=True)[:8]
        res.figures.update({"heavy_imports": heavy, "modules_imported": len(mods),
                            "slowest_top_level_imports_beyond_base_ms": {m: round(us / 1000, 1) for us, m in extra}})
        res.add("heavy modules on the run path (" + ", ".join(HEAVY) + ")", len(heavy), "modules", ("<=", 0),
                note=", ".join(heavy) or "none")
    return res


def tiny_sweep(n: int, tmp: Path, ctx: dict, tag: str) -> dict:
    """A basic-launcher sweep of `n` tiny jobs: wall time and the jobs' own wall_time_s."""
    sweep_dir = tmp / f"sweep_{n}_{tag}"
    timed = run_cmd(train_cmd(f"seed=range(0,{n})", *TINY, "hydra/launcher=basic", f"hydra.sweep.dir={sweep_dir}",
                              multirun=True), tmp)
    recs = job_records(sweep_dir)
    assert len(recs) == n and all(r["status"] == "completed" for r in recs), f"{sweep_dir}: jobs missing or failed"
    ctx.setdefault("tiny_job_dir", sweep_dir / "0")
    return {"n": n, "seconds": timed.seconds, "train_s": sum(r["wall_time_s"] for r in recs)}


def bench_multirun(quick: bool, repeats: int, tmp: Path, ctx: dict) -> Result:
    res = Result()
    n = 2 if quick else 20
    pairs = []
    for i in range(repeats):
        one, many = tiny_sweep(1, tmp, ctx, f"m{i}"), tiny_sweep(n, tmp, ctx, f"m{i}")
        pairs.append((one, many))
        ctx.setdefault("sweeps", []).extend([one, many])
    marginal = median([((b["seconds"] - a["seconds"]) - (b["train_s"] - a["train_s"])) / (n - 1) for a, b in pairs])
    amortised = median([(b["seconds"] - b["train_s"]) / n for _, b in pairs])
    res.figures = {"jobs": n, "repeats": repeats, "runs": pairs, "per_job_overhead_s": marginal,
                   "per_job_overhead_amortised_s": amortised}
    res.add(f"{n}-job tiny sweep, wall", median([b["seconds"] for _, b in pairs]), "s")
    res.add(f"{n}-job tiny sweep, jobs' own wall_time_s", median([b["train_s"] for _, b in pairs]), "s")
    res.add("per-job overhead beyond training", marginal, "s/job", ("<=", 0.15),
            note=f"({n}-job sweep - 1-job sweep) less training, / {n - 1}")
    res.add("  same, with process start-up amortised", amortised, "s/job",
            note=f"({n}-job sweep - training) / {n}")
    return res


def _result_key(record: dict) -> tuple:
    # the job's overrides, less the thread count (how it ran, not what it computes)
    return tuple(sorted(o for o in record["overrides"] if not o.startswith("trainer.threads=")))


def _outcome(record: dict) -> str:
    keep = ("status", "stop_reason", "best_epoch", "best", "monitor_value", "epochs_run")
    return json.dumps({k: record.get(k) for k in keep}, sort_keys=True)


class BusyCore:
    """A process spinning on one core for as long as the block runs: a neighbour on a
    shared machine (another user's job, a notebook kernel)."""

    def __enter__(self) -> "BusyCore":
        import subprocess

        self.proc = subprocess.Popen([PY, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def phase4_grid(quick: bool, epochs: int = 0) -> list[str]:
    """The overrides of the phase4 sweep the benchmarks time (--quick: 4 tiny jobs)."""
    if quick:
        return ["seed=0", "data.temporal_frames=1,3", "loss.variance_lambda=0.0,0.5", *TINY]
    return [f"trainer.epochs={epochs}"] if epochs else []


def bench_parallel(quick: bool, repeats: int, tmp: Path, ctx: dict, epochs: int = 0) -> Result:
    """phase4 under the old default (basic launcher, cores threads per job), the serial
    one-thread baseline, and the new default (collapse's parallel launcher), alone and
    beside a busy core. Share of the machine's limit = (serial 1-thread time / usable
    cores) / wall time of the default: 1.0 would be a perfect split over the cores."""
    from collapse.sweep.cores import usable_cores

    res = Result()
    cores = usable_cores()
    grid = phase4_grid(quick, epochs)
    variants = {"old_default": ["hydra/launcher=basic"],          # before: sequential, cores threads a job
                "serial_1t": ["hydra/launcher=basic", "trainer.threads=1"],
                # Hydra's joblib launcher, sized the same way: what collapse's own launcher replaced
                "joblib": ["hydra/launcher=joblib", "hydra/sweeper=basic"],
                "default": []}
    busy = {} if quick else {"default_busy": [], "old_default_busy": ["hydra/launcher=basic"]}
    times: dict[str, list] = {k: [] for k in (*variants, *busy)}
    same, jobs, startups = [], 0, []
    for i in range(repeats):
        dirs = {name: tmp / f"phase4_{name}_{i}" for name in times}
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            # not sampled for memory (a /proc scan every 0.1 s takes CPU from the jobs), but under
            # --quick, where no figure is a target: the default's sweep is then memory's and the
            # ensemble item's baseline too, one phase4 sweep instead of three
            sample = quick and name == "default"
            timed = run_cmd(train_cmd(*grid, *variants[name], f"hydra.sweep.dir={dirs[name]}", config_name="phase4"),
                            tmp, sample_tree=sample)
            times[name].append(timed.seconds)
            if sample:
                ctx["quick_default_phase4"] = {"dir": dirs[name], "seconds": timed.seconds,
                                               "tree_peak_mb": timed.tree_peak_mb}
            if name == "default":       # the launcher says when its workers could take their first job
                found = WORKERS_READY.search(timed.stdout)    # stdout + stderr
                if found:
                    startups.append(float(found.group(1)))
        for name, extra in busy.items():
            with BusyCore():
                times[name].append(run_cmd(train_cmd(*grid, *extra, f"hydra.sweep.dir={dirs[name]}",
                                                     config_name="phase4"), tmp).seconds)
        reference = {_result_key(r): r for r in job_records(dirs["old_default"])}
        jobs = len(reference)
        for name in times:
            if name != "old_default":
                other = {_result_key(r): r for r in job_records(dirs[name])}
                same.append(sum(1 for k, r in reference.items() if k in other and _outcome(r) == _outcome(other[k]))
                            / max(1, jobs))
        ctx["phase4_dir"] = dirs["old_default"]
        ctx["phase4_threads"] = {name: sorted({r["threads"] for r in job_records(d)}) for name, d in dirs.items()}
        ctx["phase4_workers"] = {name: len({r["provenance"]["pid"] for r in job_records(d)})
                                 for name, d in dirs.items()}

    def pick(ratios: list, higher_is_better: bool = True) -> float:
        # fewer than 3 repeats: a median is a mean, and one contended run would carry it;
        # so the least favourable ratio
        if len(ratios) >= 3:
            return median(ratios)
        return min(ratios) if higher_is_better else max(ratios)

    share = [(s / cores) / d for s, d in zip(times["serial_1t"], times["default"])]
    joblib_share = [(s / cores) / d for s, d in zip(times["serial_1t"], times["joblib"])]
    speedup = [o / d for o, d in zip(times["old_default"], times["default"])]
    res.figures = {"jobs": jobs, "repeats": repeats, "usable_cores": cores, "grid_overrides": grid,
                   **{f"{k}_s": v for k, v in times.items()}, "share_of_limit": share,
                   "joblib_share_of_limit": joblib_share,
                   "speedup_vs_old_default": speedup, "identical_fraction": min(same),
                   "threads_per_job": ctx["phase4_threads"], "worker_processes": ctx["phase4_workers"]}
    label = f"phase4 grid ({jobs} jobs)"
    res.add(f"{label}, serial, 1 thread/job (baseline)", median(times["serial_1t"]), "s")
    res.add(f"{label}, old default (basic launcher)", median(times["old_default"]), "s",
            note=f"threads/job {ctx['phase4_threads']['old_default']}")
    res.add(f"{label}, Hydra's joblib launcher", median(times["joblib"]), "s",
            note=f"{ctx['phase4_workers']['joblib']} workers, threads/job {ctx['phase4_threads']['joblib']}")
    res.add(f"{label}, new default (parallel launcher)", median(times["default"]), "s",
            note=f"{ctx['phase4_workers']['default']} workers, threads/job {ctx['phase4_threads']['default']}")
    res.add(f"share of the {cores}-core limit (serial 1-thread / {cores} / default)", pick(share), "fraction",
            (">=", 0.85), note=", ".join(f"{x:.2f}" for x in share))
    res.add(f"share of the {cores}-core limit, Hydra's joblib launcher", pick(joblib_share), "fraction",
            note=", ".join(f"{x:.2f}" for x in joblib_share))
    res.add("speedup, new default vs old default", pick(speedup), "x", note=", ".join(f"{x:.2f}" for x in speedup))
    res.figures["worker_startup_s"] = startups
    if startups:
        startup = median(startups)
        # parallel wins once the training it splits saves more than the start-up: with c
        # cores, total training T takes T/c + S instead of T, so break-even is T = S c/(c-1)
        res.add("worker start-up (launcher start to every worker ready)", startup, "s",
                note=f"break-even at {startup * cores / max(1, cores - 1):.1f} s of total training on {cores} cores")
    if busy:
        slow = [b / d for b, d in zip(times["default_busy"], times["default"])]
        old_slow = [b / d for b, d in zip(times["old_default_busy"], times["old_default"])]
        res.figures.update({"busy_core_slowdown": slow, "old_default_busy_core_slowdown": old_slow})
        res.add(f"{label}, new default beside a busy core", median(times["default_busy"]), "s")
        res.add("busy-core slowdown, new default", pick(slow, higher_is_better=False), "x", ("<=", 1.6),
                note=", ".join(f"{x:.2f}" for x in slow))
        res.add("busy-core slowdown, old default", pick(old_slow, higher_is_better=False), "x",
                note=", ".join(f"{x:.2f}" for x in old_slow))
    res.add("jobs with identical results (vs the old default)", min(same), "fraction", (">=", 1.0),
            note="status, stop, best epoch, best val/test metrics")
    single_run_threads(quick, repeats, tmp, res, cores)
    return res


def single_run_threads(quick: bool, repeats: int, tmp: Path, res: Result, cores: int) -> None:
    """A single run of the default config with 1 torch thread and with every usable core,
    alternated: the training seconds (the record's wall_time_s, start-up excluded)."""
    epochs = ["trainer.epochs=1", "data.n_samples=2000"] if quick else ["trainer.epochs=10", "trainer.patience=0"]
    seconds: dict[int, list] = {1: [], cores: []}
    for i in range(repeats):
        for threads in (list(seconds) if i % 2 == 0 else list(reversed(seconds))):
            run_dir = tmp / f"single_{threads}t_{i}"
            run_cmd(train_cmd(*epochs, f"trainer.threads={threads}", f"hydra.run.dir={run_dir}"), tmp)
            seconds[threads].append(json.loads((run_dir / "metrics.json").read_text())["wall_time_s"])
    ratio = [one / many for one, many in zip(seconds[1], seconds[cores])]
    res.figures["single_run_training_s"] = {str(k): v for k, v in seconds.items()}
    res.add("single run (default config), training with 1 thread", median(seconds[1]), "s")
    res.add(f"single run (default config), training with {cores} threads", median(seconds[cores]), "s")
    res.add(f"single run: speedup of {cores} threads over 1", median(ratio), "x",
            note=", ".join(f"{x:.2f}" for x in ratio))


def bench_main_job(quick: bool, tmp: Path) -> Result:
    """`make run`: the quick sweep, then its summary (as in the Makefile)."""
    res = Result()
    sweep_dir = tmp / "main_job"
    shrink = ["seed=0", "data.temporal_frames=3", "loss.variance_lambda=0.0", *TINY] if quick else []
    sweep = run_cmd(train_cmd(*shrink, f"hydra.sweep.dir={sweep_dir}", config_name="quick"), tmp)
    summary = run_cmd([PY, "-m", "collapse.summary", str(sweep_dir)], tmp)
    total = sweep.seconds + summary.seconds
    res.figures = {"sweep_s": sweep.seconds, "summary_s": summary.seconds, "total_s": total,
                   "jobs": len(job_records(sweep_dir)), "shrunk": quick}
    if quick:
        res.notes.append("--quick: the main job ran shrunk to one tiny job (" + " ".join(shrink) + ")")
    res.add("make run: quick sweep", sweep.seconds, "s")
    res.add("make run: summary", summary.seconds, "s")
    res.add("make run: total" + (" (shrunk)" if quick else ""), total, "s", ("<=", 180))
    return res


def bench_sweep_scaling(quick: bool, tmp: Path, ctx: dict) -> tuple[dict, list]:
    """Sweeps of 4, 16, 64 tiny jobs: wall time per size."""
    sizes = (1, 2) if quick else (4, 16, 64)       # --quick: the multirun benchmark's sweeps
    cached = {s["n"]: s for s in ctx.get("sweeps", [])}
    points = [cached[n] if quick and n in cached else tiny_sweep(n, tmp, ctx, "scale") for n in sizes]
    return {"sizes": list(sizes), "seconds": [p["seconds"] for p in points],
            "train_s": [p["train_s"] for p in points]}, points
