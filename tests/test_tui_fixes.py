"""The terminal UI as a lab member uses it for an hour: the log view, the small terminal,
search and escape, the palette, the queue's columns, marks and actions. Against a real labqd
with this machine as its node, at 80x24 and 160x48."""
import subprocess

import pytest
from daemonproc import Daemon
from rich.console import Console
from tuikit import drive, notes, run_log, screen_text, until

from labq import Job, JobState
from labq.tui.actions import refusal
from labq.tui.app import LabqApp
from labq.tui.confirm import ConfirmScreen
from labq.tui.detail import JobDetailScreen
from labq.tui.format import log_text, status_text
from labq.tui.logview import JobLog
from labq.tui.nodes import render_node
from labq.tui.queue import QueueTable
from labq.tui.submit import SubmitScreen

SIZES = [(80, 24), (160, 48)]
CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "1s",
               "socket_mode": "0666", "log_copy_max": 1},
    "node": [{"name": "gpu1", "local": True, "cpus": 16, "memory": "64G",
              "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}],
}
KW = {"cwd": "/tmp", "export_env": False}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("tui-fixes"), CONFIG)
    d.start(wait_nodes=1)
    try:
        yield d
    finally:
        d.close()



def app_for(d, **kw) -> LabqApp:
    return LabqApp(socket=d.socket, interval=0.3, **kw)


async def open_job(pilot, job_id: int) -> JobDetailScreen:
    app = pilot.app
    table = app.query_one("#queue-table", QueueTable)
    if not table.show_ended:
        await pilot.press("a")
    await until(pilot, lambda: str(job_id) in [str(k.value) for k in table.rows], "the job")
    table.select_job(job_id)
    await pilot.pause(0.05)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job view")
    return app.screen



# 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_big_batches_leave_the_log_showing_its_last_lines(size):
    async def scenario(pilot, log):
        for r in range(1, 4):
            log.append("".join(f"x {r} {i}\n" for i in range(1, 20001)))
            await pilot.pause(0.05)
        await pilot.pause(0.1)
        assert log.line_count == 10_000
        assert "x 3 20000" in screen_text(pilot.app)
        await pilot.press("k", "pageup")
        await pilot.pause(0.1)
        assert "x 3 " in screen_text(pilot.app)  # scrolled up: still lines, not blank rows
        await pilot.press("end")
        await pilot.pause(0.1)
        assert "x 3 20000" in screen_text(pilot.app)
    run_log(size, scenario)


# 2 -----------------------------------------------------------------------------------------
def test_job_view_submit_form_and_admin_fit_80x24(local):
    with local.client() as q:
        job = q.submit("seq 1 60", name="small-term", **KW)
        q.wait(job.id, timeout=30)
        held = [q.submit(["sleep", "60"], name=f"fit-{i}", hold=True, **KW).id
                for i in range(6)]
    app = app_for(local)

    async def scenario(pilot):
        detail = await open_job(pilot, job.id)
        await until(pilot, lambda: detail.log_done, "the log")
        await pilot.pause(0.2)
        assert detail.query_one(JobLog).size.height >= 6
        assert "60" in screen_text(app).split("Output")[1]
        await pilot.press("escape")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen), "the form")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Submit" in text.split("Directory")[1] and "Cancel" in text.split("Directory")[1]
        await pilot.press("escape")
        await until(pilot, lambda: app.query("#admin-view"), "the admin tab")
        await pilot.press("4")
        await pilot.pause(0.3)
        shown = [f"fit-{i}" for i in range(6) if f"fit-{i}" in screen_text(app)]
        assert len(shown) >= 3, screen_text(app)

    try:
        drive(app, scenario, (80, 24))
    finally:
        with local.client() as q:
            q.cancel(*held)


