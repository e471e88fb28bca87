"""The experiments tab: one row per experiment (a sweep, an array, or jobs submitted with
`-e NAME`), its jobs by state as one bar, and enter to see its jobs in the queue."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from .clock import Clock
from .format import plain

BAR_WIDTH = 24
# the bar's segments, left to right: what has ended well, what runs, what waits, what failed
SEGMENTS = (("COMPLETED", "█", "green"), ("RUNNING", "█", "cyan"), ("PENDING", "▒", "yellow"),
            ("HELD", "▒", "magenta"), ("FAILED", "█", "red"), ("TIMEOUT", "█", "red"),
            ("NODE_FAIL", "█", "red"), ("CANCELLED", "░", "grey50"))


def progress_bar(counts: dict[str, int], total: int, width: int = BAR_WIDTH) -> Text:
    """Each state's share of the jobs as a run of cells; every state present gets one."""
    text = Text()
    if total <= 0:
        return Text("·" * width, style="dim")
    cells = {s: (counts.get(s, 0) * width) // total for s, _, _ in SEGMENTS}
    for s, _, _ in SEGMENTS:
        if counts.get(s) and not cells[s]:
            cells[s] = 1
    spare = width - sum(cells.values())
    biggest = max(cells, key=lambda s: counts.get(s, 0))
    cells[biggest] = max(0, cells[biggest] + spare)
    for s, char, style in SEGMENTS:
        text.append(char * cells[s], style=style)
    return text


def counts_text(counts: dict[str, int]) -> str:
    done = counts.get("COMPLETED", 0)
    bad = sum(counts.get(s, 0) for s in ("FAILED", "TIMEOUT", "NODE_FAIL"))
    parts = [f"{counts.get('RUNNING', 0)} run", f"{counts.get('PENDING', 0)} wait"]
    if counts.get("HELD"):
        parts.append(f"{counts['HELD']} held")
    parts.append(f"{done} ok")
    if bad:
        parts.append(f"{bad} failed")
    if counts.get("CANCELLED"):
        parts.append(f"{counts['CANCELLED']} cancelled")
    return ", ".join(parts)


class ExperimentsTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("enter", "open", "Its jobs"),
    ]

    class Open(Message):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.clock = clock
        self._rows: dict[str, tuple] = {}

    def on_mount(self) -> None:
        for key, label, width in (("name", "EXPERIMENT", 18), ("owner", "USER", 9),
                                  ("bar", "PROGRESS", BAR_WIDTH), ("done", "DONE", 9),
                                  ("counts", "STATES", 30), ("first", "FIRST SUBMIT", 12)):
            self.add_column(label, key=key, width=width)

    def set_experiments(self, experiments: list[dict[str, Any]]) -> None:
        seen = set()
        for e in experiments:
            key = f"{e['owner']}/{e['name']}"
            seen.add(key)
            counts, total = e["counts"], e["total"]
            ended = sum(n for s, n in counts.items()
                        if s not in ("PENDING", "HELD", "RUNNING"))
            row = (e["name"], e["owner"], tuple(sorted(counts.items())), ended, total,
                   e["first_submit"])
            if self._rows.get(key) == row:
                continue
            cells = [plain(e["name"]), plain(e["owner"]), progress_bar(counts, total),
                     Text(f"{ended}/{total}", justify="right"), plain(counts_text(counts)),
                     plain(self.clock.ago(e["first_submit"]))]
            if key in self._rows:
                for col, cell in zip(("name", "owner", "bar", "done", "counts", "first"),
                                     cells):
                    self.update_cell(key, col, cell)
            else:
                self.add_row(*cells, key=key)
            self._rows[key] = row
        for key in [k for k in self._rows if k not in seen]:
            self.remove_row(key)
            del self._rows[key]

    def action_open(self) -> None:
        if not self.row_count:
            return
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        if key is not None:
            self.post_message(self.Open(key.split("/", 1)[1]))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()


class ExperimentsView(Vertical):
    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield ExperimentsTable(self.clock, id="experiments-table")
        yield Static("no experiments yet: `labq submit -e NAME …`, `--array` or `--param` "
                     "make one", id="experiments-empty")

    def set_experiments(self, experiments: list[dict[str, Any]]) -> None:
        empty = self.query_one("#experiments-empty")
        if empty.display != (not experiments):
            empty.display = not experiments
        self.query_one(ExperimentsTable).set_experiments(experiments)
