"""Rates as "N/min": a token bucket per key (a user's submits, a source address's failed
logins). The clock is passed in, so the limits are tested without waiting."""
from __future__ import annotations

import re
import threading

from labq.errors import QuotaExceeded, RateLimited

from .clock import SYSTEM, Clock

_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*([a-z]+)\s*")
MAX_KEYS = 10_000  # past this, buckets that have refilled are forgotten


def parse_rate(text: str) -> tuple[int, int]:
    """(count, seconds) of "N/min", "N/s" or "N/hour"; ValueError otherwise."""
    m = _RATE.fullmatch(text)
    if not m or m.group(2) not in _UNITS or not 1 <= int(m.group(1)) <= 1 << 30:
        raise ValueError(f"{text!r} is not a rate like \"5/min\" (N/s, N/min or N/hour, N >= 1)")
    return int(m.group(1)), _UNITS[m.group(2)]


class Rate:
    """At most `count` per `per_s` seconds for each key, in bursts of up to `count`."""

    def __init__(self, count: int, per_s: float, clock: Clock = SYSTEM):
        self.count, self.per_s = count, per_s
        self.text = f"{count}/{'s' if per_s == 1 else 'min' if per_s == 60 else 'hour'}"
        self.clock = clock
        self.lock = threading.Lock()
        self.buckets: dict[object, tuple[float, float]] = {}  # key -> (level, when)

    @classmethod
    def parse(cls, text: str | None, clock: Clock = SYSTEM) -> Rate | None:
        if text is None:
            return None
        return cls(*parse_rate(text), clock=clock)

    def wait_s(self, key: object, n: int = 1, need: int | None = None) -> float:
        """Take `n` for `key` and return 0, or take nothing and return how long until `n`
        would be there. With `need`, take `n` (0: just look) once `need` are there."""
        need = n if need is None else need
        now = self.clock.monotonic()
        with self.lock:
            level, when = self.buckets.get(key, (float(self.count), now))
            level = min(float(self.count), level + (now - when) * self.count / self.per_s)
            if level >= need:
                self.buckets[key] = (level - n, now)
                return 0.0
            self.buckets[key] = (level, now)
            if len(self.buckets) > MAX_KEYS:
                self._forget(now)
            return (need - level) * self.per_s / self.count

    def give_back(self, key: object, n: int) -> None:
        """Return `n` taken for something that did not happen."""
        with self.lock:
            level, when = self.buckets.get(key, (float(self.count), self.clock.monotonic()))
            self.buckets[key] = (min(float(self.count), level + n), when)

    def _forget(self, now: float) -> None:
        full = [k for k, (lv, t) in self.buckets.items()
                if lv + (now - t) * self.count / self.per_s >= self.count]
        for k in full:
            del self.buckets[k]

    def take(self, key: object, n: int, what: str, setting: str) -> None:
        """Take `n`, or raise RateLimited with details["retry_after"] in seconds."""
        if n > self.count:
            raise QuotaExceeded(f"{n} {what} at once is more than {setting} ({self.text}) "
                                "ever allows; send them in smaller parts",
                                {"limit": setting, "rate": self.text})
        wait = self.wait_s(key, n)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            raise RateLimited(f"too many {what}: {setting} allows {self.text}; try again in "
                              f"{retry} s", {"retry_after": retry, "limit": setting,
                                             "rate": self.text})
