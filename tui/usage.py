"""The usage tab: GPU-hours per group per day as bars, and the current fair-share factors."""
from __future__ import annotations

from collections import defaultdict

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from .bars import bar, sparkline
from .clock import Clock
from .data import Usage
from .format import plain

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red")


def render_usage(data: dict, clock: Clock | None = None) -> Group:
    """Per group: a sparkline over the days and a bar per day; then the fair-share table."""
    clock = clock or Clock()
    series = data.get("series") or []
    days = sorted({p["day"] for p in series})
    hours: dict[str, dict[str, float]] = defaultdict(dict)
    for p in series:
        hours[p["group"]][p["day"]] = hours[p["group"]].get(p["day"], 0.0) + p["gpu_hours"]
    top = max((h for g in hours.values() for h in g.values()), default=0.0)
    parts: list = [Text(f"GPU-hours per group per day, {clock.day(days[0])} to "
                        f"{clock.day(days[-1])}" if days
                        else "GPU-hours per group per day: no usage recorded yet",
                        style="bold")]
    chart = Table.grid(padding=(0, 1))
    chart.add_column()
    chart.add_column()
    chart.add_column()
    chart.add_column(justify="right")
    for i, group in enumerate(sorted(hours)):
        color = PALETTE[i % len(PALETTE)]
        values = [hours[group].get(d, 0.0) for d in days]
        chart.add_row(plain(group, style=f"bold {color}"), Text(sparkline(values, top),
                      style=color), "", f"{sum(values):.1f} h")
        for d, v in zip(days, values):
            chart.add_row("", Text(clock.day(d), style="dim"), bar(v / top if top else 0.0, 30,
                                                           color), f"{v:.1f}")
    parts.append(chart)
    shares = Table(title="Fair share", title_justify="left", expand=False)
    for col in ("GROUP", "USER", "GPU-HOURS", "SHARE", "FAIR-SHARE"):
        shares.add_column(col, justify="left" if col in ("GROUP", "USER") else "right")
    users = defaultdict(list)
    for u in data.get("users") or []:
        users[u["group"]].append(u)
    for g in data.get("groups") or []:
        shares.add_row(plain(g["group"], style="bold"), "", f"{g['gpu_hours']:.1f}",
                       _num(g.get("share")), _num(g.get("fairshare"), 3))
        for u in sorted(users.get(g["group"], []), key=lambda u: u["user"]):
            shares.add_row("", plain(u["user"]), f"{u['gpu_hours']:.1f}", "",
                           _num(u.get("fairshare"), 3))
    parts += [Text(""), shares]
    return Group(*parts)


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


class UsageView(VerticalScroll):
    can_focus = True

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock

    def compose(self):
        yield Static("waiting for labqd…", id="usage-body")

    def set_usage(self, usage: Usage) -> None:
        body = self.query_one("#usage-body", Static)
        if usage.data is not None:
            body.update(render_usage(usage.data, self.clock))
        else:
            body.update(Text.assemble(("Usage is not available from this labqd", "bold"),
                                      "\n\n", plain(f"labqd answered: {usage.error}")))
