"""The unix socket labqd listens on, and the guards around every connection.

The socket is created with the right mode before anyone can connect. Each connection is
bounded: frames have a maximum size and are never compressed (a small zlib frame can inflate
to gigabytes), each user holds a limited number of connections, an idle one is closed, and a
failing accept (out of file descriptors) backs off instead of ending the server.
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import threading
import time
from pathlib import Path

from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.utils.helpers import classpartial
from rpyc.utils.server import ThreadedServer

from .core import Core
from .identity import peer_uid
from .service import PROTOCOL_CONFIG, LabqService, RefusingService

log = logging.getLogger("labqd.server")
_rpyc_log = logging.getLogger("labqd.rpyc")
_rpyc_log.setLevel(logging.WARNING)  # rpyc logs every connection at INFO

MAX_FRAME = 8 << 20
# errors of accept() that say the process or system is short of something, not that the
# listening socket is gone
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class AlreadyRunning(Exception):
    pass


class FrameRefused(EOFError):
    """A frame too large or compressed: the connection is dropped before reading it."""


class BoundedChannel(Channel):
    def __init__(self, stream):
        super().__init__(stream, compress=False)

    def recv(self):
        header = self.stream.read(self.FRAME_HEADER.size)
        length, compressed = self.FRAME_HEADER.unpack(header)
        if compressed:
            raise FrameRefused("compressed frames are refused")
        if length > MAX_FRAME:
            raise FrameRefused(f"frame of {length} bytes is over the {MAX_FRAME} byte limit")
        return self.stream.read(length + len(self.FLUSHER))[:-len(self.FLUSHER)]


class GuardedServer(ThreadedServer):
    transport = "unix"  # what the metrics call its connections
    def __init__(self, *args, max_per_user: int, max_total: int, idle_timeout: float,
                 exempt: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self.exempt = exempt
        self.per_uid: dict[int, int] = {}
        self.count_lock = threading.Lock()
        self.refused = 0  # connections turned away, for the log and tests

    def accept(self):
        backoff = 0.01
        while self.active:
            try:
                sock, _addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if not self.active:
                    return
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ECONNABORTED):
                    continue
                if e.errno in _SHORTAGE:
                    # out of descriptors: wait for connections to close, keep serving the rest
                    log.warning("accept failed (%s); retrying in %.2f s", e.strerror, backoff)
                    time.sleep(backoff)
                    backoff = min(1.0, backoff * 2)
                    continue
                raise EOFError(str(e)) from e
            sock.setblocking(True)
            self.clients.add(sock)
            self._accept_method(sock)
            return

    def _serve_client(self, sock, credentials):
        try:
            uid = peer_uid(sock)
        except OSError:
            return
        self._serve_as(sock, SocketStream(sock), uid, self.service)

    def _serve_as(self, sock, stream, uid: int, service) -> None:
        """Serve one connection of `uid` with `service`, within the user's connection limit."""
        admitted = self._admit(uid)
        try:
            config = dict(self.protocol_config, credentials=None, logger=self.logger,
                          endpoints=(sock.getsockname(), None))
            service = service if admitted else classpartial(
                RefusingService, f"too many connections to labqd from uid {uid} "
                f"(at most {self.max_per_user} per user); close some and try again")
            conn = service._connect(BoundedChannel(stream), config)
            if admitted:
                self._serve(conn, sock)
            else:
                # answer what the client asks while it connects (its root object, then the
                # request) with the error, then hang up
                for _ in range(8):
                    if not conn.serve(2.0):
                        break
                _hang_up(conn, sock)
        except EOFError as e:
            if isinstance(e, FrameRefused):
                log.warning("dropped a connection of uid %d: %s", uid, e)
        finally:
            if admitted:
                with self.count_lock:
                    self.per_uid[uid] -= 1
                    if not self.per_uid[uid]:
                        del self.per_uid[uid]

    def _admit(self, uid: int) -> bool:
        with self.count_lock:
            total = sum(self.per_uid.values())
            if uid not in self.exempt and (self.per_uid.get(uid, 0) >= self.max_per_user
                                           or total >= self.max_total):
                self.refused += 1
                log.warning("refused a connection of uid %d: %d open (limit %d per user, %d "
                            "in all)", uid, self.per_uid.get(uid, 0), self.max_per_user,
                            self.max_total)
                return False
            self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
            return True

    def _serve(self, conn, sock) -> None:
        """Serve requests until the client leaves or stays silent for idle_timeout."""
        try:
            while not conn.closed:
                if not conn.serve(self.idle_timeout):
                    break  # idle: its slot goes back to the pool
        finally:
            _hang_up(conn, sock)


def _hang_up(conn, sock) -> None:
    """Close without waiting for the client: rpyc's close asks the peer to confirm, and a
    silent peer would hold this thread for the whole request timeout."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except Exception:
        pass


def _clear_stale(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        raise AlreadyRunning(f"another labqd answers on {path}")
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left over by a daemon that died
    except OSError as e:
        if isinstance(e, AlreadyRunning):
            raise
        path.unlink(missing_ok=True)
    finally:
        probe.close()


def _check_socket_dir(path: Path, group: str | None) -> None:
    """The socket's directory is ours (or root's) and nobody else may swap the socket."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o755 if group else 0o700)
    st = parent.lstat()
    me = os.geteuid()
    if st.st_uid not in (0, me):
        raise OSError(f"the socket's directory {parent} belongs to uid {st.st_uid}; labqd "
                      "will not listen where another user could replace its socket")
    if st.st_mode & 0o022 and not st.st_mode & 0o1000:
        raise OSError(f"the socket's directory {parent} is writable by others; labqd will "
                      "not listen where another user could replace its socket")


def make_server(core: Core) -> GuardedServer:
    cfg = core.cfg
    path = Path(cfg.socket)
    if len(os.fsencode(path)) > 107:
        raise OSError(f"socket path {path} is longer than a unix socket allows (107 bytes); "
                      "set daemon.socket or LABQ_SOCKET to a shorter path")
    _check_socket_dir(path, cfg.socket_group)
    _clear_stale(path)
    old = os.umask(0o177)  # the socket is born 0600; widened below only if configured
    try:
        server = GuardedServer(classpartial(LabqService, core), socket_path=str(path),
                               protocol_config=dict(PROTOCOL_CONFIG), auto_register=False,
                               logger=_rpyc_log, max_per_user=cfg.max_connections_per_user,
                               max_total=cfg.max_connections, idle_timeout=cfg.idle_timeout_s,
                               exempt={0, os.geteuid()})
    finally:
        os.umask(old)
    if cfg.socket_group:
        os.chown(path, -1, grp.getgrnam(cfg.socket_group).gr_gid)
    os.chmod(path, cfg.socket_mode)
    return server
