"""`?`: every key binding of every screen, read from the classes that define them so the list
cannot fall behind the code."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

KEY_NAMES = {"slash": "/", "question_mark": "?", "escape": "esc", "ctrl+p": "ctrl+p",
             "colon": ":",
             "ctrl+s": "ctrl+s", "up": "↑", "down": "↓"}


def key_text(keys: str) -> str:
    return " ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


def binding_rows(cls) -> list[tuple[str, str]]:
    rows = []
    for b in cls.BINDINGS:
        if isinstance(b, Binding):
            rows.append((key_text(b.key), b.description or b.action))
        else:
            rows.append((key_text(b[0]), b[2] if len(b) > 2 else b[1]))
    return rows


def sections(admin: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    from .admin import AdminGroups, AdminJobs, AdminNodes
    from .app import LabqApp
    from .confirm import ConfirmScreen
    from .detail import JobDetailScreen
    from .experiments import ExperimentsTable
    from .logview import JobLog
    from .nodes import NodesView
    from .queue import QueueTable, QueueView
    from .submit import SubmitScreen
    from .usage import UsageView
    out = [
        ("Everywhere", binding_rows(LabqApp) + [("ctrl+p", "Command palette")]),
        ("Queue", [("↑ ↓", "Move")] + binding_rows(QueueTable) + binding_rows(QueueView)),
        ("Job detail", binding_rows(JobDetailScreen) + binding_rows(JobLog)),
        ("Nodes", binding_rows(NodesView)),
        ("Usage", binding_rows(UsageView)),
        ("Experiments", binding_rows(ExperimentsTable)),
        ("Submit form", [("tab", "Next field")] + binding_rows(SubmitScreen)),
        ("Confirmation", binding_rows(ConfirmScreen)),
    ]
    if admin:
        out.append(("Admin", binding_rows(AdminNodes) + binding_rows(AdminJobs)
                    + binding_rows(AdminGroups)))
    return out


def _table(parts: list[tuple[str, list[tuple[str, str]]]]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(justify="right", style="bold cyan")
    table.add_column()
    for title, rows in parts:
        table.add_row("", Text(title, style="bold underline"))
        seen = set()
        for key, what in rows:
            if (key, what) not in seen:
                seen.add((key, what))
                table.add_row(key, what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, admin: bool) -> None:
        super().__init__()
        self.admin = admin

    def compose(self) -> ComposeResult:
        parts = sections(self.admin)
        half = (sum(len(rows) + 1 for _, rows in parts) + 1) // 2
        left, right, count = [], [], 0
        for part in parts:
            (left if count < half else right).append(part)
            count += len(part[1]) + 1
        with VerticalScroll(id="help-dialog"):
            yield Static(Text("labq key bindings", style="bold"), id="help-title")
            with Horizontal(id="help-columns"):
                yield Static(_table(left), classes="help-column")
                yield Static(_table(right), classes="help-column")
            yield Static("esc closes", id="help-hint")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
