"""Text bars and sparklines: plain characters, so they render the same in every terminal and
in snapshot files."""
from __future__ import annotations

from rich.text import Text

SPARKS = " ▁▂▃▄▅▆▇█"


def bar(fraction: float | None, width: int = 20, style: str = "green") -> Text:
    """A horizontal bar for a value in [0, 1]; None (not measured) draws a dotted track."""
    if fraction is None:
        return Text("·" * width, style="dim")
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    if fraction >= 0.9:
        style = "red"
    elif fraction >= 0.7:
        style = "yellow"
    return Text.assemble(("█" * full, style), ("░" * (width - full), "dim"))


def sparkline(values: list[float], top: float | None = None) -> str:
    """One character per value, scaled to `top` (default: the largest value)."""
    top = max(values, default=0.0) if top is None else top
    if top <= 0:
        return SPARKS[0] * len(values)
    steps = len(SPARKS) - 1
    return "".join(SPARKS[min(steps, round(v / top * steps))] if v > 0 else SPARKS[0]
                   for v in values)
