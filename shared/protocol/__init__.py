"""The requests labqd answers, named once: an `Op` per operation and a request type for each.

labqd parses every request into its type with `from_wire`, which holds all the checking a
request gets before a handler sees it; the client builds the same types and sends their
`to_wire()`; the TUI and the CLI go through the client. Adding an operation is one `Op`
member, one request type in the module of its kind here (base.py holds `Op` and `Request`),
one handler in labq.daemon.handlers and one client method; tests/test_protocol.py fails while
any of them is missing. Importing this package registers every request type.

Standard library only: users' scripts import it through `labq`.
"""
from .base import (
    MAX_DAYS as MAX_DAYS,
)
from .base import (
    MAX_GPUS_BY_TYPE as MAX_GPUS_BY_TYPE,
)
from .base import (
    MAX_GROUP_ENTRIES as MAX_GROUP_ENTRIES,
)
from .base import (
    MAX_GROUP_VALUE as MAX_GROUP_VALUE,
)
from .base import (
    MAX_LOG_OFFSET as MAX_LOG_OFFSET,
)
from .base import (
    MAX_NODE_ENTRIES as MAX_NODE_ENTRIES,
)
from .base import (
    MAX_NODE_NAME as MAX_NODE_NAME,
)
from .base import (
    MAX_NODE_TEXT as MAX_NODE_TEXT,
)
from .base import (
    MAX_OP as MAX_OP,
)
from .base import (
    MAX_WAIT_S as MAX_WAIT_S,
)
from .base import (
    REQUESTS as REQUESTS,
)
from .base import (
    GroupReply as GroupReply,
)
from .base import (
    NodeDict as NodeDict,
)
from .base import (
    NodeRemovedReply as NodeRemovedReply,
)
from .base import (
    NotifySettingsReply as NotifySettingsReply,
)
from .base import (
    Op as Op,
)
from .base import (
    PingReply as PingReply,
)
from .base import (
    PingRequest as PingRequest,
)
from .base import (
    Request as Request,
)
from .base import (
    UsageReply as UsageReply,
)
from .base import (
    WhoamiReply as WhoamiReply,
)
from .base import (
    WhoamiRequest as WhoamiRequest,
)
from .base import (
    read_reply as read_reply,
)
from .base import (
    request_type as request_type,
)
from .cluster import (
    GROUP_SETTINGS as GROUP_SETTINGS,
)
from .cluster import (
    UNSET as UNSET,
)
from .cluster import (
    GroupSetRequest as GroupSetRequest,
)
from .cluster import (
    GroupsRequest as GroupsRequest,
)
from .cluster import (
    NodeAddRequest as NodeAddRequest,
)
from .cluster import (
    NodeDrainRequest as NodeDrainRequest,
)
from .cluster import (
    NodeRemoveRequest as NodeRemoveRequest,
)
from .cluster import (
    NodeResumeRequest as NodeResumeRequest,
)
from .cluster import (
    NodesRequest as NodesRequest,
)
from .cluster import (
    Unset as Unset,
)
from .cluster import (
    UsageRequest as UsageRequest,
)
from .cluster import (
    check_group_settings as check_group_settings,
)
from .files import (
    PurgeReply as PurgeReply,
)
from .files import (
    PurgeRequest as PurgeRequest,
)
from .files import (
    ResultsReadRequest as ResultsReadRequest,
)
from .files import (
    ResultsReply as ResultsReply,
)
from .files import (
    ResultsRequest as ResultsRequest,
)
from .files import (
    StageBeginRequest as StageBeginRequest,
)
from .files import (
    StagePutRequest as StagePutRequest,
)
from .files import (
    StageReply as StageReply,
)
from .jobs import (
    CancelRequest as CancelRequest,
)
from .jobs import (
    EventsRequest as EventsRequest,
)
from .jobs import (
    HoldRequest as HoldRequest,
)
from .jobs import (
    JobPriorityRequest as JobPriorityRequest,
)
from .jobs import (
    JobRequest as JobRequest,
)
from .jobs import (
    JobsRequest as JobsRequest,
)
from .jobs import (
    JobTimeLimitRequest as JobTimeLimitRequest,
)
from .jobs import (
    ReadLogRequest as ReadLogRequest,
)
from .jobs import (
    ReleaseRequest as ReleaseRequest,
)
from .jobs import (
    SubmitRequest as SubmitRequest,
)
from .jobs import (
    WaitRequest as WaitRequest,
)
from .notify import (
    MAX_MAIL as MAX_MAIL,
)
from .notify import (
    MAX_URL as MAX_URL,
)
from .notify import (
    NOTIFY_CHANNELS as NOTIFY_CHANNELS,
)
from .notify import (
    NotifySetRequest as NotifySetRequest,
)
from .notify import (
    NotifyShowRequest as NotifyShowRequest,
)
from .notify import (
    check_webhook_url as check_webhook_url,
)
from .tokens import (
    MAX_TOKEN_DAYS as MAX_TOKEN_DAYS,
)
from .tokens import (
    MAX_TOKEN_NOTE as MAX_TOKEN_NOTE,
)
from .tokens import (
    TokenCreateRequest as TokenCreateRequest,
)
from .tokens import (
    TokenInfo as TokenInfo,
)
from .tokens import (
    TokenListRequest as TokenListRequest,
)
from .tokens import (
    TokenRevokeRequest as TokenRevokeRequest,
)
from .workflows import (
    ExperimentReply as ExperimentReply,
)
from .workflows import (
    ExperimentsRequest as ExperimentsRequest,
)
from .workflows import (
    SubmitArrayRequest as SubmitArrayRequest,
)
from .workflows import (
    SubmitManyRequest as SubmitManyRequest,
)
