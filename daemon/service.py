"""The RPyC service: thin. Identity from the socket, then one handler per request.

Only `exposed_` methods exist; arguments are checked to be plain values (never netrefs) and
every result crosses as JSON text or a tuple of bytes and numbers.
"""
from __future__ import annotations

import json
import os
import logging
import time
from typing import Any, Callable

import rpyc

from labq.errors import InternalError, LabqError, RateLimited, ValidationError
from labq.spec import (CONTROL_CHARS, MAX_IDENT, MAX_IDS, MAX_INT, MAX_MEMORY_MB,
                       MAX_REASON_BYTES, MAX_REQUEST_CHARS, MAX_VALUES, check_plain,
                       utf8_len)
from labq.states import JobState

from .config import ConfigError
from .core import Core
from .registry import NodeRegistry
from .identity import Caller, caller_for_uid, peer_uid

log = logging.getLogger("labqd.service")

PROTOCOL_CONFIG = {
    "allow_public_attrs": False, "allow_all_attrs": False, "allow_pickle": False,
    "allow_getattr": True, "allow_setattr": False, "allow_delattr": False,
    "allow_exposed_attrs": True, "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False, "include_local_traceback": False,
    "sync_request_timeout": 60,
}


# what each request reads; anything else in its arguments is ignored, never looked into
ARGS: dict[str, tuple[str, ...]] = {
    "ping": (), "whoami": (), "nodes": (), "groups": (),
    "submit": ("spec",), "job": ("id",), "events": ("id",),
    "jobs": ("states", "user", "limit", "include_ended", "with_env"),
    "cancel": ("ids", "reason"), "hold": ("ids",), "release": ("ids",),
    "wait": ("ids", "timeout"),
    "node_drain": ("name",), "node_resume": ("name",), "node_remove": ("name",),
    "node_add": ("node",),
    "job_priority": ("id", "priority"),
    "group_set": ("group", "share", "max_gpus", "max_gpus_by_type", "users"),
    "usage": ("days",),
}
MAX_OP = 64
MAX_NODE_NAME = 255  # a host name
MAX_NODE_TEXT = 4096  # paths and the like in a node entry
MAX_WAIT_S = 86400.0  # labqd waits at most a minute per call; a day is plainly a mistake
MAX_GROUP_ENTRIES = 4096  # users or GPU types in one group change
# past any log labqd keeps, and below where file systems refuse to seek (16 TiB on ext4)
MAX_LOG_OFFSET = 1 << 40
_STATES = frozenset(s.value for s in JobState)


def _bad(key: str, message: str) -> ValidationError:
    return ValidationError(f"{key}: {message}", {"field": key})


def _id(args: dict, key: str = "id") -> int:
    v = args.get(key)
    if type(v) is not int or not 1 <= v <= MAX_INT:
        raise _bad(key, "must be a job id (a positive integer)")
    return v


def _ids(args: dict) -> list[int]:
    ids = args.get("ids")
    if type(ids) is not list or not ids:
        raise _bad("ids", "must be a non-empty list of job ids")
    if len(ids) > MAX_IDS:
        raise _bad("ids", f"at most {MAX_IDS} job ids per request")
    if any(type(i) is not int or not 1 <= i <= MAX_INT for i in ids):
        raise _bad("ids", "must be a non-empty list of job ids")
    return list(dict.fromkeys(ids))  # each job once, in the order given


def _opt_text(args: dict, key: str, limit: int, *, what: str = "a string") -> str | None:
    """A string of at most `limit` UTF-8 bytes, free of control characters: these end up in
    other people's terminals (queue listings, event histories)."""
    v = args.get(key)
    if v is None:
        return None
    if type(v) is not str:
        raise _bad(key, f"must be {what}")
    if utf8_len(key, v) > limit:
        raise _bad(key, f"is longer than {limit} bytes")
    if CONTROL_CHARS.search(v):
        raise _bad(key, "must not contain control characters")
    return v


def _name(args: dict, key: str, limit: int = MAX_IDENT) -> str:
    v = _opt_text(args, key, limit, what="a name")
    if not v:
        raise _bad(key, "must be a name")
    return v


