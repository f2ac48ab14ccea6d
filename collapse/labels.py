"""What a person reads a run by: its cell in a few characters (`frames=3 λ=0.5 seed=1`).

One spelling for the sweep's progress lines, the trackers' run names and TensorBoard's
run directories, so a line on the console, a row in MLflow and a curve in TensorBoard
name the same run the same way. A contract: imports nothing of collapse.
"""
from __future__ import annotations

from typing import Iterable

# the factors the studies sweep most, as a researcher writes them on a slide
SHORT = {
    "data.temporal_frames": "frames",
    "loss.variance_lambda": "λ",
    "model.init_std": "init_std",
    "trainer.lr": "lr",
    "trainer.monitor": "monitor",
    "data.overweight_factor": "overweight",
}
# keys that never decide what a run computes (how it is continued, tracked, launched)
_IGNORED = ("resume", "hydra.", "+hydra.", "logger")


def short_key(key: str) -> str:
    """`loss.variance_lambda` -> `λ`; any other dotted key -> its last part."""
    key = key.lstrip("+~")
    return SHORT.get(key, key.rsplit(".", 1)[-1])


def cell_name(overrides: Iterable[str]) -> str:
    """Overrides (`data.temporal_frames=3`, ...) -> `frames=3 λ=0.5 seed=1`; group choices
    keep their group name (`loss=bmc`). Empty overrides: `defaults`."""
    parts = []
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if not sep or key.lstrip("+~").startswith(_IGNORED):
            continue
        parts.append(f"{short_key(key)}={_short_value(value)}")
    return " ".join(parts) or "defaults"


def _short_value(value: str) -> str:
    """A sampled float (`0.0016051911330`) to 4 significant digits; anything else as typed."""
    try:
        number = float(value)
    except ValueError:
        return value
    digits = sum(c.isdigit() for c in value.split("e")[0].lstrip("-0."))
    return f"{number:.4g}" if digits > 4 and "." in value else value


def fit(line: str, width: int) -> str:
    """`line` cut to `width` columns, an ellipsis saying it was cut."""
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"
