"""Who is on the other end of the socket: SO_PEERCRED, never what the client says."""
from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass


@dataclass
class Caller:
    uid: int
    user: str
    group: str  # primary group
    groups: frozenset[str]
    admin: bool
    by_token: bool = False  # came in over TCP with a token, not on the unix socket

    def may_touch(self, job: dict) -> bool:
        # by uid: a name can be reused by a new account, or be a number another user has
        return self.admin or job.get("owner_uid") == self.uid


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def caller_for_uid(uid: int, admin_group: str | None) -> Caller:
    try:
        pw = pwd.getpwuid(uid)
        user, gid = pw.pw_name, pw.pw_gid
    except KeyError:
        user, gid = str(uid), None
    try:
        primary = grp.getgrgid(gid).gr_name if gid is not None else user
    except KeyError:
        primary = str(gid)
    groups = {primary}
    try:
        groups.update(_gname(g) for g in os.getgrouplist(user, gid if gid is not None else 0))
    except (KeyError, OSError):
        pass
    # root, the daemon's own user (a per-user daemon) and the admin group administer
    admin = uid == 0 or uid == os.geteuid() or bool(admin_group and admin_group in groups)
    return Caller(uid=uid, user=user, group=primary, groups=frozenset(groups), admin=admin)


def _gname(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
