"""The terminal UI driven through Textual's pilot against a real labqd and real nodes."""
import asyncio
import subprocess
import sys
import time

import pytest
from daemonproc import Daemon, as_user
from sshnodes import ensure_user
from tuikit import drive, screen_text, until

import labq
from labq.tui.app import LabqApp
from labq.tui.confirm import ConfirmScreen
from labq.tui.detail import JobDetailScreen, JobLog
from labq.tui.queue import QueueTable
from labq.tui.submit import SubmitScreen

SIZE = (160, 48)
LOCAL_NODE = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "2s",
               "socket_mode": "0666"},
    "node": [{"name": "gpu1", "local": True, "cpus": 16, "memory": "64G",
              "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}],
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """labqd whose only node is this machine, reached over a pipe."""
    d = Daemon(tmp_path_factory.mktemp("tui-local"), LOCAL_NODE)
    d.start(wait_nodes=1)
    try:
        yield d
    finally:
        d.close()




def table_names(app) -> list[str]:
    table = app.query_one("#queue-table", QueueTable)
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[{" ": "space"}.get(c, c) for c in text])


# -- the whole path a user takes, on an SSH node --------------------------------------------
def test_submit_follow_log_and_cancel_with_confirmation(cluster, tmp_path):
    app = LabqApp(socket=cluster.socket, cwd=str(tmp_path), interval=0.3)
    script = 'for i in $(seq 1 600); do echo "tui-line $i"; sleep 0.05; done'

    async def scenario(pilot):
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen), "the submit form")
        form = app.screen
        form.query_one("#f-command").value = script
        form.query_one("#f-name").focus()
        await type_text(pilot, "tui-flow")
        form.query_one("#f-gpus").focus()
        await type_text(pilot, "1")
        form.query_one("#f-gpu_type").focus()
        await type_text(pilot, "A100")
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SubmitScreen), "the form closes")

        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: table.current_job is not None
                    and table.current_job.name == "tui-flow", "the new job selected")
        job_id = table.current_job.id
        await until(pilot, lambda: "RUNNING" in screen_text(app), "the job running")
        row = next(line for line in screen_text(app).splitlines() if "tui-flow" in line)
        assert "RUNNING" in row and "a4" in row and "1:A100" in row

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the detail")
        detail = app.screen
        log = detail.query_one(JobLog)
        await until(pilot, lambda: log.line_count >= 10, "log lines")
        first = log.line_count
        await until(pilot, lambda: log.line_count > first + 5, "more log lines arriving")
        assert log.lines[0] == "tui-line 1"
        assert [int(line.split()[1]) for line in log.lines[:first]] == list(range(1, first + 1))
        text = screen_text(app)
        assert f"Job {job_id}" in text and "tui-flow" in text and "following" in text
        assert "node a4" in " ".join(text.split())
        await until(pilot, lambda: "RUNNING" in screen_text(app) and
                    "PENDING" in screen_text(app), "the state history")

        # "n" in the confirmation keeps the job
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert f"Cancel job {job_id} (tui-flow, RUNNING" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "dialog closed")
        with cluster.client() as q:
            assert q.job(job_id).state.value == "RUNNING"

        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: detail.log_done, "the log to complete", timeout=30)
        await until(pilot, lambda: "CANCELLED" in screen_text(app), "CANCELLED in the detail")
        assert "complete" in screen_text(app)
        with cluster.client() as q:
            assert q.job(job_id).state.value == "CANCELLED"

        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "back")
        await pilot.press("a")  # ended jobs are behind a toggle
        await until(pilot, lambda: any("tui-flow" in line and "CANCELLED" in line
                                       for line in screen_text(app).splitlines()),
                    "CANCELLED in the queue")

    drive(app, scenario, SIZE)


