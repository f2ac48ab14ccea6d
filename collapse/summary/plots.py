"""PNG plots of a sweep summary (collapse.summary): heatmap, interaction, main effects
(estimated marginal means with their model-based 95% CIs), curves.

matplotlib is imported here only, with the Agg backend, so a summary with
--no-plots never pays for it. Files are written atomically next to summary.json.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from collapse.summary.report import write_file


def save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_file(path, buffer.getvalue())     # temp file + os.replace, mode from the umask
    return path


def _nan(x):
    return math.nan if x is None else x


def write_plots(summary: dict, histories: dict[str, list[list[dict]]], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write summary_heatmap.png (mean val R² over the first two factors),
    summary_interaction.png (the same means as lines: one per level of the second
    factor across the first; parallel lines = no interaction),
    summary_main_effects.png (EMMs with model-based 95% CIs) and summary_curves.png
    (val R² and variance ratio per epoch, mean over each cell's runs).
    `histories`: cell label -> the result runs' record["history"] lists.
    Returns (files written, notes on plots skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, notes = [], []
    heat = summary["heatmap"]
    if heat is None:
        notes.append("heatmap skipped: it needs at least 2 factors")
    else:
        values = [[_nan(v) for v in row] for row in heat["mean_val_r2"]]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(heat["col_levels"]), 1.0 + 0.6 * len(heat["row_levels"])))
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(heat["col_levels"])), [str(v) for v in heat["col_levels"]])
        ax.set_yticks(range(len(heat["row_levels"])), [str(v) for v in heat["row_levels"]])
        ax.set_xlabel(heat["cols"])
        ax.set_ylabel(heat["rows"])
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, "—" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", color="w")
        fig.colorbar(image, ax=ax, label="mean val R²")
        ax.set_title("mean val R² (cell means, unweighted over other factors)")
        written.append(save_figure(fig, Path(out_dir) / "summary_heatmap.png"))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x = range(len(heat["row_levels"]))
        for j, level in enumerate(heat["col_levels"]):
            ax.plot(x, [row[j] for row in values], marker="o", label=f"{heat['cols']}={level}")
        ax.set_xticks(x, [str(v) for v in heat["row_levels"]])
        ax.set_xlabel(heat["rows"])
        ax.set_ylabel("mean val R²")
        ax.set_title("interaction: parallel lines = additive effects")
        ax.legend(fontsize="small")
        written.append(save_figure(fig, Path(out_dir) / "summary_interaction.png"))
        plt.close(fig)

    effects = summary["main_effects"]
    if not effects:
        notes.append("main-effect plot skipped: no factors")
    else:
        fig, axes = plt.subplots(2, len(effects), figsize=(3.2 * len(effects), 5.2), squeeze=False)
        for col, effect in enumerate(effects):
            for row, (key, name) in enumerate((("val.r2", "val R²"), ("val.variance_ratio", "val variance ratio"))):
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
        written.append(save_figure(fig, Path(out_dir) / "summary_main_effects.png"))
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in histories.items():
        for ax, key in zip(axes, ("val_r2", "val_variance_ratio")):
            by_epoch: dict[int, list[float]] = {}
            for history in runs:
                for entry in history:
                    value = entry.get(key)
                    if entry.get("epoch") is not None and isinstance(value, (int, float)) and math.isfinite(value):
                        by_epoch.setdefault(int(entry["epoch"]), []).append(value)
            if by_epoch:
                epochs = sorted(by_epoch)
                ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], label=label)
    for ax, name in zip(axes, ("val R²", "val variance ratio")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (mean over runs)")
    if any(ax.lines for ax in axes):
        axes[1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.tight_layout()
        written.append(save_figure(fig, Path(out_dir) / "summary_curves.png"))
    else:
        notes.append("curves skipped: no run has a history")
    plt.close(fig)
    return written, notes
