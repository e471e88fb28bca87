"""The admin tab, mounted only for admins: drain and resume nodes; hold, release, cancel and
re-prioritise anyone's job; set group shares and GPU limits. The daemon checks every request;
this tab only saves admins from typing ids."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from labq import Node

from .clock import Clock
from .data import Usage
from .format import plain
from .queue import QueueTable

ACTIVE_FILTER = "state:pending,held,running"


class AdminNodes(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("d", "node('drain')", "Drain node"),
        Binding("r", "node('resume')", "Resume node"),
    ]

    class NodeAction(Message):
        def __init__(self, action: str, node: str) -> None:
            super().__init__()
            self.action = action
            self.node = node

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._rows: dict[str, tuple] = {}
        self._pending: list[Node] | None = None

    def on_mount(self) -> None:
        for key, label in (("name", "NODE"), ("state", "STATE"), ("reason", "REASON"),
                           ("jobs", "RUNNING JOBS")):
            self.add_column(label, key=key)
        if self._pending is not None:
            self.set_nodes(self._pending)

    def set_nodes(self, nodes: list[Node]) -> None:
        if not self.columns:  # not mounted yet
            self._pending = nodes
            return
        seen = set()
        for n in nodes:
            seen.add(n.name)
            row = (n.name, n.state, n.reason or "",
                   ", ".join(map(str, n.running_jobs)) or "-")
            old = self._rows.get(n.name)
            if old is None:
                self.add_row(*map(plain, row), key=n.name)
            elif old != row:
                for key, a, b in zip(("name", "state", "reason", "jobs"), old, row):
                    if a != b:
                        self.update_cell(n.name, key, plain(b))
            self._rows[n.name] = row
        for name in [k for k in self._rows if k not in seen]:
            self.remove_row(name)
            del self._rows[name]

    def action_node(self, action: str) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            self.post_message(self.NodeAction(action, str(key)))


class AdminJobs(QueueTable):
    BINDINGS = [Binding("p", "priority", "Set priority")]

    def action_priority(self) -> None:
        job = self.current_job
        if job is not None:
            self.post_message(self.JobAction("priority", [job]))


class AdminGroups(DataTable):
    BINDINGS = [
        Binding("e", "group('share')", "Set share"),
        Binding("x", "group('max_gpus')", "Set GPU limit"),
    ]

    class GroupAction(Message):
        def __init__(self, setting: str, group: str) -> None:
            super().__init__()
            self.setting = setting
            self.group = group

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._pending: list[dict] | None = None

    def on_mount(self) -> None:
        self.add_columns("GROUP", "SHARE", "MAX GPUS", "GPUS IN USE", "FAIR-SHARE")
        if self._pending is not None:
            self.set_groups(self._pending)

    def set_groups(self, groups: list[dict]) -> None:
        if not self.columns:  # not mounted yet
            self._pending = groups
            return
        cursor = self.cursor_row
        self.clear()
        for g in groups:
            self.add_row(plain(g["group"]), _fmt(g.get("share")), _fmt(g.get("max_gpus"), 0),
                         _fmt(g.get("gpus_in_use"), 0), _fmt(g.get("fairshare"), 3),
                         key=g["group"])
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), animate=False)

    def action_group(self, setting: str) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            self.post_message(self.GroupAction(setting, str(key)))


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


class AdminView(Vertical):
    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self._groups: list[dict] | None = None
        # what arrives before the tab is mounted waits here
        self._snapshot: tuple | None = None
        self._usage: Usage | None = None
        self._ready = False
        self._drawn = False  # the tables have been filled once
        self._behind = False  # a snapshot came while the tab was not shown

    def compose(self) -> ComposeResult:
        yield Static("Nodes  (d drain, r resume)", classes="section-title admin-title")
        yield AdminNodes(id="admin-nodes")
        yield Static("Active jobs of all users  (h hold, r release, c cancel, p priority)",
                     classes="section-title admin-title")
        yield AdminJobs(self.clock, id="admin-jobs")
        yield Static("Groups  (e share, x GPU limit)", classes="section-title admin-title")
        yield Static("", id="admin-groups-note")
        yield AdminGroups(id="admin-groups")

    def on_mount(self) -> None:
        jobs = self.query(AdminJobs)
        if not jobs:  # the app closed while the tab was being added: its children are gone
            return
        self._ready = True
        jobs.first().set_filter(ACTIVE_FILTER)
        if self._snapshot is not None:
            self.set_snapshot(*self._snapshot)
        if self._usage is not None:
            self.set_usage(self._usage)

    def on_show(self) -> None:
        if self._behind and self._snapshot is not None:
            self.set_snapshot(*self._snapshot)

    def set_snapshot(self, jobs, nodes) -> None:
        self._snapshot = (jobs, nodes)
        if not self._ready:
            return
        # its table holds every user's jobs: diffing it on every poll while another tab is
        # shown was most of what an idle UI did with 1,000 jobs queued
        self._behind = self._drawn and not self.is_on_screen
        if self._behind:
            return
        self._drawn = True
        self.query_one(AdminNodes).set_nodes(nodes)
        self.query_one(AdminJobs).set_jobs(jobs)

    def set_usage(self, usage: Usage) -> None:
        self._usage = usage
        if not self._ready:
            return
        note = self.query_one("#admin-groups-note", Static)
        table = self.query_one(AdminGroups)
        if usage.groups is None:
            note.update(plain("Group settings are not available from this labqd: "
                              f"{usage.groups_error}"))
            note.display = True
            table.display = False
            return
        note.display = False
        table.display = True
        if usage.groups != self._groups:
            self._groups = usage.groups
            table.set_groups(usage.groups)
