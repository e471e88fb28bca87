"""Requests about jobs: queue, look, change, wait, read the log."""
from __future__ import annotations

from labq.protocol import (CancelRequest, EventsRequest, HoldRequest, JobPriorityRequest,
                           JobRequest, JobsRequest, ReadLogRequest, ReleaseRequest,
                           SubmitRequest, WaitRequest)

from ..core import Core
from ..identity import Caller


def submit(core: Core, caller: Caller, req: SubmitRequest) -> dict:
    return core.view(caller, core.submit(caller, req.spec))


def job(core: Core, caller: Caller, req: JobRequest) -> dict:
    return core.view(caller, core.job_row(req.id))


def jobs(core: Core, caller: Caller, req: JobsRequest) -> list[dict]:
    return core.jobs(caller, states=req.states, user=req.user, limit=req.limit,
                     include_ended=req.include_ended, with_env=req.with_env)


def events(core: Core, caller: Caller, req: EventsRequest) -> list[dict]:
    return core.events(caller, core.job_row(req.id)["id"])  # NOT_FOUND for no such job


def cancel(core: Core, caller: Caller, req: CancelRequest) -> list[dict]:
    return core.cancel(caller, req.ids, req.reason)


def hold(core: Core, caller: Caller, req: HoldRequest) -> list[dict]:
    return core.hold(caller, req.ids)


def release(core: Core, caller: Caller, req: ReleaseRequest) -> list[dict]:
    return core.release(caller, req.ids)


def wait(core: Core, caller: Caller, req: WaitRequest) -> list[dict]:
    return core.wait(caller, req.ids, req.timeout)


def job_priority(core: Core, caller: Caller, req: JobPriorityRequest) -> dict:
    return core.set_priority(caller, req.id, req.priority)


def read_log(core: Core, caller: Caller, req: ReadLogRequest) -> tuple[bytes, int, bool]:
    return core.read_log(caller, req.id, req.offset, req.wait, req.max_bytes)
