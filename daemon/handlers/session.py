"""Who is asking, and is labqd there."""
from __future__ import annotations

import time

from labq.protocol import PingReply, PingRequest, WhoamiReply, WhoamiRequest

from ..core import Core
from ..identity import Caller


def ping(core: Core, caller: Caller, req: PingRequest) -> PingReply:
    # the cluster id tells a client that a restarted labqd is still the same queue
    return {"time": time.time(), "pid": core.pid(), "cluster": core.store.cluster_id}


def whoami(core: Core, caller: Caller, req: WhoamiRequest) -> WhoamiReply:
    return {"user": caller.user, "uid": caller.uid, "group": caller.group,
            "admin": caller.admin, "groups": sorted(caller.groups)}
