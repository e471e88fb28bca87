"""`labq tui`: the terminal UI. A client of labqd like any script: everything it shows comes
from `import labq`, and every change it makes is a request the daemon may refuse."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane

import labq
from labq import Job
from labq.client import default_address
from labq.errors import LabqError
from labq.protocol import Op
from labq.text import printable
from labq.units import format_duration

from . import actions
from .admin import AdminGroups, AdminNodes, AdminView
from .clock import Clock
from .commandline import run_command
from .confirm import AskScreen, ConfirmScreen
from .data import (
    ClientFactory,
    Connection,
    ConnectionChanged,
    Poller,
    PollSettings,
    Snapshot,
    Usage,
    UsageReport,
    default_factory,
)
from .detail import JobDetailScreen
from .experiments import ExperimentsTable, ExperimentsView
from .format import cluster_line, plain
from .help import HelpScreen
from .nodes import NodesView
from .queue import QueueTable, QueueView
from .submit import SubmitScreen
from .usage import UsageView

# actions that belong to the main screen: off while a dialog or the job detail is up
MAIN_SCREEN_ACTIONS = {"submit", "toggle_mine", "filter", "show_tab", "command"}
RELATIVE_TIMES_EVERY_S = 10.0
TABS = ("queue", "nodes", "usage", "experiments", "admin")


class LabqApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "labq"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("n", "submit", "New job"),
        Binding("slash", "filter", "Filter"),
        Binding("m", "toggle_mine", "Mine/All"),
        Binding("colon", "command", "Command", show=False),
        Binding("1", "show_tab('queue')", "Queue tab", show=False),
        Binding("2", "show_tab('nodes')", "Nodes tab", show=False),
        Binding("3", "show_tab('usage')", "Usage tab", show=False),
        Binding("5", "show_tab('experiments')", "Experiments tab", show=False),
        Binding("4", "show_tab('admin')", "Admin tab (admins)", show=False),
    ]

    def __init__(self, socket: str | os.PathLike | None = None,
                 client_factory: ClientFactory | None = None, clock: Clock | None = None,
                 interval: float = 1.0, live_stats: bool = True, mine: bool | None = None,
                 cwd: str | None = None) -> None:
        """`clock` and `live_stats=False` make rendering repeatable (see clock.py, nodes.py);
        `cwd` is the submit form's default directory; `mine` None: only my jobs unless I am
        an admin."""
        super().__init__()
        # a labq:// URL stays text: a Path would fold its "//"
        self.socket = (socket if isinstance(socket, str) and socket.startswith("labq://")
                       else Path(socket) if socket else default_address())
        self.factory = client_factory or default_factory
        self.clock = clock or Clock()
        self.live_stats = live_stats
        self.cwd = cwd
        self.mine = bool(mine)
        self._mine_default = mine is None
        self.me: dict | None = None
        self.connected: bool | None = None
        self.jobs: dict[int, Job] = {}
        self.usage: Usage | None = None
        # held directly: a pane being added is not in the DOM yet, so a query would miss it
        self.admin: AdminView | None = None
        self.summary = Static("", id="cluster-summary")
        self._last_seen: tuple = ()
        self._summary_shown: str | None = None
        self._last_redraw = 0.0
        self.settings = PollSettings(interval=interval)
        self.conn = Connection(self.socket, self.factory)
        self.poller = Poller(self.socket, self.factory, self.settings, self.post_message,
                             time.monotonic)

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(plain(f"connecting to labqd at {self.socket}…"), id="banner")
        yield self.summary
        with TabbedContent(id="tabs", initial="queue"):
            with TabPane("Queue [1]", id="queue"):
                yield QueueView(self.clock, id="queue-view")
            with TabPane("Nodes [2]", id="nodes"):
                yield NodesView(self.live_stats, id="nodes-view")
            with TabPane("Usage [3]", id="usage"):
                yield UsageView(self.clock, id="usage-view")
            with TabPane("Experiments [5]", id="experiments"):
                yield ExperimentsView(self.clock, id="experiments-view")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queue-filter").display = False
        self._update_subtitle()
        self.query_one(QueueTable).focus()
        self.run_worker(self.poller.run, thread=True, group="poller", name="poller")

    def on_unmount(self) -> None:
        self._stop_background()

    def _stop_background(self) -> None:
        self.poller.stop.set()
        self.settings.wake.set()
        self.conn.close()

    @property
    def queue(self) -> QueueView:
        return self.query_one(QueueView)

    @property
    def is_admin(self) -> bool:
        return bool(self.me and self.me.get("admin"))

    def _update_subtitle(self) -> None:
        who = "connecting" if self.me is None else \
            printable(self.me["user"]) + (" (admin)" if self.is_admin else "")
        self.sub_title = f"{who} · {'my jobs' if self.mine else 'all jobs'}"

    # -- what the poller reports -----------------------------------------------------------
    def on_snapshot(self, msg: Snapshot) -> None:
        if not self.query(QueueTable) or not self.query(NodesView):
            return  # not composed yet, or shutting down: the next poll brings it all again
        first = self.me is None
        self.me = msg.me
        self.jobs = {j.id: j for j in msg.jobs}
        if first:
            if self._mine_default:
                self.mine = not self.is_admin
            self._update_subtitle()
            if self.mine:
                self.queue.table.set_only_user(self.me["user"])
            if self.is_admin:
                self._mount_admin()
        line = cluster_line(msg.jobs, msg.nodes)
        if line.plain != self._summary_shown:  # an update lays the whole screen out again
            self._summary_shown = line.plain
            self.summary.update(line)
        self.query_one(NodesView).set_nodes(msg.nodes, self.jobs)
        if msg.experiments is not None:
            self.query_one(ExperimentsView).set_experiments(msg.experiments)
        # an idle queue polls the same jobs again and again: diff the tables only when
        # something changed, and now and then for the relative times ("5m ago")
        now = time.monotonic()
        seen = (msg.jobs, [(n.name, n.state, n.reason, n.running_jobs) for n in msg.nodes])
        if seen == self._last_seen and now - self._last_redraw < RELATIVE_TIMES_EVERY_S:
            return
        self._last_seen, self._last_redraw = seen, now
        self.queue.table.set_jobs(msg.jobs)
        self.queue.update_summary()
        if self.admin is not None:
            self.admin.set_snapshot(msg.jobs, msg.nodes)

    def on_usage_report(self, msg: UsageReport) -> None:
        self.usage = msg.usage
        for view in self.query(UsageView):
            view.set_usage(msg.usage)
        if self.admin is not None:
            self.admin.set_usage(msg.usage)

    def on_connection_changed(self, msg: ConnectionChanged) -> None:
        banner = self.query_one("#banner", Static)
        if msg.connected and not msg.error:
            banner.display = False
        elif msg.connected:
            banner.update(plain(f"labqd at {self.socket}: {msg.error}"))
            banner.set_class(False, "-down")
            banner.display = True
        else:
            banner.update(plain(f"disconnected from labqd at {self.socket} — retrying "
                                f"({msg.error})"))
            banner.set_class(True, "-down")
            banner.display = True
        self.connected = msg.connected

    def _mount_admin(self) -> None:
        self.admin = AdminView(self.clock, id="admin-view")
        if self.usage is not None:
            self.admin.set_usage(self.usage)
        self.query_one(TabbedContent).add_pane(TabPane("Admin [4]", self.admin, id="admin"))

    def refresh_now(self) -> None:
        self.settings.wake.set()

    # -- bindings --------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in MAIN_SCREEN_ACTIONS and len(self.screen_stack) > 1:
            return False
        if action == "show_tab" and parameters == ("admin",):
            return self.is_admin
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.is_admin))

    def action_show_tab(self, tab: str) -> None:
        if not self.query(f"TabPane#{tab}"):
            return  # the admin pane is still being mounted
        self.query_one(TabbedContent).active = tab
        focus = {"queue": QueueTable, "nodes": NodesView, "usage": UsageView,
                 "experiments": ExperimentsTable, "admin": AdminNodes}[tab]
        for widget in self.query(focus):
            widget.focus()
            break

    def action_filter(self) -> None:
        self.query_one(TabbedContent).active = "queue"
        self.queue.open_filter()

    def action_toggle_mine(self) -> None:
        self.mine = not self.mine
        if self.me is not None:
            self.queue.table.set_only_user(self.me["user"] if self.mine else None)
            self.queue.update_summary()
        self._update_subtitle()
        self.notify("showing my jobs" if self.mine else "showing all users' jobs",
                    timeout=2)

    def action_submit(self) -> None:
        self.push_screen(SubmitScreen(self.conn, self.cwd), self._submitted)

    def _submitted(self, job: Job | None) -> None:
        if job is None:
            return
        self.query_one(TabbedContent).active = "queue"
        table = self.queue.table
        table.upsert(job)
        table.select_job(job.id)
        table.focus()
        self.notify(printable(f"submitted job {job.id} ({job.name})"), timeout=3, markup=False)
        self.refresh_now()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        # `screen` is the one the palette was opened over; the palette is on the stack too
        if screen is not self.screen_stack[0]:
            return
        yield SystemCommand("Submit a job", "Open the submit form (n)", self.action_submit)
        yield SystemCommand("Filter the queue", "Filter by words, state:, user:, group: (/)",
                            self.action_filter)
        yield SystemCommand("Mine / all", "Show only my jobs, or everyone's (m)",
                            self.action_toggle_mine)
        yield SystemCommand("Key bindings", "List every key (?)", self.action_help)
        yield SystemCommand("Command line", ":nodes, :job 42, :exp NAME (:)",
                            self.action_command)
        for tab in TABS if self.is_admin else TABS[:-1]:
            yield SystemCommand(f"Show {tab}", f"Switch to the {tab} tab",
                                lambda t=tab: self.action_show_tab(t))

    # -- acting on jobs, nodes and groups --------------------------------------------------
    def on_queue_table_job_action(self, msg: QueueTable.JobAction) -> None:
        job = msg.job
        if msg.action == "open":
            self.open_job(job)
        elif msg.action == "cancel":
            self.confirm_cancel(msg.jobs)
        elif msg.action in ("hold", "release"):
            self.act(msg.action, msg.jobs, confirm=len(msg.jobs) > 1)
        elif msg.action == "yank":
            self.yank(str(job.id), f"job id {job.id}")
        elif msg.action == "clone":
            self.push_screen(SubmitScreen(self.conn, self.cwd, template=job), self._submitted)
        elif msg.action in ("priority", "time_limit"):
            self.change_job(job, msg.action)

    def change_job(self, job: Job, what: str) -> None:
        """Ask for a waiting job's new priority or time limit; its owner may only lower it."""
        why = actions.refusal(what, job, self.me and self.me["user"], self.is_admin)
        if why is not None:
            self.notify(printable(why), markup=False, severity="warning",
                        title=actions.FAILED_TITLES[what])
            return
        lower = "" if self.is_admin else " (you may only lower it)"
        if what == "priority":
            self.push_screen(AskScreen(f"New priority for job {job.id} ({job.name}), "
                                       f"1-10{lower}:", str(job.priority)),
                             lambda v: v is not None and self.request(
                                 f"job {job.id} priority set", Op.JOB_PRIORITY,
                                 lambda q: q.set_priority(job.id, _number(v, int))))
            return
        now = format_duration(job.time_limit_s) if job.time_limit_s else ""
        self.push_screen(AskScreen(f"New time limit for job {job.id} ({job.name}){lower}:",
                                   now, prompt="30m, 2h, 1:30:00"),
                         lambda v: bool(v) and self.request(
                             f"job {job.id} time limit set", Op.JOB_TIME_LIMIT,
                             lambda q: q.set_time_limit(job.id, v.strip())))

    def open_job(self, job: Job) -> None:
        self.push_screen(JobDetailScreen(job, self.socket, self.factory, self.conn,
                                         self.clock))

    def confirm_cancel(self, jobs: list[Job]) -> None:
        self.act("cancel", jobs, confirm=True)

    def act(self, action: str, jobs: list[Job], confirm: bool) -> None:
        """cancel, hold or release jobs: those it cannot apply to are named, not sent."""
        todo = actions.plan(action, jobs, self.me and self.me["user"], self.is_admin)
        if not todo.jobs:
            self.notify(printable("; ".join(todo.skipped)), markup=False, severity="warning",
                        title=f"nothing to {action}")
            return
        if not confirm and not todo.skipped:
            self.job_request(action, todo.jobs)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.job_request(action, todo.jobs)
        verb = actions.VERBS[action][0]
        n = len(todo.jobs)
        self.push_screen(ConfirmScreen(todo.question(), yes=f"{verb} {n} jobs" if n > 1
                                       else f"{verb} job", no="Keep them" if n > 1
                                       else "Keep it"), answered)

    @work(thread=True, group="actions")
    def job_request(self, action: str, jobs: list[Job]) -> None:
        """cancel, hold or release jobs in one request."""
        ids = [j.id for j in jobs]
        try:
            after = self.conn.run(lambda q: getattr(q, action)(*ids))
        except LabqError as e:
            self.call_from_thread(self.notify, printable(e.message), markup=False,
                                  title=actions.FAILED_TITLES[action], severity="error")
            return
        self.call_from_thread(self._acted, actions.done_text(action, after))

    def _acted(self, text: str) -> None:
        self.queue.table.action_unmark()
        self.notify(text, timeout=3)
        self.refresh_now()

    def yank(self, text: str, what: str) -> None:
        self.copy_to_clipboard(text)
        self.notify(printable(f"copied {what}: {text}"[:200]), timeout=3, markup=False)

    def action_command(self) -> None:
        self.push_screen(AskScreen(":nodes  :usage  :exp NAME  :job ID  :queue  :help",
                                   prompt=":"), lambda v: v and run_command(self, v))

    def on_experiments_table_open(self, msg: ExperimentsTable.Open) -> None:
        self.show_experiment(msg.name)

    def show_experiment(self, name: str) -> None:
        self.action_show_tab("queue")
        box = self.query_one("#queue-filter", Input)
        box.value = f"exp:{name}"
        box.display = True
        self.queue.table.focus()

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """Save the screen as SVG in the current directory (Textual's default, a Downloads
        folder, is missing on most servers)."""
        for where in (path, os.getcwd(), tempfile.gettempdir()):
            if where and os.access(where, os.W_OK):
                saved = self.save_screenshot(filename, where)
                self.notify(printable(f"screenshot saved to {saved}"), markup=False)
                return
        self.notify("no writable directory for the screenshot", severity="error")

    @work(thread=True, group="actions")
    def request(self, done: str, op: Op, send: Callable[[labq.Client], object]) -> None:
        """Send one request through `send`; say `done`, or why `op` failed."""
        try:
            self.conn.run(send)
        except LabqError as e:
            self.call_from_thread(self.notify, printable(e.message), severity="error",
                                  title=actions.FAILED_TITLES.get(op.value, "refused"),
                                  markup=False)
            return
        self.call_from_thread(self.notify, printable(done), timeout=3, markup=False)
        self.poller.refresh_usage()

    def on_admin_nodes_node_action(self, msg: AdminNodes.NodeAction) -> None:
        if msg.action == "drain":
            self.push_screen(ConfirmScreen(f"Drain node {msg.node}? Running jobs go on; "
                                           "no new jobs start there.", yes="Drain"),
                             lambda yes: yes and self.request(
                                 f"node {msg.node} draining", Op.NODE_DRAIN,
                                 lambda q: q.drain(msg.node)))
        else:
            self.request(f"node {msg.node} resumed", Op.NODE_RESUME,
                         lambda q: q.resume(msg.node))

    def on_admin_groups_group_action(self, msg: AdminGroups.GroupAction) -> None:
        what = {"share": ("fair-share weight", float), "max_gpus": ("GPU limit", int)}
        label, kind = what[msg.setting]
        self.push_screen(AskScreen(f"New {label} for group {msg.group}:"),
                         lambda v: v is not None and self.request(
                             f"group {msg.group} {label} set", Op.GROUP_SET,
                             lambda q: q.set_group(msg.group,
                                                   **{msg.setting: _number(v, kind)})))


def _number(text: str, kind: type) -> int | float | str:
    """A number if it reads as one; otherwise the text, for labqd to refuse with its reason."""
    try:
        return kind(text.strip())
    except ValueError:
        return text


def run(socket: str | os.PathLike | None = None) -> int:
    app = LabqApp(socket=socket)
    app.run()
    return app.return_code or 0
