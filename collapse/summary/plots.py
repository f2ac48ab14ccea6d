"""PNG plots of a sweep summary (collapse.summary): heatmap, interaction, main effects
(estimated marginal means with their model-based 95% CIs), curves.

What a researcher would put on a slide: 150 dpi and at least 1,200 px wide; on the curves
one colour per level of the first factor and one line style per level of the second, a
band of mean ± 95% CI over the seeds and integer epoch ticks; error bars (the cell's 95% CI
over its seeds) on the interaction plot; heatmap cells that say mean ± CI and n.

matplotlib is imported here only, with the Agg backend, so a summary with
--no-plots never pays for it. Files are written atomically next to summary.json.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

from collapse.summary.report import write_file
from collapse.summary.stats import describe

DPI = 150
MIN_WIDTH_IN = 9.5          # 9.5 in x 150 dpi: 1,425 px; a tight crop keeps it above 1,200
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    write_file(path, buffer.getvalue())     # temp file + os.replace, mode from the umask
    return path


def _nan(x):
    return math.nan if x is None else x


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); the half-width is NaN for fewer than 2 values."""
    d = describe(values)
    return d["mean"], (d["ci_high"] - d["ci_low"]) / 2


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _split(summary: dict) -> str:
    """The split the plots show: the one the tables rank and judge by (test by default: it
    chose nothing; val picked each run's epoch). Summaries from before it was chosen: val."""
    return summary.get("effects_split") or "val"


def _cell_stats(summary: dict, row_factor: str, row, col_factor: str, col) -> Optional[dict]:
    """The R² statistics (effects split) of the cell (row, col) when the sweep has exactly these two factors."""
    if len(summary["factors"]) != 2:
        return None
    for c in summary["cells"]:
        if c["settings"].get(row_factor) == row and c["settings"].get(col_factor) == col:
            return c["metrics"][f"{_split(summary)}.r2"]
    return None


def _heatmap(plt, summary: dict, out_dir: Path) -> Path:
    heat = summary["heatmap"]
    rows, cols = heat["row_levels"], heat["col_levels"]
    split = _split(summary)
    values = [[_nan(v) for v in row] for row in heat[f"mean_{split}_r2"]]
    fig, ax = plt.subplots(figsize=(max(MIN_WIDTH_IN + 2, 2.0 + 2.2 * len(cols)), 2.0 + 1.0 * len(rows)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(v) for v in cols])
    ax.set_yticks(range(len(rows)), [str(v) for v in rows])
    ax.set_xlabel(heat["cols"])
    ax.set_ylabel(heat["rows"])
    finite = [v for row in values for v in row if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            cell = _cell_stats(summary, heat["rows"], rows[i], heat["cols"], cols[j])
            if math.isnan(v):
                text = "—"
            elif cell is not None:
                half = (cell["ci_high"] - cell["ci_low"]) / 2 if cell["ci_high"] is not None else math.nan
                text = f"{v:.3f}" + (f" ± {half:.3f}" if math.isfinite(_nan(half)) else "") + f"\nn = {cell['n']}"
            else:
                text = f"{v:.3f}"
            # dark text on the light end of viridis, white on the dark end
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="k" if v > middle else "w")
    fig.colorbar(image, ax=ax, label=f"mean {split} R²")
    more = len(summary["factors"]) > 2
    ax.set_title(f"mean {split} R²" + (" (unweighted over the other factors' cells)" if more else
                                  " ± 95% CI over seeds, n runs per cell"))
    path = save_figure(fig, Path(out_dir) / "summary_heatmap.png")
    plt.close(fig)
    return path


