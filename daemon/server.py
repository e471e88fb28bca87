"""The unix socket labqd listens on: created with the right mode before anyone can connect."""
from __future__ import annotations

import grp
import logging
import os
import socket
from pathlib import Path

from rpyc.utils.helpers import classpartial
from rpyc.utils.server import ThreadedServer

from .core import Core
from .service import PROTOCOL_CONFIG, LabqService


_rpyc_log = logging.getLogger("labqd.rpyc")
_rpyc_log.setLevel(logging.WARNING)  # rpyc logs every connection at INFO


class AlreadyRunning(Exception):
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


def make_server(core: Core) -> ThreadedServer:
    cfg = core.cfg
    path = Path(cfg.socket)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o755 if cfg.socket_group else 0o700)
    _clear_stale(path)
    old = os.umask(0o177)  # the socket is born 0600; widened below only if configured
    try:
        server = ThreadedServer(classpartial(LabqService, core), socket_path=str(path),
                                protocol_config=dict(PROTOCOL_CONFIG), auto_register=False,
                                logger=_rpyc_log)
    finally:
        os.umask(old)
    if cfg.socket_group:
        os.chown(path, -1, grp.getgrnam(cfg.socket_group).gr_gid)
    os.chmod(path, cfg.socket_mode)
    return server