def test_submit_form_shows_the_error_inline_and_stays_open(cluster, tmp_path):
    app = LabqApp(socket=cluster.socket, cwd=str(tmp_path), interval=0.5)

    async def scenario(pilot):
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen), "the submit form")
        await type_text(pilot, "true")
        app.screen.query_one("#f-gpus").focus()
        await type_text(pilot, "two")
        await pilot.press("enter")
        await until(pilot, lambda: "GPUs: 'two' is not a whole number" in screen_text(app),
                    "the form's message")
        assert isinstance(app.screen, SubmitScreen)
        assert app.screen.query_one("#f-gpus").has_class("-invalid")

        app.screen.query_one("#f-gpus").value = "1"
        app.screen.query_one("#f-memory").value = "lots"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "cannot read 'lots' as a size" in screen_text(app),
                    "the memory message")
        assert app.screen.query_one("#f-memory").has_class("-invalid")
        assert not app.screen.query_one("#f-gpus").has_class("-invalid")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SubmitScreen), "form closed")

    drive(app, scenario, SIZE)
    with cluster.client() as q:
        assert not [j for j in q.jobs() if j.command == "true"]


def test_a_fast_log_is_batched_capped_and_searchable(local, tmp_path):
    from labq.tui.detail import MAX_LINES
    with local.client() as q:
        job = q.submit("seq 1 300000", name="fast-log", cwd=str(tmp_path), export_env=False)
    app = LabqApp(socket=local.socket, interval=0.3)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("a")  # the job may have ended: show ended jobs too
        await until(pilot, lambda: str(job.id) in [str(k.value) for k in table.rows],
                    "the job")
        table.select_job(job.id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the detail")
        detail = app.screen
        log = detail.query_one(JobLog)
        started = time.monotonic()
        await pilot.press("question_mark")  # the UI answers keys while the log pours in
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "help")
        # the help came while the log was still being read, or soon: a view that read the
        # whole log before answering keys would take as long as the log takes
        assert not detail.log_done or time.monotonic() - started < 5.0
        await pilot.press("escape")
        await until(pilot, lambda: detail.log_done, "the whole log", timeout=30)
        await pilot.pause(0.2)
        assert log.line_count <= MAX_LINES
        lines = [line for line in log.lines if line]  # the text ends with a newline
        first = lines[0]
        if first.startswith("[labq: "):  # capped while it streamed in: the view says so
            assert "earlier lines dropped" in first
            first = lines[1]
        assert lines[-1] == "300000" and int(first) > 300000 - MAX_LINES
        assert "complete" in screen_text(app)

        await pilot.press("slash")
        await until(pilot, lambda: detail.query_one("#log-search").has_focus, "search box")
        await type_text(pilot, "29999")
        await pilot.press("enter")
        await until(pilot, lambda: "match 1/10" in screen_text(app), "the matches")
        assert not log.follow
        assert "299990" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: "match 2/10" in screen_text(app), "the next match")
        await pilot.press("G")
        assert log.follow

    drive(app, scenario, SIZE)


# -- the queue: filter, mine/all, live updates ----------------------------------------------
def test_filter_and_mine_toggle(local, tmp_path):
    uid, gid = ensure_user("labqtest")
    with local.client() as q:
        for name in ("alpha-one", "beta-two"):
            q.submit(["sleep", "60"], name=name, hold=True, cwd=str(tmp_path),
                     export_env=False)

    def submit_other():
        with labq.connect(local.socket) as qb:
            return qb.submit(["sleep", "60"], name="other-user", hold=True, cwd="/tmp",
                             export_env=False).id
    other = as_user(uid, gid, submit_other)
    app = LabqApp(socket=local.socket, interval=0.3)

    async def scenario(pilot):
        want = {"alpha-one", "beta-two", "other-user"}
        await until(pilot, lambda: want <= set(table_names(app)), "all three jobs")
        await pilot.press("slash")
        await type_text(pilot, "alpha")
        await until(pilot, lambda: table_names(app) == ["alpha-one"], "the word filter")
        await pilot.press("escape")
        await until(pilot, lambda: want <= set(table_names(app)), "the filter cleared")

        await pilot.press("slash")
        await type_text(pilot, "state:held user:labqtest")
        await pilot.press("enter")
        await until(pilot, lambda: table_names(app) == ["other-user"], "the field filter")
        assert "filter: state:held user:labqtest" in screen_text(app)
        app.query_one("#queue-filter").value = ""
        await until(pilot, lambda: want <= set(table_names(app)), "the filter emptied")

        await pilot.press("m")
        await until(pilot, lambda: "other-user" not in table_names(app), "mine only")
        assert {"alpha-one", "beta-two"} <= set(table_names(app))
        assert "my jobs" in screen_text(app)
        await pilot.press("m")
        await until(pilot, lambda: "other-user" in table_names(app), "all users again")
        assert "all jobs" in screen_text(app)

    drive(app, scenario, SIZE)
    with local.client() as q:
        q.cancel(other, *[j.id for j in q.jobs(states=["HELD"])
                          if j.name in ("alpha-one", "beta-two")])


