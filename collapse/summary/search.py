"""The summary of a search (an Optuna sweep, or any sweep whose factors are continuous):
every job is its own cell, so there is no grid, no seeds to pool and no ANOVA. Instead:

- the trials ranked by the objective (the record's `monitor_value`: val R², or
  -val_loss with trainer.monitor=val_loss; what collapse.train.main returns to the
  sweeper), with val/test R², the variance ratio and the diagnosis of each;
- the best trial (and Optuna's own `optimization_results.yaml`, when there is one);
- parameter importance from Optuna (fANOVA on the finished trials, offline) when optuna
  is installed and at least 3 trials finished: with few trials it is a rough guide;
- summary_search.png: the objective against each parameter, the best trial marked.

Written as summary.{json,md,csv} and summary_search.png, like a grid's summary.
`is_search` says which summary a sweep directory gets (collapse.summary).
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import yaml

from collapse.summary.jobs import STATISTICS_STATUSES, Job, number
from collapse.summary.report import fmt, write_outputs

RESULTS_FILE = "optimization_results.yaml"      # collapse.sweep.study's (as hydra-optuna-sweeper's), in the sweep dir
SCHEMA = 1


def is_search(sweep_dir: Path, jobs: Sequence[Job], factors: Sequence[str], has_manifest: bool) -> bool:
    """An Optuna sweep (its results file), or one without a manifest whose jobs are each
    their own cell over numeric factors that do not form a grid."""
    if (Path(sweep_dir) / RESULTS_FILE).is_file():
        return True
    placed = [j for j in jobs if j.settings is not None]
    if has_manifest or not factors or len(placed) < 3:
        return False
    cells = {tuple(j.settings.get(f) for f in factors) for j in placed}
    if len(cells) != len(placed):
        return False
    if not all(number(j.settings.get(f)) is not None for j in placed for f in factors):
        return False
    levels = [len({j.settings.get(f) for j in placed}) for f in factors]
    return 2 * len(cells) < math.prod(levels)        # collapse.summary._plan's "not a grid"


def _sweeper_config(sweep_dir: Path) -> dict:
    try:
        config = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return ((config.get("hydra") or {}).get("sweeper")) or {}


def _metric(job: Job, split: str, key: str) -> Optional[float]:
    return number((((job.best or {}).get(split)) or {}).get(key))


def _importance(trials: list, factors: list, sweeper: dict) -> tuple[Optional[dict], Optional[str]]:
    """Optuna's parameter importance over the finished trials -> (importances, note)."""
    done = [t for t in trials if t["objective"] is not None]
    if len(done) < 3:
        return None, "parameter importance: needs at least 3 finished trials"
    try:
        import optuna
    except ImportError:
        return None, 'parameter importance: optuna is not installed (pip install "collapse[optuna]")'
    params = sweeper.get("params") or {}
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {}
        for f in factors:
            values = [t["params"][f] for t in done]
            low, high = min(values), max(values)
            if low == high:
                continue        # a parameter that never moved has no importance to measure
            log_scale = "log" in str(params.get(f, "")) and low > 0
            distributions[f] = optuna.distributions.FloatDistribution(low, high, log=log_scale)
        if not distributions:
            return None, "parameter importance: no parameter varied"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # optuna's experimental-feature warnings
            study = optuna.create_study(direction="maximize")
            for t in done:
                study.add_trial(optuna.trial.create_trial(
                    params={f: t["params"][f] for f in distributions}, distributions=distributions,
                    value=t["objective"]))
            # Mean decrease in impurity of a seeded random forest (fANOVA, Optuna's default, failed
            # inside optuna 2.10 with a current scikit-learn; MDI kept so the figures stay comparable)
            evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as e:  # noqa: BLE001 - importance is a bonus: never the summary's failure
        return None, f"parameter importance: not computed ({type(e).__name__}: {e})"
    note = (f"parameter importance: Optuna's mean decrease in impurity (seeded random forest) over {len(done)} "
            "finished trials, within the parameter ranges seen; with few trials it is a rough guide")
    return {k: float(v) for k, v in importances.items()}, note


