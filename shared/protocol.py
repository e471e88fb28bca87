"""The requests labqd answers, named once: an `Op` per operation and a request type for each.

labqd parses every request into its type with `from_wire`, which holds all the checking a
request gets before a handler sees it; the client builds the same types and sends their
`to_wire()`; the TUI and the CLI go through the client. Adding an operation is one `Op`
member, one request type here, one handler in labq.daemon.handlers and one client method;
tests/test_protocol.py fails while any of them is missing.

Standard library only: users' scripts import it through `labq`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict, get_args, get_origin

from .errors import ValidationError
from .models import Event, Job, Node
from .spec import (
    CONTROL_CHARS,
    MAX_IDENT,
    MAX_INT,
    MAX_REASON_BYTES,
    MAX_VALUES,
    arg_error,
    check_flag,
    check_id,
    check_ids,
    check_int,
    check_name,
    check_number,
    check_plain,
    check_text,
    validate_submit,
)
from .states import JobState

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
    GROUP_SET = "group_set"
    GROUPS = "groups"
    USAGE = "usage"
    NOTIFY_SHOW = "notify_show"
    NOTIFY_SET = "notify_set"
    READ_LOG = "read_log"  # its own call: bytes cross as they are, not inside JSON
    SUBMIT_ARRAY = "submit_array"
    SUBMIT_MANY = "submit_many"
    EXPERIMENTS = "experiments"
    STAGE_BEGIN = "stage_begin"
    STAGE_PUT = "stage_put"
    RESULTS = "results"
    RESULTS_READ = "results_read"
    PURGE = "purge"


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


class Request:
    """One request of the vocabulary. A subclass is a dataclass whose fields are the request's
    arguments, by their wire names; it names its `Op` and its reply in the class line."""
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
    return REQUESTS[Op(op)]


@dataclass(frozen=True)
class PingRequest(Request, op=Op.PING, reply=PingReply):
    pass


@dataclass(frozen=True)
class WhoamiRequest(Request, op=Op.WHOAMI, reply=WhoamiReply):
    pass


# -- jobs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitRequest(Request, op=Op.SUBMIT, reply=Job):
    spec: dict[str, Any]  # labq.spec's fields; normalised by validate_submit
    unwalked = frozenset({"spec"})  # validate_submit walks it, naming the spec's own fields

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(spec=validate_submit(args.get("spec")))


@dataclass(frozen=True)
class JobRequest(Request, op=Op.JOB, reply=Job):
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args))


@dataclass(frozen=True)
class EventsRequest(Request, op=Op.EVENTS, reply=list[Event]):
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args))


@dataclass(frozen=True)
class JobsRequest(Request, op=Op.JOBS, reply=list[Job]):
    states: list[str] | None = None  # any state when None
    user: str | None = None
    limit: int | None = None  # the newest this many
    include_ended: bool = True
    with_env: bool = False  # `env` is otherwise left out of a listing
    experiment: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        states = args.get("states")
        if states is not None:
            if type(states) is not list or len(states) > 4 * len(_STATES) or any(
                    type(s) is not str or s.upper() not in _STATES for s in states):
                raise arg_error("states", "must be a list of state names: "
                                + ", ".join(_STATES))
            states = [s.upper() for s in states]
        limit = args.get("limit")
        if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_INT):
            raise arg_error("limit", "must be a positive integer")
        return cls(states=states or None, user=check_text(args, "user", MAX_IDENT),
                   limit=limit, include_ended=check_flag(args, "include_ended", True),
                   with_env=check_flag(args, "with_env", False),
                   experiment=check_text(args, "experiment", MAX_IDENT))


def _ids_or_experiment(args: dict[str, Any]) -> tuple[list[int], str | None]:
    """Jobs named by id, or every job of an experiment (the caller's; an admin's: anyone's)."""
    experiment = check_text(args, "experiment", MAX_IDENT)
    if experiment is not None:
        if args.get("ids"):
            raise arg_error("ids", "give either ids or an experiment")
        return [], experiment
    return check_ids(args), None


@dataclass(frozen=True)
class CancelRequest(Request, op=Op.CANCEL, reply=list[Job]):
    ids: list[int]
    reason: str | None = None  # shown in the job's events and the queue
    experiment: str | None = None  # instead of ids

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, reason=check_text(args, "reason", MAX_REASON_BYTES),
                   experiment=experiment)


