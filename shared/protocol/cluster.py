"""Requests about the cluster: nodes and their administration, fair-share groups, usage."""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Self

from ..errors import ValidationError
from ..models import Node
from ..spec import CONTROL_CHARS, MAX_IDENT
from .args import arg_error, check_name

if TYPE_CHECKING:
    pass

from .base import (
    MAX_DAYS,
    MAX_GPUS_BY_TYPE,
    MAX_GROUP_ENTRIES,
    MAX_GROUP_VALUE,
    MAX_NODE_ENTRIES,
    MAX_NODE_NAME,
    MAX_NODE_TEXT,
    GroupReply,
    NodeDict,
    NodeRemovedReply,
    Op,
    Request,
    UsageReply,
)


# -- nodes ------------------------------------------------------------------------------------
class NodesRequest(Request, op=Op.NODES, reply=list[Node]):
    pass


class _NodeNamed(Request):
    name: str

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(name=check_name(args, "name", MAX_NODE_NAME))


class NodeDrainRequest(_NodeNamed, op=Op.NODE_DRAIN, reply=NodeDict):
    """Admins: running jobs go on, no new ones start there."""


class NodeResumeRequest(_NodeNamed, op=Op.NODE_RESUME, reply=NodeDict):
    """Admins: start jobs there again; also retries a node that refused labqd."""


class NodeRemoveRequest(_NodeNamed, op=Op.NODE_REMOVE, reply=NodeRemovedReply):
    pass


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


class GroupsRequest(Request, op=Op.GROUPS, reply=list[GroupReply]):
    pass


USAGE_BUCKETS = ("day", "hour")
MAX_HOURLY_DAYS = 31  # hour buckets: a month of them is 744 per group


class UsageRequest(Request, op=Op.USAGE, reply=UsageReply):
    days: float = 30  # GPU-hours over the last this many days
    bucket: str = "day"  # the series' buckets: local days, or hours

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        v = args.get("days", 30)
        if type(v) not in (int, float) or not 0 < v <= MAX_DAYS:
            raise arg_error("days", f"must be a number of days above 0 and at most {MAX_DAYS}")
        bucket = args.get("bucket", "day")
        if bucket not in USAGE_BUCKETS:
            raise arg_error("bucket", "must be 'day' or 'hour'")
        if bucket == "hour" and v > MAX_HOURLY_DAYS:
            raise arg_error("days", f"hour buckets cover at most {MAX_HOURLY_DAYS} days")
        return cls(days=v, bucket=bucket)
