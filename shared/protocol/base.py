"""The vocabulary itself: `Op`, the replies of stable shape, and `Request`, the base of every
request type with its checks and wire form."""
from __future__ import annotations

from _thread import RLock
from dataclasses import dataclass, fields
from enum import Enum
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Self,
    TypedDict,
    dataclass_transform,
    get_args,
    get_origin,
)

from ..errors import ValidationError, VersionMismatch
from ..models import Event, Job, Node
from ..spec import (
    MAX_VALUES,
    check_plain,
)
from ..states import JobState

if TYPE_CHECKING:
    from dataclasses import Field

class Op(str, Enum):
    """Every operation, by the name it has on the wire."""
    PING = "ping"
    WHOAMI = "whoami"
    SUBMIT = "submit"
    JOB = "job"
    JOBS = "jobs"
    EVENTS = "events"
    CANCEL = "cancel"
    HOLD = "hold"
    RELEASE = "release"
    WAIT = "wait"
    NODES = "nodes"
    NODE_DRAIN = "node_drain"
    NODE_RESUME = "node_resume"
    NODE_ADD = "node_add"
    NODE_REMOVE = "node_remove"
    JOB_PRIORITY = "job_priority"
    JOB_TIME_LIMIT = "job_time_limit"
    GROUP_SET = "group_set"
    GROUPS = "groups"
    USAGE = "usage"
    NOTIFY_SHOW = "notify_show"
    NOTIFY_SET = "notify_set"
    READ_LOG = "read_log"  # its own call: bytes cross as they are, not inside JSON
    SUBMIT_ARRAY = "submit_array"
    SUBMIT_MANY = "submit_many"
    EXPERIMENTS = "experiments"
    TOKEN_CREATE = "token_create"
    TOKEN_LIST = "token_list"
    TOKEN_REVOKE = "token_revoke"
    STAGE_BEGIN = "stage_begin"
    STAGE_PUT = "stage_put"
    RESULTS = "results"
    RESULTS_READ = "results_read"
    PURGE = "purge"


# The shape of requests and replies. Raised when a change would be misread by the other
# side: an older labqd ignores arguments it does not know, and an older client cannot read a
# newer reply, so each request carries its client's number and labqd refuses one it cannot
# serve before doing anything.
PROTOCOL = 1
MIN_PROTOCOL = 1  # the oldest client this labqd still answers correctly



def check_protocol(client: Any, version: str) -> None:
    """Refuse a request whose client speaks a protocol this labqd (release `version`) cannot
    serve. A request without a number (a raw RPyC call) is taken as it is."""
    if client is None:
        return
    if type(client) is not int:
        raise ValidationError("protocol must be an integer", {"field": "protocol"})
    if client > PROTOCOL:
        raise VersionMismatch(
            f"this labq client speaks protocol {client}, newer than labqd {version} "
            f"(protocol {PROTOCOL}): upgrade labqd, or use labq {version}",
            {"client": client, "daemon": PROTOCOL, "version": version})
    if client < MIN_PROTOCOL:
        raise VersionMismatch(
            f"this labq client speaks protocol {client}, older than labqd {version} "
            f"answers (protocol {MIN_PROTOCOL} to {PROTOCOL}): upgrade labq to {version}",
            {"client": client, "daemon": PROTOCOL, "version": version})


MAX_OP = 64  # an unknown request's name is quoted back at most this long
MAX_NODE_NAME = 255  # a host name
MAX_NODE_TEXT = 4096  # paths and the like in a node entry
MAX_NODE_ENTRIES = 1024
MAX_WAIT_S = 86400.0  # labqd waits at most a minute per call; a day is plainly a mistake
MAX_DAYS = 3660
MAX_GROUP_ENTRIES = 4096  # users or GPU types in one group change
MAX_GROUP_VALUE = 1e9
MAX_GPUS_BY_TYPE = 1 << 20
# past any log labqd keeps, and below where file systems refuse to seek (16 TiB on ext4)
MAX_LOG_OFFSET = 1 << 40
_STATES = tuple(s.value for s in JobState)


# -- replies whose shape is stable (jobs, nodes and events are labq.models' dataclasses) ----
class PingReply(TypedDict):
    time: float
    pid: int
    cluster: str
    seq: int  # the queue's change counter: what `jobs(changed_since=...)` counts from
    version: str  # labqd's release
    protocol: int  # and the newest protocol it speaks (PROTOCOL)


class WhoamiReply(TypedDict):
    user: str
    uid: int
    group: str
    admin: bool
    groups: list[str]


class GroupReply(TypedDict):
    group: str
    share: float
    max_gpus: int | None
    max_gpus_by_type: dict[str, int]
    users: dict[str, float]
    gpus_in_use: int
    usage: float
    fairshare: float