# 3 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_search_highlights_and_escape_stays_in_the_job_view(local, size):
    with local.client() as q:
        job = q.submit("seq 1 40", name="searchable", **KW)
        q.wait(job.id, timeout=30)
    app = app_for(local)

    async def scenario(pilot):
        detail = await open_job(pilot, job.id)
        await until(pilot, lambda: detail.log_done, "the log")
        await pilot.press("slash")
        await pilot.press("3", "3")
        await pilot.press("enter")
        await until(pilot, lambda: "match 1/1" in screen_text(app), "the match")
        assert not detail.query_one("#log-search").display  # the box goes after enter
        log = detail.query_one(JobLog)
        strip = log._render_line_strip(32, log.rich_style)
        assert any(seg.text == "33" and seg.style and seg.style.bgcolor
                   for seg in strip), list(strip)
        await pilot.press("escape")  # clears the matches, stays
        await pilot.pause(0.1)
        assert isinstance(app.screen, JobDetailScreen) and not log.highlight
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, SubmitScreen)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "back")

    drive(app, scenario, size)


# 4 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_palette_lists_labq_commands_and_saves_a_screenshot(local, size, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no Downloads folder, as on most servers
    app = app_for(local)

    async def scenario(pilot):
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        for c in "submit":
            await pilot.press(c)
        await until(pilot, lambda: "Submit a job" in screen_text(app), "labq's commands")
        await pilot.press("escape")
        await pilot.pause(0.2)
        app.action_screenshot()
        await pilot.pause(0.2)
        assert [p.name for p in tmp_path.glob("*.svg")]

    drive(app, scenario, size)


# 5 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 120, 160])
def test_queue_columns_fit_the_terminal(local, width):
    with local.client() as q:
        job = q.submit(["sleep", "60"], name="columns", gpus=1, **KW)
    app = app_for(local)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: job.id in table.jobs and
                    table.jobs[job.id].state is JobState.RUNNING, "the job running")
        await pilot.pause(0.3)
        header = next(line for line in screen_text(app).splitlines() if " NAME" in line)
        for label in ("ID", "NAME", "STATE", "REASON", "START"):
            assert label in header, header
        row = next(line for line in screen_text(app).splitlines() if "columns" in line)
        assert row.rstrip().endswith("ago"), row  # the START column is whole
        if width >= 120:
            for _ in range(7):
                await pilot.press("s")
            assert "PRIO ▲" in screen_text(app)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job view")
        await until(pilot, lambda: "RUNNING  root (" in screen_text(app), "the header")

    try:
        drive(app, scenario, (width, 30))
    finally:
        with local.client() as q:
            q.cancel(job.id)


def test_a_down_node_reason_is_on_its_own_line():
    from labq import Node
    node = Node.from_dict({"name": "n1", "host": "h1", "state": "down",
                           "reason": "connect failed: refused", "cpus": 4, "free_cpus": 4,
                           "memory_mb": 1024, "free_memory_mb": 1024, "gpus": []})
    console = Console(width=80, record=True, color_system=None)
    console.print(render_node(node, live_stats=False))
    lines = console.export_text().splitlines()
    assert "DOWN  h1" in lines[0] and "connect failed" not in lines[0]
    assert lines[1].strip() == "connect failed: refused"


# 6 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_key_hints_on_buttons_and_a_true_log_state(local, size):
    with local.client() as q:
        job = q.submit("seq 1 500; sleep 60", name="pausable", **KW)
    app = app_for(local)

    async def scenario(pilot):
        detail = await open_job(pilot, job.id)
        await until(pilot, lambda: detail.query_one(JobLog).line_count >= 500, "the log")
        assert "following" in screen_text(app)
        await pilot.press("k")
        await until(pilot, lambda: "paused" in screen_text(app), "paused")
        assert "following" not in screen_text(app)
        await pilot.press("G")
        await until(pilot, lambda: "following" in screen_text(app), "following again")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert "Cancel job [y]" in screen_text(app) and "Keep it [n]" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: detail.log_done, "the end")

    drive(app, scenario, size)


def test_a_job_view_closed_while_its_refresh_was_on_the_way_stays_closed(local):
    """The view's refresh reads the job in a thread; its answer can come back after the view
    was closed (Escape), when its widgets are gone. The app goes on, on the queue."""
    with local.client() as q:
        job = q.submit(["true"], name="closed-early", **KW)
        q.wait(job.id, timeout=30)
        events = q.events(job.id)
    app = app_for(local)

    async def scenario(pilot):
        detail = await open_job(pilot, job.id)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "the queue")
        await pilot.pause(0.1)
        app.call_later(detail._shown_if_open, job, events)  # as the worker's reply would
        await pilot.pause(0.2)
        assert app.is_running and not isinstance(app.screen, JobDetailScreen)
        assert "closed-early" in screen_text(app)  # the queue, still drawn

    drive(app, scenario, (160, 48))


