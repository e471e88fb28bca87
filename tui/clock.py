"""Every wall-clock read and time rendering of the TUI goes through a Clock.

Snapshot tests pass a FrozenClock so that the screens they record do not depend on when the
jobs ran.
"""
from __future__ import annotations

import time

from labq.units import format_duration


class Clock:
    def now(self) -> float:
        return time.time()

    def when(self, ts: float | None) -> str:
        """An absolute time; today's times without the date, to save columns."""
        if not ts:
            return "-"
        now = time.localtime(self.now())
        t = time.localtime(ts)
        if t[:3] == now[:3]:
            return time.strftime("%H:%M:%S", t)
        return time.strftime("%Y-%m-%d %H:%M", t)

    def stamp(self, ts: float | None) -> str:
        """A full date and time, for the job detail."""
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"

    def day(self, day: str) -> str:
        """A calendar day the daemon names, 'YYYY-MM-DD'."""
        return day

    def span(self, start: float | None, end: float | None = None) -> str:
        """How long from start to end (or to now)."""
        if not start:
            return "-"
        return format_duration((end or self.now()) - start)

    def ago(self, ts: float | None) -> str:
        """'5m ago': a past time, relative to now."""
        if not ts:
            return "-"
        return short_span(self.now() - ts) + " ago"

    def until(self, ts: float | None) -> str:
        """'in 2h', or 'now' once the time has come."""
        if not ts:
            return "-"
        left = ts - self.now()
        return "now" if left <= 1 else "in " + short_span(left)


def short_span(seconds: float) -> str:
    """The largest unit or two: 45s, 5m, 2h10m, 3d4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


class FrozenClock(Clock):
    """A fixed `now`, and wall-clock times masked: jobs submitted by a test carry real
    timestamps, which would otherwise leak into rendered screens."""

    MASK = "--:--:--"

    def __init__(self, now: float = 1_700_000_000.0):
        self._now = now

    def now(self) -> float:
        return self._now

    def when(self, ts: float | None) -> str:
        return self.MASK if ts else "-"

    def stamp(self, ts: float | None) -> str:
        return self.MASK if ts else "-"

    def day(self, day: str) -> str:
        return "----------"

    def span(self, start: float | None, end: float | None = None) -> str:
        return self.MASK if start else "-"

    def ago(self, ts: float | None) -> str:
        return "--m ago" if ts else "-"

    def until(self, ts: float | None) -> str:
        return "in --m" if ts else "-"