def _interaction(plt, summary: dict, out_dir: Path) -> Path:
    heat = summary["heatmap"]
    rows, cols = heat["row_levels"], heat["col_levels"]
    fig, ax = plt.subplots(figsize=(MIN_WIDTH_IN + 1, 5.0))
    x, split = list(range(len(rows))), _split(summary)
    for j, (level, colour) in enumerate(zip(cols, _colours(len(cols)))):
        means = [_nan(heat[f"mean_{split}_r2"][i][j]) for i in range(len(rows))]
        cells = [_cell_stats(summary, heat["rows"], r, heat["cols"], level) for r in rows]
        errors = [((c["ci_high"] - c["ci_low"]) / 2 if c is not None and c["ci_high"] is not None else math.nan)
                  for c in cells]
        offset = (j - (len(cols) - 1) / 2) * 0.04          # side by side: overlapping bars stay readable
        ax.errorbar([xi + offset for xi in x], means, yerr=[0.0 if math.isnan(_nan(e)) else e for e in errors],
                    marker=MARKERS[j % len(MARKERS)], linestyle=LINE_STYLES[j % len(LINE_STYLES)], color=colour,
                    capsize=4, label=f"{heat['cols']} = {level}")
    ax.set_xticks(x, [str(v) for v in rows])
    ax.set_xlabel(heat["rows"])
    ax.set_ylabel(f"mean {split} R²" + (" (95% CI over seeds)" if len(summary["factors"]) == 2 else ""))
    ax.set_title("interaction: parallel lines = additive effects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = save_figure(fig, Path(out_dir) / "summary_interaction.png")
    plt.close(fig)
    return path


def _main_effects(plt, summary: dict, out_dir: Path) -> Path:
    effects = summary["main_effects"]
    fig, axes = plt.subplots(2, len(effects), figsize=(max(MIN_WIDTH_IN, 4.2 * len(effects)), 6.5), squeeze=False)
    split = _split(summary)
    for col, effect in enumerate(effects):
        for row, (key, name) in enumerate(((f"{split}.r2", f"{split} R²"),
                                           (f"{split}.variance_ratio", f"{split} variance ratio"))):
            stats = [lvl[key] for lvl in effect["levels"]]
            means = [_nan(s["mean"]) for s in stats]
            errors = [0.0 if s["ci_high"] is None or math.isnan(s["ci_high"]) else s["ci_high"] - s["mean"]
                      for s in stats]       # the EMM's model-based interval
            ax = axes[row][col]
            ax.bar(range(len(means)), means, yerr=errors, capsize=4, color="tab:blue" if row == 0 else "tab:orange")
            ax.set_xticks(range(len(means)), [str(lvl["value"]) for lvl in effect["levels"]])
            ax.set_xlabel(effect["factor"])
            ax.set_ylabel(f"{name} EMM (95% CI)")
            ax.axhline(0, color="k", lw=0.5)
    fig.tight_layout()
    path = save_figure(fig, Path(out_dir) / "summary_main_effects.png")
    plt.close(fig)
    return path


def _curve_styles(summary: dict, labels) -> dict:
    """cell label -> (colour, line style, marker): colour by the first factor's level, line
    style by the second's, marker by the third's."""
    factors = [f["key"] for f in summary["factors"]]
    levels = {f["key"]: list(f["levels"]) for f in summary["factors"]}
    settings = {c["label"]: c["settings"] for c in summary["cells"]}
    colours = _colours(len(levels[factors[0]])) if factors else _colours(len(labels))
    styles = {}
    for k, label in enumerate(labels):
        cell = settings.get(label, {})

        def index(i: int, cell=cell) -> int:
            if len(factors) <= i or cell.get(factors[i]) not in levels[factors[i]]:
                return 0
            return levels[factors[i]].index(cell.get(factors[i]))

        colour = colours[index(0)] if factors else colours[k % len(colours)]
        styles[label] = (colour, LINE_STYLES[index(1) % len(LINE_STYLES)],
                         MARKERS[index(2) % len(MARKERS)] if len(factors) > 2 else None)
    return styles


def _curves(plt, summary: dict, histories: dict, out_dir: Path) -> Optional[Path]:
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = _curve_styles(summary, list(histories))
    for label, runs in histories.items():
        colour, style, marker = styles[label]
        for ax, key in zip(axes, ("val_r2", "val_variance_ratio")):
            by_epoch: dict[int, list[float]] = {}
            for history in runs:
                for entry in history:
                    value = entry.get(key)
                    if entry.get("epoch") is not None and isinstance(value, (int, float)) and math.isfinite(value):
                        by_epoch.setdefault(int(entry["epoch"]), []).append(value)
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            stats = [_mean_ci(by_epoch[e]) for e in epochs]
            means = [m for m, _ in stats]
            ax.plot(epochs, means, color=colour, linestyle=style, marker=marker, markevery=max(1, len(epochs) // 8),
                    label=label, lw=1.6)
            banded = [(e, m, h) for e, (m, h) in zip(epochs, stats) if math.isfinite(h)]
            if banded:
                ax.fill_between([e for e, _, _ in banded], [m - h for _, m, h in banded],
                                [m + h for _, m, h in banded], color=colour, alpha=0.12, linewidth=0)
    for ax in axes:
        # the axis follows the means: with 2 seeds a t interval is ~13 SDs wide and would
        # squeeze every curve into a band; the bands are cut at the frame instead
        ys = [y for line in ax.lines for y in line.get_ydata() if math.isfinite(y)]
        if ys:
            low, high = min(ys), max(ys)
            pad = 0.15 * (high - low) if high > low else 0.1
            ax.set_ylim(low - pad, high + pad)
    seeds = max((len(runs) for runs in histories.values()), default=0)
    fig.suptitle(f"val curves per cell: mean over its runs (up to {seeds}), band = 95% CI over seeds",
                 fontsize="medium")
    for ax, name in zip(axes, ("val R²", "val variance ratio")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (mean ± 95% CI over seeds)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not any(ax.lines for ax in axes):
        plt.close(fig)
        return None
    factors = [f["key"] for f in summary["factors"]]
    key = "; ".join(f"{what} = {f}" for what, f in zip(("colour", "line style", "marker"), factors))
    axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), title=key or None,
                   title_fontsize="small")
    fig.tight_layout()
    path = save_figure(fig, Path(out_dir) / "summary_curves.png")
    plt.close(fig)
    return path


def write_plots(summary: dict, histories: dict[str, list[list[dict]]], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write summary_heatmap.png (mean R² on the effects split over the first two factors, each cell with
    mean ± CI and n), summary_interaction.png (the same means as lines with error bars: one
    per level of the second factor across the first; parallel lines = no interaction),
    summary_main_effects.png (EMMs with model-based 95% CIs, effects split) and summary_curves.png
    (val R² and variance ratio per epoch, mean ± 95% CI over each cell's runs: the histories
    hold val only, and val is the split early stopping watched).
    `histories`: cell label -> the result runs' record["history"] lists.
    Returns (files written, notes on plots skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, notes = [], []
    if summary["heatmap"] is None:
        notes.append("heatmap skipped: it needs at least 2 factors")
    else:
        written += [_heatmap(plt, summary, out_dir), _interaction(plt, summary, out_dir)]
    if not summary["main_effects"]:
        notes.append("main-effect plot skipped: no factors")
    else:
        written.append(_main_effects(plt, summary, out_dir))
    curves = _curves(plt, summary, histories, out_dir)
    if curves is None:
        notes.append("curves skipped: no run has a history")
    else:
        written.append(curves)
    return written, notes
