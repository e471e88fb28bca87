"""A client's side of RPyC's wire protocol: the few messages labq's requests need.

labqd serves RPyC (labq.daemon.service). A client calls two exposed methods of its root,
passing plain values and getting plain values back, so it needs no netrefs, no service of its
own and none of the rest of rpyc, whose import alone used to cost a `labq` command more than
everything else it does. This is rpyc 6's protocol, as labqd speaks it (no thread binding, no
compression): a frame is a 4-byte length, a compressed flag, the message and a newline; a
message is its kind in one byte, then (seq, payload) in brine, rpyc's encoding of immutable
values. A request's payload is (handler, boxed arguments); a reply's is the boxed result.

It can only be less trusting than rpyc's own client: it never hands labqd an object, so
nothing on this side can be called back, and it refuses any reply that is not a plain value.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _socket import socket

MSG_REQUEST, MSG_REPLY, MSG_EXCEPTION = 1, 2, 3
LABEL_VALUE, LABEL_TUPLE, LABEL_LOCAL_REF, LABEL_REMOTE_REF = 1, 2, 3, 4
HANDLE_PING, HANDLE_CLOSE, HANDLE_GETROOT, HANDLE_CALLATTR = 1, 2, 3, 8

_HEADER = struct.Struct("!LB")
_U32 = struct.Struct("!L")
_F64 = struct.Struct("!d")
MAX_REPLY = 1 << 30  # labqd's largest answers (a long listing) are megabytes
_IMM_LO, _IMM_HI = -0x30, 0xA0  # brine writes these integers as one byte, n + 0x50
_SIMPLE: dict[int, Any] = {0x00: None, 0x01: b"", 0x02: (), 0x03: True, 0x04: False}


class WireError(EOFError):
    """The connection cannot be used: closed, timed out, interrupted mid-call, or a message
    outside the protocol. Callers treat it as a lost connection."""


class RemoteError(Exception):
    """labqd raised an exception instead of answering (an attribute it refuses, say)."""


# -- brine: None, bools, ints, floats, str, bytes and tuples of them -------------------------
def dump(value: Any) -> bytes:
    out: list[bytes] = []
    _dump(value, out)
    return b"".join(out)


def _sized(tag1: int, tag4: int, n: int) -> bytes:
    return bytes((tag1, n)) if n < 256 else bytes((tag4,)) + _U32.pack(n)


def _dump(v: Any, out: list[bytes]) -> None:
    t = type(v)
    if v is None:
        out.append(b"\x00")
    elif t is bool:
        out.append(b"\x03" if v else b"\x04")
    elif t is int:
        if _IMM_LO <= v < _IMM_HI:
            out.append(bytes((v + 0x50,)))
        else:
            digits = str(v).encode()
            out.append(_sized(0x16, 0x17, len(digits)) + digits)
    elif t is float:
        out.append(b"\x18" + _F64.pack(v))
    elif t is str:
        out.append(b"\x08")
        _dump(v.encode("utf-8"), out)
    elif t is bytes:
        n = len(v)
        out.append((b"\x01" if n == 0 else bytes((0x09 + n,)) if n <= 4
                    else _sized(0x0E, 0x0F, n)) + v)
    elif t is tuple:
        n = len(v)
        out.append(b"\x02" if n == 0 else bytes((0x0F + n,)) if n <= 4
                   else _sized(0x14, 0x15, n))
        for item in v:
            _dump(item, out)
    else:
        raise TypeError(f"cannot send a {t.__name__} by value")


def load(data: bytes) -> Any:
    try:
        value, end = _load(data, 0)
    except (IndexError, struct.error, ValueError, RecursionError) as e:
        raise WireError(f"a message labqd sent cannot be read: {e}") from None
    if end != len(data):
        raise WireError("a message labqd sent has bytes past its end")
    return value


def _count(data: bytes, pos: int, wide: bool) -> tuple[int, int]:
    return (_U32.unpack_from(data, pos)[0], pos + 4) if wide else (data[pos], pos + 1)


def _load(data: bytes, pos: int) -> tuple[Any, int]:
    tag = data[pos]
    pos += 1
    if 0x20 <= tag <= 0xEF:
        return tag - 0x50, pos
    if tag in _SIMPLE:
        return _SIMPLE[tag], pos
    if tag == 0x08:
        raw, pos = _load(data, pos)
        if type(raw) is not bytes:
            raise ValueError("text that is not bytes")
        return raw.decode("utf-8"), pos
    if 0x0A <= tag <= 0x0F or tag in (0x16, 0x17):
        n, pos = ((tag - 0x09, pos) if tag <= 0x0D else _count(data, pos, tag in (0x0F, 0x17)))
        if pos + n > len(data):
            raise ValueError("a string past the end")
        raw = bytes(data[pos:pos + n])
        return (int(raw) if tag >= 0x16 else raw), pos + n
    if 0x10 <= tag <= 0x15:
        n, pos = (tag - 0x0F, pos) if tag <= 0x13 else _count(data, pos, tag == 0x15)
        items = []
        for _ in range(n):
            item, pos = _load(data, pos)
            items.append(item)
        return tuple(items), pos
    if tag == 0x18:
        return _F64.unpack_from(data, pos)[0], pos + 8
    raise ValueError(f"unknown tag {tag:#x}")


# -- the connection --------------------------------------------------------------------------
class Connection:
    """One RPyC connection on a connected socket; one call at a time (the caller locks)."""

    def __init__(self, sock: socket, timeout: float) -> None:
        # any socket object: the socket module's, an ssl one, or _socket's bare one, which
        # has no makefile(), so reading is buffered here
        sock.settimeout(timeout)
        self.sock = sock
        self.buffer = bytearray()
        self.seq = 0
        self.root: Any = None  # labqd's root object, as the id it gave it
        # set while a call is under way: left set, a call was cut off (Ctrl-C) and its reply
        # may still arrive, so the connection is out of step for good
        self.in_call = False

    def call(self, method: str, *args: Any) -> Any:
        """root.<method>(*args) in one round trip (rpyc's CALLATTR); args go by value."""
        if self.root is None:
            self.root = self._request(HANDLE_GETROOT, (LABEL_VALUE, ()), root=True)
        return self._request(HANDLE_CALLATTR, (LABEL_TUPLE, (
            (LABEL_LOCAL_REF, self.root), (LABEL_VALUE, method), (LABEL_VALUE, args),
            (LABEL_VALUE, ()))))

    def close(self) -> None:
        # no goodbye message: labqd takes the end of the stream as the end of the connection
        try:
            self.sock.close()
        except OSError:
            pass

    def _send(self, kind: int, seq: int, payload: Any) -> None:
        data = bytes((kind,)) + dump((seq, payload))
        self.sock.sendall(_HEADER.pack(len(data), 0) + data + b"\n")

    def _recv(self) -> bytes:
        length, compressed = _HEADER.unpack(self._read(_HEADER.size))
        if compressed or length > MAX_REPLY:
            raise WireError("labqd sent a frame this client does not take")
        return self._read(length + 1)[:length]

    def _read(self, n: int) -> bytes:
        """Exactly n bytes, from what came with an earlier frame and then from the socket."""
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(1 << 16, n - len(self.buffer)))
            if not chunk:
                raise WireError("labqd closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def _request(self, handler: int, args: tuple[int, Any], root: bool = False) -> Any:
        if self.in_call:
            raise WireError("an earlier call on this connection was cut off")
        self.in_call = True
        self.seq += 1
        self._send(MSG_REQUEST, self.seq, (handler, args))
        while True:
            data = self._recv()
            kind = data[0]
            seq, payload = load(data[1:])
            if kind == MSG_REQUEST:
                self._answer(seq, payload)
            elif seq != self.seq:
                continue  # a reply to a call given up on: nothing waits for it
            elif kind == MSG_REPLY:
                self.in_call = False
                return _unbox(payload, root)
            elif kind == MSG_EXCEPTION:
                self.in_call = False
                raise RemoteError(_exception_text(payload))
            else:
                raise WireError(f"unknown message kind {kind}")

    def _answer(self, seq: int, payload: Any) -> None:
        """A request from labqd: it has nothing of ours to ask about, so only a ping is
        answered; a close ends the connection; anything else is out of protocol."""
        handler = payload[0] if type(payload) is tuple and payload else None
        if handler == HANDLE_PING:  # the echo of its one argument
            _label, ping_args = payload[1]
            self._send(MSG_REPLY, seq, (LABEL_VALUE, ping_args[0] if ping_args else None))
        elif handler == HANDLE_CLOSE:
            self._send(MSG_REPLY, seq, (LABEL_VALUE, None))
            raise WireError("labqd closed the connection")
        else:
            raise WireError(f"labqd asked this client for {handler!r}, which it does not serve")


def _unbox(package: Any, root: bool) -> Any:
    label, value = package
    if label == LABEL_VALUE:
        return value
    if label == LABEL_TUPLE:
        return tuple(_unbox(item, False) for item in value)
    if label == LABEL_REMOTE_REF and root:
        return value
    raise WireError("labqd answered with an object instead of a value")


def _exception_text(payload: Any) -> str:
    # rpyc's vinegar: ((module, name), args, attributes, traceback text)
    if type(payload) is tuple and len(payload) >= 2 and type(payload[0]) is tuple:
        name = ".".join(str(p) for p in payload[0])
        return f"{name}: {' '.join(str(a) for a in payload[1])}"
    return str(payload)
