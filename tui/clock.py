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
