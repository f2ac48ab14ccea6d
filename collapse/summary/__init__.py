"""A sweep's summary: read its job directories, build the statistics, write the report.

    jobs.py     one Job per job directory (metrics.json, or .hydra/ without one)
    build.py    the assembly: cells, effects, paired differences (build_summary, summarize)
    stats.py    pure statistics: ANOVA, EMMs, Holm, paired power
    report.py   text, markdown and CSV tables; summary.json
    plots.py    summary_*.png
    html.py     summary.html: the tables and plots as one self-contained page
    search.py   the summary of a search (Optuna), which has no grid
    frame.py    load_runs: a pandas DataFrame, one row per job
    cli.py      python -m collapse.summary, collapse-summary

Imports only collapse's contracts (records): no torch, no Hydra.
"""
from collapse.summary.build import SweepDirError, Thresholds, build_summary, summarize, write_summary
from collapse.summary.cli import main
from collapse.summary.frame import load_runs

__all__ = ["SweepDirError", "Thresholds", "build_summary", "load_runs", "main", "summarize", "write_summary"]
