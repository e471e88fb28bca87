"""What one user types never takes over another user's screen.

Job names, commands, cancel reasons and a job's output are chosen by whoever submits the job,
and every lab member sees them: in `labq ls` and `labq events`, and in the TUI. Markup in them
(`[/]`, `[bold red]…[/]`) must show as written and never be parsed (a `[/]` would otherwise
stop the UI), and control characters (ESC sequences that clear the screen or set the window
title, BEL, CR) must show escaped, never reach the terminal. Only `labq logs` prints a job's
output as it is: that is what it is for.
"""
import contextlib
import io
import json
import re
import shutil
import subprocess
from argparse import Namespace

import pytest
from daemonproc import Daemon, as_user
from rich.text import Text
from sshnodes import ensure_user
from textual_plotext import Plot
from tuikit import drive, screen_text, until

import labq
import labq.cli
from labq.cli_admin import cmd_group, cmd_nodes, cmd_usage
from labq.models import Gpu, Node
from labq.text import printable
from labq.tui.app import LabqApp
from labq.tui.confirm import ConfirmScreen
from labq.tui.detail import JobDetailScreen, JobLog
from labq.tui.format import log_text
from labq.tui.nodes import render_node
from labq.tui.queue import QueueTable
from labq.tui.usage import draw_usage, render_shares

LABQ = shutil.which("labq")
SIZE = (200, 50)
CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "2s",
               "socket_mode": "0666"},
    "node": [{"name": "gpu1", "local": True, "cpus": 8, "memory": "16G",
              "gpus": [{"type": "A100", "memory_mb": 81920}]}],
}

SLASH = "[/]"
MARKUP = "[bold red]ROOT[/]"
# clears the screen, sets the window title, rings the bell, returns the cursor
CONTROL = "\x1b[2Jboom\x1b]0;title\x07\r"
CONTROL_SHOWN = "\\x1b[2Jboom\\x1b]0;title\\x07\\r"
# labqd refuses C0 controls in names; C1 (CSI, 8-bit) and bidi overrides get through
C1_NAME = "\x9b2Jc1\u202eevil"
C1_SHOWN = "\\x9b2Jc1\\u202eevil"
# what must never reach a terminal: C0 except newline, DEL, C1
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


