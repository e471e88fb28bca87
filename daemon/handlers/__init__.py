"""One handler per request (pueue's message_handler): `handler(core, caller, request)` with
the request already checked by labq.protocol; it calls the core and returns plain values."""
from __future__ import annotations

from typing import Any, Callable

from labq.protocol import Op

from . import fairshare, jobs, nodes, session

Handler = Callable[[Any, Any, Any], Any]

HANDLERS: dict[Op, Handler] = {
    Op.PING: session.ping,
    Op.WHOAMI: session.whoami,
    Op.SUBMIT: jobs.submit,
    Op.JOB: jobs.job,
    Op.JOBS: jobs.jobs,
    Op.EVENTS: jobs.events,
    Op.CANCEL: jobs.cancel,
    Op.HOLD: jobs.hold,
    Op.RELEASE: jobs.release,
    Op.WAIT: jobs.wait,
    Op.JOB_PRIORITY: jobs.job_priority,
    Op.READ_LOG: jobs.read_log,
    Op.NODES: nodes.nodes,
    Op.NODE_DRAIN: nodes.node_drain,
    Op.NODE_RESUME: nodes.node_resume,
    Op.NODE_ADD: nodes.node_add,
    Op.NODE_REMOVE: nodes.node_remove,
    Op.GROUPS: fairshare.groups,
    Op.GROUP_SET: fairshare.group_set,
    Op.USAGE: fairshare.usage,
}
