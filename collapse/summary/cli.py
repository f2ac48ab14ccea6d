"""The summary's command line.

    python -m collapse.summary SWEEP_DIR [--out DIR] [--no-plots] [--effect 0.05] [--effects-split test|val]
                               [--diagnosis-split val|test]
                               [--thresholds r2=0,0.3,0.5 ratio=0.4,0.7,0.85 collapse=0.1]

Prints the ranked cells and the main effects in the terminal's width (COLUMNS, default 100),
then writes the wide tables (summary.txt, .md), summary.{csv,json} and summary_*.png into --out
(default: the sweep directory), atomically. A directory it cannot write to gets a
one-line note, not an error.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from collapse.summary import report, search
from collapse.summary.build import SweepDirError, Thresholds, build_summary, write_summary

PROBLEM_LINES = 30      # on the console; the files hold every one


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="collapse-summary",
        description="Summarise a sweep directory: ranked cells, effects of the factors, paired differences.")
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="write the files here (default: the sweep dir)")
    parser.add_argument("--thresholds", nargs="+", action="extend", default=[], metavar="KEY=VALUES",
                        help="r2=0,0.3,0.5  ratio=0.4,0.7,0.85  collapse=0.1 (the defaults)")
    parser.add_argument("--diagnosis-split", choices=("val", "test"), default="val",
                        help="count the diagnoses of this split (default val)")
    parser.add_argument("--effects-split", choices=("test", "val"), default="test",
                        help="rank cells and judge effects on this split (default test: it chose nothing; "
                             "val is shown beside it)")
    parser.add_argument("--effect", type=float, default=None, metavar="DELTA_R2",
                        help="also say how many seeds a paired test needs to detect this ΔR² (80%% power)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    args = parser.parse_args(argv)
    try:
        thresholds = Thresholds.parse(args.thresholds)
    except ValueError as e:
        parser.error(str(e))
    if args.effect is not None and not (math.isfinite(args.effect) and args.effect > 0):
        parser.error(f"--effect {args.effect} is invalid: must be a positive ΔR²")
    # A summary allocates ~100 objects a run and frees none until it ends: the collector's
    # passes over them find no cycles and cost a third of a large summary's time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _summarise(args, thresholds)
    finally:
        if was_enabled:         # main() called from a notebook or a test leaves the collector as it was
            gc.enable()


def cli() -> None:
    """The process (python -m collapse.summary, collapse-summary): main(), then exit."""
    code = main()
    # The garbage is collected now and the rest of the heap (pandas, matplotlib, scipy) is put
    # out of the collector's reach: CPython's shutdown otherwise walks it in several full
    # passes, 0.34 s of a 4-job summary's 1.6 s. Objects still die by refcount.
    gc.collect()
    gc.freeze()
    sys.exit(code)


def _summarise(args: argparse.Namespace, thresholds: Thresholds) -> int:
    try:
        summary, histories = build_summary(args.sweep_dir, thresholds, not args.no_plots, args.diagnosis_split,
                                           args.effect, args.effects_split)
    except SweepDirError as e:
        print(f"collapse: error: {e}", file=sys.stderr)
        return 2
    code = 0
    width = shutil.get_terminal_size((100, 24)).columns     # COLUMNS first, then the terminal
    try:        # the tables first: a sweep dir nobody can write to still gets them
        problems = summary["problems"]
        for problem in problems[:PROBLEM_LINES]:
            print(f"problem: {problem}", file=sys.stderr)
        if len(problems) > PROBLEM_LINES:       # a damaged sweep of 10,000 jobs is not 10,000 lines
            print(f"problem: ... and {len(problems) - PROBLEM_LINES:,} more: summary.md and summary.json "
                  "list them all", file=sys.stderr)
        if summary.get("kind") == "search":
            print(search.render_text(summary), end="")
        else:
            print(report.render_console(summary, width), end="")
        sys.stdout.flush()      # a closed pipe must show here, not in the flush at exit
    except BrokenPipeError:
        # the reader left early (`| head`). Send what is still buffered to devnull so the
        # flush at exit does not raise again (Python docs, "Note on SIGPIPE"), write the
        # files all the same, and exit 1 as they do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    out_dir = args.out if args.out is not None else args.sweep_dir
    try:
        files = write_summary(summary, histories, out_dir, plots=not args.no_plots)
        message = "\n".join(textwrap.wrap(f"wrote {', '.join(files)} in {out_dir}", width,
                                           subsequent_indent="  ", break_on_hyphens=False, break_long_words=False))
    except OSError as e:
        message = f"note: could not write the summary files in {out_dir} ({type(e).__name__}: {e.strerror or e})"
    if code == 0:
        try:
            print(message)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 1
    return code

