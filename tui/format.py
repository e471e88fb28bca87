"""How jobs read in tables: one place, so the queue, the admin list and the detail agree.

Everything a user or a node chose (names, commands, owners, groups, reasons, hosts, error
messages, log lines) reaches a widget through `plain` or `log_text`: as a `Text`, never as a
string that Textual or Rich would parse as markup (a job named `[/]` would otherwise stop every
other user's UI), and with control characters shown, not sent to the terminal.
"""
from __future__ import annotations

import re
import shlex

from rich.text import Text

from labq import Job, JobState
from labq.text import printable

from .clock import Clock

STATE_STYLE = {
    JobState.PENDING: "yellow",
    JobState.HELD: "magenta",
    JobState.RUNNING: "bold green",
    JobState.COMPLETED: "dim green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "dim",
    JobState.TIMEOUT: "red",
    JobState.NODE_FAIL: "red",
}


def plain(value: object, style: str = "") -> Text:
    """Text shown exactly as given: no markup, control characters escaped."""
    return Text(printable(value), style=style)


# colour and style sequences only decorate a log; every other escape sequence is shown
_SGR = re.compile("\x1b\\[[0-9;:]*m")


def log_text(text: str) -> str:
    """A job's output for the log view: a progress bar's carriage returns start new lines
    (the widget has no way to rewrite one), colours are dropped, and any other control
    character is shown escaped. `labq logs` still prints the bytes as they are."""
    text = _SGR.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return printable(text, lines=True)


def state_text(state: JobState) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, ""))


def command_text(job: Job) -> str:
    if isinstance(job.command, str):
        return job.command
    return " ".join(shlex.quote(a) for a in job.command)


def gpus_text(job: Job) -> str:
    if not job.gpus:
        return "0"
    return f"{job.gpus}:{job.gpu_type}" if job.gpu_type else str(job.gpus)


def status_text(job: Job, clock: Clock) -> str:
    """Why a job waits, how long it has run, or how it ended."""
    if job.state is JobState.RUNNING:
        return clock.span(job.start_time)
    if job.state in (JobState.PENDING, JobState.HELD):
        return job.reason or "-"
    if job.exit_code is not None:
        return f"exit {job.exit_code}" + (f" ({job.reason})" if job.reason else "")
    return job.reason or "-"


def start_text(job: Job, clock: Clock) -> str:
    if job.state is JobState.PENDING:
        return clock.when(job.estimated_start)
    if job.state is JobState.RUNNING:
        return clock.when(job.start_time)
    return "-"


def score_text(job: Job) -> str:
    return "-" if job.priority_score is None else f"{job.priority_score:.0f}"
