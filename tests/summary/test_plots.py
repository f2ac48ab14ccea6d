"""The summary's plots (collapse.summary.plots, the search plot): what a researcher would
show. Sizes from the PNG header, the rest from the figures themselves just before saving."""
import math
import struct
from pathlib import Path

import pytest
from test_build import make_grid

from collapse.summary import build_summary, plots, summarize
from collapse.summary.stats import t975

pytest.importorskip("matplotlib")


def png_size_and_dpi(path: Path) -> tuple[int, int, float]:
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    at = data.index(b"pHYs")
    per_metre = struct.unpack(">I", data[at + 4:at + 8])[0]
    return width, height, per_metre * 0.0254


@pytest.fixture
def figures(monkeypatch):
    """name -> the matplotlib figure, as it was saved."""
    saved = {}
    original = plots.save_figure

    def keep(fig, path):
        saved[Path(path).name] = fig
        return original(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return saved


def test_every_plot_is_150_dpi_and_at_least_1200_px_wide(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    summary = summarize(sweep, plots=True)
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    assert len(pngs) == 4
    for name in pngs:
        width, _, dpi = png_size_and_dpi(sweep / name)
        assert width >= 1200 and dpi == pytest.approx(150, abs=1), name


def test_heatmap_cells_say_mean_ci_and_n_on_the_split_the_tables_judge_by(tmp_path, figures):
    sweep = make_grid(tmp_path / "sweep")
    half = t975(2) * 0.05 / math.sqrt(3)
    # val R² 0.60, 0.70, 0.65 (mean 0.65); test R² is val - 0.05 in these records (mean 0.60)
    for split, mean in (("test", 0.60), ("val", 0.65)):
        summary = summarize(sweep, plots=True, effects_split=split)
        ax = figures["summary_heatmap.png"].axes[0]
        texts = [t.get_text() for t in ax.texts]
        cell = next(c for c in summary["cells"] if c["label"] == "data.temporal_frames=1 loss.variance_lambda=0.0")
        assert cell["metrics"][f"{split}.r2"]["mean"] == pytest.approx(mean)
        assert f"{mean:.3f} ± {half:.3f}\nn = 3" in texts and len(texts) == 4
        assert ax.get_title().startswith(f"mean {split} R²")
        main = figures["summary_main_effects.png"].axes
        assert main[0].get_ylabel() == f"{split} R² EMM (95% CI)"
        assert [b.get_height() for b in main[0].patches] == pytest.approx(
            [lvl[f"{split}.r2"]["mean"] for lvl in summary["main_effects"][0]["levels"]])


def test_interaction_has_error_bars_and_curves_have_bands_colours_and_integer_epochs(tmp_path, figures):
    sweep = make_grid(tmp_path / "sweep")
    summary, histories = build_summary(sweep, None, True)
    plots.write_plots(summary, histories, tmp_path)
    ax = figures["summary_interaction.png"].axes[0]
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 2                                     # one per level of loss.variance_lambda
    r2 = next(c for c in summary["cells"] if c["label"] == "data.temporal_frames=1 loss.variance_lambda=0.0")
    segment = bars[0].lines[2][0].get_segments()[0]           # the first level's first error bar
    assert segment[1][1] - segment[0][1] == pytest.approx(r2["metrics"]["test.r2"]["ci_high"]   # the effects split
                                                          - r2["metrics"]["test.r2"]["ci_low"])
    assert ax.get_ylabel() == "mean test R² (95% CI over seeds)"

    curves = figures["summary_curves.png"].axes[0]
    lines = {line.get_label(): line for line in curves.lines}
    assert len(lines) == 4
    colour = {label: line.get_color() for label, line in lines.items()}
    style = {label: line.get_linestyle() for label, line in lines.items()}
    a, b = "data.temporal_frames=1 loss.variance_lambda=0.0", "data.temporal_frames=1 loss.variance_lambda=0.5"
    c, d = "data.temporal_frames=7 loss.variance_lambda=0.0", "data.temporal_frames=7 loss.variance_lambda=0.5"
    assert colour[a] == colour[b] != colour[c] == colour[d]          # colour: the first factor
    assert style[a] == style[c] != style[b] == style[d]              # line style: the second
    assert len(curves.collections) == 4                              # a band per cell (3 seeds)
    ticks = [t for t in curves.get_xticks() if curves.get_xlim()[0] <= t <= curves.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_search_log_axes_have_readable_labels(tmp_path, figures):
    from collapse.summary import search

    summary = {"factors": [{"key": "trainer.lr", "log": True}, {"key": "model.init_std", "log": True}],
               "trials": [{"objective": 0.5 + i / 10, "params": {"trainer.lr": lr, "model.init_std": std}}
                          for i, (lr, std) in enumerate([(1.1e-3, 0.019), (1.6e-3, 0.14), (8.5e-3, 0.47),
                                                         (2.2e-3, 0.0012)])],
               "best": None, "objective": "val R²"}
    path = search.write_plot(summary, tmp_path)
    width, _, _ = png_size_and_dpi(path)
    assert width >= 1200
    narrow, wide = figures["summary_search.png"].axes
    labels = [t.get_text() for t in narrow.get_xticklabels() if t.get_text()]
    assert 3 <= len(labels) <= 4 and all(len(x) <= 6 for x in labels)       # within a decade: 4 plain labels
    assert not [t for t in narrow.xaxis.get_minorticklabels() if t.get_text()]
    assert wide.get_xscale() == "log"
