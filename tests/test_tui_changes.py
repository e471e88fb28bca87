"""Changing a waiting job from the TUI: `T` asks for a new time limit and `P` for a new
priority, in the queue and in the job view; what labqd refuses is said in a toast and changes
nothing; a running job is not offered. Against a real labqd, at 80x24 and 160x48. That an
owner may only lower either, and another user not touch them, is tried with real Unix users
in test_trust."""
import pytest
from daemonproc import Daemon
from textual.widgets import Input
from tuikit import drive, notes, until

from labq.tui.app import LabqApp
from labq.tui.confirm import AskScreen
from labq.tui.detail import JobDetailScreen
from labq.tui.queue import QueueTable

CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "1s",
               "socket_mode": "0666"},
    "limits": {"job_max_time": "4h"},
    "node": [{"name": "gpu1", "local": True, "cpus": 4, "memory": "8G"}],
}
KW = {"cwd": "/tmp", "export_env": False}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("tui-changes"), CONFIG)
    d.start(wait_nodes=1)
    try:
        yield d
    finally:
        d.close()



async def answer(pilot, key: str, text: str) -> None:
    """Press `key`, then put `text` in the question's box and send it."""
    await pilot.press(key)
    await until(pilot, lambda: isinstance(pilot.app.screen, AskScreen), f"the {key} question")
    pilot.app.screen.query_one("#ask-input", Input).value = text
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(pilot.app.screen, AskScreen), "the answer")


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_t_and_p_change_a_waiting_job_and_refusals_change_nothing(daemon, size):
    with daemon.client() as q:
        job = q.submit(["true"], hold=True, time_limit="2h", priority=6, **KW)
        running = q.submit(["sleep", "60"], **KW)
    app = LabqApp(socket=daemon.socket, interval=0.3)

    def now():
        with daemon.client() as q:
            j = q.job(job.id)
            return j.time_limit_s, j.priority

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: str(job.id) in [str(k.value) for k in table.rows], "job")
        table.select_job(job.id)
        await pilot.pause(0.05)
        await answer(pilot, "T", "45m")
        await until(pilot, lambda: now() == (2700, 6), "the new time limit")
        await until(pilot, lambda: table.current_job.time_limit_s == 2700, "the queue's view")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job view")
        await answer(pilot, "P", "3")
        await until(pilot, lambda: now() == (2700, 3), "the new priority")
        await answer(pilot, "T", "5h")  # past limits.job_max_time
        await until(pilot, lambda: "time limit not changed" in notes(app), "the refusal")
        assert "job_max_time" in notes(app) and now() == (2700, 3)
        await answer(pilot, "T", "soon")
        await until(pilot, lambda: "cannot read 'soon'" in notes(app), "the bad duration")
        assert isinstance(app.screen, JobDetailScreen) and now() == (2700, 3)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "the queue")
        await until(pilot, lambda: str(running.id) in [str(k.value) for k in table.rows]
                    and table.jobs[running.id].state.value == "RUNNING", "the running job")
        table.select_job(running.id)
        await pilot.pause(0.05)
        await pilot.press("T")
        await until(pilot, lambda: "only a pending or held job's time limit" in notes(app),
                    "why a running job is left alone")
        assert not isinstance(app.screen, AskScreen)

    try:
        drive(app, scenario, size)
    finally:
        with daemon.client() as q:
            q.cancel(job.id, running.id)
