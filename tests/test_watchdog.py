"""systemd's watchdog: WATCHDOG=1 comes from the scheduler loop, so a loop that stalls stops
the pings (and systemd restarts labqd); STATUS= says how the queue stands."""
import socket
import threading
import time

import pytest

from labq.daemon.config import load
from labq.daemon.core import Core
from labq.daemon.scheduler import Scheduler
from labq.daemon.store import Store
from labq.daemon.watchdog import Watchdog, watchdog_interval


def test_watchdog_interval_follows_systemd_and_its_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield s
    s.close()


def messages(s, seconds):
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            pass
    return out


def test_a_stalled_scheduler_loop_stops_the_pings(tmp_path, notify_socket):
    (tmp_path / "c.toml").write_text(f'[daemon]\ndatabase = "{tmp_path}/labq.db"\n'
                                     f'socket = "{tmp_path}/s"\n')
    cfg = load(tmp_path / "c.toml")
    store = Store(cfg.database)
    core = Core(cfg, store)
    dog = Watchdog(core, env={"WATCHDOG_USEC": "600000"})
    sched = Scheduler(core.jobs, core.nodes, core.fair, dog.loop_wait(5), core.clock)
    assert sched.interval_s == pytest.approx(0.2)
    sched.observers.append(dog.beat)
    stall, stalled = threading.Event(), threading.Event()
    real = sched.run_once

    def run_once():
        if stall.is_set():
            stalled.set()
            threading.Event().wait(30)  # a pass that hangs
        real()
    sched.run_once = run_once
    sched.start()
    try:
        got = messages(notify_socket, 1.5)
        assert got.count("WATCHDOG=1") >= 3
        assert "STATUS=0 pending, 0 running, 0/1 nodes up" in got
        stall.set()
        assert stalled.wait(5)
        messages(notify_socket, 0.3)  # a ping of the pass before the stall may be in flight
        assert "WATCHDOG=1" not in messages(notify_socket, 1.5)
    finally:
        core.jobs.stopping = True
        core.wake.set()
        store.close()
