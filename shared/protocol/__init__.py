"""The requests labqd answers, named once: an `Op` per operation and a request type for each.

labqd parses every request into its type with `from_wire`, which holds all the checking a
request gets before a handler sees it; the client builds the same types and sends their
`to_wire()`; the TUI and the CLI go through the client. Adding an operation is one `Op`
member, one request type in the module of its kind here (base.py holds `Op` and `Request`),
its name in _NAMES below, one handler in labq.daemon.handlers and one client method;
tests/test_protocol.py fails while any of them is missing.

A kind's module is imported when one of its names is first used, so a command that sends a
submit does not pay for building the other thirty request types. `REQUESTS` and
`request_type()` import them all first.

Standard library only: users' scripts import it through `labq`.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import (
    MAX_DAYS,
    MAX_GPUS_BY_TYPE,
    MAX_GROUP_ENTRIES,
    MAX_GROUP_VALUE,
    MAX_LOG_OFFSET,
    MAX_NODE_ENTRIES,
    MAX_NODE_NAME,
    MAX_NODE_TEXT,
    MAX_OP,
    MAX_WAIT_S,
    MIN_PROTOCOL,
    PROTOCOL,
    GroupReply,
    NodeDict,
    NodeRemovedReply,
    NotifySettingsReply,
    Op,
    PingReply,
    PingRequest,
    Request,
    UsageReply,
    WhoamiReply,
    WhoamiRequest,
    check_protocol,
    read_reply,
    request_type,
)

if TYPE_CHECKING:  # what mypy checks; at run time, __getattr__ below finds these
    from .base import REQUESTS
    from .cluster import (
        GROUP_SETTINGS,
        UNSET,
        GroupSetRequest,
        GroupsRequest,
        NodeAddRequest,
        NodeDrainRequest,
        NodeRemoveRequest,
        NodeResumeRequest,
        NodesRequest,
        Unset,
        UsageRequest,
        check_group_settings,
    )
    from .files import (
        PurgeReply,
        PurgeRequest,
        ResultsReadRequest,
        ResultsReply,
        ResultsRequest,
        StageBeginRequest,
        StagePutRequest,
        StageReply,
    )
    from .jobs import (
        CancelRequest,
        EventsRequest,
        HoldRequest,
        JobPriorityRequest,
        JobRequest,
        JobsRequest,
        JobTimeLimitRequest,
        ReadLogRequest,
        ReleaseRequest,
        SubmitRequest,
        WaitRequest,
        pack_spans,
        unpack_spans,
    )
    from .notify import (
        MAX_MAIL,
        MAX_URL,
        NOTIFY_CHANNELS,
        NotifySetRequest,
        NotifyShowRequest,
        check_webhook_url,
    )
    from .tokens import (
        MAX_TOKEN_DAYS,
        MAX_TOKEN_NOTE,
        TokenCreateRequest,
        TokenInfo,
        TokenListRequest,
        TokenRevokeRequest,
    )
    from .workflows import (
        ExperimentReply,
        ExperimentsRequest,
        SubmitArrayRequest,
        SubmitManyRequest,
    )

# each kind's module -> the names it gives this package
_NAMES: dict[str, tuple[str, ...]] = {
    "cluster": (
        "GROUP_SETTINGS", "GroupSetRequest", "GroupsRequest", "NodeAddRequest",
        "NodeDrainRequest", "NodeRemoveRequest", "NodeResumeRequest", "NodesRequest",
        "UNSET", "Unset", "UsageRequest", "check_group_settings",
    ),
    "files": (
        "PurgeReply", "PurgeRequest", "ResultsReadRequest", "ResultsReply",
        "ResultsRequest", "StageBeginRequest", "StagePutRequest", "StageReply",
    ),
    "jobs": (
        "CancelRequest", "EventsRequest", "HoldRequest", "JobPriorityRequest",
        "JobRequest", "JobsRequest", "JobTimeLimitRequest", "ReadLogRequest",
        "ReleaseRequest", "SubmitRequest", "WaitRequest", "pack_spans", "unpack_spans",
    ),
    "notify": (
        "MAX_MAIL", "MAX_URL", "NOTIFY_CHANNELS", "NotifySetRequest", "NotifyShowRequest",
        "check_webhook_url",
    ),
    "tokens": (
        "MAX_TOKEN_DAYS", "MAX_TOKEN_NOTE", "TokenCreateRequest", "TokenInfo",
        "TokenListRequest", "TokenRevokeRequest",
    ),
    "workflows": (
        "ExperimentReply", "ExperimentsRequest", "SubmitArrayRequest", "SubmitManyRequest",
    ),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}

__all__ = [
    "CancelRequest", "EventsRequest", "ExperimentReply", "ExperimentsRequest",
    "GROUP_SETTINGS", "GroupReply", "GroupSetRequest", "GroupsRequest", "HoldRequest",
    "JobPriorityRequest", "JobRequest", "JobsRequest", "JobTimeLimitRequest", "MAX_DAYS",
    "MAX_GPUS_BY_TYPE",
    "MAX_GROUP_ENTRIES", "MAX_GROUP_VALUE", "MAX_LOG_OFFSET", "MAX_MAIL", "MAX_NODE_ENTRIES",
    "MAX_NODE_NAME", "MAX_NODE_TEXT", "MAX_OP", "MAX_TOKEN_DAYS", "MAX_TOKEN_NOTE", "MAX_URL",
    "MAX_WAIT_S", "MIN_PROTOCOL", "NOTIFY_CHANNELS", "NodeAddRequest", "NodeDict",
    "NodeDrainRequest",
    "NodeRemoveRequest", "NodeRemovedReply", "NodeResumeRequest", "NodesRequest",
    "NotifySetRequest", "NotifySettingsReply", "NotifyShowRequest", "Op", "PROTOCOL",
    "PingReply",
    "PingRequest", "PurgeReply", "PurgeRequest", "REQUESTS", "ReadLogRequest",
    "ReleaseRequest", "Request", "ResultsReadRequest", "ResultsReply", "ResultsRequest",
    "StageBeginRequest", "StagePutRequest", "StageReply", "SubmitArrayRequest",
    "SubmitManyRequest", "SubmitRequest", "TokenCreateRequest", "TokenInfo",
    "TokenListRequest", "TokenRevokeRequest", "UNSET", "Unset", "UsageReply", "UsageRequest",
    "WaitRequest", "WhoamiReply", "WhoamiRequest", "check_group_settings", "check_protocol",
    "check_webhook_url",
    "pack_spans", "read_reply", "request_type", "unpack_spans",
]


def load_all() -> None:
    """Import every kind's module, which registers every request type in REQUESTS."""
    for module in _NAMES:
        import_module(f"{__name__}.{module}")


def __getattr__(name: str) -> Any:
    if name == "REQUESTS":
        load_all()
        from .base import REQUESTS
        return REQUESTS
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
