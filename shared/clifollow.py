"""`labq run`: submit, follow the output to the terminal, and exit as the job did."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .errors import LabqError
from .follow import Detached, InterruptsRecorded
from .text import printable

if TYPE_CHECKING:
    from .client import Client
    from .models import Job

# How `labq run` exits when the job has no exit code of its own to give (the same numbers
# as timeout(1), a shell's Ctrl-C, and docker run's "the runner itself failed").
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130
EXIT_NOT_RUN = 125  # refused, lost with its node, or labqd went away while following it


def _say(text: str) -> None:
    print(f"labq: {printable(text)}", file=sys.stderr, flush=True)


def run_job(q: Client, command: list[str] | str, options: dict[str, Any]) -> int:
    """Submit, stream the output to stdout, return the exit status the job's end calls for."""
    try:
        with InterruptsRecorded() as interrupts:
            job = q.submit(command, **options)
    except LabqError as e:
        _say(str(e))
        return EXIT_NOT_RUN
    try:
        done = q.attach(job.id, interrupted=interrupts.count > 0, on_interrupt=lambda jid: _say(
            f"cancelling job {jid}; Ctrl-C again to stop waiting for it"))
    except Detached as d:
        _say(f"stopped following job {d.job_id}, "
             + ("which is being cancelled" if d.cancelled else "which may still run")
             + f"; follow it again with `labq logs -f {d.job_id}`")
        return EXIT_CANCELLED
    except LabqError as e:
        _say(f"{e}; job {job.id} may still run: `labq logs -f {job.id}` follows it")
        return EXIT_NOT_RUN
    return exit_status(done)


def exit_status(job: Job) -> int:
    """The job's own exit code (128+N for signal N), or one of the EXIT_ codes, with a line
    on stderr whenever the job did not simply exit."""
    state = job.state.value
    if state == "COMPLETED":
        return 0
    reason = job.reason or ""
    if state == "FAILED" and job.exit_code:
        if reason and reason != f"exit code {job.exit_code}":
            _say(f"job {job.id} failed: {reason}")
        return job.exit_code
    _say(f"job {job.id} {state}" + (f": {reason}" if reason else ""))
    return {"TIMEOUT": EXIT_TIMEOUT, "CANCELLED": EXIT_CANCELLED}.get(state, EXIT_NOT_RUN)
