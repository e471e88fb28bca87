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
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from labq import Event, Job, JobState
from labq.errors import DaemonUnavailable, LabqError
from labq.text import printable
from labq.units import format_duration, format_size_mb

from . import results
from .clock import Clock
from .logview import JobLog

if TYPE_CHECKING:  # the app imports this screen
    from .app import LabqApp
from .data import BACKOFF_MAX_S, BACKOFF_START_S, ClientFactory, Connection
from .format import (
    command_text,
    gpus_text,
    log_text,
    plain,
    reason_words,
    score_text,
    start_text,
    state_text,
)

FLUSH_S = 0.1
MAX_LINES = 10_000
TAIL_BYTES = 2 << 20  # where a long log starts: enough for MAX_LINES lines of most output
# what one batch may carry: beyond this only the tail matters, the widget keeps MAX_LINES
MAX_BATCH_CHARS = 4 << 20
READ_WAIT_S = 0.5
CAP_MARK = b"[labq: log truncated at "  # what labqd writes where its copy of a log stops


class LogChunk(Message):
    def __init__(self, job_id: int, text: str, done: bool = False, dropped: int = 0,
                 capped: bool = False) -> None:
        super().__init__()
        self.job_id = job_id
        self.text = text
        self.done = done
        self.dropped = dropped  # lines cut before they reached the widget
        self.capped = capped  # labqd's copy of the log has reached its cap


class LogTrouble(Message):
    def __init__(self, job_id: int, error: str, fatal: bool = False) -> None:
        super().__init__()
        self.job_id = job_id
        self.error = error
        self.fatal = fatal  # labqd refused the log: nothing more will come


def keep_tail(text: str) -> tuple[str, int]:
    """What of a batch can still be on screen after it is written, and how many lines were
    cut: the widget keeps the last MAX_LINES lines, and measuring lines that are pruned at
    once is what makes a fast log slow."""
    cut = 0
    if len(text) > MAX_BATCH_CHARS:
        cut += text.count("\n", 0, len(text) - MAX_BATCH_CHARS)
        text = text[-MAX_BATCH_CHARS:]
    if text.count("\n") > MAX_LINES:
        lines = text.split("\n")
        cut += len(lines) - MAX_LINES - 1
        text = "\n".join(lines[-MAX_LINES - 1:])
    return text, cut


