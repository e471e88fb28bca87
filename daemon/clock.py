"""The clock labqd's parts read: the system's in the daemon, a fake one in fast tests.

Only decisions and timestamps go through it (grace periods, requeue, event times, the plan's
`now`); waiting on a condition or a socket stays in real time.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch: what is stored and shown."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: what grace periods are measured in."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
