"""labqd over TCP ([daemon] listen): always TLS (1.2 or later), callers known by their tokens.

Before a connection has shown a valid token labqd reads one bounded line from it and nothing
else: no RPyC frame, so nothing an anonymous peer sends is parsed beyond that line. The TLS
handshake and that line must come within HANDSHAKE_S, each source address may have a few
handshakes under way at once, and one whose tokens keep failing waits
(tokens.failed_logins). After that the connection is served like one on the unix socket,
as the token's user, within that user's connection limit; every request checks the token
again, so a revoked or expired one stops working on open connections too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pwd
import socket
import ssl
import threading
import time
from pathlib import Path

from rpyc.core.stream import SocketStream
from rpyc.utils.helpers import classpartial

from labq.errors import LabqError, Unauthenticated
from labq.remote import HELLO, MAX_TOKEN, fingerprint

from .core import Core
from .identity import Caller, caller_for_uid
from .server import GuardedServer, _rpyc_log
from .service import PROTOCOL_CONFIG, LabqService

log = logging.getLogger("labqd.remote")
HANDSHAKE_S = 10.0
MAX_HANDSHAKES_PER_SOURCE = 8
MAX_HANDSHAKES = 128


class TlsStream(SocketStream):
    def poll(self, timeout):
        # bytes TLS has already decrypted wait in its buffer, where select() cannot see them
        return self.sock.pending() > 0 or super().poll(timeout)


class TlsServer(GuardedServer):
    transport = "tls"
    def __init__(self, core: Core, context: ssl.SSLContext, host: str, port: int):
        cfg = core.cfg
        super().__init__(classpartial(LabqService, core), hostname=host, port=port,
                         ipv6=":" in host, protocol_config=dict(PROTOCOL_CONFIG),
                         auto_register=False, logger=_rpyc_log,
                         max_per_user=cfg.max_connections_per_user,
                         max_total=cfg.max_connections, idle_timeout=cfg.idle_timeout_s,
                         exempt=set())
        self.core = core
        self.context = context
        self.handshakes: dict[str, int] = {}  # source address -> handshakes under way

    def _serve_client(self, sock, credentials):
        try:
            source = sock.getpeername()[0]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return
        if not self._begin(source):
            return
        tls = None
        try:
            tls, row, caller = self._handshake(sock, source)
        finally:
            self._end(source)
        if row is None or caller is None:
            if tls is not None:
                tls.close()
            return
        self.clients.add(tls)
        try:
            tls.settimeout(None)
            self._serve_as(tls, TlsStream(tls), caller.uid, classpartial(
                LabqService, self.core, caller, row["id"]))
        finally:
            self.clients.discard(tls)
            tls.close()

    def _handshake(self, sock, source: str):
        """(TLS socket, token row, caller), or (socket or None, None, None) when refused."""
        deadline = time.monotonic() + HANDSHAKE_S
        sock.settimeout(HANDSHAKE_S)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.info("refused a connection from %s: no TLS (%s)", source, e)
            return None, None, None
        try:
            line = _read_hello(tls, deadline)
            if line is None:
                raise Unauthenticated("labqd over TCP takes a token first: connect with "
                                      "labq.connect(url, token=...) or `labq login`")
            row = self.core.tokens.authenticate(line, source)
            caller = _token_caller(row, self.core.cfg.admin_group)
            tls.sendall(json.dumps({"ok": True, "user": row["user"]}).encode() + b"\n")
            return tls, row, caller
        except LabqError as e:
            log.warning("refused a login from %s: %s", source, e.message)
            _send_quietly(tls, json.dumps({"ok": False, "error": e.to_wire()}).encode()
                          + b"\n")
        except (OSError, ssl.SSLError) as e:
            log.info("lost a connection from %s before its token: %s", source, e)
        return tls, None, None

    def _begin(self, source: str) -> bool:
        with self.count_lock:
            n = self.handshakes.get(source, 0)
            if n >= MAX_HANDSHAKES_PER_SOURCE or sum(self.handshakes.values()) >= MAX_HANDSHAKES:
                self.refused += 1
                log.warning("refused a connection from %s: %d handshakes under way", source, n)
                return False
            self.handshakes[source] = n + 1
            return True

    def _end(self, source: str) -> None:
        with self.count_lock:
            self.handshakes[source] -= 1
            if not self.handshakes[source]:
                del self.handshakes[source]


def _token_caller(row: dict, admin_group: str | None) -> Caller:
    """The token's user as the system knows them now. A token whose account is gone, or whose
    uid now has another name, is refused: its jobs would run as a uid that is no one's or
    someone else's."""
    try:
        same = pwd.getpwuid(row["uid"]).pw_name == row["user"]
    except KeyError:
        same = False
    if not same:
        raise Unauthenticated(f"token {row['id']} is {row['user']}'s, who no longer has an "
                              f"account with uid {row['uid']} here", {"id": row["id"]})
    return dataclasses.replace(caller_for_uid(row["uid"], admin_group), by_token=True)


def _read_hello(tls: ssl.SSLSocket, deadline: float) -> str | None:
    """The token of a `LABQ1 TOKEN` line, or None for anything else; reads no more than such
    a line can be long."""
    limit = len(HELLO) + MAX_TOKEN + 2
    data = b""
    while b"\n" not in data and len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        tls.settimeout(left)
        chunk = tls.recv(limit - len(data))
        if not chunk:
            return None
        data += chunk
    line, sep, rest = data.partition(b"\n")
    if not sep or rest or not line.startswith(HELLO):
        return None
    try:
        return line[len(HELLO):].decode("ascii").strip()
    except UnicodeDecodeError:
        return None


def _send_quietly(tls: ssl.SSLSocket, data: bytes) -> None:
    try:
        tls.sendall(data)
    except OSError:
        pass


# -- the certificate ---------------------------------------------------------------------------
def tls_context(cfg) -> tuple[ssl.SSLContext, str]:
    """The server's TLS context and its certificate's fingerprint: the configured pair, else a
    self-signed one labqd makes in its state directory on first start."""
    if cfg.tls_cert is not None:
        cert, key = Path(cfg.tls_cert), Path(cfg.tls_key)
    else:
        cert, key = cfg.state_dir / "tls" / "cert.pem", cfg.state_dir / "tls" / "key.pem"
        if not cert.exists() or not key.exists():
            _self_signed(cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx, fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def _self_signed(cert: Path, key: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pkey = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"labqd on {host}")])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(days=1))
           .not_valid_after(now + datetime.timedelta(days=3650))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
           .sign(pkey, hashes.SHA256()))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))


def start_tls_server(core: Core) -> TlsServer:
    """Listen on [daemon] listen and serve in a thread of its own."""
    host, port = core.cfg.listen
    ctx, fp = tls_context(core.cfg)
    server = TlsServer(core, ctx, host, port)
    server._listen()
    log.info("labqd listening on %s:%d with TLS; certificate fingerprint %s", server.host,
             server.port, fp)
    threading.Thread(target=server.start, name="tls-server", daemon=True).start()
    return server
