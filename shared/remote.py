"""labqd over TCP: `labq://HOST:PORT` addresses, the TLS connection, the server's pinned
certificate fingerprint and the token, and ~/.config/labq/remote.toml where `labq login` keeps
them.

The certificate is pinned by its SHA256 fingerprint, as ssh pins host keys: labqd usually has
a self-signed certificate that no CA vouches for. Nothing is sent before the fingerprint has
been checked, so a program in the middle never sees the token. Then one line carries the
token (`LABQ1 TOKEN`) and labqd answers one JSON line, before RPyC's wire starts; labqd reads
no RPyC frame from a connection that has not shown a valid token.

ssl is imported only once a labq:// address is used: a command on the head node's unix
socket pays nothing for it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DaemonUnavailable, Unauthenticated, ValidationError, from_wire

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

DEFAULT_PORT = 7464
SCHEME = "labq://"
HELLO = b"LABQ1 "
MAX_TOKEN = 256  # labqd reads at most this much of a hello line
MAX_ANSWER = 4096


def is_url(text: str | os.PathLike[str] | None) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of labq://HOST[:PORT]; [::1]:PORT for IPv6."""
    if not is_url(url):
        raise ValidationError(f"{url!r} is not a labq:// URL (labq://HOST:PORT)",
                              {"field": "url"})
    rest = url[len(SCHEME):].rstrip("/")
    host, port = rest, str(DEFAULT_PORT)
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail:
            port = tail.removeprefix(":")
    elif ":" in rest:
        host, _, port = rest.rpartition(":")
    if not host or "/" in host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValidationError(f"{url!r} is not a labq:// URL (labq://HOST:PORT)",
                              {"field": "url"})
    return host, int(port)


def fingerprint(der: bytes) -> str:
    """A certificate's fingerprint as ssh writes a key's: SHA256:base64, unpadded."""
    import base64
    import hashlib  # here: a command on the head node's socket never needs it
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


# -- remote.toml -------------------------------------------------------------------------------
def _config_file() -> str:
    # text: every command without LABQ_SOCKET reads it, and need not import pathlib for that
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "labq", "remote.toml")


def config_path() -> Path:
    from pathlib import Path
    return Path(_config_file())


def load_saved() -> dict[str, Any]:
    """{"url": default URL, "servers": {url: {"token", "fingerprint"}}}; empty if none."""
    try:
        with open(_config_file(), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"cannot read {_config_file()}: {e}") from None
    import tomllib  # here: most users never `labq login`, and have no file
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(f"cannot read {_config_file()}: {e}") from None
    return data if isinstance(data, dict) else {}


def save(url: str, token: str, pinned: str) -> Path:
    """Make `url` the default and remember its token and fingerprint; the file is 0600."""
    data = load_saved()
    servers = dict(data.get("servers") or {})
    servers[url] = {"token": token, "fingerprint": pinned}
    # JSON strings of ASCII text are TOML basic strings
    lines = [f"url = {json.dumps(url)}", ""]
    for u, entry in servers.items():
        lines.append(f"[servers.{json.dumps(u)}]")
        lines += [f"{k} = {json.dumps(str(v))}" for k, v in entry.items()]
        lines.append("")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def default_url() -> str | None:
    """LABQ_URL, else the URL of the last `labq login`."""
    url = os.environ.get("LABQ_URL") or load_saved().get("url")
    return url if isinstance(url, str) and url else None


@dataclass(frozen=True)
class Remote:
    url: str
    host: str
    port: int
    token: str
    pinned: str | None

    @classmethod
    def resolve(cls, url: str, token: str | None = None,
                pinned: str | None = None) -> Remote:
        """The token and fingerprint for `url`: given, else LABQ_TOKEN / LABQ_FINGERPRINT,
        else what `labq login` saved for that URL."""
        host, port = parse_url(url)
        saved = (load_saved().get("servers") or {}).get(url) or {}
        token = token or os.environ.get("LABQ_TOKEN") or saved.get("token")
        pinned = pinned or os.environ.get("LABQ_FINGERPRINT") or saved.get("fingerprint")
        if not token:
            raise Unauthenticated(f"no token for {url}: pass token=, set LABQ_TOKEN, or run "
                                  f"`labq login {url} --token T`", {"url": url})
        return cls(url, host, port, token, pinned)


def _tls(host: str, port: int, timeout: float) -> ssl.SSLSocket:
    import socket
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the certificate is pinned by fingerprint instead
    ctx.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise DaemonUnavailable(f"no labqd answers at {host}:{port} ({e.strerror or e})",
                                {"host": host, "port": port}) from None
    # requests are small and answered at once: Nagle's delay would only add latency
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except (OSError, ssl.SSLError) as e:
        raw.close()
        raise DaemonUnavailable(f"no TLS from {host}:{port} ({e}); is it labqd with "
                                "daemon.listen?", {"host": host, "port": port}) from None


def probe(url: str, timeout: float = 10.0) -> str:
    """The fingerprint of the certificate labqd at `url` shows; nothing is sent."""
    host, port = parse_url(url)
    with _tls(host, port, timeout) as s:
        return fingerprint(s.getpeercert(binary_form=True) or b"")


def mismatch(url: str, pinned: str, offered: str) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"WARNING: the certificate of labqd at {url} has changed! Someone could be "
        f"eavesdropping on you right now (man-in-the-middle), or labqd's certificate was "
        f"replaced. Pinned: {pinned}; offered: {offered}. Nothing was sent. If the admin "
        f"confirms the new fingerprint, run `labq login {url} --fingerprint {offered} "
        "--token T`", {"url": url, "pinned": pinned, "fingerprint": offered})


def open_tls(remote: Remote, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to labqd whose certificate matches the pin, with the token shown and
    accepted: RPyC's wire may start on it."""
    s = _tls(remote.host, remote.port, timeout)
    try:
        offered = fingerprint(s.getpeercert(binary_form=True) or b"")
        if remote.pinned is None:
            raise DaemonUnavailable(
                f"labqd at {remote.url} shows a certificate with fingerprint {offered}, which "
                "you have not trusted yet: run `labq login URL --token T`, or pass "
                "fingerprint= (LABQ_FINGERPRINT)", {"url": remote.url, "fingerprint": offered})
        if offered != remote.pinned:
            raise mismatch(remote.url, remote.pinned, offered)
        token = remote.token.encode("ascii", "replace")
        if len(token) > MAX_TOKEN or b"\n" in token or b" " in token:
            raise Unauthenticated("that is not a labq token", {"url": remote.url})
        s.sendall(HELLO + token + b"\n")
        answer = _read_line(s)
        reply = json.loads(answer) if answer else {}
        if not isinstance(reply, dict) or not reply.get("ok"):
            err = reply.get("error") if isinstance(reply, dict) else None
            raise from_wire(err or {"code": "UNAVAILABLE",
                                    "message": f"labqd at {remote.url} hung up"})
        return s
    except BaseException:
        s.close()
        raise


def _read_line(s: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
            chunk = s.recv(MAX_ANSWER - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.strip()