@dataclass(frozen=True)
class _JobsByIdRequest(Request):
    """A request that names jobs, by id or by experiment, and nothing else."""
    ids: list[int]
    experiment: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, experiment=experiment)


@dataclass(frozen=True)
class HoldRequest(_JobsByIdRequest, op=Op.HOLD, reply=list[Job]):
    pass


@dataclass(frozen=True)
class ReleaseRequest(_JobsByIdRequest, op=Op.RELEASE, reply=list[Job]):
    pass


@dataclass(frozen=True)
class WaitRequest(Request, op=Op.WAIT, reply=list[Job]):
    ids: list[int]
    timeout: float = 10.0  # labqd answers after at most a minute whatever this says
    experiment: str | None = None  # instead of ids

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, timeout=check_number(args, "timeout", 10.0, 0.0, MAX_WAIT_S),
                   experiment=experiment)


@dataclass(frozen=True)
class JobPriorityRequest(Request, op=Op.JOB_PRIORITY, reply=Job):
    id: int
    priority: int  # 1-10

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args), priority=check_int(args, "priority", 1, 10))


@dataclass(frozen=True)
class ReadLogRequest(Request, op=Op.READ_LOG, reply=tuple[bytes, int, bool]):
    """Sent as read_log(id, offset, wait, max_bytes), not as JSON: see `from_args`."""
    id: int
    offset: int = 0  # negative: that many bytes before the end
    wait: float = 0.0  # seconds to wait for bytes past `offset`
    max_bytes: int = 1 << 20

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Self:
        return cls.from_args(*(args.get(f.name) for f in fields(cls)))

    @classmethod
    def from_args(cls, id_: Any, offset: Any, wait: Any, max_bytes: Any) -> Self:
        # no walk into the values: they come as RPyC arguments, where anything not a plain
        # number is a netref, so type() is looked at before anything else
        for key, v, kinds, lo, hi in (("id", id_, (int,), 1, MAX_INT),
                                      ("offset", offset, (int,), -MAX_LOG_OFFSET, MAX_LOG_OFFSET),
                                      ("wait", wait, (int, float), 0.0, MAX_WAIT_S),
                                      ("max_bytes", max_bytes, (int,), 1, MAX_INT)):
            # a bool is not a number here; NaN is never in range
            if type(v) not in kinds or not lo <= v <= hi:
                raise arg_error(key, f"read_log takes (id, offset, wait, max_bytes); {key} "
                                f"must be a{'n integer' if kinds == (int,) else ' number'} "
                                f"from {lo:g} to {hi:g}")
        return cls(id=id_, offset=offset, wait=float(wait), max_bytes=max_bytes)

    def to_args(self) -> tuple[int, int, float, int]:
        return (int(self.id), int(self.offset), float(self.wait), int(self.max_bytes))


# -- nodes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodesRequest(Request, op=Op.NODES, reply=list[Node]):
    pass


@dataclass(frozen=True)
class _NodeNamed(Request):
    name: str

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(name=check_name(args, "name", MAX_NODE_NAME))


@dataclass(frozen=True)
class NodeDrainRequest(_NodeNamed, op=Op.NODE_DRAIN, reply=NodeDict):
    """Admins: running jobs go on, no new ones start there."""


@dataclass(frozen=True)
class NodeResumeRequest(_NodeNamed, op=Op.NODE_RESUME, reply=NodeDict):
    """Admins: start jobs there again; also retries a node that refused labqd."""


@dataclass(frozen=True)
class NodeRemoveRequest(_NodeNamed, op=Op.NODE_REMOVE, reply=NodeRemovedReply):
    pass


