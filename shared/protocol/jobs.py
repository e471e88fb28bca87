"""Requests about jobs: submit, list, show, cancel, hold, release, wait, priority, time
limit, logs."""
from __future__ import annotations

import struct
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ..models import Event, Job
from ..spec import MAX_IDENT, MAX_INT, MAX_NODES, MAX_REASON_BYTES, MAX_TIME_S, validate_submit
from .args import arg_error, check_flag, check_id, check_ids, check_int, check_number, check_text

if TYPE_CHECKING:
    pass

from .base import _STATES, MAX_LOG_OFFSET, MAX_WAIT_S, Op, Request


# -- jobs -------------------------------------------------------------------------------------
class SubmitRequest(Request, op=Op.SUBMIT, reply=Job):
    spec: dict[str, Any]  # labq.spec's fields; normalised by validate_submit
    # false: the reply leaves out the environment, which the caller sent and labqd keeps
    # as it was sent (it is most of a reply's bytes)
    echo_env: bool = True
    unwalked = frozenset({"spec"})  # validate_submit walks it, naming the spec's own fields

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(spec=validate_submit(args.get("spec")),
                   echo_env=check_flag(args, "echo_env", True))


class JobRequest(Request, op=Op.JOB, reply=Job):
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args))


class EventsRequest(Request, op=Op.EVENTS, reply=list[Event]):
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args))


class JobsRequest(Request, op=Op.JOBS, reply=list[Job]):
    """One page of jobs. With `after_id`: the first `limit` past that id, oldest first (pass
    the last id of a page to get the next). With `changed_since`: the jobs that changed after
    that change counter (a Job's `seq`), in the order they changed. With neither: the newest
    `limit`, oldest first. Filters narrow any of them; each is one field here, listed in
    FILTERS with the column it matches."""
    states: list[str] | None = None  # any state when None
    user: str | None = None
    limit: int | None = None
    after_id: int | None = None
    changed_since: int | None = None
    include_ended: bool = True
    with_env: bool = False  # `env` is otherwise left out of a listing
    experiment: str | None = None
    # field -> the job column it matches: a filter is one field above and one entry here
    FILTERS: ClassVar[dict[str, str]] = {"user": "owner", "experiment": "experiment"}

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        states = args.get("states")
        if states is not None:
            if type(states) is not list or len(states) > 4 * len(_STATES) or any(
                    type(s) is not str or s.upper() not in _STATES for s in states):
                raise arg_error("states", "must be a list of state names: "
                                + ", ".join(_STATES))
            states = list(dict.fromkeys(s.upper() for s in states))
        counts = {}
        for key, lo in (("limit", 1), ("after_id", 0), ("changed_since", 0)):
            v = args.get(key)
            if v is not None and (type(v) is not int or not lo <= v <= MAX_INT):
                raise arg_error(key, "must be a positive integer" if lo else
                                "must be an integer of 0 or more")
            counts[key] = v
        if counts["after_id"] is not None and counts["changed_since"] is not None:
            raise arg_error("after_id", "give after_id or changed_since, not both")
        return cls(states=states or None, user=check_text(args, "user", MAX_IDENT),
                   include_ended=check_flag(args, "include_ended", True),
                   with_env=check_flag(args, "with_env", False),
                   experiment=check_text(args, "experiment", MAX_IDENT), **counts)

    def filters(self) -> dict[str, Any]:
        """The filters given, by the column each matches."""
        return {col: getattr(self, f) for f, col in self.FILTERS.items()
                if getattr(self, f) is not None}


def _ids_or_experiment(args: dict[str, Any]) -> tuple[list[int], str | None]:
    """Jobs named by id, or every job of an experiment (the caller's; an admin's: anyone's)."""
    experiment = check_text(args, "experiment", MAX_IDENT)
    if experiment is not None:
        if args.get("ids"):
            raise arg_error("ids", "give either ids or an experiment")
        return [], experiment
    return check_ids(args), None


class CancelRequest(Request, op=Op.CANCEL, reply=list[Job]):
    ids: list[int]
    reason: str | None = None  # shown in the job's events and the queue
    experiment: str | None = None  # instead of ids
    # wait a moment for running jobs to end, so the reply shows them ended; one who follows
    # the job's output to its end anyway (`labq run` on Ctrl-C) passes False
    wait: bool = True

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, reason=check_text(args, "reason", MAX_REASON_BYTES),
                   experiment=experiment, wait=check_flag(args, "wait", True))