def _number(args: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = args.get(key, default)
    if type(v) not in (int, float) or not lo <= v <= hi:  # NaN is never in range
        raise _bad(key, f"must be a number from {lo:g} to {hi:g}")
    return float(v)


def _days(args: dict) -> float:
    v = args.get("days", 30)
    if type(v) not in (int, float) or not 0 < v <= 3660:
        raise _bad("days", "must be a number of days above 0 and at most 3660")
    return v


def _int(args: dict, key: str, lo: int, hi: int) -> int:
    v = args.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(key, f"must be an integer from {lo} to {hi}")
    return v


def _flag(args: dict, key: str, default: bool) -> bool:
    v = args.get(key)
    if v is None:
        return default
    if type(v) is not bool:
        raise _bad(key, "must be true or false")
    return v


def _node_entry(args: dict) -> dict:
    """A [[node]] entry an admin adds at run time, checked as the config file's are and
    bounded as a request: its strings become paths, host names and SSH arguments."""
    entry = args.get("node")
    if type(entry) is not dict:
        raise _bad("node", "must be a mapping like a [[node]] config entry")

    def texts(v, path):
        if type(v) is str:
            if len(v) > MAX_NODE_TEXT or CONTROL_CHARS.search(v):
                raise ValidationError(f"{path}: must be at most {MAX_NODE_TEXT} characters "
                                      "without control characters", {"field": path})
        elif type(v) is list or type(v) is dict:
            if len(v) > 1024:
                raise ValidationError(f"{path}: too many entries", {"field": path})
            for k, x in (v.items() if type(v) is dict else enumerate(v)):
                texts(x, f"{path}.{k[:64]}" if type(v) is dict else f"{path}[{k}]")
    texts(entry, "node")
    name = entry.get("name")
    if type(name) is str and len(name) > MAX_NODE_NAME:
        raise _bad("node.name", f"must be at most {MAX_NODE_NAME} characters")
    try:
        ncfg = NodeRegistry.dynamic_node_config(entry)
    except ConfigError as e:  # its message quotes the entry: keep a long one short
        raise ValidationError(str(e)[:500], {"field": e.path[:200]}) from None
    if ncfg.memory_mb is not None and not 0 <= ncfg.memory_mb <= MAX_MEMORY_MB:
        raise _bad("node.memory", f"must be at most {MAX_MEMORY_MB} MiB")
    return entry


def _group_changes(args: dict) -> dict:
    changes = {k: args[k] for k in ("share", "max_gpus", "max_gpus_by_type", "users")
               if k in args}
    for key, lo, hi, kinds in (("max_gpus_by_type", 0, 1 << 20, (int,)),
                               ("users", 0, 1e9, (int, float))):
        v = changes.get(key)
        if type(v) is not dict:
            continue  # absent, or refused with its message by the group check
        if len(v) > MAX_GROUP_ENTRIES:
            raise _bad(key, f"more than {MAX_GROUP_ENTRIES} entries")
        for name, x in v.items():
            if not name or len(name) > MAX_IDENT or CONTROL_CHARS.search(name):
                raise _bad(key, f"names must be 1-{MAX_IDENT} characters without control "
                                "characters")
            if type(x) not in kinds or not lo <= x <= hi:
                raise _bad(key, f"values must be numbers from {lo} to {hi:g}")
    return changes


class LabqService(rpyc.Service):
    def __init__(self, core: Core):
        self.core = core
        self.caller: Caller | None = None
        self.handlers: dict[str, Callable[[dict], Any]] = {
            "ping": lambda a: {"time": time.time(), "pid": os.getpid(),
                               "cluster": core.store.cluster_id},
            "whoami": lambda a: {"user": self.caller.user, "uid": self.caller.uid,
                                 "group": self.caller.group, "admin": self.caller.admin,
                                 "groups": sorted(self.caller.groups)},
            "submit": lambda a: core.jobs.view(self.caller, core.jobs.submit(self.caller, a.get("spec"))),
            "job": lambda a: core.jobs.view(self.caller, core.jobs.job_row(_id(a))),
            "jobs": self._jobs,
            "events": lambda a: core.jobs.events(self.caller, core.jobs.job_row(_id(a))["id"]),
            "cancel": lambda a: core.jobs.cancel(self.caller, _ids(a),
                                            _opt_text(a, "reason", MAX_REASON_BYTES)),
            "hold": lambda a: core.jobs.hold(self.caller, _ids(a)),
            "release": lambda a: core.jobs.release(self.caller, _ids(a)),
            "wait": lambda a: core.jobs.wait(self.caller, _ids(a),
                                        _number(a, "timeout", 10.0, 0.0, MAX_WAIT_S)),
            "nodes": lambda a: core.nodes.node_list(),
            "node_drain": lambda a: core.nodes.set_drain(self.caller, _name(a, "name", MAX_NODE_NAME),
                                                   True),
            "node_resume": lambda a: core.nodes.set_drain(self.caller,
                                                    _name(a, "name", MAX_NODE_NAME), False),
            "node_add": lambda a: core.nodes.node_add(self.caller, _node_entry(a)),
            "node_remove": lambda a: core.nodes.node_remove(self.caller,
                                                      _name(a, "name", MAX_NODE_NAME)),
            "job_priority": lambda a: core.jobs.set_priority(self.caller, _id(a),
                                                        _int(a, "priority", 1, 10)),
            "group_set": lambda a: core.fair.set_group(self.caller, _name(a, "group"),
                                                  _group_changes(a)),
            "groups": lambda a: core.fair.groups(),
            "usage": lambda a: core.fair.usage(self.caller, _days(a)),
        }

    def on_connect(self, conn) -> None:
        uid = peer_uid(conn._channel.stream.sock)
        self.caller = caller_for_uid(uid, self.core.cfg.admin_group)

    def _jobs(self, a: dict) -> list[dict]:
        states = a.get("states")
        if states is not None:
            if type(states) is not list or len(states) > 4 * len(_STATES) or any(
                    type(s) is not str or s.upper() not in _STATES for s in states):
                raise _bad("states", "must be a list of state names: "
                           + ", ".join(s.value for s in JobState))
            states = [s.upper() for s in states]
        limit = a.get("limit")
        if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_INT):
            raise _bad("limit", "must be a positive integer")
        return self.core.jobs.list_jobs(self.caller, states=states or None,
                              user=_opt_text(a, "user", MAX_IDENT), limit=limit,
                              include_ended=_flag(a, "include_ended", True),
                              with_env=_flag(a, "with_env", False))

    def exposed_call(self, op, args_json):
        if type(op) is not str or type(args_json) is not str:
            return json.dumps({"ok": False, "error": ValidationError(
                "requests are (name, JSON text)",
                {"field": "op" if type(op) is not str else "args_json"}).to_wire()})
        name = op if len(op) <= MAX_OP else op[:MAX_OP] + "..."
        try:
            handler = self.handlers.get(op)
            if handler is None:
                raise ValidationError(f"unknown request {name!r}", {"field": "op", "op": name})
            args = _parse(args_json)
            known = {k: args[k] for k in ARGS[op] if k in args}
            budget = [MAX_VALUES]
            for key, value in known.items():
                if key != "spec":  # a submit's fields are checked, and named, by the spec
                    check_plain(value, key, budget)
            result = handler(known)
            return json.dumps({"ok": True, "result": result})
        except LabqError as e:
            return json.dumps({"ok": False, "error": e.to_wire()})
        except (RecursionError, OverflowError, UnicodeError) as e:
            # a value the checks above should have refused: still the caller's error, but
            # worth a line in the log so the check can be added
            log.warning("request %r: %s slipped past validation", name, type(e).__name__)
            return json.dumps({"ok": False, "error": ValidationError(
                f"a value in this request is out of range or not valid text "
                f"({type(e).__name__})").to_wire()})
        except Exception:
            log.exception("request %r failed", name)
            return json.dumps({"ok": False, "error": InternalError(
                f"labqd failed on {name!r}; see its log").to_wire()})

    def exposed_read_log(self, job_id, offset, wait, max_bytes):
        try:
            for key, v, kinds, lo, hi in (("id", job_id, (int,), 1, MAX_INT),
                                          ("offset", offset, (int,), -MAX_LOG_OFFSET, MAX_LOG_OFFSET),
                                          ("wait", wait, (int, float), 0.0, MAX_WAIT_S),
                                          ("max_bytes", max_bytes, (int,), 1, MAX_INT)):
                # type() first: a netref is never compared, and a bool is not a number here
                if type(v) not in kinds or not lo <= v <= hi:  # NaN is never in range
                    raise _bad(key, f"read_log takes (id, offset, wait, max_bytes); {key} must "
                               f"be a{'n integer' if kinds == (int,) else ' number'} from "
                               f"{lo:g} to {hi:g}")
            data, new_offset, done = self.core.jobs.read_log(self.caller, job_id, offset,
                                                        float(wait), max_bytes)
            return (data, new_offset, done, "")
        except LabqError as e:
            ok_offset = type(offset) is int and -MAX_LOG_OFFSET <= offset <= MAX_LOG_OFFSET
            return (b"", offset if ok_offset else 0, False, json.dumps(e.to_wire()))
        except (RecursionError, OverflowError, UnicodeError) as e:
            log.warning("read_log: %s slipped past validation", type(e).__name__)
            return (b"", 0, False, json.dumps(ValidationError(
                f"a value in this request is out of range ({type(e).__name__})").to_wire()))
        except Exception:
            log.exception("read_log failed")
            return (b"", 0, False, json.dumps(InternalError("labqd failed reading the log")
                                              .to_wire()))


def _parse(args_json: str) -> dict:
    # refused before parsing: the text alone can cost the daemon memory and time
    if len(args_json) > MAX_REQUEST_CHARS:
        raise ValidationError(f"the request is larger than {MAX_REQUEST_CHARS} characters",
                              {"field": "args_json"})
    try:
        args = json.loads(args_json)
    except RecursionError:
        raise ValidationError("bad JSON: nested too deeply", {"field": "args_json"}) from None
    except ValueError as e:  # JSONDecodeError, and integers of more than 4300 digits
        raise ValidationError(f"bad JSON: {e}", {"field": "args_json"}) from None
    if type(args) is not dict:
        raise ValidationError("arguments must be a JSON object", {"field": "args_json"})
    return args


class RefusingService(rpyc.Service):
    """What a connection over its user's limit talks to: every request gets RATE_LIMITED."""

    def __init__(self, why: str):
        self.why = why

    def exposed_call(self, op, args_json):
        return json.dumps({"ok": False, "error": RateLimited(self.why).to_wire()})

    def exposed_read_log(self, job_id, offset, wait, max_bytes):
        return (b"", 0, False, json.dumps(RateLimited(self.why).to_wire()))
