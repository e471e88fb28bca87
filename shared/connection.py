"""How a client reaches labqd on this machine, and what of the caller's environment a job
gets."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import DaemonUnavailable
from .paths import SYSTEM_SOCKET_DIR

if TYPE_CHECKING:
    import _socket

# variables that describe the submitting session rather than the job's needs
_SESSION_ENV = ("LABQ_", "SSH_", "DISPLAY", "TERM", "TMUX", "XDG_RUNTIME_DIR", "XDG_SESSION",
                "XDG_SESSION_", "DBUS_SESSION_BUS_ADDRESS", "PWD", "OLDPWD", "SHLVL", "_",
                "WINDOWID", "COLUMNS", "LINES", "KITTY_", "WAYLAND_DISPLAY", "NOTIFY_SOCKET",
                "INVOCATION_ID", "JOURNAL_STREAM")


_SESSION_NAMES = frozenset(_SESSION_ENV)
_SESSION_PREFIXES = tuple(p for p in _SESSION_ENV if p.endswith("_"))


# the last os.environ exported, as its raw bytes, and what it gave
_last: tuple[dict[bytes, bytes] | None, dict[str, str]] = (None, {})


def exported_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus session-bound variables (Slurm's --export=ALL)."""
    global _last
    if environ is None:
        # read on every submit (a script may change os.environ between them); decoding
        # each variable costs more than comparing the raw bytes with the last submit's
        raw = getattr(os.environ, "_data", None)
        if type(raw) is dict:
            raw = dict(raw)
            if raw == _last[0]:
                return dict(_last[1])
            out = _exported(os.environ)
            _last = (raw, out)
            return dict(out)
    return _exported(os.environ if environ is None else environ)


def _exported(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in dict(environ).items()
            if k not in _SESSION_NAMES and not k.startswith(_SESSION_PREFIXES)}


def open_socket(path: str | os.PathLike[str]) -> _socket.socket:
    """A connected unix socket to labqd, after checking who listens on it: root, oneself, or
    the owner of the socket's directory (the system daemon's account). Nothing is sent before
    that check, so a program squatting on a socket path never sees a submit's environment."""
    # _socket, not socket: importing socket turns its constants into enums, which costs a
    # command more time than its round trip to labqd
    import _socket as socket
    import struct
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
    except PermissionError:
        sock.close()
        raise DaemonUnavailable(
            f"you may not connect to labqd at {path}: permission denied. The system daemon's "
            "socket is open to one group (daemon.socket_group): ask the admin to add you to "
            "it, or start a daemon of your own with `labqd`", {"socket": str(path)}) from None
    except OSError as e:
        sock.close()
        raise DaemonUnavailable(
            f"no labqd answers at {path} ({e.strerror or e}); start it with `labqd` or set "
            "LABQ_SOCKET", {"socket": str(path)}) from None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in _trusted_uids():
        sock.close()
        raise DaemonUnavailable(
            f"refusing to talk to the program listening on {path}: it runs as uid {uid}, "
            f"which is neither root, you, nor the system daemon's account (the owner of "
            f"{SYSTEM_SOCKET_DIR}); if it is a labqd you trust, set LABQ_DAEMON_USER to "
            "its account", {"socket": str(path), "uid": uid})
    return sock


def _trusted_uids() -> set[int]:
    import pwd
    trusted = {0, os.geteuid()}
    try:
        trusted.add(os.stat(SYSTEM_SOCKET_DIR).st_uid)
    except OSError:
        pass
    name = os.environ.get("LABQ_DAEMON_USER")
    if name:
        try:
            trusted.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise DaemonUnavailable(f"LABQ_DAEMON_USER names no account: {name!r}") from None
    return trusted
