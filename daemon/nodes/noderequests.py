"""The admin's node requests, over the node registry: list, drain and resume, add and
remove. One function per request, as the handlers call them."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from labq.errors import InvalidState, NotFound, PermissionDenied, ValidationError
from labq.states import JobState

from ..config import ConfigError, check_node, confine_node_paths
from ..gangs import ranks_on
from .info import NodeInfo, node_rows
from .slurmpool import sent_here

if TYPE_CHECKING:
    from .registry import NodeRegistry

S = JobState


def node_list(reg: NodeRegistry) -> list[dict]:
    with reg.lock:
        return node_rows(reg.nodes.values(), reg.jobs.active.values())


def _node_or_404(reg: NodeRegistry, name: Any) -> NodeInfo:
    node = reg.nodes.get(name) if type(name) is str else None
    if node is None:
        raise NotFound(f"no node {name!r}", {"node": name})
    return node


def _one_node(reg: NodeRegistry, name: str) -> dict:
    return next(n for n in node_list(reg) if n["name"] == name)


def set_drain(reg: NodeRegistry, caller, name: Any, drained: bool) -> dict:
    if not caller.admin:
        raise PermissionDenied("draining and resuming nodes is for admins")
    with reg.lock:
        node = _node_or_404(reg, name)
        reg.store.set_drained(name, drained)
        node.drained = drained
        reg.drained_at_start[name] = drained
        if not drained:
            reg.links[name].retry_now()  # resume also retries a refused node
    reg.wake.set()
    return _one_node(reg, name)


def node_add(reg: NodeRegistry, caller, entry: Any) -> dict:
    if not caller.admin:
        raise PermissionDenied("adding nodes is for admins")
    if type(entry) is not dict:
        raise ValidationError("node: must be a mapping like a [[node]] config entry")
    try:
        ncfg = reg.dynamic_node_config(entry)
        check_node(ncfg, reg.cfg, "node")
        # root and labqd's own user can read every file labqd can; anyone else may only
        # point it at files in its config directory
        if caller.uid not in (0, os.geteuid()):
            if ncfg.agent_socket is not None:
                raise ConfigError("node.agent_socket", "is set in labqd's config file only")
            resolved = confine_node_paths(ncfg, reg.cfg.config_dir, "node")
            for key, path in resolved.items():
                setattr(ncfg, key, path)
            # kept resolved, so that a restart reads the very files checked here
            entry = dict(entry, **{k: str(p) for k, p in resolved.items()})
    except ConfigError as e:
        raise ValidationError(str(e), {"field": e.path}) from None
    if ncfg.local and caller.uid not in (0, os.geteuid()):
        # the local agent runs as labqd's account: a node added by another admin would
        # hand them that account (or root)
        raise PermissionDenied("only root or labqd's own account may add the local node")
    with reg.lock:
        if ncfg.name in reg.nodes:
            raise ValidationError(f"node {ncfg.name!r} exists already", {"field": "name"})
        if ncfg.local and any(reg.links[n].cfg.local for n in reg.links):
            raise ValidationError("the local machine is a node already", {"field": "local"})
        reg.store.add_dynamic_node(ncfg.name, entry)
        reg.drained_at_start.pop(ncfg.name, None)
        link = reg.add_node(ncfg, dynamic=True)
        reg.set_node(ncfg.name, state="connecting", reason=None)
    link.start()
    return _one_node(reg, ncfg.name)


def node_remove(reg: NodeRegistry, caller, name: Any) -> dict:
    if not caller.admin:
        raise PermissionDenied("removing nodes is for admins")
    with reg.lock:
        node = _node_or_404(reg, name)
        busy = [j["id"] for j in reg.jobs.active.values()
                if (j["state"] == S.RUNNING.value and ranks_on(j, name))
                or sent_here(j, name)]
        if busy:
            raise InvalidState(f"node {name} still runs jobs {busy}; drain it and let them "
                               "end (or cancel them) first", {"node": name, "jobs": busy})
        link = reg.links.pop(name)
        del reg.nodes[name]
        reg.store.forget_node(name)
    link.stop()
    reg.wake.set()
    return {"name": name, "removed": True, "from_config": not node.dynamic}
