"""Recording runs' ends as their agents report them.

An agent reports the ends one turn of its monitor found in one message; labqd records them
under one hold of the job lock and in one store transaction, then asks the agent to forget
them. An end that cannot be stored (a full disk) is retried alone, so the others do not wait
for it, and the run stays on its node until its end is on disk.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from labq.errors import LabqError
from labq.states import JobState

from ..gangs import part_failed
from ..jobtable import Change
from .info import parse_part_key
from .link import NodeLink
from .slurmpool import slurm_exit

if TYPE_CHECKING:
    from .registry import NodeRegistry

log = logging.getLogger("labqd")
S = JobState


def record_ends(reg: NodeRegistry, link: NodeLink, msgs: list[dict]) -> None:
    """The ends one message of the agent reported, in one transaction where they can be."""
    todo: list[tuple[Change, dict]] = []
    again: list[dict] = []  # a second report of a job's end in the batch: seen after it
    with reg.lock:
        seen: set[int] = set()
        for msg in msgs:
            try:
                change = end_change(reg, link, msg)
            except LabqError as e:
                retry_later(link, msg, e)
                continue
            if change is not None and change[0]["id"] in seen:
                again.append(msg)
            elif change is not None:
                seen.add(change[0]["id"])
                todo.append((change, msg))
        if len(todo) > 1:
            try:
                # copies: a failed write leaves the fields as they came, for the retry alone
                reg.jobs.transition_many([(j, dst, who, why, dict(f))
                                          for (j, dst, who, why, f), _ in todo])
            except LabqError:
                pass
            else:
                for (job, *_), msg in todo:
                    reg.ended_forget(link, job, msg["job"])
                todo = []
        for change, msg in todo:
            _record_alone(reg, link, change, msg)
    if again:
        record_ends(reg, link, again)


def _record_alone(reg: NodeRegistry, link: NodeLink, change: Change, msg: dict) -> None:
    job, dst, who, why, fields = change
    try:
        reg.jobs.transition(job, dst, who, why, **fields)
    except LabqError as e:
        retry_later(link, msg, e)
        return
    reg.ended_forget(link, job, msg["job"])


def retry_later(link: NodeLink, msg: dict, e: LabqError) -> None:
    """The end could not be stored (full disk): the run stays on the node and the agent is
    asked for its exit record again later, so nothing is lost meanwhile."""
    log.error("job %s: cannot record its end yet (%s); retrying in 5 s", msg["job"], e.message)
    timer = threading.Timer(5.0, link.request, ("watch",), {"job": msg["job"], "offset": 1 << 62})
    timer.daemon = True
    timer.start()


def end_change(reg: NodeRegistry, link: NodeLink, msg: dict) -> Change | None:
    """The transition a reported end makes, or None where there is none to make or it was
    made here (a gang's, a lost run's). Called with the lock held."""
    key = msg["job"]
    if reg.stopping.pop(key, None) is not None:
        reg.wake.set()  # its GPUs are free now
    job = reg.current(link, key)
    if job is None:
        link.request("forget", job=key)  # a stale copy ended
        return None
    job_id = job["id"]
    if link.cfg.kind == "slurm" and slurm_exit(reg.jobs, job, msg, reg.lost):
        link.request("forget", job=key)
        return None
    code, sig, why = msg.get("code"), msg.get("signal"), msg.get("reason")
    end = msg.get("end") or reg.clock.time()
    fields = dict(exit_code=code, signal=sig, end_time=end, when=end)
    rank = parse_part_key(key)[2]
    cancels = reg.jobs.cancel_requests
    if job["parts"] and job_id not in cancels and why != "lost":
        # a gang ends when rank 0 ends or any part fails or times out; the other parts are
        # stopped
        failed = part_failed(rank, link.name, code, sig, why)
        if rank and failed is None and why != "timeout":
            link.request("forget", job=key)
            return None  # a part done before rank 0: the gang goes on
        reg.cancel_run(job, but=rank)
        if failed is not None:
            return (job, S.FAILED, "labqd", failed, fields)
    if job_id in cancels:
        return (job, S.CANCELLED, "labqd", cancels[job_id], fields)
    if why == "timeout":
        return (job, S.TIMEOUT, "labqd", f"time limit of {job['time_limit_s']} s reached",
                fields)
    if why == "lost":
        reg.lost(job, f"its supervisor on {link.name} vanished (node rebooted?)")
        reg.ended_forget(link, job, key)
        return None
    if code == 0:
        return (job, S.COMPLETED, "labqd", None, fields)
    detail = f"killed by signal {sig}" if sig else f"exit code {code}"
    if why == "oom":
        mem = job["memory_mb"]
        detail = (f"out of memory: killed at its limit of {mem} MiB (--mem)" if mem
                  else "out of memory: killed by the kernel") + f" ({detail})"
    return (job, S.FAILED, "labqd", detail, fields)
