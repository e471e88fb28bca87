"""The RPyC service: thin. Identity from the socket, then one handler per request.

Only `exposed_` methods exist; arguments are checked to be plain values (never netrefs) and
every result crosses as JSON text or a tuple of bytes and numbers.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import rpyc

from labq.errors import InternalError, LabqError, RateLimited, ValidationError

from .core import Core
from .identity import Caller, caller_for_uid, peer_uid

log = logging.getLogger("labqd.service")

PROTOCOL_CONFIG = {
    "allow_public_attrs": False, "allow_all_attrs": False, "allow_pickle": False,
    "allow_getattr": True, "allow_setattr": False, "allow_delattr": False,
    "allow_exposed_attrs": True, "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False, "include_local_traceback": False,
    "sync_request_timeout": 60,
}


def _ids(args: dict) -> list[int]:
    ids = args.get("ids")
    if type(ids) is not list or not ids or any(type(i) is not int for i in ids):
        raise ValidationError("ids: must be a non-empty list of job ids", {"field": "ids"})
    return ids


def _opt_str(args: dict, key: str) -> str | None:
    v = args.get(key)
    if v is not None and type(v) is not str:
        raise ValidationError(f"{key}: must be a string", {"field": key})
    return v


def _num(args: dict, key: str, default: float) -> float:
    v = args.get(key, default)
    if type(v) not in (int, float):
        raise ValidationError(f"{key}: must be a number", {"field": key})
    return float(v)


class LabqService(rpyc.Service):
    def __init__(self, core: Core):
        self.core = core
        self.caller: Caller | None = None
        self.handlers: dict[str, Callable[[dict], Any]] = {
            "ping": lambda a: {"time": time.time(), "pid": core.pid(),
                               "cluster": core.store.cluster_id},
            "whoami": lambda a: {"user": self.caller.user, "uid": self.caller.uid,
                                 "group": self.caller.group, "admin": self.caller.admin,
                                 "groups": sorted(self.caller.groups)},
            "submit": lambda a: core.view(self.caller, core.submit(self.caller, a.get("spec"))),
            "job": lambda a: core.view(self.caller, core.job_row(a.get("id"))),
            "jobs": self._jobs,
            "events": lambda a: core.events(self.caller, core.job_row(a.get("id"))["id"]),
            "cancel": lambda a: core.cancel(self.caller, _ids(a), _opt_str(a, "reason")),
            "hold": lambda a: core.hold(self.caller, _ids(a)),
            "release": lambda a: core.release(self.caller, _ids(a)),
            "wait": lambda a: core.wait(self.caller, _ids(a), _num(a, "timeout", 10.0)),
            "nodes": lambda a: core.node_list(),
            "node_drain": lambda a: core.set_drain(self.caller, a.get("name"), True),
            "node_resume": lambda a: core.set_drain(self.caller, a.get("name"), False),
            "node_add": lambda a: core.node_add(self.caller, a.get("node")),
            "node_remove": lambda a: core.node_remove(self.caller, a.get("name")),
            "job_priority": lambda a: core.set_priority(self.caller, a.get("id"),
                                                        a.get("priority")),
            "group_set": lambda a: core.set_group(self.caller, a.get("group"),
                                                  {k: v for k, v in a.items() if k != "group"}),
            "groups": lambda a: core.groups(),
            "usage": lambda a: core.usage(self.caller, a.get("days", 30)),
        }

    def on_connect(self, conn) -> None:
        uid = peer_uid(conn._channel.stream.sock)
        self.caller = caller_for_uid(uid, self.core.cfg.admin_group)

    def _jobs(self, a: dict) -> list[dict]:
        states = a.get("states")
        if states is not None and (type(states) is not list or
                                   any(type(s) is not str for s in states)):
            raise ValidationError("states: must be a list of state names", {"field": "states"})
        limit = a.get("limit")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValidationError("limit: must be a positive integer", {"field": "limit"})
        return self.core.jobs(self.caller, states=[s.upper() for s in states or []] or None,
                              user=_opt_str(a, "user"), limit=limit,
                              include_ended=bool(a.get("include_ended", True)),
                              with_env=a.get("with_env") is True)

    def exposed_call(self, op, args_json):
        if type(op) is not str or type(args_json) is not str:
            return json.dumps({"ok": False, "error": ValidationError(
                "requests are (name, JSON text)").to_wire()})
        try:
            args = json.loads(args_json)
            if type(args) is not dict:
                raise ValidationError("arguments must be a JSON object")
            handler = self.handlers.get(op)
            if handler is None:
                raise ValidationError(f"unknown request {op!r}", {"op": op})
            result = handler(args)
            return json.dumps({"ok": True, "result": result})
        except LabqError as e:
            return json.dumps({"ok": False, "error": e.to_wire()})
        except json.JSONDecodeError as e:
            return json.dumps({"ok": False, "error": ValidationError(f"bad JSON: {e}").to_wire()})
        except Exception:
            log.exception("request %s failed", op)
            return json.dumps({"ok": False, "error": InternalError(
                f"labqd failed on {op}; see its log").to_wire()})

    def exposed_read_log(self, job_id, offset, wait, max_bytes):
        try:
            if type(job_id) is not int or type(offset) is not int or \
                    type(wait) not in (int, float) or type(max_bytes) is not int:
                raise ValidationError("read_log takes (id, offset, wait, max_bytes) numbers")
            data, new_offset, done = self.core.read_log(self.caller, job_id, offset,
                                                        float(wait), max_bytes)
            return (data, new_offset, done, "")
        except LabqError as e:
            return (b"", offset if type(offset) is int else 0, False, json.dumps(e.to_wire()))
        except Exception:
            log.exception("read_log failed")
            return (b"", 0, False, json.dumps(InternalError("labqd failed reading the log")
                                              .to_wire()))


class RefusingService(rpyc.Service):
    """What a connection over its user's limit talks to: every request gets RATE_LIMITED."""

    def __init__(self, why: str):
        self.why = why

    def exposed_call(self, op, args_json):
        return json.dumps({"ok": False, "error": RateLimited(self.why).to_wire()})

    def exposed_read_log(self, job_id, offset, wait, max_bytes):
        return (b"", 0, False, json.dumps(RateLimited(self.why).to_wire()))
