"""One job: its spec, its state history, and its output followed live.

The log is read by a thread with its own client (a long read would otherwise hold up every
other request on the shared connection). The thread batches what it reads and posts at most
one message per FLUSH_S, and the widget keeps at most MAX_LINES lines, so a job printing as
fast as it can does not freeze the UI.
"""
from __future__ import annotations

import codecs
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Log, Static

from labq import Event, Job, JobState
from labq.cli import printable
from labq.errors import DaemonUnavailable, LabqError
from labq.units import format_duration, format_size_mb

from . import results
from .clock import Clock

if TYPE_CHECKING:  # the app imports this screen
    from .app import LabqApp
from .data import BACKOFF_MAX_S, BACKOFF_START_S, ClientFactory, Connection
from .format import command_text, gpus_text, log_text, plain, score_text, start_text, state_text

FLUSH_S = 0.1
MAX_LINES = 10_000
TAIL_BYTES = 2 << 20  # where a long log starts: enough for MAX_LINES lines of most output
# what one batch may carry: beyond this only the tail matters, the widget keeps MAX_LINES
MAX_BATCH_CHARS = 4 << 20
READ_WAIT_S = 0.5


class LogChunk(Message):
    def __init__(self, job_id: int, text: str, done: bool = False) -> None:
        super().__init__()
        self.job_id = job_id
        self.text = text
        self.done = done


