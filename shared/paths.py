"""Where the socket and the state live when nothing says otherwise.

Daemon and clients share these rules, so `labq` finds the `labqd` a user started by hand as
well as the one systemd runs.
"""
from __future__ import annotations

import os
from pathlib import Path


def _runtime_candidates() -> list[Path]:
    out = []
    if os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        out.append(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "labq.sock")
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "labq" / "labq.sock")
    if os.geteuid() == 0:
        out.append(Path("/run/labq/labq.sock"))
    out.append(Path(f"/tmp/labq-{os.geteuid()}/labq.sock"))
    return out


def daemon_socket() -> Path:
    if os.environ.get("LABQ_SOCKET"):
        return Path(os.environ["LABQ_SOCKET"])
    return _runtime_candidates()[0]


def client_socket() -> Path:
    """LABQ_SOCKET, else the first existing of: the user's own daemon, the system daemon."""
    if os.environ.get("LABQ_SOCKET"):
        return Path(os.environ["LABQ_SOCKET"])
    candidates = _runtime_candidates()
    system = Path("/run/labq/labq.sock")
    if system not in candidates:
        candidates.insert(len(candidates) - 1, system)
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


def state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "labq"