def test_live_updates_keep_the_cursor_and_sort(local, tmp_path):
    with local.client() as q:
        ids = [q.submit(["sleep", "60"], name=f"keep-{i:02d}", hold=True, cwd=str(tmp_path),
                        export_env=False).id for i in range(12)]
    app = LabqApp(socket=local.socket, interval=0.2)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("slash")
        await type_text(pilot, "keep-")
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count == 12, "twelve jobs")
        for _ in range(5):
            await pilot.press("j")
        target = table.current_job
        assert target.name == "keep-05"
        with local.client() as q:
            q.submit(["sleep", "60"], name="keep-new", hold=True, cwd=str(tmp_path),
                     export_env=False)
            q.release(ids[5])
        await until(pilot, lambda: table.row_count == 13, "the new job's row")
        await until(pilot, lambda: table.jobs[target.id].state.value != "HELD",
                    "the released job's state")
        assert table.current_job.id == target.id
        row = table.get_row_index(str(target.id))
        assert str(table.get_row_at(row)[4]) in ("PENDING", "RUNNING", "COMPLETED")

        await pilot.press("S")  # ids descending: the cursor follows its job, not its row
        assert table.current_job.id == target.id
        assert table_names(app)[0] == "keep-new"
        assert "ID ▼" in screen_text(app)
        await pilot.press("s")
        assert table.sort_column == "name" and "NAME ▲" in screen_text(app)
        assert table_names(app) == sorted(table_names(app))
        assert table.current_job.id == target.id

    drive(app, scenario, SIZE)
    with local.client() as q:
        q.cancel(*ids)


def test_thousands_of_jobs_update_only_what_changed(local, tmp_path):
    with local.client() as q:
        for i in range(2000):
            q.submit(["true"], name=f"bulk-{i}", hold=True, cwd="/tmp", export_env=False)
    app = LabqApp(socket=local.socket, interval=60)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: table.row_count >= 2000, "2000 rows")
        jobs = list(table.jobs.values())
        updates = []
        original = table.update_cell
        table.update_cell = lambda *a, **k: (updates.append(a[0]), original(*a, **k))
        table.set_jobs(jobs)
        assert updates == []  # nothing changed, nothing is redrawn
        changed = jobs[100]
        from dataclasses import replace
        jobs[100] = replace(changed, state=labq.JobState.PENDING, reason="test")
        table.set_jobs(jobs)
        assert set(updates) == {str(changed.id)}

    drive(app, scenario, SIZE)
    with local.client() as q:
        held = [j.id for j in q.jobs(states=["HELD"]) if j.name.startswith("bulk-")]
        for i in range(0, len(held), 500):
            q.cancel(*held[i:i + 500])


# -- connection loss ------------------------------------------------------------------------
def test_banner_shows_while_labqd_is_down_and_goes_when_it_is_back(tmp_path):
    d = Daemon(tmp_path / "d", LOCAL_NODE)
    d.start(wait_nodes=1)
    try:
        app = LabqApp(socket=d.socket, interval=0.2)

        async def scenario(pilot):
            banner = app.query_one("#banner")
            await until(pilot, lambda: not banner.display, "connected")
            d.stop()
            await until(pilot, lambda: banner.display and
                        f"disconnected from labqd at {d.socket} — retrying"
                        in screen_text(app), "the banner", timeout=10)
            d.start(wait_nodes=1)
            with d.client() as q:
                q.submit(["sleep", "30"], name="after-restart", hold=True, cwd="/tmp",
                         export_env=False)
            await until(pilot, lambda: not banner.display, "the banner gone", timeout=15)
            assert "disconnected" not in screen_text(app)
            await until(pilot, lambda: "after-restart" in table_names(app), "new data")

        drive(app, scenario, SIZE)
    finally:
        d.close()


