"""The RPyC service: thin. Identity from the socket; each request parsed into its type by
labq.protocol, which refuses what is not valid; then its one handler (labq.daemon.handlers).

Only `exposed_` methods exist; arguments are checked to be plain values (never netrefs) and
every result crosses as JSON text or a tuple of bytes and numbers.
"""
from __future__ import annotations

import json
import logging
import time

import rpyc

from labq import __version__
from labq.errors import InternalError, LabqError, RateLimited, ValidationError
from labq.protocol import (
    MAX_LOG_OFFSET,
    MAX_OP,
    Op,
    ReadLogRequest,
    check_protocol,
    pack_spans,
    request_type,
)
from labq.spec import MAX_REQUEST_CHARS

from .core import Core
from .handlers import HANDLERS
from .identity import Caller, caller_for_uid, peer_uid

log = logging.getLogger("labqd.service")

PROTOCOL_CONFIG = {
    "allow_public_attrs": False, "allow_all_attrs": False, "allow_pickle": False,
    "allow_getattr": True, "allow_setattr": False, "allow_delattr": False,
    "allow_exposed_attrs": True, "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False, "include_local_traceback": False,
    "sync_request_timeout": 60,
    # labq.wire, the client's side, speaks the protocol without thread binding
    "bind_threads": False,
}


class LabqService(rpyc.Service):
    """`caller` and `token_id` come from the TLS listener, which knows the caller by their
    token; on the unix socket the caller is the socket's peer."""

    def __init__(self, core: Core, caller: Caller | None = None, token_id: int | None = None):
        self.core = core
        self.caller = caller
        self.token_id = token_id

    def on_connect(self, conn) -> None:
        if self.caller is None:
            uid = peer_uid(conn._channel.stream.sock)
            self.caller = caller_for_uid(uid, self.core.cfg.admin_group)

    def _still_valid(self) -> None:
        # a token revoked or expired while its connection is open stops working at once
        if self.token_id is not None:
            self.core.tokens.check(self.token_id)

    def exposed_call(self, op, args_json):
        if type(op) is not str or type(args_json) is not str:
            return json.dumps({"ok": False, "error": ValidationError(
                "requests are (name, JSON text)",
                {"field": "op" if type(op) is not str else "args_json"}).to_wire()})
        name = op if len(op) <= MAX_OP else op[:MAX_OP] + "..."
        started = time.monotonic()
        kind = None
        try:
            self._still_valid()
            kind = request_type(op)  # before the text is parsed: that alone has a cost
            args = _parse(args_json)
            check_protocol(args.pop("protocol", None), __version__)
            req = kind.from_wire(args)
            result = HANDLERS[req.op](self.core, self.caller, req)
            return json.dumps({"ok": True, "result": result})
        except LabqError as e:
            return json.dumps({"ok": False, "error": e.to_wire()})
        except (RecursionError, OverflowError, UnicodeError) as e:
            # a value the checks should have refused: still the caller's error, but worth a
            # line in the log so the check can be added
            log.warning("request %r: %s slipped past validation", name, type(e).__name__)
            return json.dumps({"ok": False, "error": ValidationError(
                f"a value in this request is out of range or not valid text "
                f"({type(e).__name__})").to_wire()})
        except Exception:
            log.exception("request %r failed", name)
            return json.dumps({"ok": False, "error": InternalError(
                f"labqd failed on {name!r}; see its log").to_wire()})
        finally:
            # refused requests are timed too; an unknown op is not, so the labels stay few
            if kind is not None and self.core.metrics is not None:
                self.core.metrics.request(op, time.monotonic() - started)

    def exposed_read_log(self, job_id, offset, wait, max_bytes, streams=False, part=0):
        """(data, offset, done, error), and with `streams` the stderr ranges in `data` too;
        `part` names a gang's part."""
        ask = type(streams) is bool and streams  # anything else is refused below
        try:
            self._still_valid()
            req = ReadLogRequest.from_args(job_id, offset, wait, max_bytes, streams, part)
            data, new_offset, done, spans = HANDLERS[Op.READ_LOG](self.core, self.caller, req)
            return (data, new_offset, done, "") + ((pack_spans(spans),) if ask else ())
        except LabqError as e:
            ok_offset = type(offset) is int and -MAX_LOG_OFFSET <= offset <= MAX_LOG_OFFSET
            reply = (b"", offset if ok_offset else 0, False, json.dumps(e.to_wire()))
        except (RecursionError, OverflowError, UnicodeError) as e:
            log.warning("read_log: %s slipped past validation", type(e).__name__)
            reply = (b"", 0, False, json.dumps(ValidationError(
                f"a value in this request is out of range ({type(e).__name__})").to_wire()))
        except Exception:
            log.exception("read_log failed")
            reply = (b"", 0, False, json.dumps(InternalError("labqd failed reading the log")
                                               .to_wire()))
        return reply + ((b"",) if ask else ())


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

    def exposed_read_log(self, job_id, offset, wait, max_bytes, streams=False):
        reply = (b"", 0, False, json.dumps(RateLimited(self.why).to_wire()))
        return reply + ((b"",) if type(streams) is bool and streams else ())
