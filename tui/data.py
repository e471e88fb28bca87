"""Talking to labqd off the UI thread: the poller behind the live screens, and the connection
that user actions go through. Both reconnect by themselves when labqd comes back."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from textual.message import Message

import labq
from labq import Job, Node
from labq.errors import DaemonUnavailable, LabqError
from labq.states import FINAL

ClientFactory = Callable[[Path], labq.Client]
T = TypeVar("T")

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 2.0
# ended jobs shown below the active ones; the full history is a `labq ls --all` away
RECENT_ENDED = 200
SWEEP_PAGE = 500  # jobs per request once the first poll has read the queue
USAGE_EVERY_S = 15.0
EXPERIMENTS_EVERY_S = 3.0
# how often one page of the active queue is read again for its reasons and priorities: they
# change with the plan, not the job, and decoding 500 jobs a second was most of an idle UI's
# CPU with 1,000 jobs queued (py-spy)
SWEEP_EVERY_S = 5.0


def default_factory(socket: Path) -> labq.Client:
    return labq.connect(socket, timeout=15.0)


@dataclass
class Usage:
    """The daemon's usage report and group settings, or why there are none."""
    data: dict[str, Any] | None = None
    error: str | None = None
    groups: list[dict[str, Any]] | None = None
    groups_error: str | None = None