class LogTrouble(Message):
    def __init__(self, job_id: int, error: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.error = error


def keep_tail(text: str) -> str:
    """What of a batch can still be on screen after it is written: the widget keeps the last
    MAX_LINES lines, and measuring lines that are pruned at once is what makes a fast log
    slow."""
    if len(text) > MAX_BATCH_CHARS:
        text = text[-MAX_BATCH_CHARS:]
    if text.count("\n") > MAX_LINES:
        text = "\n".join(text.split("\n")[-MAX_LINES - 1:])
    return text


def follow_log(job_id: int, socket: Path, factory: ClientFactory, post, stop: threading.Event,
               monotonic=time.monotonic) -> None:
    """Read the log from near its end until the job has ended, posting batches."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    # a long log starts at its tail: the view keeps MAX_LINES lines anyway
    offset, pending, last_post = -TAIL_BYTES, [], monotonic()
    size, backoff, client = 0, BACKOFF_START_S, None
    start_skipped = None

    def flush(done: bool = False) -> None:
        nonlocal pending, size, last_post
        text = keep_tail("".join(pending))
        if text or done:
            post(LogChunk(job_id, text, done))
        pending, size, last_post = [], 0, monotonic()

    try:
        while not stop.is_set():
            try:
                if client is None:
                    client = factory(socket)
                data, offset, done = client.read_log(job_id, offset, wait=READ_WAIT_S)
                backoff = BACKOFF_START_S
            except DaemonUnavailable as e:
                if client is not None:
                    client.close()
                    client = None
                flush()
                post(LogTrouble(job_id, f"{e.message}; retrying"))
                stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            except LabqError as e:
                flush()
                post(LogTrouble(job_id, e.message))
                return
            if start_skipped is None:
                start_skipped = offset - len(data)
                if start_skipped > 0:
                    pending.append(f"[labq: {start_skipped} earlier bytes not shown; "
                                   f"`labq logs {job_id}` prints them]\n")
                    data = data.split(b"\n", 1)[-1]  # from the first whole line
            if data:
                text = log_text(decoder.decode(data))
                pending.append(text)
                size += len(text)
            if done:
                pending.append(log_text(decoder.decode(b"", final=True)))
                flush(done=True)
                return
            if pending and (monotonic() - last_post >= FLUSH_S or size > MAX_BATCH_CHARS):
                flush()
    finally:
        if client is not None:
            client.close()


class JobLog(Log):
    """A Log that stays at the end while `follow` is set: scrolling up (keys or wheel) or
    jumping to a search match clears it, coming back to the end sets it again."""

    BINDINGS = [
        Binding("j,down", "scroll_down", "Down", show=False),
        Binding("k,up", "scroll_up", "Up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("g,home", "scroll_home", "Top", show=False),
    ]
    follow = True

    def append(self, text: str) -> None:
        self.write(text, scroll_end=self.follow)

    def jump_to_end(self) -> None:
        self.follow = True
        self.scroll_end(animate=False, immediate=True)

    def show_line(self, line: int) -> None:
        self.follow = False
        self.scroll_to(y=max(0, line - self.size.height // 2), animate=False)

    def action_scroll_up(self) -> None:
        self.follow = False
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self.follow = False
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self.follow = False
        super().action_scroll_home()

    def action_scroll_down(self) -> None:
        super().action_scroll_down()
        self.call_after_refresh(self._maybe_follow)

    def action_page_down(self) -> None:
        super().action_page_down()
        self.call_after_refresh(self._maybe_follow)

    def action_scroll_end(self) -> None:
        self.jump_to_end()

    def on_mouse_scroll_up(self) -> None:
        self.follow = False

    def on_mouse_scroll_down(self) -> None:
        self.call_after_refresh(self._maybe_follow)

    def _maybe_follow(self) -> None:
        if self.is_vertical_scroll_end:
            self.follow = True


class JobDetailScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("G,end", "log_end", "Log end"),
        Binding("slash", "search", "Search log"),
        Binding("n", "next_match", "Next match"),
        Binding("N", "prev_match", "Prev match", show=False),
        Binding("c", "cancel", "Cancel job"),
        Binding("s", "save_results", "Save results (zip)", show=False),
    ]

    def __init__(self, job: Job, socket: Path, factory: ClientFactory, conn: Connection,
                 clock: Clock, refresh_s: float = 1.0) -> None:
        super().__init__()
        self.job = job
        self.socket = socket
        self.factory = factory
        self.conn = conn
        self.clock = clock
        self.refresh_s = refresh_s
        self.events: list[Event] = []
        self.log_done = False
        self._stop = threading.Event()
        self._matches: list[int] = []
        self._match_at = -1
        self._shown_events: list[tuple] = []
        self.results: dict | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="detail-title")
        with Horizontal(id="detail-top"):
            yield Static("", id="detail-spec")
            with Vertical(id="detail-history"):
                yield Static("State history", classes="section-title")
                yield DataTable(id="detail-events", cursor_type="none", show_cursor=False)
        yield Static("", id="detail-log-title")
        yield JobLog(id="detail-log", max_lines=MAX_LINES, highlight=False, auto_scroll=True)
        yield Input(placeholder="search the log (enter: find, esc: close)", id="log-search")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#detail-events", DataTable)
        table.add_columns("TIME", "WHO", "FROM", "TO", "REASON")
        self.show_job(self.job)
        self._update_log_title()
        self.query_one(JobLog).focus()
        self.follow()
        self.refresh_info()
        self.set_interval(self.refresh_s, self.refresh_info)

    def on_unmount(self) -> None:
        self._stop.set()

    # -- data ------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="log")
    def follow(self) -> None:
        follow_log(self.job.id, self.socket, self.factory, self.post_message, self._stop)

    @work(thread=True, exclusive=True, group="info")
    def refresh_info(self) -> None:
        try:
            job, events = self.conn.run(lambda q: (q.job(self.job.id), q.events(self.job.id)))
            self.results = self.conn.run(lambda q: results.fetch(q, job))
        except LabqError:
            return  # the banner on the main screen says why; keep what is shown
        self.app.call_from_thread(self.show_job, job, events)

    def show_job(self, job: Job, events: list[Event] | None = None) -> None:
        self.job = job
        c = self.clock
        self.query_one("#detail-title", Static).update(Text.assemble(
            (f" Job {job.id} ", "bold reverse"), " ", (printable(job.name), "bold"), "  ",
            state_text(job.state), printable(f"  {job.owner} ({job.group})")))
        spec = Table.grid(padding=(0, 1))
        spec.add_column(style="bold", justify="right")
        spec.add_column()
        waiting = job.state in (JobState.PENDING, JobState.HELD)
        rows = [
            ("command", command_text(job)),
            ("directory", job.cwd or "-"),
            ("resources", f"gpus={gpus_text(job)}"
                          + (f" min {format_size_mb(job.gpu_memory_mb)}"
                             if job.gpu_memory_mb else "")
                          + f" cpus={job.cpus} mem={format_size_mb(job.memory_mb)}"),
            ("time limit", format_duration(job.time_limit_s) if job.time_limit_s
             else "default"),
            ("priority", f"{job.priority} (score {score_text(job)})"),
            ("depends on", ", ".join(job.dependencies) or "-"),
            ("pending reason" if waiting else "reason", job.reason or "-"),
            ("est. start", start_text(job, c) if waiting else "-"),
            ("submitted", c.stamp(job.submit_time)),
            ("started", c.stamp(job.start_time)),
            ("ended", c.stamp(job.end_time)),
            ("run time", c.span(job.start_time, job.end_time) if job.start_time else "-"),
            ("node", job.node or "-"),
            ("gpu indices", ",".join(map(str, job.gpu_indices)) or "-"),
            ("exit code", "-" if job.exit_code is None else str(job.exit_code)),
            ("restarts", str(job.restarts)),
        ]
        if job.results:
            rows.append(("results", results.results_text(job, self.results)))
        for k, v in rows:
            spec.add_row(k, plain(v))
        self.query_one("#detail-spec", Static).update(spec)
        if events is not None:
            self._show_events(events)

    def _show_events(self, events: list[Event]) -> None:
        rows = [(self.clock.stamp(e.time), e.who, e.from_state or "-", e.to_state,
                 e.reason or "") for e in events]
        if rows == self._shown_events:
            return
        table = self.query_one("#detail-events", DataTable)
        shown = len(self._shown_events)
        if rows[:shown] != self._shown_events:  # history only grows; rebuild if it did not
            table.clear()
            shown = 0
        for row in rows[shown:]:
            table.add_row(*map(plain, row))
        self._shown_events = rows
        self.events = events

    # -- the log ---------------------------------------------------------------------------
    def on_log_chunk(self, msg: LogChunk) -> None:
        if msg.job_id != self.job.id:
            return
        if msg.text:
            self.query_one(JobLog).append(msg.text)
        if msg.done:
            self.log_done = True
        self._update_log_title()

    def on_log_trouble(self, msg: LogTrouble) -> None:
        if msg.job_id == self.job.id:
            self._update_log_title(msg.error)

    def _update_log_title(self, trouble: str = "") -> None:
        log = self.query_one(JobLog)
        state = "complete" if self.log_done else "following"
        text = f" Output ({log.line_count} lines, {state})"
        if self._matches:
            text += f"  match {self._match_at + 1}/{len(self._matches)}"
        if trouble:
            text += f"  [{trouble}]"
        self.query_one("#detail-log-title", Static).update(plain(text))

    def action_log_end(self) -> None:
        self.query_one(JobLog).jump_to_end()

    def action_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        needle = event.value.lower()
        log = self.query_one(JobLog)
        self._matches = [i for i, line in enumerate(log.lines) if needle and needle in
                         line.lower()]
        self._match_at = -1
        log.focus()
        if self._matches:
            self.action_next_match()
        else:
            self.notify(printable(f"{event.value!r} is not in the log") if needle
                        else "empty search", severity="warning", markup=False)
            self._update_log_title()

    def on_key(self, event) -> None:
        box = self.query_one("#log-search", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            box.display = False
            self.query_one(JobLog).focus()

    def action_next_match(self) -> None:
        self._step_match(+1)

    def action_prev_match(self) -> None:
        self._step_match(-1)

    def _step_match(self, step: int) -> None:
        if not self._matches:
            return
        self._match_at = (self._match_at + step) % len(self._matches)
        line = self._matches[self._match_at]
        self.query_one(JobLog).show_line(line)
        self._update_log_title()

    # -- actions ---------------------------------------------------------------------------
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cancel(self) -> None:
        cast("LabqApp", self.app).confirm_cancel(self.job)

    @work(thread=True, exclusive=True, group="save")
    def action_save_results(self) -> None:
        if not self.results or not self.results.get("files"):
            self.app.call_from_thread(self.notify, "this job has no results to save",
                                      severity="warning")
            return
        try:
            path = self.conn.run(lambda q: results.save(q, self.job.id))
        except (LabqError, OSError) as e:
            self.app.call_from_thread(self.notify, printable(f"cannot save the results: {e}"),
                                      severity="error", markup=False)
            return
        self.app.call_from_thread(self.notify, printable(f"saved {path}"), markup=False)
