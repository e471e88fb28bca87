"""One handler per request (pueue's message_handler): `handler(core, caller, req)` with the
request already checked by labq.protocol; it calls the core and returns plain values.
HANDLERS at the end maps every Op to its handler."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from labq import __version__
from labq.errors import PermissionDenied, ValidationError
from labq.protocol import (
    PROTOCOL,
    CancelRequest,
    EventsRequest,
    ExperimentReply,
    ExperimentsRequest,
    GroupReply,
    GroupSetRequest,
    GroupsRequest,
    HoldRequest,
    JobPriorityRequest,
    JobRequest,
    JobsRequest,
    JobTimeLimitRequest,
    NodeAddRequest,
    NodeDict,
    NodeDrainRequest,
    NodeRemovedReply,
    NodeRemoveRequest,
    NodeResumeRequest,
    NodesRequest,
    NotifySetRequest,
    NotifySettingsReply,
    NotifyShowRequest,
    Op,
    PingReply,
    PingRequest,
    PurgeReply,
    PurgeRequest,
    ReadLogRequest,
    ReleaseRequest,
    ResultsReadRequest,
    ResultsReply,
    ResultsRequest,
    StageBeginRequest,
    StagePutRequest,
    StageReply,
    SubmitArrayRequest,
    SubmitManyRequest,
    SubmitRequest,
    TokenCreateRequest,
    TokenInfo,
    TokenListRequest,
    TokenRevokeRequest,
    UsageReply,
    UsageRequest,
    WaitRequest,
    WhoamiReply,
    WhoamiRequest,
)
from labq.protocol.args import arg_error
from labq.spec import MAX_MEMORY_MB
from labq.states import JobState

from .config import ConfigError
from .core import Core
from .identity import Caller
from .nodes import noderequests
from .nodes.registry import NodeRegistry
from .workflows import experiment_ids, submit_many, submit_tasks, task_count

S = JobState


# -- session ----------------------------------------------------------------------------------
def ping(core: Core, caller: Caller, req: PingRequest) -> PingReply:
    # the cluster id tells a client that a restarted labqd is still the same queue
    return {"time": time.time(), "pid": os.getpid(), "cluster": core.store.cluster_id,
            "seq": core.store.committed_seq, "version": __version__, "protocol": PROTOCOL}


def whoami(core: Core, caller: Caller, req: WhoamiRequest) -> WhoamiReply:
    return {"user": caller.user, "uid": caller.uid, "group": caller.group,
            "admin": caller.admin, "groups": sorted(caller.groups)}


# -- jobs -------------------------------------------------------------------------------------
def _take_submits(core: Core, caller: Caller, n: int) -> None:
    """limits.submit_rate: a batch or an array counts its rows."""
    if core.submit_rate is not None:
        core.submit_rate.take(caller.uid, n, "submits", "limits.submit_rate")


def _submitted(core: Core, caller: Caller, asked: int, queued: int) -> None:
    """A refused row costs its submitter none of the rate, and the metrics count only the
    jobs that were queued."""
    if core.submit_rate is not None and asked > queued:
        core.submit_rate.give_back(caller.uid, asked - queued)
    if core.metrics is not None and queued:
        core.metrics.submitted(queued)


def submit(core: Core, caller: Caller, req: SubmitRequest) -> dict:
    _take_submits(core, caller, 1)
    try:
        row = core.jobs.admission.submit(caller, req.spec, valid=True)
    except Exception:
        _submitted(core, caller, 1, 0)
        raise
    _submitted(core, caller, 1, 1)
    view = core.jobs.view(caller, row)
    if not req.echo_env:
        view["env"] = None
    return view


def submit_array(core: Core, caller: Caller, req: SubmitArrayRequest) -> dict[str, Any]:
    params = None if req.params is None else [(n, v) for n, v in req.params]
    n = task_count(req.array, params)
    _take_submits(core, caller, n)
    try:
        reply = submit_tasks(core.jobs, caller, req.spec, req.array, params, req.max_running)
    except Exception:
        _submitted(core, caller, n, 0)
        raise
    _submitted(core, caller, n, len(reply["results"]))
    return reply


def submit_many_(core: Core, caller: Caller, req: SubmitManyRequest) -> dict:
    n = len(req.specs if req.rows is None else req.rows)  # every row counts, repeated or not
    _take_submits(core, caller, n)
    try:
        reply = submit_many(core.jobs, caller, req.specs, req.defaults, req.rows)
    except Exception:
        _submitted(core, caller, n, 0)
        raise
    # a row that was refused holds its error, one that was queued the job's values
    queued = sum(type(r) is list for r in reply["results"])
    _submitted(core, caller, n, queued)
    return reply


def experiments(core: Core, caller: Caller, req: ExperimentsRequest) -> list[ExperimentReply]:
    return core.store.experiments(req.user)  # type: ignore[return-value]


def job(core: Core, caller: Caller, req: JobRequest) -> dict:
    return core.jobs.view(caller, core.jobs.job_row(req.id))


def jobs(core: Core, caller: Caller, req: JobsRequest) -> list[dict]:
    return core.jobs.list_jobs(caller, states=req.states, where=req.filters(), limit=req.limit,
                               after_id=req.after_id, changed_since=req.changed_since,
                               include_ended=req.include_ended, with_env=req.with_env)


def events(core: Core, caller: Caller, req: EventsRequest) -> list[dict]:
    return core.jobs.events(caller, core.jobs.job_row(req.id)["id"])  # NOT_FOUND for no such job


def _selected(core: Core, caller: Caller, ids: list[int], experiment: str | None,
              states: tuple[JobState, ...] | None) -> list[int]:
    """The ids given, or the caller's jobs of the experiment (an admin's: anyone's)."""
    return ids if experiment is None else experiment_ids(core.jobs, caller, experiment, states)


