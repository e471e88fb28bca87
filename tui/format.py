"""How jobs read in tables: one place, so the queue, the admin list and the detail agree."""
from __future__ import annotations

import shlex

from rich.text import Text

from labq import Job, JobState

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
