"""Snapshots of every screen of the terminal UI, against a real labqd.

What makes them repeatable: a fresh daemon per module, so job ids are 1..5; jobs submitted with
fixed names, commands, directory and no exported environment; a node with declared CPUs,
memory and GPUs (nothing probed from this machine shows); priority weights that do not move
with time or usage; a FrozenClock, which masks wall-clock times; and live_stats=False, which
leaves out what nodes measure from second to second.
"""
import time

import pytest
from daemonproc import Daemon, wait_for
from tuikit import pressing

from labq.tui.app import LabqApp
from labq.tui.clock import FrozenClock
from labq.tui.detail import JobDetailScreen
from labq.tui.submit import SubmitScreen

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "1s"},
    "node": [{"name": "gpu1", "local": True, "cpus": 16, "memory": "64G",
              "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}],
    "scheduler": {"weight_age": 0, "weight_fairshare": 0},
}
ABSENT_SOCKET = "/nonexistent/labq-snapshot/labq.sock"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("tui-snap"), CONFIG)
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            kw = {"cwd": "/tmp", "export_env": False}
            hello = q.submit("echo hello; echo from; echo labq", name="hello",
                             experiment="demo", **kw)
            q.wait(hello.id, timeout=30)
            train = q.submit(["sleep", "600"], name="train", gpus=1, priority=7, **kw)
            wait_for(lambda: q.job(train.id).state.value == "RUNNING", what="train running")
            q.submit(["sleep", "1"], name="held-job", hold=True, **kw)
            q.submit(["sleep", "1"], name="too-big", gpus=4, time_limit="2h", **kw)
            q.submit(["sleep", "1"], name="after-train", after=[train.id], **kw)
            wait_for(lambda: all(j.reason for j in q.jobs(states=["PENDING"])),
                     what="pending reasons")
        yield d
    finally:
        d.cancel_all()
        d.close()


def make_app(socket) -> LabqApp:
    return LabqApp(socket=socket, clock=FrozenClock(), live_stats=False, interval=0.2,
                   cwd="/tmp")


async def until(pilot, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out preparing the snapshot"
        await pilot.pause(0.05)


async def loaded(pilot) -> None:
    app = pilot.app
    # job 1 has ended: the queue shows the four active jobs
    await until(pilot, lambda: app.me is not None and app.usage is not None
                and len(app.jobs) == 5 and app.query_one("#queue-table").row_count == 4
                and app.query("#admin-view") and app.query("NodeCard"))
    await pilot.pause(0.3)


# first: the plot draws job 2's GPU-hours, which grow while it runs; a minute's worth would
# lift the line by one dot
@SIZES
def test_usage(daemon, snap_compare, size):
    assert snap_compare(make_app(daemon.socket), terminal_size=size,
                        run_before=pressing("3", loaded))


@SIZES
def test_queue(daemon, snap_compare, size):
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=loaded)


@SIZES
def test_job_detail(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        app = pilot.app
        app.open_job(app.jobs[1])
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen)
                    and app.screen.log_done and len(app.screen.events) == 3
                    and app.screen.query_one("#detail-events").row_count == 3)
        # the history table sizes its columns on the next layout; give a busy machine time
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(1.0)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)


@SIZES
def test_nodes(daemon, snap_compare, size):
    assert snap_compare(make_app(daemon.socket), terminal_size=size,
                        run_before=pressing("2", loaded))


@SIZES
def test_submit_form_with_inline_error(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("n")
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen))
        app.screen.query_one("#f-command").value = "python train.py"
        app.screen.query_one("#f-gpus").value = "two"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "-invalid" in app.screen.query_one("#f-gpus").classes)
        command = app.screen.query_one("#f-command")
        command.cursor_blink = False  # a blinking cursor is caught on or off at random
        command.focus()
        await pilot.pause(0.2)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)


@SIZES
def test_help(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)


@SIZES
def test_admin(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("4")
        await until(pilot, lambda: pilot.app.query_one("#admin-groups").row_count == 1)
        await pilot.pause(0.3)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)


@SIZES
def test_disconnected_banner(snap_compare, size):
    async def run_before(pilot):
        app = pilot.app
        await until(pilot, lambda: app.connected is False)
        await pilot.pause(0.2)
    assert snap_compare(make_app(ABSENT_SOCKET), terminal_size=size, run_before=run_before)


@SIZES
def test_experiments(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("5")
        await until(pilot, lambda: pilot.app.query_one("#experiments-table").row_count == 1)
        await pilot.pause(0.3)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)


@SIZES
def test_full_screen_log(daemon, snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        app = pilot.app
        app.open_job(app.jobs[1])
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen)
                    and app.screen.log_done)
        await pilot.press("f")
        await pilot.pause(0.3)
    assert snap_compare(make_app(daemon.socket), terminal_size=size, run_before=run_before)