def cancel(core: Core, caller: Caller, req: CancelRequest) -> list[dict]:
    ids = _selected(core, caller, req.ids, req.experiment, (S.PENDING, S.HELD, S.RUNNING))
    return core.jobs.cancel(caller, ids, req.reason, wait=req.wait)


def hold(core: Core, caller: Caller, req: HoldRequest) -> list[dict]:
    return core.jobs.hold(caller, _selected(core, caller, req.ids, req.experiment,
                                            (S.PENDING,)))


def release(core: Core, caller: Caller, req: ReleaseRequest) -> list[dict]:
    return core.jobs.release(caller, _selected(core, caller, req.ids, req.experiment,
                                               (S.HELD,)))


def wait(core: Core, caller: Caller, req: WaitRequest) -> list[dict]:
    ids = _selected(core, caller, req.ids, req.experiment, None)
    return core.jobs.wait(caller, ids, req.timeout)


def job_priority(core: Core, caller: Caller, req: JobPriorityRequest) -> dict:
    return core.jobs.set_priority(caller, req.id, req.priority)


def job_time_limit(core: Core, caller: Caller, req: JobTimeLimitRequest) -> dict:
    return core.jobs.set_time_limit(caller, req.id, req.time_limit_s)


def read_log(core: Core, caller: Caller,
             req: ReadLogRequest) -> tuple[bytes, int, bool, list[tuple[int, int]]]:
    return core.jobs.read_log(caller, req.id, req.offset, req.wait, req.max_bytes, req.part)


# -- nodes ------------------------------------------------------------------------------------
def nodes(core: Core, caller: Caller, req: NodesRequest) -> list[dict]:
    return noderequests.node_list(core.nodes)


def node_drain(core: Core, caller: Caller, req: NodeDrainRequest) -> NodeDict:
    return noderequests.set_drain(core.nodes, caller, req.name, True)


def node_resume(core: Core, caller: Caller, req: NodeResumeRequest) -> NodeDict:
    return noderequests.set_drain(core.nodes, caller, req.name, False)


def node_add(core: Core, caller: Caller, req: NodeAddRequest) -> NodeDict:
    _check_as_config(core, req.node)
    return noderequests.node_add(core.nodes, caller, req.node)


def node_remove(core: Core, caller: Caller, req: NodeRemoveRequest) -> NodeRemovedReply:
    return noderequests.node_remove(core.nodes, caller, req.name)