class _JobsByIdRequest(Request):
    """A request that names jobs, by id or by experiment, and nothing else."""
    ids: list[int]
    experiment: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, experiment=experiment)


class HoldRequest(_JobsByIdRequest, op=Op.HOLD, reply=list[Job]):
    pass


class ReleaseRequest(_JobsByIdRequest, op=Op.RELEASE, reply=list[Job]):
    pass


class WaitRequest(Request, op=Op.WAIT, reply=list[Job]):
    ids: list[int]
    timeout: float = 10.0  # labqd answers after at most a minute whatever this says
    experiment: str | None = None  # instead of ids

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids, experiment = _ids_or_experiment(args)
        return cls(ids=ids, timeout=check_number(args, "timeout", 10.0, 0.0, MAX_WAIT_S),
                   experiment=experiment)


class JobPriorityRequest(Request, op=Op.JOB_PRIORITY, reply=Job):
    id: int
    priority: int  # 1-10

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args), priority=check_int(args, "priority", 1, 10))


class JobTimeLimitRequest(Request, op=Op.JOB_TIME_LIMIT, reply=Job):
    """A waiting job's new time limit; its owner may only lower it."""
    id: int
    time_limit_s: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args), time_limit_s=check_int(args, "time_limit_s", 1, MAX_TIME_S))


class ReadLogRequest(Request, op=Op.READ_LOG, reply=tuple[bytes, int, bool]):
    """Sent as read_log(id, offset, wait, max_bytes[, streams[, part]]), not as JSON: see
    `from_args`. The reply is (data, offset, done, error), and with `streams` a fifth element:
    where in `data` the job's stderr is, as `pack_spans` packs it (older labqd takes four
    arguments and older clients read four elements, so the fifth is asked for). `part` is a
    gang's part; it goes only when not 0, so a labqd that knows no parts serves the rest."""
    id: int
    offset: int = 0  # negative: that many bytes before the end
    wait: float = 0.0  # seconds to wait for bytes past `offset`
    max_bytes: int = 1 << 20
    streams: bool = False
    part: int = 0  # a gang's part (its node rank); 0 is the job's own log

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Self:
        return cls.from_args(*(args.get(f.name) for f in fields(cls)))

    @classmethod
    def from_args(cls, id_: Any, offset: Any, wait: Any, max_bytes: Any,
                  streams: Any = False, part: Any = 0) -> Self:
        if part is None:
            part = 0
        # no walk into the values: they come as RPyC arguments, where anything not a plain
        # number is a netref, so type() is looked at before anything else
        for key, v, kinds, lo, hi in (("id", id_, (int,), 1, MAX_INT),
                                      ("offset", offset, (int,), -MAX_LOG_OFFSET, MAX_LOG_OFFSET),
                                      ("wait", wait, (int, float), 0.0, MAX_WAIT_S),
                                      ("max_bytes", max_bytes, (int,), 1, MAX_INT),
                                      ("part", part, (int,), 0, MAX_NODES - 1)):
            # a bool is not a number here; NaN is never in range
            if type(v) not in kinds or not lo <= v <= hi:
                raise arg_error(key, "read_log takes (id, offset, wait, max_bytes, streams, "
                                f"part); {key} must be a"
                                f"{'n integer' if kinds == (int,) else ' number'} "
                                f"from {lo:g} to {hi:g}")
        if streams is None:
            streams = False
        if type(streams) is not bool:
            raise arg_error("streams", "read_log's fifth argument, streams, must be true or "
                                       "false")
        return cls(id=id_, offset=offset, wait=float(wait), max_bytes=max_bytes,
                   streams=streams, part=part)

    def to_args(self) -> tuple[Any, ...]:
        args = (int(self.id), int(self.offset), float(self.wait), int(self.max_bytes))
        if self.part:
            return (*args, self.streams, int(self.part))
        return args + (True,) if self.streams else args


SPAN = struct.Struct("!LL")


def pack_spans(spans: list[tuple[int, int]]) -> bytes:
    """(start, end) pairs, relative to a read_log reply's data, as the reply carries them."""
    return b"".join(SPAN.pack(s, e) for s, e in spans)


def unpack_spans(packed: bytes, size: int) -> list[tuple[int, int]]:
    """The pairs `pack_spans` packed, kept only where they lie within `size` bytes, in order
    and apart."""
    out: list[tuple[int, int]] = []
    last = 0
    for s, e in SPAN.iter_unpack(packed[:len(packed) - len(packed) % SPAN.size]):
        if last <= s < e <= size:
            out.append((s, e))
            last = e
    return out