@dataclass(frozen=True)
class NodeAddRequest(Request, op=Op.NODE_ADD, reply=NodeDict):
    """Admins: a [[node]] entry added at run time. Checked here as a request (its strings
    become paths, host names and SSH arguments); labqd checks it as config besides."""
    node: dict[str, Any]

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        entry = args.get("node")
        if type(entry) is not dict:
            raise arg_error("node", "must be a mapping like a [[node]] config entry")
        _node_texts(entry, "node")
        n = entry.get("name")
        if type(n) is str and len(n) > MAX_NODE_NAME:
            raise arg_error("node.name", f"must be at most {MAX_NODE_NAME} characters")
        return cls(node=entry)


def _node_texts(v: Any, path: str) -> None:
    if type(v) is str:
        if len(v) > MAX_NODE_TEXT or CONTROL_CHARS.search(v):
            raise ValidationError(f"{path}: must be at most {MAX_NODE_TEXT} characters "
                                  "without control characters", {"field": path})
    elif type(v) is list or type(v) is dict:
        if len(v) > MAX_NODE_ENTRIES:
            raise ValidationError(f"{path}: too many entries", {"field": path})
        k: Any  # a mapping's key (a string: the request was walked) or a list's index
        for k, x in (v.items() if type(v) is dict else enumerate(v)):
            _node_texts(x, f"{path}.{k[:64]}" if type(v) is dict else f"{path}[{k}]")


# -- fair share -------------------------------------------------------------------------------
class Unset(Enum):
    """A group setting left as it is (None clears a limit, so it cannot mean that)."""
    UNSET = "unset"


UNSET = Unset.UNSET
GROUP_SETTINGS = ("share", "max_gpus", "max_gpus_by_type", "users")


@dataclass(frozen=True)
class GroupSetRequest(Request, op=Op.GROUP_SET, reply=GroupReply):
    """Admins: change a group's fair-share weight and limits; only the settings given."""
    group: str
    share: float | Unset = UNSET
    max_gpus: int | None | Unset = UNSET  # None: no limit
    max_gpus_by_type: dict[str, int] | Unset = UNSET  # merged into the group's
    users: dict[str, float] | Unset = UNSET  # users' weights in the group, merged likewise

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        group = check_name(args, "group")
        changes = {k: args[k] for k in GROUP_SETTINGS if k in args}
        _group_entries(changes)
        return cls(group=group, **check_group_settings(changes))

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in GROUP_SETTINGS if getattr(self, k) is not UNSET}

    def to_wire(self) -> dict[str, Any]:
        return {"group": self.group, **self.changes()}


def _group_entries(changes: dict[str, Any]) -> None:
    """Bounds on the mappings, before their values are looked at."""
    for key, lo, hi, kinds in (("max_gpus_by_type", 0, MAX_GPUS_BY_TYPE, (int,)),
                               ("users", 0, MAX_GROUP_VALUE, (int, float))):
        v = changes.get(key)
        if type(v) is not dict:
            continue  # absent, or refused with its message below
        if len(v) > MAX_GROUP_ENTRIES:
            raise arg_error(key, f"more than {MAX_GROUP_ENTRIES} entries")
        for n, x in v.items():
            if not n or len(n) > MAX_IDENT or CONTROL_CHARS.search(n):
                raise arg_error(key, f"names must be 1-{MAX_IDENT} characters without control "
                               "characters")
            if type(x) not in kinds or not lo <= x <= hi:
                raise arg_error(key, f"values must be numbers from {lo} to {hi:g}")


def check_group_settings(args: dict[str, Any]) -> dict[str, Any]:
    """An admin's group change: share >= 0, limits >= 0 or None to clear."""
    out: dict[str, Any] = {}
    for key in ("share", "max_gpus"):
        if key in args:
            v = args[key]
            if v is not None and (type(v) not in (int, float) or not 0 <= v <= MAX_GROUP_VALUE
                                  or (key == "max_gpus" and type(v) is not int)):
                raise arg_error(key, f"must be a non-negative "
                               f"{'integer' if key == 'max_gpus' else 'number'}")
            out[key] = v
    for key, kinds in (("max_gpus_by_type", (int,)), ("users", (int, float))):
        if key in args:
            v = args[key]
            if type(v) is not dict or any(type(k) is not str or type(x) not in kinds
                                          or not 0 <= x <= MAX_GROUP_VALUE
                                          for k, x in v.items()):
                raise arg_error(key, "must map names to numbers from 0 to 1e9")
            out[key] = dict(v)
    if not out:
        raise ValidationError("nothing to change: give share, max_gpus, max_gpus_by_type or "
                              "users", {"field": "share"})
    return out