def _check_as_config(core: Core, entry: dict) -> None:
    """The entry read as the config file's [[node]] entries are, with a request's bounds on
    what the config file leaves open: labq.protocol knows no config, so this part is here."""
    try:
        ncfg = NodeRegistry.dynamic_node_config(entry)
    except ConfigError as e:  # its message quotes the entry: keep a long one short
        raise ValidationError(str(e)[:500], {"field": e.path[:200]}) from None
    if ncfg.memory_mb is not None and not 0 <= ncfg.memory_mb <= MAX_MEMORY_MB:
        raise arg_error("node.memory", f"must be at most {MAX_MEMORY_MB} MiB")


# -- fair share -------------------------------------------------------------------------------
def groups(core: Core, caller: Caller, req: GroupsRequest) -> list[GroupReply]:
    return core.fair.groups()


def group_set(core: Core, caller: Caller, req: GroupSetRequest) -> GroupReply:
    return core.fair.set_group(caller, req.group, req.changes())


def usage(core: Core, caller: Caller, req: UsageRequest) -> UsageReply:
    return core.fair.usage(caller, req.days, req.bucket)


# -- notifications ----------------------------------------------------------------------------
def notify_show(core: Core, caller: Caller, req: NotifyShowRequest) -> NotifySettingsReply:
    return core.notices.show(caller, req.user)


def notify_set(core: Core, caller: Caller, req: NotifySetRequest) -> NotifySettingsReply:
    return core.notices.set(caller, req.channel, req.value, req.user)


# -- remote access ----------------------------------------------------------------------------
def token_create(core: Core, caller: Caller, req: TokenCreateRequest) -> TokenInfo:
    return core.tokens.create(caller, req.user, req.days, req.note)


def token_list(core: Core, caller: Caller, req: TokenListRequest) -> list[TokenInfo]:
    return core.tokens.list(caller, req.user)


def token_revoke(core: Core, caller: Caller, req: TokenRevokeRequest) -> TokenInfo:
    return core.tokens.revoke(caller, req.id)


# -- staged files and results ----------------------------------------------------------------
def stage_begin(core: Core, caller: Caller, req: StageBeginRequest) -> StageReply:
    return core.files.begin(caller, req.files)  # type: ignore[return-value]


def stage_put(core: Core, caller: Caller, req: StagePutRequest) -> dict:
    return core.files.put(caller, req.token, req.index, req.offset, req.data)


def results(core: Core, caller: Caller, req: ResultsRequest) -> ResultsReply:
    return core.files.results(caller, core.jobs.job_row(req.id))  # type: ignore[return-value]


def results_read(core: Core, caller: Caller, req: ResultsReadRequest) -> dict:
    return core.files.read(caller, core.jobs.job_row(req.id), req.index, req.offset,
                           req.max_bytes)


def purge(core: Core, caller: Caller, req: PurgeRequest) -> PurgeReply:
    if not caller.admin:
        raise PermissionDenied("only admins purge jobs' files")
    return core.files.purge(req.before, core.moves.remove_scratch)  # type: ignore[return-value]


Handler = Callable[[Core, Caller, Any], Any]

HANDLERS: dict[Op, Handler] = {
    Op.PING: ping, Op.WHOAMI: whoami,
    Op.SUBMIT: submit, Op.SUBMIT_ARRAY: submit_array, Op.SUBMIT_MANY: submit_many_,
    Op.EXPERIMENTS: experiments, Op.JOB: job, Op.JOBS: jobs, Op.EVENTS: events, Op.CANCEL: cancel,
    Op.HOLD: hold, Op.RELEASE: release, Op.WAIT: wait, Op.JOB_PRIORITY: job_priority,
    Op.JOB_TIME_LIMIT: job_time_limit,    Op.READ_LOG: read_log,
    Op.NODES: nodes, Op.NODE_DRAIN: node_drain, Op.NODE_RESUME: node_resume,
    Op.NODE_ADD: node_add, Op.NODE_REMOVE: node_remove,
    Op.GROUPS: groups, Op.GROUP_SET: group_set, Op.USAGE: usage,
    Op.NOTIFY_SHOW: notify_show, Op.NOTIFY_SET: notify_set,
    Op.TOKEN_CREATE: token_create, Op.TOKEN_LIST: token_list, Op.TOKEN_REVOKE: token_revoke,
    Op.STAGE_BEGIN: stage_begin, Op.STAGE_PUT: stage_put, Op.RESULTS: results,
    Op.RESULTS_READ: results_read, Op.PURGE: purge,
}