class UsageReply(TypedDict):
    since: float
    until: float
    groups: list[dict[str, Any]]
    users: list[dict[str, Any]]
    series: list[dict[str, Any]]


class NotifySettingsReply(TypedDict):
    user: str
    webhook: str | None
    mail: str | None  # the address set; mail goes to `mail_to` (the default when None)
    mail_to: str | None
    channels: list[str]  # the channels labqd's admin enabled: mail, webhook, command


class NodeRemovedReply(TypedDict):
    name: str
    removed: bool
    from_config: bool


# a node as a mapping (Node's fields): what drain, resume and add answer, and what the
# client has always handed back for them
NodeDict = dict[str, Any]


def read_reply(kind: Any, value: Any) -> Any:
    """A result as `kind` says: a model, a list of them, or the plain value as it came."""
    if get_origin(kind) is list:
        [item] = get_args(kind)
        return [read_reply(item, v) for v in value]
    if kind in (Job, Node, Event):
        return kind.from_dict(value)
    return value


# -- requests -------------------------------------------------------------------------------
REQUESTS: dict[Op, type[Request]] = {}
# what exposed_call answers: all but read_log
_CALLED = frozenset(o.value for o in Op if o is not Op.READ_LOG)


_COMPLETING = RLock()  # labqd's threads may first use a request type at the same time


@dataclass_transform(frozen_default=True)
class _RequestType(type):
    """What makes each subclass of Request a frozen dataclass, when it is first called or its
    fields are first looked at rather than when its module is imported. dataclass() compiles
    six methods per type, which was most of what importing the request types cost, and a
    command sends one or two of them."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> _RequestType:
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        cls._incomplete = bool(bases)  # Request itself is no dataclass
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._incomplete:
            cls._complete()
        return super().__call__(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        # called only for what the type lacks: its dataclass attributes, until it has them
        if name.startswith("__dataclass_") and cls.__dict__.get("_incomplete"):
            cls._complete()
            return getattr(cls, name)
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")

    def _complete(cls) -> None:
        with _COMPLETING:
            if cls.__dict__.get("_incomplete"):
                for base in cls.__mro__[1:]:  # dataclass() takes its bases' fields
                    if isinstance(base, _RequestType) and base.__dict__.get("_incomplete"):
                        base._complete()
                made: Any = cls  # mypy: a class whose metaclass is this one
                dataclass(frozen=True)(made)
                cls._incomplete = False


class Request(metaclass=_RequestType):
    """One request of the vocabulary. A subclass is a frozen dataclass (see _RequestType)
    whose fields are the request's arguments, by their wire names; it names its `Op` and its
    reply in the class line."""
    _incomplete: ClassVar[bool]
    op: ClassVar[Op]
    reply: ClassVar[Any] = dict
    # arguments whose checking `parse` does itself, naming deeper fields (a submit's spec)
    unwalked: ClassVar[frozenset[str]] = frozenset()
    if TYPE_CHECKING:  # each request type is a dataclass, which is what fields() needs
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __init_subclass__(cls, op: Op | None = None, reply: Any = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if op is not None:
            if op in REQUESTS:
                raise TypeError(f"{op.value} has a request type already: {REQUESTS[op]}")
            cls.op = op
            REQUESTS[op] = cls
        if reply is not None:
            cls.reply = reply

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Self:
        """The request from its decoded JSON arguments, checked; ValidationError names the
        first bad field. Arguments it does not know are ignored, never looked into."""
        known = {f.name: args[f.name] for f in fields(cls) if f.name in args}
        budget = [MAX_VALUES]  # shared by all the arguments of one request
        for key, value in known.items():
            if key not in cls.unwalked:
                check_plain(value, key, budget)
        return cls.parse(known)

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        """The typed checks, on arguments already known to be plain JSON values."""
        return cls()

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def read_reply(cls, result: Any) -> Any:
        return read_reply(cls.reply, result)


def request_type(op: str) -> type[Request]:
    """The request type named `op` on the wire; READ_LOG has its own call."""
    if op not in _CALLED:
        shown = op if len(op) <= MAX_OP else op[:MAX_OP] + "..."
        raise ValidationError(f"unknown request {shown!r}", {"field": "op", "op": shown})
    kind = REQUESTS.get(Op(op))
    if kind is None:  # its module is not imported yet (see labq.protocol)
        from . import load_all
        load_all()
        kind = REQUESTS[Op(op)]
    return kind


class PingRequest(Request, op=Op.PING, reply=PingReply):
    pass


class WhoamiRequest(Request, op=Op.WHOAMI, reply=WhoamiReply):
    pass
