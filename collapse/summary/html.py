"""summary.html: the whole summary as one page a researcher can open and send.

Self-contained: the tables as HTML tables, the plots embedded as base64 PNGs, a sentence
for every diagnosis label and every term the tables use; no script, no stylesheet or image
from elsewhere, so it opens from the file system (or an e-mail) with no server.
Everything printed from the summary is escaped.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

from collapse.summary import report

# one sentence per diagnosis label (collapse.metrics.diagnose decides them)
LABELS = {
    "healthy": "The predictions correlate with the target and their spread fits that correlation "
               "(calibration slope within bounds over its interval).",
    "collapsed": "The predictions correlate with the target but are squeezed far below the spread that "
                 "correlation justifies (or mirror it): fixable by a variance term, CCC or recalibration.",
    "no_signal": "The correlation with the target is indistinguishable from zero: shrinking to the mean is "
                 "honest, and forcing the spread up can only lower R².",
    "inflated": "The predictions spread more than their correlation supports, which costs R² "
                "(an over-weighted variance term does this).",
    "biased": "The predictions correlate with the target but sit off its mean by a significant offset that "
              "alone makes R² negative (a trend, a shift between splits): not healthy, and not fixed by spread.",
    "underfit": "The run's R² trails the linear reference (ridge on the same frames) by more than the "
                "interval allows: the signal exists and the model missed it (under-trained or mis-specified).",
    "inconclusive": "The sample is too small, the predictions are constant, or an interval straddles a "
                    "boundary: the data cannot tell the cases apart.",
}
# one sentence per term of the tables and notes
TERMS = {
    "verdict": "fail / minimum / good / excellent by the cell's mean R² and variance ratio on the effects split "
               "(test by default) against the thresholds in the header; incomplete cells get none.",
    "failure": "The share of the cell's planned runs that failed, diverged or were interrupted.",
    "collapse": "The share of the cell's results whose diagnosis is collapsed (squeezed below what their "
                "correlation justifies); no-signal shrinkage is not collapse.",
    "var ratio < cut-off": "The share of the cell's results whose val variance ratio fell below the cut-off in "
                           "the header, whatever the reason (honest no-signal shrinkage included).",
    "ridge R², headroom": "The runs' linear reference (ridge on the same frames, fitted on train) and how far "
                          "the cell's mean R² lies below it.",
    "recal held": "Of the runs recalibrated on val (recalibrate=true), how many raised their test R².",
    "ΔR² vs base (paired)": "The cell minus the baseline, seed by seed, with the 95% CI of that paired mean.",
    "var up, R² down": "A flag: the variance ratio rose against the baseline while R² fell; tentative when the "
                       "paired intervals do not exclude 0.",
    "EMM": "Estimated marginal mean: a level's mean over the other factors' cells, each cell counted once, "
           "with a CI from the pooled within-cell error.",
    "type II ANOVA": "How much of the variance of R² (and of the variance ratio) on the effects split each "
                     "factor and their interaction explain, tested against the within-cell error.",
    "p Holm": "The paired t test's p value, Holm-adjusted for comparing many cells with one baseline.",
    "detectable ΔR²": "The smallest paired ΔR² these seeds detect with 80% power at α 0.05.",
    "note: tentative": "A pattern the point estimates show but the intervals do not support yet: more seeds "
                       "decide it.",
    "incomplete": "A cell with results for fewer than half its planned seeds: shown, not ranked.",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; }
img { max-width: 100%; border: 1px solid #ddd; }
dt { font-weight: bold; margin-top: 0.4em; }
.warning { color: #a00; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def _list(items: Sequence[str], css: str = "") -> str:
    if not items:
        return ""
    cls = f' class="{css}"' if css else ""
    return "<ul>" + "".join(f"<li{cls}>{html.escape(str(x))}</li>" for x in items) + "</ul>\n"


def _definitions(entries: dict) -> str:
    return "<dl>\n" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>\n"
                              for k, v in entries.items()) + "</dl>\n"


def _images(out_dir: Path, files: Sequence[str]) -> str:
    parts = []
    for name in files:
        if not name.endswith(".png"):
            continue
        try:
            data = base64.b64encode((Path(out_dir) / name).read_bytes()).decode("ascii")
        except OSError:
            continue
        parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(name)}</figcaption></figure>\n")
    return "".join(parts)


def render_html(summary: dict, out_dir: Path) -> str:
    """The page for a grid's summary, or a search's (summary["kind"] == "search")."""
    from collapse.summary import search

    is_search = summary.get("kind") == "search"
    title = f"{'Search' if is_search else 'Sweep'} summary: {summary['sweep_dir']}"
    parts = [f"<h1>{html.escape(title)}</h1>\n"]
    if is_search:
        parts.append(_list(search._lines(summary)))
    else:
        parts.append(_list(report._header_lines(summary)))
    if summary.get("warnings"):
        parts += ["<h2>Warnings</h2>\n", _list(summary["warnings"], "warning")]
    if summary.get("notes"):
        parts += ["<h2>Notes</h2>\n", _list(summary["notes"])]
    if summary.get("problems"):
        parts += ["<h2>Problems</h2>\n", _list(summary["problems"], "warning")]
    if is_search:
        parts += ["<h2>Trials, best first</h2>\n", _table(*search._rows(summary))]
    else:
        parts += [f"<h2>Cells, ranked by mean {report._splits(summary)[0]} R²</h2>\n",
                  _table(*report._cell_rows(summary, False))]
        headers, rows = report._cell_rows(summary, True)
        if rows:
            parts += ["<h2>Incomplete cells (not ranked)</h2>\n", _table(headers, rows)]
        if summary["main_effects"]:
            parts += ["<h2>Main effects (estimated marginal means)</h2>\n", _table(*report._effect_rows(summary)),
                      "<h2>Type II ANOVA</h2>\n", _table(*report._anova_rows(summary))]
        if len(summary["cells"]) > 1:
            parts += ["<h2>Paired differences vs baseline</h2>\n", _table(*report._paired_rows(summary))]
    images = _images(out_dir, summary.get("files", []))
    if images:
        parts += ["<h2>Plots</h2>\n", images]
    parts += ["<h2>What the diagnosis labels mean</h2>\n", _definitions(LABELS)]
    if not is_search:
        parts += ["<h2>What the columns and notes mean</h2>\n", _definitions(TERMS)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "".join(parts) + "</body>\n</html>\n")


def write_html(summary: dict, out_dir: Path) -> str:
    """summary.html into out_dir (atomically), after the plots it embeds; returns its name."""
    report.write_file(Path(out_dir) / "summary.html", render_html(summary, out_dir).encode("utf-8"))
    return "summary.html"
