"""The usage tab: GPU-hours per group per hour as a plot over the last day or week (`d`, `w`),
and the fair-share table: each group's share beside its factor."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual_plotext import PlotextPlot

from labq.text import printable

from .bars import bar
from .clock import Clock
from .data import USAGE_DAYS, Usage
from .format import plain

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red")
RANGES = {"day": 24, "week": 7 * 24}  # hours shown


def hourly_series(data: dict, hours: int) -> tuple[list[int], dict[str, list[float]]]:
    """x (hours before the current one, -hours .. 0) and per group its GPU-hours in each
    hour, from a usage reply with hour buckets. Counted from the reply's own time, not the
    TUI's clock: the buckets are labqd's."""
    until = float(data.get("until") or 0.0)
    current = until // 3600 * 3600
    xs = list(range(-hours, 1))
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * (hours + 1))
    for p in data.get("series") or []:
        start = p.get("start")
        if start is None:
            continue
        k = int((float(start) - current) // 3600) + hours
        if 0 <= k <= hours:
            out[printable(p["group"])][k] += float(p["gpu_hours"])
    return xs, dict(out)


def nice_top(value: float) -> float:
    """The y axis' top: 1, 2 or 5 times a power of ten, at least 1 GPU."""
    top = 1.0
    while True:
        for m in (1.0, 2.0, 5.0):
            if value <= top * m:
                return top * m
        top *= 10


def draw_usage(plt: Any, data: dict, range_name: str) -> None:
    """Draw GPU-hours per group per hour on a plotext figure."""
    hours = RANGES[range_name]
    xs, groups = hourly_series(data, hours)
    plt.clear_data()
    plt.clear_figure()
    top = nice_top(max((v for vals in groups.values() for v in vals), default=0.0))
    for i, name in enumerate(sorted(groups)):
        plt.plot(xs, groups[name], label=name, color=PALETTE[i % len(PALETTE)],
                 marker="braille")
    step = 6 if range_name == "day" else 24
    ticks = list(range(-hours, 1, step))
    plt.xticks(ticks, [("now" if t == 0 else f"-{-t}h" if range_name == "day"
                        else f"-{-t // 24}d") for t in ticks])
    plt.xlim(-hours, 0)
    plt.ylim(0, top)
    plt.yticks([0, top / 2, top], [f"{v:g}" for v in (0, top / 2, top)])
    plt.ylabel("GPUs")


def render_shares(data: dict) -> Group:
    """The fair-share table: GPU-hours, each group's share beside its factor, and users."""
    shares = Table(title=f"Fair share (GPU-hours over the last {USAGE_DAYS} days)",
                   title_justify="left", expand=False)
    for col in ("GROUP", "USER", "GPU-HOURS", "SHARE", "FAIR-SHARE", ""):
        shares.add_column(col, justify="left" if col in ("GROUP", "USER", "") else "right")
    users = defaultdict(list)
    for u in data.get("users") or []:
        users[u["group"]].append(u)
    for i, g in enumerate(data.get("groups") or []):
        color = PALETTE[i % len(PALETTE)]
        f = g.get("fairshare")
        shares.add_row(plain(g["group"], style=f"bold {color}"), "", f"{g['gpu_hours']:.1f}",
                       _num(g.get("share")), _num(f, 3), bar(f, 10, color))
        for u in sorted(users.get(g["group"], []), key=lambda u: u["user"]):
            shares.add_row("", plain(u["user"]), f"{u['gpu_hours']:.1f}", "",
                           _num(u.get("fairshare"), 3), "")
    if not data.get("groups"):
        return Group(shares, Text("no usage recorded yet", style="dim"))
    return Group(shares)


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


class UsagePlot(PlotextPlot):
    pass


class UsageView(VerticalScroll):
    """The plot, its range, and the fair-share table. Redrawn only when labqd's figures or
    the range change: a plot costs a few milliseconds to build."""

    can_focus = True
    # the title line names them; the footer keeps its room for the app's keys
    BINDINGS = [Binding("d", "range('day')", "Plot the last day", show=False),
                Binding("w", "range('week')", "Plot the last week", show=False)]

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.range = "day"
        self._data: dict | None = None
        self._drawn: tuple | None = None

    def compose(self):
        yield Static("waiting for labqd…", id="usage-title")
        yield UsagePlot(id="usage-plot")
        yield Static(id="usage-body")

    def on_mount(self) -> None:
        self.query_one(UsagePlot).display = False

    def action_range(self, name: str) -> None:
        self.range = name
        self._redraw()

    def set_usage(self, usage: Usage) -> None:
        if usage.data is None:
            self._data, self._drawn = None, None
            self.query_one(UsagePlot).display = False
            self.query_one("#usage-title", Static).update(Text.assemble(
                ("Usage is not available from this labqd", "bold"), "\n\n",
                plain(f"labqd answered: {usage.error}")))
            self.query_one("#usage-body", Static).update("")
            return
        self._data = usage.data
        self._redraw()

    def _redraw(self) -> None:
        data = self._data
        if data is None:
            return
        # what is drawn, without the reply's times (new on every poll) but with its hour
        key = (self.range, float(data.get("until") or 0) // 3600,
               repr(data.get("series")), repr(data.get("groups")), repr(data.get("users")))
        if key == self._drawn:
            return
        self._drawn = key
        span = "24 hours" if self.range == "day" else "7 days"
        self.query_one("#usage-title", Static).update(Text.assemble(
            (f"GPU-hours per group per hour, the last {span}", "bold"),
            ("   d: day  w: week", "dim")))
        plot = self.query_one(UsagePlot)
        plot.display = True
        draw_usage(plot.plt, data, self.range)
        plot.refresh()
        self.query_one("#usage-body", Static).update(render_shares(data))