def assert_safe(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters {found!r} in:\n{text!r}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with Daemon(tmp_path_factory.mktemp("display"), CONFIG).start(wait_nodes=1) as d:
        yield d


@pytest.fixture(scope="module")
def jobs(daemon, tmp_path_factory):
    """Hostile jobs of two users: root's, and one of labqtest's."""
    cwd = str(tmp_path_factory.mktemp("display-jobs"))
    with daemon.client() as q:
        slash = q.submit(["echo", CONTROL, SLASH], name=SLASH, hold=True, cwd=cwd,
                         export_env=False)
        markup = q.submit(f"echo '{MARKUP}' {CONTROL}", name=MARKUP, hold=True, cwd=cwd,
                          export_env=False)
        c1 = q.submit(["true"], name=C1_NAME, hold=True, cwd=cwd, export_env=False)
        q.cancel(c1.id, reason=C1_NAME + SLASH)  # C0 controls are refused in reasons
        output = q.submit(["printf", r"\033]0;pwned\007[/] [bold]x[/]\r\nsecond \033[32mgreen"
                          r"\033[0m\n"], name="printer", cwd=cwd, export_env=False)
        q.wait(output.id, timeout=60)
    uid, gid = ensure_user("labqtest")

    def submit_as_other():
        with labq.connect(daemon.socket) as qb:
            return qb.submit(["sleep", CONTROL], name="[b]other[/b]", hold=True, cwd="/tmp",
                             export_env=False).id
    other = as_user(uid, gid, submit_as_other)
    ids = {"slash": slash.id, "markup": markup.id, "c1": c1.id, "output": output.id,
           "other": other}
    yield ids
    with daemon.client() as q:
        q.cancel(slash.id, markup.id, other)


# -- the command line ------------------------------------------------------------------------
@pytest.fixture
def cli(daemon, tmp_path):
    def run(*args, ok=True):
        # bytes, decoded here: text mode would turn a raw CR into a newline unseen
        r = subprocess.run([LABQ, *args], capture_output=True, env=daemon.env(), cwd=tmp_path,
                           timeout=60)
        r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
        if ok:
            assert r.returncode == 0, f"labq {args} -> {r.returncode}\n{r.stderr}"
        return r
    return run


def test_ls_shows_names_and_reasons_escaped_and_literal(cli, jobs):
    out = cli("ls", "--all").stdout
    assert_safe(out)
    assert SLASH in out and MARKUP in out and "[b]other[/b]" in out
    assert C1_SHOWN in out
    # columns stay aligned: widths are measured on what is printed, escapes included
    header, *rows = out.splitlines()
    at = header.index("STATE")
    assert all(row[at:].split()[0] in {s.value for s in labq.JobState} for row in rows)


def test_show_and_events_escape_commands_and_reasons(cli, jobs):
    show = cli("show", str(jobs["slash"])).stdout
    assert_safe(show)
    assert CONTROL_SHOWN in show and f"name: {SLASH}" in show
    markup = cli("show", str(jobs["markup"])).stdout
    assert_safe(markup)
    assert f"name: {MARKUP}" in markup and CONTROL_SHOWN in markup

    cancelled = cli("show", str(jobs["c1"])).stdout
    assert_safe(cancelled)
    assert C1_SHOWN in cancelled and C1_SHOWN + SLASH in cancelled
    events = cli("events", str(jobs["c1"])).stdout
    assert_safe(events)
    assert f"cancelled by root: {C1_SHOWN}{SLASH}" in events


def test_json_output_keeps_the_text_exact(cli, jobs):
    out = cli("show", "--json", str(jobs["slash"])).stdout
    assert_safe(out)  # json.dumps escapes control characters itself
    job = json.loads(out)
    assert job["name"] == SLASH and job["command"] == ["echo", CONTROL, SLASH]
    events = json.loads(cli("events", "--json", str(jobs["c1"])).stdout)
    assert events[-1]["reason"] == f"cancelled by root: {C1_NAME}{SLASH}"


def test_cancel_prints_the_reason_escaped(cli, daemon, tmp_path):
    with daemon.client() as q:
        job = q.submit(["true"], name="to-cancel", hold=True, cwd=str(tmp_path),
                       export_env=False)
    out = cli("cancel", "--reason", C1_NAME, str(job.id)).stdout
    assert_safe(out)
    assert C1_SHOWN in out


def test_an_error_message_is_escaped(cli):
    r = cli("submit", "--name", CONTROL, "--", "true", ok=False)
    assert r.returncode == 1 and "name" in r.stderr
    assert_safe(r.stderr)


def test_logs_print_the_output_verbatim(cli, jobs):
    out = cli("logs", str(jobs["output"])).stdout
    assert out.startswith("\x1b]0;pwned\x07[/] [bold]x[/]")


def test_another_users_ls_is_safe(daemon, jobs):
    """labqtest lists the queue that holds root's hostile jobs, through the same CLI code."""
    uid, gid = ensure_user("labqtest")

    def ls():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = labq.cli.main(["--socket", str(daemon.socket), "ls", "--all"])
        return {"rc": rc, "out": buf.getvalue()}
    seen = as_user(uid, gid, ls)
    assert seen["rc"] == 0
    assert_safe(seen["out"])
    assert SLASH in seen["out"] and MARKUP in seen["out"] and C1_SHOWN in seen["out"]


def test_nodes_groups_and_usage_tables_escape_what_nodes_and_admins_named():
    class Fake:
        def nodes(self):
            return [Node(name="n[/]\x9b", host="h\x1b[2J", state="refused",
                              reason="host key \x1b]0;x\x07 changed",
                              gpu_source="nvidia-smi",
                              gpus=[Gpu(index=0, type="A\x1b[5m100", memory_mb=1)])]

        def groups(self):
            return [{"group": "g\x1b[2J", "share": 1.0, "max_gpus": None,
                     "max_gpus_by_type": {"A\x07": 1}, "gpus_in_use": 0, "usage": 0.0,
                     "fairshare": 1.0}]

        def usage(self, days, bucket="day"):
            return {"groups": [{"group": "g\x1b[2J", "gpu_hours": 1.0, "share": 1.0,
                                "fairshare": 1.0}],
                    "users": [{"group": "g\x1b[2J", "user": "u\r", "gpu_hours": 1.0,
                               "fairshare": 1.0}]}
    for fn, args in ((cmd_nodes, {}), (cmd_group, {"action": "ls"}), (cmd_usage, {"days": 1})):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert fn(Fake(), Namespace(json=False, **args)) == 0
        assert_safe(buf.getvalue())
        assert "\\x1b[" in buf.getvalue() or "\\r" in buf.getvalue()


def test_printable():
    assert printable("plain name, ünïcode 日本 [/]") == "plain name, ünïcode 日本 [/]"
    assert printable(CONTROL) == CONTROL_SHOWN
    assert printable("a\nb\tc\x00\x7f\x85\u2028") == "a\\nb\\tc\\x00\\x7f\\x85\\u2028"
    assert printable("a\nb\tc\x1b", lines=True) == "a\nb\tc\\x1b"
    assert printable(42) == "42"


def test_log_text_drops_colours_and_shows_other_escapes():
    # a lone \r stays: the log view rewrites its line, as a terminal does
    assert log_text("\x1b[1;32mok\x1b[0m\r\n10%\r20%\n") == "ok\n10%\r20%\n"
    assert log_text("\x1b]0;t\x07C:\\temp\tx") == "\\x1b]0;t\\x07C:\\temp\tx"


# -- the terminal UI -------------------------------------------------------------------------


def test_tui_queue_detail_and_dialogs_show_the_text_as_written(daemon, jobs):
    app = LabqApp(socket=daemon.socket, interval=0.3)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("a")  # ended jobs too: they wait behind a toggle
        await until(pilot, lambda: all(str(i) in [str(k.value) for k in table.rows]
                                       for i in jobs.values()), "every job")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert_safe(text)
        assert SLASH in text and MARKUP in text and "[b]other[/b]" in text
        assert C1_SHOWN in text

        # the filter echoes what was typed, as typed
        app.query_one("#queue-filter").value = SLASH
        await until(pilot, lambda: f"filter: {SLASH}" in screen_text(app), "the filter echo")
        # the word matches names and commands
        assert {j.name for j in table.jobs.values() if table.visible(j)} == \
            {SLASH, MARKUP, "printer"}
        app.query_one("#queue-filter").value = ""

        # the confirmation names the job as it is
        table.focus()
        table.select_job(jobs["slash"])
        await until(pilot, lambda: table.current_job is not None
                    and table.current_job.id == jobs["slash"], "the cursor on the job")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert f"Cancel job {jobs['slash']} ({SLASH}, HELD" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")

        # the detail: the command with its escapes, the name as written
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the detail")
        await until(pilot, lambda: CONTROL_SHOWN in screen_text(app), "the command")
        text = screen_text(app)
        assert_safe(text)
        assert f"Job {jobs['slash']}  {SLASH}" in text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "back")

        # the history of a job cancelled with a hostile reason
        app.open_job(table.jobs[jobs["c1"]])
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the detail")
        await until(pilot, lambda: "CANCELLED" in screen_text(app)
                    and f"cancelled by root: {C1_SHOWN}" in screen_text(app),
                    "the state history")
        assert_safe(screen_text(app))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobDetailScreen), "back")

        # a job's output: escapes shown, colours dropped, markup left alone
        app.open_job(table.jobs[jobs["output"]])
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen)
                    and app.screen.query(JobLog), "the detail")
        log = app.screen.query_one(JobLog)
        await until(pilot, lambda: app.screen.log_done, "the whole log")
        assert log.lines[:2] == ["\\x1b]0;pwned\\x07[/] [bold]x[/]", "second green"]
        await pilot.pause(0.2)
        assert_safe(screen_text(app))
        assert "[/] [bold]x[/]" in screen_text(app)

    drive(app, scenario, SIZE)


