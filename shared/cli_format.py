"""How the command line prints: tables, JSON, times, job ids and a job's status in words."""
from __future__ import annotations

import json
import time
from typing import Any

from .models import Job, Node
from .text import printable
from .units import format_duration
from .waiting import short_reason


def job_json(job: Job) -> dict[str, Any]:
    return job.to_dict()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: list[list[Any]], header: list[str],
           at_least: list[int] | None = None) -> list[int]:
    """Print rows under a header (none if empty); return the column widths used."""
    rows = [[printable(c) for c in row] for row in rows]
    lines = [header, *rows] if header else rows
    widths = [max(len(str(x)) for x in col) for col in zip(*lines)]
    widths = [max(w, m) for w, m in zip(widths, at_least or widths)]
    for row in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return widths


def parse_ids(text_ids: list[str]) -> list[int]:
    out = []
    for t in text_ids:
        for part in t.split(","):
            try:
                out.append(int(part))
            except ValueError:
                raise SystemExit(f"labq: {part!r} is not a job id") from None
    return out


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def soon(ts: float) -> str:
    """A time, with its date only when it is not today."""
    t = time.localtime(ts)
    same_day = t[:3] == time.localtime()[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", t)


def command_text(job: Job) -> str:
    if isinstance(job.command, str):
        return job.command
    import shlex
    return " ".join(shlex.quote(a) for a in job.command)


def status_text(job: Job, now: float) -> str:
    if job.state.value == "RUNNING" and job.start_time:
        return format_duration(now - job.start_time)
    if job.state.value in ("PENDING", "HELD"):
        return short_reason(job)
    if job.exit_code is not None:
        extra = job.reason if job.reason and not job.reason.startswith("exit code") else ""
        return f"exit {job.exit_code}" + (f" ({extra})" if extra else "")
    return job.reason or "-"


def pool_summary(n: Node) -> str:
    """A Slurm pool in words: labq's share of it, and its partition as sinfo last showed it."""
    p = n.pool or {}
    share = (f"labq: {p.get('labq_running', 0)} running, {p.get('labq_waiting', 0)} waiting "
             f"in Slurm (max {p.get('max_jobs')}), {p.get('labq_gpus', 0)}/"
             f"{p.get('max_gpus', 0)} GPUs")
    if "nodes" not in p:
        return "; ".join(x for x in (share, p.get("error")) if x)
    return (f"{share}; partition {p.get('partition') or '(default)'}: "
            f"{p.get('nodes_up')}/{p.get('nodes')} nodes up, {p.get('nodes_alloc')} allocated, "
            f"GPUs {p.get('gpus_alloc')}/{p.get('gpus')} allocated")
