"""Requests about nodes: list them; admins drain, resume, add and remove them."""
from __future__ import annotations

from labq.errors import ValidationError
from labq.protocol import (NodeAddRequest, NodeDict, NodeDrainRequest, NodeRemovedReply,
                           NodeRemoveRequest, NodeResumeRequest, NodesRequest, arg_error)
from labq.spec import MAX_MEMORY_MB

from ..config import ConfigError
from ..core import Core
from ..identity import Caller


def nodes(core: Core, caller: Caller, req: NodesRequest) -> list[dict]:
    return core.node_list()


def node_drain(core: Core, caller: Caller, req: NodeDrainRequest) -> NodeDict:
    return core.set_drain(caller, req.name, True)


def node_resume(core: Core, caller: Caller, req: NodeResumeRequest) -> NodeDict:
    return core.set_drain(caller, req.name, False)


def node_add(core: Core, caller: Caller, req: NodeAddRequest) -> NodeDict:
    check_as_config(core, req.node)
    return core.node_add(caller, req.node)


def node_remove(core: Core, caller: Caller, req: NodeRemoveRequest) -> NodeRemovedReply:
    return core.node_remove(caller, req.name)


def check_as_config(core: Core, entry: dict) -> None:
    """The entry read as the config file's [[node]] entries are, with a request's bounds on
    what the config file leaves open; labq.protocol cannot, as it knows no config."""
    try:
        ncfg = core.dynamic_node_config(entry)
    except ConfigError as e:  # its message quotes the entry: keep a long one short
        raise ValidationError(str(e)[:500], {"field": e.path[:200]}) from None
    if ncfg.memory_mb is not None and not 0 <= ncfg.memory_mb <= MAX_MEMORY_MB:
        raise arg_error("node.memory", f"must be at most {MAX_MEMORY_MB} MiB")