@dataclass(frozen=True)
class GroupsRequest(Request, op=Op.GROUPS, reply=list[GroupReply]):
    pass


@dataclass(frozen=True)
class UsageRequest(Request, op=Op.USAGE, reply=UsageReply):
    days: float = 30  # GPU-hours over the last this many days

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        v = args.get("days", 30)
        if type(v) not in (int, float) or not 0 < v <= MAX_DAYS:
            raise arg_error("days", f"must be a number of days above 0 and at most {MAX_DAYS}")
        return cls(days=v)


# -- notifications ----------------------------------------------------------------------------
NOTIFY_CHANNELS = ("webhook", "mail")  # the ones a user sets; the admin's command is not theirs
MAX_URL = 2048
MAX_MAIL = 254  # RFC 5321's longest path
_MAIL = re.compile(r"[^@\s\x00-\x1f\x7f<>(),;:\"\[\]]+@[A-Za-z0-9.-]+")


@dataclass(frozen=True)
class NotifyShowRequest(Request, op=Op.NOTIFY_SHOW, reply=NotifySettingsReply):
    """One's own notification settings; admins may name another user."""
    user: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(user=check_text(args, "user", MAX_IDENT))


@dataclass(frozen=True)
class NotifySetRequest(Request, op=Op.NOTIFY_SET, reply=NotifySettingsReply):
    """Set or clear (value None) where one's notifications go; admins may name another user.
    Which webhook hosts are allowed is labqd's config, so labqd checks that part."""
    channel: str
    value: str | None = None
    user: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        channel = args.get("channel")
        if type(channel) is not str or channel not in NOTIFY_CHANNELS:
            raise arg_error("channel", f"must be one of {', '.join(NOTIFY_CHANNELS)}")
        limit = MAX_URL if channel == "webhook" else MAX_MAIL
        value = check_text(args, "value", limit)
        if value is not None:
            if " " in value:
                raise arg_error("value", "must not hold spaces")
            if channel == "webhook":
                check_webhook_url(value)
            elif not _MAIL.fullmatch(value):
                raise arg_error("value", f"{value[:80]!r} is not a mail address like "
                                "name@example.org")
        return cls(channel=channel, value=value or None,
                   user=check_text(args, "user", MAX_IDENT))


def check_webhook_url(url: str) -> str:
    """The URL's host, lower case, if it is an http(s) URL with one; else ValidationError."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a port out of range
    except ValueError as e:
        raise arg_error("value", f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise arg_error("value", "a webhook must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise arg_error("value", "a webhook URL must not carry a user name or password")
    return host.lower()


# the requests of staged files and results, of arrays, sweeps, batches and experiments,
# registered with the others
from .protocol_files import PurgeReply as PurgeReply  # noqa: E402
from .protocol_files import PurgeRequest as PurgeRequest  # noqa: E402
from .protocol_files import ResultsReadRequest as ResultsReadRequest  # noqa: E402
from .protocol_files import ResultsReply as ResultsReply  # noqa: E402
from .protocol_files import ResultsRequest as ResultsRequest  # noqa: E402
from .protocol_files import StageBeginRequest as StageBeginRequest  # noqa: E402
from .protocol_files import StagePutRequest as StagePutRequest  # noqa: E402
from .protocol_files import StageReply as StageReply  # noqa: E402
from .protocol_workflows import (  # noqa: E402
    ExperimentReply as ExperimentReply,
)
from .protocol_workflows import (  # noqa: E402
    ExperimentsRequest as ExperimentsRequest,
)
from .protocol_workflows import (  # noqa: E402
    SubmitArrayRequest as SubmitArrayRequest,
)
from .protocol_workflows import (  # noqa: E402
    SubmitManyRequest as SubmitManyRequest,
)
