"""The queue: a DataTable kept in step with the daemon's job list row by row.

Each poll diffs the new list against the cells on screen: rows that vanished are removed, new
ones added, and only cells whose text changed are rewritten, so the cursor and the scroll
position survive updates and thousands of jobs stay cheap to refresh.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from labq import Job

from . import filtering
from .clock import Clock
from .format import gpus_text, plain, start_text, state_text, status_text


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[Job, Clock], str]
    sort: Callable[[Job], object]
    width: int | None = None


COLUMNS = (
    Column("id", "ID", lambda j, c: str(j.id), lambda j: j.id, 6),
    Column("name", "NAME", lambda j, c: j.name, lambda j: j.name.lower(), 20),
    Column("owner", "USER", lambda j, c: j.owner, lambda j: j.owner, 10),
    Column("group", "GROUP", lambda j, c: j.group, lambda j: j.group, 10),
    Column("state", "STATE", lambda j, c: j.state.value, lambda j: j.state.value, 9),
    Column("gpus", "GPUS", lambda j, c: gpus_text(j), lambda j: j.gpus, 6),
    Column("node", "NODE", lambda j, c: j.node or "-", lambda j: j.node or "", 10),
    Column("priority", "PRIO", lambda j, c: str(j.priority),
           lambda j: (j.priority, j.priority_score or 0.0), 4),
    Column("status", "REASON/TIME", status_text,
           lambda j: (j.reason or "", j.start_time or 0.0), 20),
    Column("start", "START", start_text,
           lambda j: j.estimated_start or j.start_time or float("inf"), 16),
)
COLUMN_KEYS = [c.key for c in COLUMNS]


class QueueTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("enter", "open", "Detail"),
        Binding("c", "cancel", "Cancel"),
        Binding("h", "hold", "Hold"),
        Binding("r", "release", "Release"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    class JobAction(Message):
        """The user asked for something to happen to the job under the cursor."""

        def __init__(self, action: str, job: Job) -> None:
            super().__init__()
            self.action = action
            self.job = job

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.clock = clock
        self.jobs: dict[int, Job] = {}
        self.sort_column = "id"
        self.sort_reverse = False
        self.query_text = ""
        self.only_user: str | None = None
        self._match: Callable[[Job], bool] = filtering.parse("")
        self._cells: dict[str, tuple[str, ...]] = {}
        self._select_after: int | None = None
        self._ready = False

    def on_mount(self) -> None:
        for col in COLUMNS:
            self.add_column(self._label(col), key=col.key, width=col.width)
        self._ready = True
        self._sync()

    # -- what the user sees ----------------------------------------------------------------
    def set_jobs(self, jobs: list[Job]) -> None:
        self.jobs = {j.id: j for j in jobs}
        self._sync()

    def upsert(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._sync()

    def set_filter(self, text: str) -> None:
        self.query_text = text
        self._match = filtering.parse(text)
        self._sync()

    def set_only_user(self, user: str | None) -> None:
        self.only_user = user
        self._sync()

    def select_job(self, job_id: int) -> None:
        """Put the cursor on a job, now if it is shown, else as soon as it is."""
        if str(job_id) in self._cells:
            self.move_cursor(row=self.get_row_index(str(job_id)))
            self._select_after = None
        else:
            self._select_after = job_id

    @property
    def current_job(self) -> Job | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.jobs.get(int(key)) if key is not None else None

    def visible(self, job: Job) -> bool:
        return (self.only_user is None or job.owner == self.only_user) and self._match(job)

    # -- keeping the table in step ---------------------------------------------------------
    def _sync(self) -> None:
        if not self._ready:
            return
        keep = self.current_job
        keep_index = self.cursor_row
        shown = [j for j in self.jobs.values() if self.visible(j)]
        wanted = {str(j.id) for j in shown}
        for key in [k for k in self._cells if k not in wanted]:
            self.remove_row(key)
            del self._cells[key]
        sort_idx = COLUMN_KEYS.index(self.sort_column)
        resort = False
        for job in shown:
            key = str(job.id)
            cells = tuple(col.cell(job, self.clock) for col in COLUMNS)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*self._render(job, cells), key=key)
                resort = True
            elif old != cells:
                for i, (a, b) in enumerate(zip(old, cells)):
                    if a != b:
                        self.update_cell(key, COLUMN_KEYS[i], self._render_one(job, i, b))
                resort = resort or old[sort_idx] != cells[sort_idx]
            self._cells[key] = cells
        if resort:
            self._sort()
        if self._select_after is not None and str(self._select_after) in self._cells:
            self.select_job(self._select_after)
        elif keep is not None and str(keep.id) in self._cells:
            index = self.get_row_index(str(keep.id))
            if index != self.cursor_row:
                self.move_cursor(row=index, animate=False)
        elif self.row_count:
            self.move_cursor(row=min(keep_index, self.row_count - 1), animate=False)

    def _render(self, job: Job, cells: tuple[str, ...]) -> list[object]:
        return [self._render_one(job, i, text) for i, text in enumerate(cells)]

    def _render_one(self, job: Job, index: int, text: str) -> object:
        if COLUMN_KEYS[index] == "state":
            return state_text(job.state)
        if COLUMN_KEYS[index] in ("id", "gpus", "priority"):
            return Text(text, justify="right")
        return plain(text)

    def _sort(self) -> None:
        col = COLUMNS[COLUMN_KEYS.index(self.sort_column)]
        jobs = self.jobs

        def key(cell: object) -> tuple:
            job = jobs[int(str(cell))]
            return (col.sort(job), job.id)
        self.sort("id", key=key, reverse=self.sort_reverse)

    def sort_by(self, column: str, reverse: bool = False) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        for col in COLUMNS:
            self.columns[col.key].label = Text(self._label(col))
        keep = self.current_job
        self._sort()
        if keep is not None and str(keep.id) in self._cells:
            self.move_cursor(row=self.get_row_index(str(keep.id)), animate=False)
        self.refresh()

    def _label(self, col: Column) -> str:
        if col.key != self.sort_column:
            return col.label
        return col.label + (" ▼" if self.sort_reverse else " ▲")

    # -- actions ---------------------------------------------------------------------------
    def action_sort_next(self) -> None:
        i = (COLUMN_KEYS.index(self.sort_column) + 1) % len(COLUMN_KEYS)
        self.sort_by(COLUMN_KEYS[i])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value)
        self.sort_by(column, not self.sort_reverse if column == self.sort_column else False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._post("open")

    def action_open(self) -> None:
        self._post("open")

    def action_cancel(self) -> None:
        self._post("cancel")

    def action_hold(self) -> None:
        self._post("hold")

    def action_release(self) -> None:
        self._post("release")

    def _post(self, action: str) -> None:
        job = self.current_job
        if job is not None:
            self.post_message(self.JobAction(action, job))


class QueueView(Vertical):
    """The queue tab: a filter line (shown by `/`), the table, and a one-line summary."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words, state:running user:NAME group:NAME node:NAME",
                    id="queue-filter")
        yield QueueTable(self.clock, id="queue-table")
        yield Static("", id="queue-summary")

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    def open_filter(self) -> None:
        box = self.query_one("#queue-filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "queue-filter":
            self.table.set_filter(event.value)
            self.update_summary()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "queue-filter":
            event.input.display = bool(event.value)
            self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#queue-filter", Input)
        box.value = ""
        box.display = False
        self.table.focus()

    def update_summary(self) -> None:
        t = self.table
        counts: dict[str, int] = {}
        for j in t.jobs.values():
            if t.visible(j):
                counts[j.state.value] = counts.get(j.state.value, 0) + 1
        parts = [f"{n} {s.lower()}" for s, n in sorted(counts.items())]
        scope = f"jobs of {t.only_user}" if t.only_user else "all users' jobs"
        filt = f"  filter: {t.query_text}" if t.query_text else ""
        line = plain(f" {t.row_count} shown ({scope}): {', '.join(parts) or 'none'}{filt}")
        # a poll can land while the screen is being torn down (quit, user switch)
        for summary in self.query("#queue-summary").results(Static):
            summary.update(line)
