"""systemd's watchdog and status line, fed by the scheduler loop.

WATCHDOG=1 is sent from the loop itself after each pass, never from a thread of its own: a
loop that hangs (a deadlock, a pass that never ends) stops the pings, and systemd restarts
labqd after WatchdogSec=. STATUS= tells `systemctl status labqd` how the queue stands.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from labq.states import JobState

from .notify import notify

STATUS_EVERY_S = 1.0


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds systemd allows between pings (WATCHDOG_USEC), if it watches this process."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


class Watchdog:
    def __init__(self, core, send: Callable[[str], bool] = notify,
                 env: Mapping[str, str] = os.environ):
        self.core = core
        self.send = send
        self.interval = watchdog_interval(env)
        self.last_status = ""
        self.status_at = 0.0

    def loop_wait(self, scheduler_interval: float) -> float:
        """How long the scheduler may sleep between passes and still ping in time."""
        if self.interval is None:
            return scheduler_interval
        return min(scheduler_interval, self.interval / 3)

    def beat(self, _pass_s: float = 0.0) -> None:
        if self.interval is not None:
            self.send("WATCHDOG=1")
        now = time.monotonic()
        if now - self.status_at >= STATUS_EVERY_S:
            self.status_at = now
            text = status_line(self.core)
            if text != self.last_status:
                self.last_status = text
                self.send(f"STATUS={text}")


def status_line(core) -> str:
    """"312 pending, 41 running, 6/7 nodes up"."""
    with core.jobs.lock:
        states = [j["state"] for j in core.jobs.active.values()]
        nodes = [n.state for n in core.nodes.nodes.values()]
    pending = sum(s in (JobState.PENDING.value, JobState.HELD.value) for s in states)
    running = sum(s == JobState.RUNNING.value for s in states)
    up = sum(s == "up" for s in nodes)
    return f"{pending} pending, {running} running, {up}/{len(nodes)} nodes up"