def build(sweep_dir: Path, jobs: Sequence[Job], factors: list, info: dict, notes: list, problems: list) -> dict:
    """The search summary of `jobs` (read by collapse.summary.jobs.read_job)."""
    sweep_dir = Path(sweep_dir)
    sweeper = _sweeper_config(sweep_dir)
    trials = []
    for job in sorted(jobs, key=lambda j: (j.num is None, j.num or 0)):
        if job.settings is None:
            continue
        record = job.record or {}
        result = job.status in STATISTICS_STATUSES
        diagnosis = {split: job.diagnosis(split) for split in ("val", "test")}
        trials.append({
            "job": job.num, "status": job.status, "seed": job.seed,
            "params": {f: number(job.settings.get(f)) for f in factors},
            # a record without monitor_value (older ones) monitored val R²
            "objective": (number(record.get("monitor_value")) if record.get("monitor_value") is not None
                          or record.get("monitor") == "val_loss" else _metric(job, "val", "r2")) if result else None,
            "val_r2": _metric(job, "val", "r2"), "val_variance_ratio": _metric(job, "val", "variance_ratio"),
            "test_r2": _metric(job, "test", "r2"), "diagnosis": diagnosis})
    ranked = sorted(trials, key=lambda t: (t["objective"] is None, -(t["objective"] or 0.0)))
    for rank, t in enumerate(ranked, 1):
        t["rank"] = rank if t["objective"] is not None else None
    monitors = {str((j.record or {}).get("monitor")) for j in jobs if (j.record or {}).get("monitor")}
    objective = "val R²" if monitors == {"r2"} else "-val loss" if monitors == {"val_loss"} else "monitor value"
    if str(sweeper.get("direction", "maximize")).lower() not in ("maximize", "['maximize']"):
        notes.append(f"hydra.sweeper.direction={sweeper.get('direction')}: the objective (higher is better) "
                     "was minimised; the ranking here is by the objective, best first")
    optuna_best = None
    try:
        optuna_best = yaml.safe_load((sweep_dir / RESULTS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        pass
    importance, note = _importance(trials, factors, sweeper)
    if note:
        notes.append(note)
    by_status: dict = {}
    for job in jobs:
        by_status[job.status] = by_status.get(job.status, 0) + 1
    return {
        "schema": SCHEMA, "kind": "search", "sweep_dir": str(sweep_dir), "sweep_name": info.get("name"),
        "sweeper": sweeper.get("_target_") or ("optuna" if optuna_best else None),
        "objective": objective,
        "factors": [{"key": f, "log": "log" in str((sweeper.get("params") or {}).get(f, ""))} for f in factors],
        "jobs": {"total": len(jobs), "by_status": by_status},
        "trials": ranked, "best": ranked[0] if ranked and ranked[0]["objective"] is not None else None,
        "optuna_best": optuna_best, "importance": importance,
        "notes": notes, "problems": problems, "warnings": [], "files": [],
    }


def _param(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "—"


def _rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    factors = [f["key"] for f in summary["factors"]]
    r2 = summary["objective"] != "val R²"            # else the objective column is val R² already
    headers = ["rank", "job", *factors, summary["objective"], *(["val R²"] if r2 else []), "val var ratio",
               "test R²", "diagnosis val/test", "status"]
    rows = [[str(t["rank"] or "—"), str(t["job"]), *(_param(t["params"][f]) for f in factors),
             fmt(t["objective"]), *([fmt(t["val_r2"])] if r2 else []), fmt(t["val_variance_ratio"]),
             fmt(t["test_r2"]), f"{t['diagnosis']['val'] or '—'}/{t['diagnosis']['test'] or '—'}", t["status"]]
            for t in summary["trials"]]
    return headers, rows


def _lines(summary: dict) -> list[str]:
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary["jobs"]["by_status"].items()))
    lines = [f"search {summary['sweep_dir']}: {summary['jobs']['total']} trials ({statuses}); "
             f"objective {summary['objective']} (higher is better)"]
    best = summary["best"]
    if best:
        params = " ".join(f"{k}={_param(v)}" for k, v in best["params"].items())
        lines.append(f"best: job {best['job']}: {summary['objective']} {fmt(best['objective'])} at {params} "
                     f"(diagnosis val {best['diagnosis']['val']}, test {best['diagnosis']['test']}; "
                     f"test R² {fmt(best['test_r2'])})")
    else:
        lines.append("best: none (no trial finished with a result)")
    if summary.get("optuna_best"):
        lines.append(f"optuna's best value: {fmt(number(summary['optuna_best'].get('best_value')))} "
                     f"({RESULTS_FILE})")
    if summary["importance"]:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()))
    return lines


