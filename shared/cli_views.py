"""The command line's views of jobs: `labq ls`, `labq show` and `labq events`."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import cli_files
from .cli_format import (
    command_text,
    job_json,
    parse_ids,
    print_json,
    soon,
    status_text,
    table,
    when,
)
from .models import Job
from .text import printable
from .units import format_duration, format_size_mb
from .waiting import reservation_words

if TYPE_CHECKING:
    from .client import Client


LS_HEADER = ["ID", "NAME", "USER", "GROUP", "STATE", "GPUS", "NODE", "PRIO", "REASON/TIME"]
LS_PAGE = 500  # jobs per request: the first page shows at once however long the queue


def cmd_ls(q: Client, a: argparse.Namespace) -> int:
    states = [s.upper() for s in a.state.split(",")] if a.state else None
    user = a.user or (q.whoami()["user"] if a.mine else None)
    if a.experiment and user is None:
        me = q.whoami()  # an experiment is yours; an admin sees everyone's of that name
        user = None if me["admin"] else me["user"]
    pages = _ls_pages(q.iter_jobs(page=min(LS_PAGE, a.limit or LS_PAGE), states=states,
                                  user=user, experiment=a.experiment,
                                  include_ended=a.all or bool(states) or bool(a.experiment)),
                      a.limit)
    if a.json:
        print_json([job_json(j) for page in pages for j in page])
        return 0
    widths: list[int] = []
    for page in pages:
        now = time.time()
        rows = [[j.id, j.name[:24], j.owner, j.group, j.state.value,
                 j.gpus if not j.gpu_type else f"{j.gpus}:{j.gpu_type}", _where(j),
                 f"{j.priority_score:.0f}" if j.priority_score is not None else j.priority,
                 status_text(j, now)] for j in page]
        # each page is printed as it comes, its columns at least as wide as the last page's
        widths = table(rows, [] if widths else LS_HEADER, widths)
        sys.stdout.flush()
    if not widths:
        table([], LS_HEADER)
    return 0


def _where(j: Job) -> str:
    """A job's node; a gang's rank 0 node and how many more."""
    if not j.node:
        return "-"
    return f"{j.node}+{j.nodes - 1}" if j.nodes > 1 else j.node


def _ls_pages(pages: Iterator[list[Job]], limit: int | None) -> Iterator[list[Job]]:
    """Pages until `limit` jobs (the first ones of the queue) have been shown."""
    left = limit
    for page in pages:
        if left is not None:
            page = page[:left]
            left -= len(page)
        if page:
            yield page
        if left == 0:
            return


def _gang_fields(job: Job) -> list[tuple[str, object]]:
    """`labq show`'s lines for a gang: its size, and each part's node and GPUs."""
    if job.nodes <= 1:
        return []
    out: list[tuple[str, object]] = [("nodes", f"{job.nodes} ({job.gpus // job.nodes} GPUs "
                                               "each; logs: labq logs ID --part K)")]
    for rank, (node, gpus) in enumerate(job.parts or []):
        out.append((f"part {rank}", f"{node} gpus={','.join(map(str, gpus)) or '-'}"))
    return out


def cmd_show(q: Client, a: argparse.Namespace) -> int:
    job = q.job(parse_ids([a.id])[0])
    if a.json:
        print_json(job_json(job))
        return 0
    fields = [
        ("id", job.id), ("name", job.name), ("owner", f"{job.owner} (group {job.group})"),
        ("state", job.state.value + (f"  ({job.reason})" if job.reason else "")),
        ("command", command_text(job)), ("cwd", job.cwd),
        ("resources", f"gpus={job.gpus}{':' + job.gpu_type if job.gpu_type else ''}"
                      f"{' min ' + format_size_mb(job.gpu_memory_mb) if job.gpu_memory_mb else ''}"
                      f" cpus={job.cpus} mem={format_size_mb(job.memory_mb)}"),
        ("time limit", format_duration(job.time_limit_s) if job.time_limit_s else "default"),
        ("priority", f"{job.priority}" + (f" (score {job.priority_score:.1f})"
                                          if job.priority_score is not None else "")),
        ("dependencies", ", ".join(job.dependencies) or "-"),
        ("submitted", when(job.submit_time)),
        ("est. start", when(job.estimated_start)), ("started", when(job.start_time)),
        ("ended", when(job.end_time)),
        ("node", (job.node or "-") + (f"  (Slurm job {job.slurm_id})" if job.slurm_id
                                      else "")),
        ("gpu indices", ",".join(map(str, job.gpu_indices)) or "-"),
        *_gang_fields(job),
        ("exit code", "-" if job.exit_code is None else job.exit_code),
        ("restarts", job.restarts),
        ("notify", job.notify or "-"),
    ]
    words = reservation_words(job, soon)
    if words:  # beside the state and its reason
        fields.insert(4, ("waiting for", words))
    if job.experiment:
        fields.append(("experiment", job.experiment))
    if job.array_id is not None:
        fields.append(("array", f"{job.array_id}[{job.array_index}]"
                                + (f" %{job.array_limit}" if job.array_limit else "")))
    if job.params:
        fields.append(("params", " ".join(f"{k}={v}" for k, v in job.params.items())))
    fields.extend(cli_files.show_fields(job))
    # notes that changed no state: a notification channel that failed, and the like
    fields.extend(("note", f"{when(e.time)}  {e.reason}")
                  for e in q.events(job.id)[-50:] if e.from_state == e.to_state and e.reason)
    for k, v in fields:
        print(f"{k:>13}: {printable(v)}")
    return 0


def cmd_events(q: Client, a: argparse.Namespace) -> int:
    events = q.events(parse_ids([a.id])[0])
    if a.json:
        print_json([e.__dict__ for e in events])
        return 0
    table([[when(e.time), e.who, e.from_state or "-", e.to_state, e.reason or ""]
            for e in events], ["TIME", "WHO", "FROM", "TO", "REASON"])
    return 0