def test_a_refused_log_says_unavailable_not_following(local):
    app = app_for(local)
    ghost = Job.from_dict({"id": 99999, "name": "ghost", "owner": "root", "group": "root",
                           "state": "RUNNING", "command": ["true"]})

    async def scenario(pilot):
        app.open_job(ghost)
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job view")
        await until(pilot, lambda: "unavailable" in screen_text(app), "unavailable")
        assert "following" not in screen_text(app)

    drive(app, scenario, (160, 48))


# 7 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_cancel_on_an_ended_job_says_why_without_asking(local, size):
    with local.client() as q:
        job = q.submit(["true"], name="already-done", **KW)
        q.wait(job.id, timeout=30)
    app = app_for(local)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("a")
        await until(pilot, lambda: str(job.id) in [str(k.value) for k in table.rows], "job")
        table.select_job(job.id)
        await pilot.pause(0.05)
        await pilot.press("c")
        await until(pilot, lambda: f"nothing to cancel: job {job.id} has already ended "
                    "(COMPLETED)" in notes(app), "the reason")
        assert not isinstance(app.screen, ConfirmScreen)

    drive(app, scenario, size)


def test_only_what_a_user_may_touch_is_offered():
    bob = Job.from_dict({"id": 3, "name": "x", "owner": "bob", "group": "g",
                         "state": "PENDING", "command": ["true"]})
    assert refusal("cancel", bob, "ana", False) == "job 3 belongs to bob"
    assert refusal("cancel", bob, "ana", True) is None
    assert "only a held job" in refusal("release", bob, "bob", False)


# 8 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_carriage_returns_rewrite_the_line_and_dropped_lines_are_marked(size):
    async def scenario(pilot, log):
        bar = "".join(log_text(f"\r{p:3d}%|{'#' * (p // 10):10}|") for p in range(101))
        log.append(bar[:300])
        log.append(bar[300:] + "\ndone\n")
        await pilot.pause(0.05)
        assert log.lines[:2] == ["100%|##########|", "done"]
        log.append("".join(f"line {i}\n" for i in range(10_050)))
        await pilot.pause(0.05)
        assert log.dropped == 52
        assert log.lines[0] == ("[labq: 52 earlier lines dropped from this view; "
                                "`labq logs 7` prints them]")
    run_log(size, scenario)


# 9 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_q_in_the_job_view_closes_it_not_the_app(local, size):
    with local.client() as q:
        job = q.submit(["true"], name="q-closes", **KW)
        q.wait(job.id, timeout=30)
    app = app_for(local)

    async def scenario(pilot):
        await open_job(pilot, job.id)
        await pilot.press("q")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "back")
        assert app.is_running

    drive(app, scenario, size)


# 10 ----------------------------------------------------------------------------------------
def test_plain_words_and_the_same_prio_as_labq_ls(local):
    with local.client() as q:
        failed = q.submit("exit 1", name="fails", **KW)
        q.wait(failed.id, timeout=30)
        failed = q.job(failed.id)
        pending = q.submit(["sleep", "1"], name="scored", gpus=8, **KW)
    assert status_text(failed, None) == "exit 1", failed.reason
    ls = subprocess.run(["labq", "--socket", str(local.socket), "ls"], capture_output=True,
                        text=True, check=True).stdout
    ls_prio = next(line for line in ls.splitlines() if "scored" in line).split()[7]
    app = app_for(local)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: pending.id in table.jobs, "the job")
        row = next(line for line in screen_text(app).splitlines() if "scored" in line)
        assert f" {ls_prio} " in row, (ls_prio, row)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen), "the form")
        app.screen.query_one("#f-command").value = "true"
        app.screen.query_one("#f-gpus").value = "two"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "GPUs: 'two' is not a whole number" in screen_text(app),
                    "the form's words")
        await pilot.press("escape")
        app.on_queue_table_job_action(QueueTable.JobAction("priority", [pending]))
        await until(pilot, lambda: app.screen.query("#ask-input"), "the question")
        app.screen.query_one("#ask-input").value = "99"
        await pilot.press("enter")
        await until(pilot, lambda: "priority not changed: " in notes(app), "the title")
        assert "job_priority" not in notes(app)

    try:
        drive(app, scenario, (160, 48))
    finally:
        with local.client() as q:
            q.cancel(pending.id)