def render_text(summary: dict) -> str:
    headers, rows = _rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [headers, *rows]]
    lines = _lines(summary) + [f"note: {n}" for n in summary["notes"]] + ["", *table, ""]
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    headers, rows = _rows(summary)
    lines = [f"# Search summary: `{summary['sweep_dir']}`", "", *(f"- {x}" for x in _lines(summary)), ""]
    for title, items in (("Notes", summary["notes"]), ("Problems", summary["problems"])):
        if items:
            lines += [f"## {title}", "", *(f"- {x}" for x in items), ""]
    lines += ["## Trials, best first", "", "| " + " | ".join(headers) + " |",
              "|" + "---|" * len(headers), *("| " + " | ".join(r) + " |" for r in rows), ""]
    return "\n".join(lines)


def render_csv(summary: dict) -> str:
    factors = [f["key"] for f in summary["factors"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "job", "status", *factors, "objective", "val_r2", "val_variance_ratio", "test_r2",
                     "diagnosis_val", "diagnosis_test"])
    for t in summary["trials"]:
        writer.writerow([t["rank"], t["job"], t["status"], *(t["params"][f] for f in factors), t["objective"],
                         t["val_r2"], t["val_variance_ratio"], t["test_r2"], t["diagnosis"]["val"],
                         t["diagnosis"]["test"]])
    return buffer.getvalue()


def write_plot(summary: dict, out_dir: Path) -> Optional[Path]:
    """summary_search.png: the objective against each parameter (a log axis for a log-scale
    search parameter, or values spanning more than two decades), the best trial in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from collapse.summary.plots import save_figure

    factors = [f["key"] for f in summary["factors"]]
    done = [t for t in summary["trials"] if t["objective"] is not None]
    if not factors or not done:
        return None
    from matplotlib.ticker import LogLocator, NullFormatter

    fig, axes = plt.subplots(1, len(factors), figsize=(max(10.0, 3.8 * len(factors)), 4.0), squeeze=False,
                             sharey=True)
    best = summary["best"]
    log_scale = {f["key"]: f.get("log") for f in summary["factors"]}
    for ax, f in zip(axes[0], factors):
        xs, ys = [t["params"][f] for t in done], [t["objective"] for t in done]
        ax.scatter(xs, ys, s=22, color="tab:blue")
        if best:
            ax.scatter([best["params"][f]], [best["objective"]], s=60, color="tab:red", label="best")
        positive = [x for x in xs if x is not None and x > 0]
        if len(positive) == len(xs) and (log_scale.get(f) or max(positive) / min(positive) > 100):
            ax.set_xscale("log")
            # matplotlib's default labelled minor ticks within a decade, and they overlapped (or
            # left a narrow range with no label): a label a decade over wide ranges, else 4
            # log-spaced ticks at 2 significant digits; none on the minor ticks
            low, high = min(positive), max(positive)
            if high / low >= 100:
                ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
            else:
                ticks = sorted({float(f"{t:.2g}") for t in
                                (low * (high / low) ** (i / 3) for i in range(4))})
                ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(f)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(summary["objective"])
    if best:
        axes[0][0].legend(fontsize="small")
    fig.suptitle(f"objective against each parameter ({len(done)} trials)")
    path = save_figure(fig, Path(out_dir) / "summary_search.png")
    plt.close(fig)
    return path


def write(summary: dict, out_dir: Path, plots: bool = True) -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["files"] = []
    if plots:
        path = write_plot(summary, out_dir)
        if path is not None:
            summary["files"].append(path.name)
    from collapse.summary.html import write_html

    summary["files"].append(write_html(summary, out_dir))      # after the plot: it embeds it
    write_outputs(summary, out_dir, render_csv, render_markdown)
    return summary["files"]