def test_tui_usage_and_nodes_render_hostile_names():
    from rich.console import Console
    console = Console(width=120, record=True, color_system=None)
    data = {
        "until": 7200.0,
        "groups": [{"group": "[/]\x1b[2J", "gpu_hours": 1.0, "share": 1.0, "fairshare": 1.0}],
        "users": [{"group": "[/]\x1b[2J", "user": "[bold]u[/]", "gpu_hours": 1.0,
                   "fairshare": 1.0}],
        "series": [{"group": "[/]\x1b[2J", "day": "1970-01-01", "start": 3600.0,
                    "gpu_hours": 1.0}]}
    console.print(render_shares(data))
    plot = Plot()
    plot.plotsize(80, 12)
    draw_usage(plot, data, "day")
    console.print(Text.from_ansi(plot.build()))
    console.print(render_node(Node(
        name="[/]", host="h\x1b[2J", state="refused", reason="[red]key\x1b]0;x\x07",
        gpus=[Gpu(index=0, type="[/]A\x1b[5m", memory_mb=1)])))
    text = console.export_text()
    assert_safe(text)
    assert "[/]\\x1b[2J" in text and "[bold]u[/]" in text and "[red]key\\x1b]0;x\\x07" in text
    assert "[/]A\\x1b[5m" in text


def test_the_names_would_break_markup():
    """What Textual does with a plain string in a table cell or a Static: the tests above
    pass because the text is never parsed, not because these names are harmless."""
    from rich.errors import MarkupError
    from rich.text import Text
    with pytest.raises(MarkupError):
        Text.from_markup(SLASH)
    assert Text.from_markup(MARKUP).plain == "ROOT"