def follow_log(job_id: int, socket: Path, factory: ClientFactory, post, stop: threading.Event,
               monotonic=time.monotonic) -> None:
    """Read the log from near its end until the job has ended, posting batches."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    # a long log starts at its tail: the view keeps MAX_LINES lines anyway
    offset, pending, last_post = -TAIL_BYTES, [], monotonic()
    size, backoff, client = 0, BACKOFF_START_S, None
    start_skipped, capped = None, False

    def flush(done: bool = False) -> None:
        nonlocal pending, size, last_post
        text, cut = keep_tail("".join(pending))
        if text or done:
            post(LogChunk(job_id, text, done, cut, capped))
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
                post(LogTrouble(job_id, e.message, fatal=True))
                return
            if start_skipped is None:
                start_skipped = offset - len(data)
                if start_skipped > 0:
                    pending.append(f"[labq: {start_skipped} earlier bytes not shown; "
                                   f"`labq logs {job_id}` prints them]\n")
                    data = data.split(b"\n", 1)[-1]  # from the first whole line
            if data:
                capped = capped or CAP_MARK in data
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


class JobDetailScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("G,end", "log_end", "Log end"),
        Binding("slash", "search", "Search log"),
        Binding("n", "next_match", "Next match"),
        Binding("N", "prev_match", "Prev match", show=False),
        Binding("f", "full_log", "Full-screen log"),
        Binding("W", "wrap", "Wrap long lines", show=False),
        Binding("c", "cancel", "Cancel job"),
        Binding("y", "yank", "Copy id", show=False),
        Binding("Y", "yank_command", "Copy command", show=False),
        Binding("w", "save_log", "Save log", show=False),
        Binding("p", "pager", "Open in $PAGER", show=False),
        Binding("s", "save_results", "Save results (zip)", show=False),
        Binding("P", "change('priority')", "Lower priority", show=False),
        Binding("T", "change('time_limit')", "Lower time limit", show=False),
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
        self.log_capped = False
        self.log_refused = ""
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
        yield JobLog(id="detail-log", max_lines=MAX_LINES, job_id=self.job.id)
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
        self.app.call_from_thread(self._shown_if_open, job, events)

    def _shown_if_open(self, job: Job, events: list[Event]) -> None:
        # the reply may come back after the screen was closed, while its widgets go away
        if self._stop.is_set() or not self.is_mounted:
            return
        try:
            self.show_job(job, events)
        except NoMatches:
            pass  # closing: some of its widgets are gone already

    def show_job(self, job: Job, events: list[Event] | None = None) -> None:
        self.job = job
        self.query_one("#detail-title", Static).update(Text.assemble(
            (f" Job {job.id} ", "bold reverse"), " ", (printable(job.name), "bold"), "  ",
            state_text(job.state), "  ", printable(f"{job.owner} ({job.group})")))
        spec = Table.grid(padding=(0, 1))
        spec.add_column(style="bold", justify="right", no_wrap=True)
        spec.add_column()
        rows = spec_rows(job, self.clock)
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
        log = self.query_one(JobLog)
        log.dropped += msg.dropped
        log.append(msg.text)
        self.log_done = self.log_done or msg.done
        self.log_capped = msg.capped
        self._update_log_title()

    def on_log_trouble(self, msg: LogTrouble) -> None:
        if msg.job_id == self.job.id:
            if msg.fatal:
                self.log_refused = msg.error
            self._update_log_title(msg.error)

    def on_job_log_follow_changed(self, msg: JobLog.FollowChanged) -> None:
        self._update_log_title()

    def log_state(self) -> str:
        """complete, following, paused, capped or unavailable: what the log view is doing."""
        if self.log_refused:
            return "unavailable"
        if self.log_done:
            return "complete"
        if self.log_capped:
            return "labqd's copy is full; the job goes on"
        return "following" if self.query_one(JobLog).follow else "paused (G follows)"

    def _update_log_title(self, trouble: str = "") -> None:
        log = self.query_one(JobLog)
        text = f" Output ({log.line_count} lines, {self.log_state()})"
        if log.wrap:
            text += ", wrapped"
        if log.dropped:
            text += f"  {log.dropped} earlier lines dropped"
        if self._matches:
            text += f"  match {self._match_at + 1}/{len(self._matches)}"
        if trouble or self.log_refused:
            text += f"  [{trouble or self.log_refused}]"
        self.query_one("#detail-log-title", Static).update(plain(text))

    def action_log_end(self) -> None:
        self.query_one(JobLog).jump_to_end()

    def action_full_log(self) -> None:
        self.toggle_class("-full-log")

    def action_wrap(self) -> None:
        self.query_one(JobLog).toggle_wrap()
        self._update_log_title()

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
        event.input.display = False
        log.set_needle(event.value)
        log.focus()
        if self._matches:
            self.action_next_match()
        else:
            self.notify(printable(f"{event.value!r} is not in the log") if needle
                        else "empty search", severity="warning", markup=False)
            self._update_log_title()

    def _close_search(self) -> bool:
        """Escape closes the search box, then clears the matches; False: nothing to close."""
        box = self.query_one("#log-search", Input)
        log = self.query_one(JobLog)
        if box.display:
            box.display = False
        elif self._matches or log.highlight:
            self._matches, self._match_at = [], -1
            log.set_needle("")
        else:
            return False
        log.focus()
        self._update_log_title()
        return True

    def on_key(self, event) -> None:
        if event.key == "escape" and self.query_one("#log-search", Input).has_focus:
            event.stop()
            self._close_search()

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
        if not self._close_search():
            self.app.pop_screen()

    def action_cancel(self) -> None:
        cast("LabqApp", self.app).confirm_cancel([self.job])

    def action_change(self, what: str) -> None:
        cast("LabqApp", self.app).change_job(self.job, what)

    def action_yank(self) -> None:
        cast("LabqApp", self.app).yank(str(self.job.id), f"job id {self.job.id}")

    def action_yank_command(self) -> None:
        cast("LabqApp", self.app).yank(command_text(self.job), "the command")

    def action_save_log(self) -> None:
        from .logtools import save_log
        save_log(self, self.job.id, self.query_one(JobLog).lines)

    def action_pager(self) -> None:
        from .logtools import open_pager
        open_pager(self, self.job.id, self.query_one(JobLog).lines)


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


def spec_rows(job: Job, c: Clock) -> list[tuple[str, str]]:
    waiting = job.state in (JobState.PENDING, JobState.HELD)
    rows = [
        ("command", command_text(job)),
        ("directory", job.cwd or "-"),
        ("resources", f"gpus={gpus_text(job)}"
                      + (f" min {format_size_mb(job.gpu_memory_mb)}"
                         if job.gpu_memory_mb else "")
                      + f" cpus={job.cpus} mem={format_size_mb(job.memory_mb)}"),
        ("time limit", format_duration(job.time_limit_s) if job.time_limit_s else "default"),
        ("priority", f"{job.priority} (score {score_text(job)})"),
        ("depends on", ", ".join(job.dependencies) or "-"),
    ]
    if waiting:
        rows += [("waiting for", reason_words(job, c)),
                 ("est. start", start_text(job, c))]
    else:
        rows.append(("reason", job.reason or "-"))
    rows += [
        ("submitted", f"{c.stamp(job.submit_time)} ({c.ago(job.submit_time)})"),
        ("started", c.stamp(job.start_time)),
        ("ended", c.stamp(job.end_time)),
        ("run time", c.span(job.start_time, job.end_time) if job.start_time else "-"),
        ("node", job.node or "-"),
        ("gpu indices", ",".join(map(str, job.gpu_indices)) or "-"),
        ("exit code", "-" if job.exit_code is None else str(job.exit_code)),
        ("restarts", str(job.restarts)),
    ]
    if job.experiment:
        rows.insert(1, ("experiment", job.experiment))
    return rows
