"""`labq tui`: the terminal UI. A client of labqd like any script: everything it shows comes
from `import labq`, and every change it makes is a request the daemon may refuse."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

import labq
from labq import Job
from labq.client import default_address
from labq.errors import LabqError
from labq.protocol import Op
from labq.text import printable

from .admin import AdminGroups, AdminNodes, AdminView
from .clock import Clock
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
from .format import plain
from .help import HelpScreen
from .nodes import NodesView
from .queue import QueueTable, QueueView
from .submit import SubmitScreen
from .usage import UsageView

# actions that belong to the main screen: off while a dialog or the job detail is up
MAIN_SCREEN_ACTIONS = {"submit", "toggle_mine", "filter", "show_tab"}


class LabqApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "labq"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("n", "submit", "New job"),
        Binding("slash", "filter", "Filter"),
        Binding("m", "toggle_mine", "Mine/All"),
        Binding("1", "show_tab('queue')", "Queue tab", show=False),
        Binding("2", "show_tab('nodes')", "Nodes tab", show=False),
        Binding("3", "show_tab('usage')", "Usage tab", show=False),
        Binding("4", "show_tab('admin')", "Admin tab (admins)", show=False),
    ]

    def __init__(self, socket: str | os.PathLike | None = None,
                 client_factory: ClientFactory | None = None, clock: Clock | None = None,
                 interval: float = 1.0, live_stats: bool = True, mine: bool = False,
                 cwd: str | None = None) -> None:
        """`clock` and `live_stats=False` make rendering repeatable (see clock.py, nodes.py);
        `cwd` is the submit form's default directory."""
        super().__init__()
        # a labq:// URL stays text: a Path would fold its "//"
        self.socket = (socket if isinstance(socket, str) and socket.startswith("labq://")
                       else Path(socket) if socket else default_address())
        self.factory = client_factory or default_factory
        self.clock = clock or Clock()
        self.live_stats = live_stats
        self.cwd = cwd
        self.mine = mine
        self.me: dict | None = None
        self.connected: bool | None = None
        self.jobs: dict[int, Job] = {}
        self.usage: Usage | None = None
        # held directly: a pane being added is not in the DOM yet, so a query would miss it
        self.admin: AdminView | None = None
        self.settings = PollSettings(interval=interval)
        self.conn = Connection(self.socket, self.factory)
        self.poller = Poller(self.socket, self.factory, self.settings, self.post_message,
                             time.monotonic)

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(plain(f"connecting to labqd at {self.socket}…"), id="banner")
        with TabbedContent(id="tabs", initial="queue"):
            with TabPane("Queue [1]", id="queue"):
                yield QueueView(self.clock, id="queue-view")
            with TabPane("Nodes [2]", id="nodes"):
                yield NodesView(self.live_stats, id="nodes-view")
            with TabPane("Usage [3]", id="usage"):
                yield UsageView(self.clock, id="usage-view")
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
            self._update_subtitle()
            if self.mine:
                self.queue.table.set_only_user(self.me["user"])
            if self.is_admin:
                self._mount_admin()
        self.queue.table.set_jobs(msg.jobs)
        self.queue.update_summary()
        self.query_one(NodesView).set_nodes(msg.nodes)
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
                 "admin": AdminNodes}[tab]
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
        if len(self.screen_stack) > 1:
            return
        yield SystemCommand("Submit a job", "Open the submit form (n)", self.action_submit)
        yield SystemCommand("Filter the queue", "Filter by words, state:, user:, group: (/)",
                            self.action_filter)
        yield SystemCommand("Mine / all", "Show only my jobs, or everyone's (m)",
                            self.action_toggle_mine)
        yield SystemCommand("Key bindings", "List every key (?)", self.action_help)
        for tab in ("queue", "nodes", "usage") + (("admin",) if self.is_admin else ()):
            yield SystemCommand(f"Show {tab}", f"Switch to the {tab} tab",
                                lambda t=tab: self.action_show_tab(t))

    # -- acting on jobs, nodes and groups --------------------------------------------------
    def on_queue_table_job_action(self, msg: QueueTable.JobAction) -> None:
        job = msg.job
        if msg.action == "open":
            self.open_job(job)
        elif msg.action == "cancel":
            self.confirm_cancel(job)
        elif msg.action == "priority":
            self.push_screen(AskScreen(f"New priority for job {job.id} ({job.name}), 1-10:",
                                       str(job.priority)),
                             lambda v: v is not None and self.request(
                                 f"job {job.id} priority set", Op.JOB_PRIORITY,
                                 lambda q: q.set_priority(job.id, _number(v, int))))
        else:
            self.job_request(msg.action, job)

    def open_job(self, job: Job) -> None:
        self.push_screen(JobDetailScreen(job, self.socket, self.factory, self.conn,
                                         self.clock))

    def confirm_cancel(self, job: Job) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.job_request("cancel", job)
        self.push_screen(ConfirmScreen(
            f"Cancel job {job.id} ({job.name}, {job.state.value}, owner {job.owner})?",
            yes="Cancel job", no="Keep it"), answered)

    @work(thread=True, group="actions")
    def job_request(self, action: str, job: Job) -> None:
        """cancel, hold or release one job."""
        try:
            [after] = self.conn.run(lambda q: getattr(q, action)(job.id))
        except LabqError as e:
            self.call_from_thread(self.notify, printable(e.message), title=f"{action} failed",
                                  severity="error", markup=False)
            return
        self.call_from_thread(self.notify, f"job {after.id} is {after.state.value}",
                              timeout=3)
        self.refresh_now()

    @work(thread=True, group="actions")
    def request(self, done: str, op: Op, send: Callable[[labq.Client], object]) -> None:
        """Send one request through `send`; say `done`, or why `op` failed."""
        try:
            self.conn.run(send)
        except LabqError as e:
            self.call_from_thread(self.notify, printable(e.message), title=f"{op.value} failed",
                                  severity="error", markup=False)
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