# 11 ----------------------------------------------------------------------------------------
def test_past_labqd_log_cap_the_view_says_the_job_goes_on(local):
    with local.client() as q:
        job = q.submit("head -c 1500000 /dev/zero | tr '\\0' 'z' | fold -w 100; sleep 60",
                       name="capped", **KW)
    app = app_for(local)

    async def scenario(pilot):
        await open_job(pilot, job.id)
        await until(pilot, lambda: "labqd's copy is full; the job goes on" in
                    screen_text(app), "the cap said", timeout=30)
        assert "following" not in screen_text(app)

    try:
        drive(app, scenario, (160, 48))
    finally:
        with local.client() as q:
            q.cancel(job.id)


# mark-and-act, ended jobs behind a toggle, experiments -----------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_marked_jobs_are_released_with_one_confirmation(local, size):
    with local.client() as q:
        ids = [q.submit(["sleep", "1"], name=f"mark{size[0]}-{i}", hold=True, **KW).id
               for i in range(3)]
    app = app_for(local)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("slash")
        for c in f"mark{size[0]}-":
            await pilot.press(c)
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count == 3, "three jobs")
        table.select_job(ids[0])
        await pilot.pause(0.05)
        await pilot.press("space", "space")
        assert table.marked == set(ids[:2])
        assert "2 marked" in screen_text(app)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "one question")
        assert f"Release 2 jobs ({ids[0]}, {ids[1]})" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: all(table.jobs[i].state is not JobState.HELD
                                       for i in ids[:2]), "both released")
        assert table.jobs[ids[2]].state is JobState.HELD and not table.marked

    try:
        drive(app, scenario, size)
    finally:
        with local.client() as q:
            q.cancel(*[i for i in ids if not q.job(i).state.final])


def test_ended_jobs_wait_behind_a_toggle_and_experiments_open_their_jobs(local):
    with local.client() as q:
        done = q.submit(["true"], name="exp-done", experiment="lr-sweep", **KW)
        q.wait(done.id, timeout=30)
        held = q.submit(["true"], name="exp-held", experiment="lr-sweep", hold=True, **KW)
    app = app_for(local)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: held.id in table.jobs, "the jobs")
        await pilot.pause(0.3)
        assert "exp-held" in screen_text(app) and "exp-done" not in screen_text(app)
        await pilot.press("a")
        await until(pilot, lambda: "exp-done" in screen_text(app), "ended jobs shown")
        rows = [str(table.get_row_at(i)[4]) for i in range(table.row_count)]
        assert rows.index("COMPLETED") > rows.index("HELD")  # active first
        await pilot.press("a", "5")
        await until(pilot, lambda: "lr-sweep" in screen_text(app), "the experiment")
        assert "1/2" in screen_text(app)
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#queue-filter").value == "exp:lr-sweep",
                    "the queue filtered")
        await until(pilot, lambda: sorted(table.get_row_at(i)[1].plain
                                          for i in range(table.row_count))
                    == ["exp-done", "exp-held"], "its jobs")
        assert "GPUs A100" in screen_text(app)  # the cluster line

    try:
        drive(app, scenario, (160, 48))
    finally:
        with local.client() as q:
            q.cancel(held.id)


def test_command_mode_opens_a_job(local):
    with local.client() as q:
        job = q.submit(["true"], name="by-command", **KW)
        q.wait(job.id, timeout=30)
    app = app_for(local)

    async def scenario(pilot):
        await pilot.press("colon")
        await until(pilot, lambda: app.screen.query("#ask-input"), "the command line")
        for c in f"job {job.id}":
            await pilot.press({" ": "space"}.get(c, c))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen)
                    and app.screen.job.id == job.id, "the job view")

    drive(app, scenario, (80, 24))