class Snapshot(Message):
    """One poll's worth of cluster state."""

    def __init__(self, jobs: list[Job], nodes: list[Node], me: dict[str, Any],
                 experiments: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.jobs = jobs
        self.nodes = nodes
        self.me = me
        self.experiments = experiments  # None: not fetched this time


class UsageReport(Message):
    def __init__(self, usage: Usage) -> None:
        super().__init__()
        self.usage = usage


class ConnectionChanged(Message):
    def __init__(self, connected: bool, error: str = "") -> None:
        super().__init__()
        self.connected = connected
        self.error = error


@dataclass
class PollSettings:
    interval: float = 1.0
    wake: threading.Event = field(default_factory=threading.Event)


class Poller:
    """Runs in a thread worker: polls jobs and nodes every `interval` and posts Snapshots.

    A dropped or missing daemon posts ConnectionChanged(False) once, then retries with a
    growing pause; the first good poll after that posts ConnectionChanged(True).
    """

    def __init__(self, socket: Path, factory: ClientFactory, settings: PollSettings,
                 post: Callable[[Message], Any], monotonic: Callable[[], float]) -> None:
        self.socket = socket
        self.factory = factory
        self.settings = settings
        self.post = post
        self.monotonic = monotonic
        self.stop = threading.Event()
        self._client: labq.Client | None = None
        self._me: dict[str, Any] | None = None
        self._view = QueueView()
        self._connected: bool | None = None
        self._next_usage = 0.0
        self._next_experiments = 0.0
        self._next_sweep = 0.0

    def run(self) -> None:
        backoff = BACKOFF_START_S
        while not self.stop.is_set():
            try:
                self._poll_once()
                backoff = BACKOFF_START_S
                pause = self.settings.interval
            except DaemonUnavailable as e:
                self._drop(e.message)
                pause, backoff = backoff, min(BACKOFF_MAX_S, backoff * 2)
            except LabqError as e:
                # a daemon that answers but refuses a request is still connected
                self.post(ConnectionChanged(True, e.message))
                pause = self.settings.interval
            self.settings.wake.wait(pause)
            self.settings.wake.clear()
        self._close()

    def _poll_once(self) -> None:
        if self._client is None:
            self._client = self.factory(self.socket)
            self._me = None
        q = self._client
        if self._me is None:
            self._me = q.whoami()
            self._view = QueueView()
        # everyone's jobs: "mine" is a view over them, so toggling it needs no round trip
        sweep = self.monotonic() >= self._next_sweep
        if sweep:
            self._next_sweep = self.monotonic() + SWEEP_EVERY_S
        jobs = self._view.poll(q, sweep)
        nodes = q.nodes()
        if self._connected is not True:
            self._connected = True
            self.post(ConnectionChanged(True))
        experiments = None
        if self.monotonic() >= self._next_experiments:
            self._next_experiments = self.monotonic() + EXPERIMENTS_EVERY_S
            experiments = [dict(e) for e in q.experiments()]
        self.post(Snapshot(jobs, nodes, dict(self._me), experiments))
        if self.monotonic() >= self._next_usage:
            self._next_usage = self.monotonic() + USAGE_EVERY_S
            self.post(UsageReport(fetch_usage(q)))

    def refresh_usage(self) -> None:
        self._next_usage = 0.0
        self.settings.wake.set()

    def _drop(self, why: str) -> None:
        self._close()
        if self._connected is not False:
            self._connected = False
            self.post(ConnectionChanged(False, why))

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class QueueView:
    """The jobs the queue screen shows, kept current at the cost of what changed.

    The first poll reads the active jobs a page at a time and the latest ended ones; each poll
    after that asks only for the jobs changed since the last one (`changed_since`), plus one
    page of the active queue in turn, so that pending reasons and priorities, which change
    with every plan and not with the job, stay fresh without reading the whole queue."""

    def __init__(self) -> None:
        self.active: dict[int, Job] = {}
        self.ended: dict[int, Job] = {}
        self.seq: int | None = None  # the daemon's change counter as of the last poll
        self.sweep_after = 0  # where the next page of the refresh starts

    def poll(self, q: labq.Client, sweep: bool = True) -> list[Job]:
        first = self.seq is None
        if self.seq is None:
            # read the counter first: what changes while the pages are read comes next poll
            self.seq = q.ping()["seq"]
            for page in q.iter_jobs(include_ended=False):
                self._take(page)
            self._take(q.jobs(states=[s.value for s in FINAL], limit=RECENT_ENDED))
        else:
            while True:
                changed = q.jobs(changed_since=self.seq, limit=SWEEP_PAGE)
                self._take(changed)
                if changed:
                    self.seq = max(self.seq, *(j.seq or 0 for j in changed))
                if len(changed) < SWEEP_PAGE:
                    break
        if sweep and not first:
            page = q.jobs(include_ended=False, after_id=self.sweep_after, limit=SWEEP_PAGE)
            self._take(page)
            self.sweep_after = page[-1].id if len(page) == SWEEP_PAGE else 0
        return sorted(self.active.values(), key=lambda j: j.id) + sorted(
            self.ended.values(), key=lambda j: j.id)

    def _take(self, jobs: list[Job]) -> None:
        for j in jobs:
            if j.finished:
                self.active.pop(j.id, None)
                self.ended[j.id] = j
            else:
                self.active[j.id] = j
        if len(self.ended) > RECENT_ENDED:
            for old in sorted(self.ended)[:len(self.ended) - RECENT_ENDED]:
                del self.ended[old]


USAGE_DAYS = 7  # the usage tab's longest range


def fetch_usage(q: labq.Client, days: int = USAGE_DAYS) -> Usage:
    out = Usage()
    try:
        out.data = q.usage(days=days, bucket="hour")  # the usage tab plots hours
    except DaemonUnavailable:
        raise
    except LabqError as e:
        out.error = e.message
    try:
        out.groups = q.groups()
    except DaemonUnavailable:
        raise
    except LabqError as e:
        out.groups_error = e.message
    return out


class Connection:
    """The client that user actions (submit, cancel, drain...) go through, kept apart from the
    poller's so an action that takes a while (cancel waits for the process to end) does not
    stall the live view."""

    def __init__(self, socket: Path, factory: ClientFactory) -> None:
        self.socket = socket
        self.factory = factory
        self._lock = threading.Lock()
        self._client: labq.Client | None = None

    def run(self, fn: Callable[[labq.Client], T]) -> T:
        """Call fn(client) in the caller's (worker) thread; reconnect once if the old
        connection was dropped."""
        for attempt in (1, 2):
            client = self._get()
            try:
                return fn(client)
            except DaemonUnavailable:
                self._reset(client)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _get(self) -> labq.Client:
        with self._lock:
            if self._client is None:
                self._client = self.factory(self.socket)
            return self._client

    def _reset(self, client: labq.Client) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
