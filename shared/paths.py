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

# pathlib is imported by the functions that need it: a command that is given its socket
# then does without it, whose import costs more than the command's round trip to labqd
SYSTEM_SOCKET_DIR = "/run/labq"


def __getattr__(name: str) -> Any:
    if name == "SYSTEM_SOCKET":  # a Path, made when first asked for
        from pathlib import Path
        return Path(SYSTEM_SOCKET_DIR, "labq.sock")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def state_dir() -> Path:
    from pathlib import Path
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "labq"


def _own_candidates() -> list[Path]:
    """Sockets of a daemon of one's own, most specific first."""
    from pathlib import Path
    out = []
    if os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        out.append(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "labq.sock")
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "labq" / "labq.sock")
    if os.geteuid() == 0:
        out.append(Path(SYSTEM_SOCKET_DIR, "labq.sock"))
    out.append(state_dir() / "labq.sock")
    return out


def daemon_socket() -> Path:
    from pathlib import Path
    if os.environ.get("LABQ_SOCKET"):
        return Path(os.environ["LABQ_SOCKET"])
    return _own_candidates()[0]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a directory we may not search: not ours
        return False


def client_socket() -> Path:
    """LABQ_SOCKET, else the first existing of: the user's own daemon, the system daemon."""
    from pathlib import Path
    if os.environ.get("LABQ_SOCKET"):
        return Path(os.environ["LABQ_SOCKET"])
    candidates = _own_candidates()
    for path in candidates:
        if _exists(path):
            return path
    return Path(SYSTEM_SOCKET_DIR, "labq.sock")
