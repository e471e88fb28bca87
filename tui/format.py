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

from labq import Job, JobState, Node
from labq.text import printable
from labq.waiting import reservation_words, time_hint

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
    """A job's output for the log view: carriage returns are kept for the view to rewrite
    its line as a terminal does (a progress bar stays one line), colours are dropped, and
    any other control character is shown escaped. `labq logs` prints the bytes as they
    are."""
    text = _SGR.sub("", text).replace("\r\n", "\n")
    return "\r".join(printable(part, lines=True) for part in text.split("\r"))


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
        if job.backfill_limit_s and job.reservation:  # the --time that would start it now
            return f"{job.reason} ≤{time_hint(job.backfill_limit_s)}"
        return job.reason or "-"
    if job.exit_code is not None:
        # the daemon's reason often says the exit code again: say it once
        extra = job.reason if job.reason and job.reason != f"exit code {job.exit_code}" \
            else ""
        return f"exit {job.exit_code}" + (f" ({extra})" if extra else "")
    return job.reason or "-"


def start_text(job: Job, clock: Clock) -> str:
    """When a pending job should start, or when a running one started, relative to now."""
    if job.state is JobState.PENDING:
        return clock.until(job.estimated_start) if job.estimated_start else "-"
    if job.state is JobState.RUNNING:
        return clock.ago(job.start_time)
    if job.end_time:
        return clock.ago(job.end_time)
    return "-"


# a pending reason in words; the daemon's names are Slurm's, short enough for a column
REASON_WORDS = {
    "Held": "held: `r` (release) lets it start",
    "Resources": "free GPUs/CPUs/memory: first in line, resources reserved for it",
    "Priority": "jobs with a higher priority, ahead of it in line",
    "Dependency": "the jobs it depends on to end",
    "DependencyNeverSatisfied": "nothing: a job it depends on ended the wrong way; it "
                                "will never start, cancel it",
    "QuotaGroupGPU": "its group's GPU limit: other jobs of the group hold the GPUs",
    "QuotaUserJobs": "your limit on running jobs",
    "QuotaUserGPU": "your GPU limit: your other jobs hold the GPUs",
    "QuotaPartitionJobs": "your job limit in this partition",
    "ArrayThrottle": "its array's limit on tasks running at once (%N)",
    "NoNodeFits": "a node big enough: no node has what it asks for",
    "NodeDown": "its node to come back",
}


def reason_words(job: Job, clock: Clock) -> str:
    """What a waiting job waits for, in words, with when it should start."""
    reason = job.reason or ""
    words = REASON_WORDS.get(reason.split(":")[0].split(" ")[0], reason or "the scheduler")
    if job.state is JobState.HELD:
        words = REASON_WORDS["Held"]
    held_back = reservation_words(job, clock.when) if job.state is JobState.PENDING else None
    if held_back:
        words += f"; {held_back}"
    if job.state is JobState.PENDING and job.estimated_start:
        words += f"; should start {clock.until(job.estimated_start)}"
        if reason in ("Resources", "Priority") and job.time_limit_s and not held_back:
            words += " (a shorter --time may let backfill start it sooner)"
    return words


def score_text(job: Job) -> str:
    return "-" if job.priority_score is None else f"{job.priority_score:.0f}"


def cluster_line(jobs: list[Job], nodes: list[Node]) -> Text:
    """One line for the whole cluster: GPUs used/total by type, jobs running and pending,
    nodes down."""
    by_type: dict[str, list[int]] = {}
    for node in nodes:
        if node.state not in ("up", "drain"):
            continue
        for g in node.gpus:
            used_total = by_type.setdefault(g.type.replace("NVIDIA ", ""), [0, 0])
            used_total[0] += g.job is not None
            used_total[1] += 1
    running = sum(j.state is JobState.RUNNING for j in jobs)
    pending = sum(j.state is JobState.PENDING for j in jobs)
    down = [n.name for n in nodes if n.state in ("down", "refused")]
    parts: list[tuple[str, str] | str] = [(" GPUs ", "bold")]
    parts += [f"{t} {u}/{n} used  " for t, (u, n) in sorted(by_type.items())] or ["none  "]
    parts += [("jobs ", "bold"), f"{running} running, {pending} pending  "]
    parts.append(("nodes ", "bold"))
    parts.append((f"{len(down)} down ({', '.join(down[:3])})", "bold red") if down
                 else f"{sum(n.state == 'up' for n in nodes)} up")
    return Text.assemble(*[(printable(p[0]), p[1]) if isinstance(p, tuple) else printable(p)
                           for p in parts])