# -- admin ----------------------------------------------------------------------------------
def test_admin_drains_and_resumes_a_node(local):
    app = LabqApp(socket=local.socket, interval=0.3)

    async def scenario(pilot):
        await until(pilot, lambda: app.query("#admin-view"), "the admin tab")
        await pilot.press("4")
        await until(pilot, lambda: "Active jobs of all users" in screen_text(app), "admin")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        assert "Drain node gpu1?" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: any(l.split()[:2] == ["gpu1", "drain"]
                                       for l in screen_text(app).splitlines() if l.split()),
                    "the node drained")
        with local.client() as q:
            assert q.nodes()[0].state == "drain"
        await pilot.press("r")
        await until(pilot, lambda: any(l.split()[:2] == ["gpu1", "up"]
                                       for l in screen_text(app).splitlines() if l.split()),
                    "the node resumed")
        with local.client() as q:
            assert q.nodes()[0].state == "up"

        admin_jobs = app.query_one("#admin-jobs", QueueTable)
        admin_jobs.focus()
        admin_jobs.select_job(held.id)
        await until(pilot, lambda: admin_jobs.current_job is not None
                    and admin_jobs.current_job.id == held.id, "the held job in admin")
        await pilot.press("p")
        await until(pilot, lambda: "New priority for job" in screen_text(app), "the question")
        app.screen.query_one("Input").value = "9"
        await pilot.press("enter")
        await until(pilot, lambda: admin_jobs.jobs[held.id].priority == 9, "priority 9")

        app.query_one("#admin-groups").focus()
        await pilot.press("e")
        await until(pilot, lambda: "New fair-share weight for group" in screen_text(app),
                    "the share question")
        app.screen.query_one("Input").value = "2.5"
        await pilot.press("enter")
        with local.client() as q:
            await until(pilot, lambda: q.groups()[0]["share"] == 2.5, "share 2.5")
        await until(pilot, lambda: any(l.split()[:2] == ["root", "2.5"]
                                       for l in screen_text(app).splitlines()), "2.5 shown")

    with local.client() as q:
        held = q.submit(["sleep", "60"], name="admin-held", hold=True, cwd="/tmp",
                        export_env=False)
    try:
        drive(app, scenario, SIZE)
    finally:
        with local.client() as q:
            q.cancel(held.id)


def test_non_admins_get_no_admin_tab(local):
    uid, gid = ensure_user("labqtest")

    def look():
        app = LabqApp(socket=local.socket, interval=0.3)

        async def main():
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.me is not None, "the first poll")
                await pilot.pause(0.5)  # time for an admin tab to be mounted
                await pilot.press("4")
                await pilot.press("question_mark")
                await pilot.pause(0.2)
                return {"user": app.me["user"], "admin_tab": bool(app.query("#admin-view")),
                        "help": screen_text(app)}
        return asyncio.run(main())

    # root first: proves the check can fail, and loads every module the child will need
    # (it cannot read root's site-packages once it has switched users)
    seen = look()
    assert seen["user"] == "root" and seen["admin_tab"] and "Drain node" in seen["help"]
    seen = as_user(uid, gid, look)
    assert seen["user"] == "labqtest" and not seen["admin_tab"]
    assert "Drain node" not in seen["help"] and "Cancel" in seen["help"]


# -- pieces ---------------------------------------------------------------------------------
def test_import_labq_loads_no_ui_database_or_ssh_modules():
    code = ("import labq, labq.cli, sys; bad = [m for m in ('textual', 'peewee', 'paramiko') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tui_modules_use_only_the_client_library():
    code = ("import labq.tui.app, sys; bad = [m for m in sys.modules if m.startswith("
            "('labq.daemon', 'peewee', 'paramiko', 'sqlite3'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
