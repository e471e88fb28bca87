"""Requests about fair share: groups' weights and limits, and the usage report."""
from __future__ import annotations

from labq.protocol import GroupReply, GroupSetRequest, GroupsRequest, UsageReply, UsageRequest

from ..core import Core
from ..identity import Caller


def groups(core: Core, caller: Caller, req: GroupsRequest) -> list[GroupReply]:
    return core.groups()


def group_set(core: Core, caller: Caller, req: GroupSetRequest) -> GroupReply:
    return core.set_group(caller, req.group, req.changes())


def usage(core: Core, caller: Caller, req: UsageRequest) -> UsageReply:
    return core.usage(caller, req.days)
