"""Where the socket and the state live when nothing says otherwise.

Daemon and clients share these rules, so `labq` finds the `labqd` a user started by hand as
well as the one systemd runs. Every default lies in a directory only its user (or root) can
write: never a shared /tmp path that another user could create first.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    SYSTEM_SOCKET: Path

# Paths are worked out as text, and made Path objects only where labqd wants them: a client
# that finds its socket then needs no pathlib, whose import costs a command more than its
# round trip to labqd.
SYSTEM_SOCKET_DIR = "/run/labq"
_SYSTEM_SOCKET = os.path.join(SYSTEM_SOCKET_DIR, "labq.sock")


def __getattr__(name: str) -> Any:
    if name == "SYSTEM_SOCKET":
        from pathlib import Path
        return Path(_SYSTEM_SOCKET)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _state_dir() -> str:
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "state")
    return os.path.join(base, "labq")


def state_dir() -> Path:
    from pathlib import Path
    return Path(_state_dir())


def _own_candidates() -> list[str]:
    """Sockets of a daemon of one's own, most specific first."""
    out = []
    if os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        out.append(os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "labq.sock"))
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "labq", "labq.sock"))
    if os.geteuid() == 0:
        out.append(_SYSTEM_SOCKET)
    out.append(os.path.join(_state_dir(), "labq.sock"))
    return out


def daemon_socket() -> Path:
    from pathlib import Path
    return Path(os.environ.get("LABQ_SOCKET") or _own_candidates()[0])


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:  # absent, or in a directory we may not search: not ours
        return False


def client_socket() -> str:
    """LABQ_SOCKET, else the first existing of: the user's own daemon, the system daemon."""
    if os.environ.get("LABQ_SOCKET"):
        return os.environ["LABQ_SOCKET"]
    for path in _own_candidates():
        if _exists(path):
            return path
    return _SYSTEM_SOCKET
