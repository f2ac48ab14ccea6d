"""The tail every figure-regenerating script shares: the report, its checks as a task
list, the count of checks passed, the report also written to --out, exit 1 on a failure.

    from checked_report import finish
    return finish(report_text, checks, out, footer="(12 s)")   # checks: [(ok, text), ...]
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional, Sequence


def finish(report: str, checks: Sequence[tuple[bool, str]], out: Optional[Path], footer: str = "") -> int:
    """Print `report` with its checks; write the same text to `out` when given; 0 when
    every check held, else 1."""
    passed = sum(bool(ok) for ok, _ in checks)
    text = report.rstrip("\n") + "\n\nChecks:\n" + "\n".join(f"- [{'x' if ok else ' '}] {t}" for ok, t in checks)
    text += f"\n\n{passed}/{len(checks)} checks passed{' ' + footer if footer else ''}\n"
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0 if passed == len(checks) else 1


def mean_sd(values: Sequence[float], missing: str = "—") -> str:
    """"+0.412 ± 0.031": the mean and sample sd of the finite values (`missing` when none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return missing
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):+.3f} ± {sd:.3f}"
