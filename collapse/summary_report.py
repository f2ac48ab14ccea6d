"""Render a sweep summary (the dict collapse.summary.summarize builds): the ranked
text table, summary.md, summary.csv, and the writer of summary.{csv,md,json}.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from collapse import records
from collapse.sweep_jobs import DIAGNOSES, EFFECT_KEYS, PAIRED_KEYS, STAT_KEYS, STATES


def _fmt(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def _mean_ci(stats: dict, sign: str = "") -> str:
    """`mean ± half-width of the 95% CI` (the mean alone when n < 2)."""
    if not math.isfinite(stats["mean"]):
        return "—"
    half = (stats["ci_high"] - stats["ci_low"]) / 2
    mean = f"{stats['mean']:{sign}.3f}"
    return f"{mean} ± {half:.3f}" if math.isfinite(half) else mean


def _cell_flags(c: dict) -> str:
    flags = ["baseline"] if c["baseline"] else []
    flags += [f"{n} {s}" for s, n in c["counts"].items() if n and s not in ("completed", "stopped_collapse")]
    if c["warning"]:
        flags.append("WARN var up, R² down")
    return ", ".join(flags)


def _ranked_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    factors = [f["key"] for f in summary["factors"]]
    headers = ["rank", *factors, "results", "val R² (95% CI)", "test R²", "val var ratio (95% CI)",
               "collapse", "healthy/collapsed/no_signal", "verdict", "ΔR² vs base (paired)", "flags"]
    rows = []
    for c in summary["cells"]:
        m, d = c["metrics"], c["vs_baseline"]["val.r2"]
        expected = sum(c["counts"].values())      # the cell's jobs, missing ones included
        delta = "" if c["baseline"] else (_mean_ci(d, "+") + f" (n {d['n_pairs']})" if d["n_pairs"] else "—")
        rows.append([str(c["rank"]), *(str(c["settings"][f]) for f in factors), f"{c['n_results']}/{expected}",
                     _mean_ci(m["val.r2"]), _fmt(m["test.r2"]["mean"]), _mean_ci(m["val.variance_ratio"]),
                     _fmt(c["collapse_rate"], 2), "/".join(str(c["diagnosis"][k]) for k in DIAGNOSES),
                     c["verdict"], delta, _cell_flags(c)])
    return headers, rows


def _text_table(headers, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (headers, *rows)]


def _md_table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(x) for x in row) + " |" for row in rows)]


def _effect_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["factor", "level", "n", "val R² (95% CI)", "val var ratio (95% CI)", "eta² R²", "eta² var ratio"]
    rows = []
    for e in summary["main_effects"]:
        for i, lvl in enumerate(e["levels"]):
            eta = [_fmt(e["eta_squared"][k], 2) if i == 0 else "" for k in EFFECT_KEYS]
            rows.append([e["factor"] if i == 0 else "", str(lvl["value"]), str(lvl["val.r2"]["n"]),
                         _mean_ci(lvl["val.r2"]), _mean_ci(lvl["val.variance_ratio"]), *eta])
    return headers, rows


def _paired_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["cell", "pairs", "Δ val R² (95% CI)", "Δ val var ratio (95% CI)", "Δ test R² (95% CI)"]
    rows = [[c["label"], str(c["vs_baseline"]["val.r2"]["n_pairs"]),
             *(_mean_ci(c["vs_baseline"][k], "+") for k in PAIRED_KEYS)]
            for c in summary["cells"] if not c["baseline"]]
    return headers, rows


def _header_lines(summary: dict) -> list[str]:
    th, j = summary["thresholds"], summary["jobs"]
    statuses = ", ".join(f"{n} {s}" for s, n in j["by_status"].items() if n)
    factors = "; ".join(f"{f['key']} ({', '.join(map(str, f['levels']))})" for f in summary["factors"]) or "none"
    ve = summary["variance_explained"]
    return [f"sweep {summary['sweep_dir']}: {j['total']} jobs ({statuses}); {len(summary['cells'])} cells "
            f"x {len(summary['seeds'])} seeds",
            f"factors: {factors}",
            f"baseline: {summary['baseline']['label']} ({summary['baseline']['source']})",
            f"verdict on mean val R² > {'/'.join(map(str, th['r2']))} and val variance ratio > "
            f"{'/'.join(map(str, th['ratio']))} (minimum/good/excellent); collapse: val variance ratio "
            f"< {th['collapse']:g} or diagnosis collapsed",
            f"share of run-to-run variance of val R² explained by the cells: {_fmt(ve['cells']['val.r2'], 2)}, "
            f"within cells (seeds): {_fmt(ve['within_cells']['val.r2'], 2)}"]


def render_text(summary: dict) -> str:
    lines = _header_lines(summary) + [f"note: {n}" for n in summary["notes"]] + [""]
    lines += _text_table(*_ranked_rows(summary))
    if summary["main_effects"]:
        lines += ["", "main effects (marginal means over result runs):", *_text_table(*_effect_rows(summary))]
    if len(summary["cells"]) > 1:
        lines += ["", "paired differences vs baseline (same seed, cell - baseline):",
                  *_text_table(*_paired_rows(summary))]
    lines += [""] + [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(summary: dict) -> str:
    lines = [f"# Sweep summary: `{summary['sweep_dir']}`", "", *(f"- {x}" for x in _header_lines(summary)), ""]
    for title, items in (("Warnings", summary["warnings"]), ("Notes", summary["notes"]),
                         ("Problems", summary["problems"])):
        if items:
            lines += [f"## {title}", "", *(f"- {x}" for x in items), ""]
    lines += ["## Cells, ranked by mean val R²", "", *_md_table(*_ranked_rows(summary)), ""]
    if summary["main_effects"]:
        lines += ["## Main effects", "", *_md_table(*_effect_rows(summary)), ""]
    if len(summary["cells"]) > 1:
        lines += ["## Paired differences vs baseline", "", *_md_table(*_paired_rows(summary)), ""]
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    if pngs:
        lines += ["## Plots", "", *(f"![{f}]({f})" for f in pngs), ""]
    return "\n".join(lines)


def render_csv(summary: dict) -> str:
    """One row per cell, ranked; floats unrounded, NaN as empty."""
    factors = [f["key"] for f in summary["factors"]]
    stat_fields, pair_fields = ("mean", "std", "ci_low", "ci_high"), ("mean", "ci_low", "ci_high", "n_pairs")
    header = ["rank", "cell", *factors, "baseline", "n_results", *STATES,
              *(f"{k.replace('.', '_')}_{s}" for k in STAT_KEYS for s in stat_fields),
              "collapse_rate", *DIAGNOSES, "verdict",
              *(f"delta_{k.replace('.', '_')}_{s}" for k in PAIRED_KEYS for s in pair_fields), "warning"]

    def num(x):
        return "" if isinstance(x, float) and not math.isfinite(x) else x

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for c in summary["cells"]:
        writer.writerow([c["rank"], c["label"], *(c["settings"][f] for f in factors), c["baseline"], c["n_results"],
                         *(c["counts"][s] for s in STATES),
                         *(num(c["metrics"][k][s]) for k in STAT_KEYS for s in stat_fields),
                         num(c["collapse_rate"]), *(c["diagnosis"][d] for d in DIAGNOSES), c["verdict"],
                         *(num(c["vs_baseline"][k][s]) for k in PAIRED_KEYS for s in pair_fields), c["warning"]])
    return out.getvalue()


def _write_text(path: Path, text: str) -> None:
    records._atomic_write_bytes(path, lambda f: f.write(text.encode()))   # temp file + os.replace


def write_outputs(summary: dict, sweep_dir: Path) -> None:
    summary["files"] = ["summary.csv", "summary.md", "summary.json"] + summary["files"]
    _write_text(sweep_dir / "summary.csv", render_csv(summary))
    _write_text(sweep_dir / "summary.md", render_markdown(summary))
    records.write_json(sweep_dir / "summary.json", summary)
