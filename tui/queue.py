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
from textual.widgets.data_table import ColumnKey

from labq import Job, JobState

from . import filtering
from .clock import Clock
from .format import gpus_text, plain, score_text, start_text, state_text, status_text


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[Job, Clock], str]
    sort: Callable[[Job], object]
    width: int | None = None


def prio_text(job: Job, clock: Clock) -> str:
    """The score the scheduler orders by, as `labq ls` shows it; the user's 1-10 while
    there is none."""
    return score_text(job) if job.priority_score is not None else str(job.priority)


COLUMNS = (
    Column("id", "ID", lambda j, c: str(j.id), lambda j: j.id, 7),
    Column("name", "NAME", lambda j, c: j.name, lambda j: j.name.lower(), 20),
    Column("owner", "USER", lambda j, c: j.owner, lambda j: j.owner, 10),
    Column("group", "GROUP", lambda j, c: j.group, lambda j: j.group, 10),
    Column("state", "STATE", lambda j, c: j.state.value, lambda j: j.state.value, 9),
    Column("gpus", "GPUS", lambda j, c: gpus_text(j), lambda j: j.gpus, 6),
    Column("node", "NODE", lambda j, c: j.node or "-", lambda j: j.node or "", 10),
    Column("priority", "PRIO", prio_text,
           lambda j: (j.priority_score or 0.0, j.priority), 6),
    Column("status", "REASON/TIME", status_text,
           lambda j: (j.reason or "", j.start_time or 0.0), 20),
    Column("start", "START", start_text,
           lambda j: j.estimated_start or j.start_time or j.end_time or float("inf"), 13),
)
COLUMN_KEYS = [c.key for c in COLUMNS]
# (terminal width at least, columns shown, widths that differ from COLUMNS'): the queue
# fits the terminal instead of cutting its last columns off
LAYOUTS: tuple[tuple[int, tuple[str, ...], dict[str, int]], ...] = (
    (150, tuple(COLUMN_KEYS), {"name": 24, "status": 28}),
    (120, tuple(COLUMN_KEYS), {"name": 14, "owner": 8, "group": 8, "node": 8,
                               "status": 16}),
    (100, ("id", "name", "owner", "state", "gpus", "node", "priority", "status", "start"),
     {"name": 16, "owner": 8, "node": 8, "status": 16}),
    (0, ("id", "name", "owner", "state", "gpus", "status", "start"),
     {"id": 6, "name": 12, "owner": 8, "gpus": 4, "status": 13, "start": 10}),
)
MARK = "●"
ACTIVE = {s.value for s in JobState if not s.final}


def layout_for(width: int) -> tuple[tuple[str, ...], dict[str, int]]:
    for at_least, keys, widths in LAYOUTS:
        if width >= at_least:
            return keys, widths
    return LAYOUTS[-1][1], LAYOUTS[-1][2]


class QueueTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("enter", "open", "Detail"),
        Binding("space", "mark", "Mark"),
        Binding("c", "act('cancel')", "Cancel"),
        Binding("h", "act('hold')", "Hold"),
        Binding("r", "act('release')", "Release"),
        Binding("a", "toggle_ended", "Ended jobs"),
        Binding("y", "act('yank')", "Copy id", show=False),
        Binding("e", "act('clone')", "Clone", show=False),
        Binding("P", "act('priority')", "Lower priority", show=False),
        Binding("T", "act('time_limit')", "Lower time limit", show=False),
        Binding("s", "sort_next", "Sort", show=False),
        Binding("S", "sort_reverse", "Reverse", show=False),
        Binding("u", "unmark", "Unmark all", show=False),
    ]

    class JobAction(Message):
        """The user asked for something to happen to the marked jobs, or the one under the
        cursor when none is marked."""

        def __init__(self, action: str, jobs: list[Job]) -> None:
            super().__init__()
            self.action = action
            self.jobs = jobs
            self.job = jobs[0]

    class Changed(Message):
        """Marks or the ended-jobs toggle changed: the summary line says so."""

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.clock = clock
        self.jobs: dict[int, Job] = {}
        self.sort_column = "id"
        self.sort_reverse = False
        self.query_text = ""
        self.only_user: str | None = None
        self.show_ended = False
        self.marked: set[int] = set()
        self.shown_keys: tuple[str, ...] = tuple(COLUMN_KEYS)
        self._widths: dict[str, int] = {}
        self._match: Callable[[Job], bool] = filtering.parse("")
        self._cells: dict[str, tuple[str, ...]] = {}
        self._select_after: int | None = None
        self._ready = False

    def on_mount(self) -> None:
        self._layout(self.app.size.width)
        self._ready = True
        self._sync()

    def on_resize(self) -> None:
        keys, widths = layout_for(self.app.size.width)
        if (keys, widths) != (self.shown_keys, self._widths):
            keep = self.current_job
            self._layout(self.app.size.width)
            self._sync()
            if keep is not None:
                self.select_job(keep.id)

    def _layout(self, width: int) -> None:
        self.shown_keys, self._widths = layout_for(width)
        self.clear(columns=True)
        self._cells = {}
        for col in self._columns():
            w = self._widths.get(col.key, col.width or 8)
            # room for the sort arrow, so it shows on narrow columns too
            self.add_column(self._label(col), key=col.key, width=max(w, len(col.label) + 2))

    def _columns(self) -> list[Column]:
        return [c for c in COLUMNS if c.key in self.shown_keys]

    # -- what the user sees ----------------------------------------------------------------
    def set_jobs(self, jobs: list[Job]) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.marked &= self.jobs.keys()
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
        if not (self.show_ended or (not job.state.final) or self.query_text):
            return False  # an explicit filter reaches ended jobs too
        return (self.only_user is None or job.owner == self.only_user) and self._match(job)

    def targets(self) -> list[Job]:
        """The marked jobs, or the one under the cursor."""
        if self.marked:
            return [self.jobs[i] for i in sorted(self.marked)]
        job = self.current_job
        return [job] if job is not None else []

    # -- keeping the table in step ---------------------------------------------------------
    def _cells_of(self, job: Job) -> tuple[str, ...]:
        cells = [col.cell(job, self.clock) for col in self._columns()]
        if job.id in self.marked:
            cells[0] = f"{MARK} {cells[0]}"
        return tuple(cells)

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
        keys = [c.key for c in self._columns()]
        sort_idx = keys.index(self.sort_column) if self.sort_column in keys else 0
        resort = False
        for job in shown:
            key = str(job.id)
            cells = self._cells_of(job)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*self._render(job, cells), key=key)
                resort = True
            elif old != cells:
                for i, (a, b) in enumerate(zip(old, cells)):
                    if a != b:
                        self.update_cell(key, keys[i], self._render_one(job, keys[i], b))
                resort = resort or old[sort_idx] != cells[sort_idx] or \
                    (not self.jobs[job.id].state.final) != (old[keys.index("state")] in ACTIVE)
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
        keys = [c.key for c in self._columns()]
        return [self._render_one(job, k, text) for k, text in zip(keys, cells)]

    def _render_one(self, job: Job, key: str, text: str) -> object:
        if key == "state":
            return state_text(job.state)
        if key == "id" and job.id in self.marked:
            return Text(text, style="bold magenta", justify="right")
        if key in ("id", "gpus", "priority"):
            return Text(text, justify="right")
        return plain(text)

    def _sort(self) -> None:
        col = COLUMNS[COLUMN_KEYS.index(self.sort_column)]
        jobs = self.jobs
        sign = -1 if self.sort_reverse else 1

        def key(cell: object) -> tuple:
            job = jobs[int(str(cell).split()[-1])]
            # running and pending jobs first, whatever the column: ended ones go below
            return (sign * (0 if (not job.state.final) else 1), col.sort(job), job.id)
        self.sort("id", key=key, reverse=self.sort_reverse)

    def sort_by(self, column: str, reverse: bool = False) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        for col in self._columns():
            self.columns[ColumnKey(col.key)].label = Text(self._label(col))
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
        keys = [c.key for c in self._columns()]
        i = (keys.index(self.sort_column) + 1) % len(keys) if self.sort_column in keys else 0
        self.sort_by(keys[i])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value)
        self.sort_by(column, not self.sort_reverse if column == self.sort_column else False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        job = self.current_job
        if job is not None:
            self.post_message(self.JobAction("open", [job]))

    def action_act(self, action: str) -> None:
        jobs = self.targets() if action in ("cancel", "hold", "release") else \
            ([self.current_job] if self.current_job else [])
        if jobs:
            self.post_message(self.JobAction(action, jobs))

    def action_mark(self) -> None:
        job = self.current_job
        if job is None:
            return
        self.marked ^= {job.id}
        self._sync()
        self.post_message(self.Changed())
        self.action_cursor_down()

    def action_unmark(self) -> None:
        self.marked.clear()
        self._sync()
        self.post_message(self.Changed())

    def action_toggle_ended(self) -> None:
        self.show_ended = not self.show_ended
        self._sync()
        self.post_message(self.Changed())


class QueueView(Vertical):
    """The queue tab: a filter line (shown by `/`), the table, and a one-line summary."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self._summary_shown: str | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words, state:running user:NAME group:NAME exp:NAME",
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

    def on_queue_table_changed(self, event: QueueTable.Changed) -> None:
        self.update_summary()

    def update_summary(self) -> None:
        t = self.table
        counts: dict[str, int] = {}
        for j in t.jobs.values():
            if t.visible(j):
                counts[j.state.value] = counts.get(j.state.value, 0) + 1
        parts = [f"{n} {s.lower()}" for s, n in sorted(counts.items())]
        scope = f"jobs of {t.only_user}" if t.only_user else "all users' jobs"
        filt = f"  filter: {t.query_text}" if t.query_text else ""
        ended = "" if t.show_ended or t.query_text else "  ended jobs hidden (a shows)"
        marks = f"  {len(t.marked)} marked (c/h/r act on them, u unmarks)" if t.marked else ""
        line = plain(f" {t.row_count} shown ({scope}): {', '.join(parts) or 'none'}"
                     f"{filt}{ended}{marks}")
        if line.plain == self._summary_shown:  # an update lays the screen out again
            return
        self._summary_shown = line.plain
        # a poll can land while the screen is being torn down (quit, user switch)
        for summary in self.query("#queue-summary").results(Static):
            summary.update(line)
