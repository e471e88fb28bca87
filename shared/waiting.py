"""What a waiting job waits for, in words: the backfill reservation in its way and the --time
that would start it now. The CLI and the TUI say it the same way; each formats times its own."""
from __future__ import annotations

from collections.abc import Callable

from .models import Job

# the hint must still hold once it has been read and typed, after the plan that worked it out
HINT_MARGIN_S = 60


def time_hint(seconds: float) -> str:
    """A time limit a minute shorter than `seconds`, as --time reads it: 45s, 25m, 150m,
    5h."""
    s = max(1, int(seconds) - HINT_MARGIN_S)
    if s < 60:
        return f"{s}s"
    if s < 3 * 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def short_reason(job: Job) -> str:
    """The reason for a column: the scheduler's word, and the reservation's in a few more."""
    reason = job.reason or "-"
    res = job.reservation
    if not res:
        return reason
    if res.get("job") == job.id:
        return f"{reason} (reserved)"
    if job.backfill_limit_s:
        return f"{reason} (--time ≤{time_hint(job.backfill_limit_s)} starts now)"
    return f"{reason} (behind job {res.get('job')})"


def reservation_words(job: Job, at: Callable[[float], str]) -> str | None:
    """'4 GPUs on n1 reserved for job 31 until 08:31 — give --time ≤ 25m to start now', or
    None when no reservation is in the job's way. `at` formats a time."""
    res = job.reservation
    if not res:
        return None
    n = int(res.get("gpus") or 0)
    what = f"{n} GPU{'' if n == 1 else 's'} on {res.get('node')}"
    until = at(float(res.get("until") or 0.0))
    if res.get("job") == job.id:
        return f"{what} reserved for it from {until}"
    words = f"{what} reserved for job {res.get('job')} until {until}"
    if job.backfill_limit_s:
        words += f" — give --time ≤ {time_hint(job.backfill_limit_s)} to start now"
    return words
