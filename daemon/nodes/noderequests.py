"""The admin's node requests on the registry: list, drain and resume, add and remove."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from labq.errors import InvalidState, NotFound, PermissionDenied, ValidationError
from labq.states import JobState

from ..config import ConfigError, check_node, confine_node_paths
from ..gangs import ranks_on
from .info import NodeInfo, node_rows
from .slurmpool import sent_here

if TYPE_CHECKING:
    from .. import store as st
    from ..config import NodeConfig
    from ..jobtable import JobTable
    from .link import NodeLink

S = JobState


class NodeRequests:
    """Part of NodeRegistry: what its requests need of it is declared here."""
    if TYPE_CHECKING:
        cfg: Any
        store: st.Store
        jobs: JobTable
        lock: threading.RLock
        wake: threading.Event
        nodes: dict[str, NodeInfo]
        links: dict[str, NodeLink]
        _drained: dict[str, bool]

        def _add_node(self, ncfg: NodeConfig, dynamic: bool = False) -> NodeLink: ...
        def _set_node(self, name: str, **fields: Any) -> None: ...
        @staticmethod
        def dynamic_node_config(entry: dict) -> NodeConfig: ...

    def node_list(self) -> list[dict]:
        with self.lock:
            return node_rows(self.nodes.values(), self.jobs.active.values())

    def _node_or_404(self, name: Any) -> NodeInfo:
        node = self.nodes.get(name) if type(name) is str else None
        if node is None:
            raise NotFound(f"no node {name!r}", {"node": name})
        return node

    def _one_node(self, name: str) -> dict:
        return next(n for n in self.node_list() if n["name"] == name)

    def set_drain(self, caller, name: Any, drained: bool) -> dict:
        if not caller.admin:
            raise PermissionDenied("draining and resuming nodes is for admins")
        with self.lock:
            node = self._node_or_404(name)
            self.store.set_drained(name, drained)
            node.drained = drained
            self._drained[name] = drained
            if not drained:
                self.links[name].retry_now()  # resume also retries a refused node
        self.wake.set()
        return self._one_node(name)

    def node_add(self, caller, entry: Any) -> dict:
        if not caller.admin:
            raise PermissionDenied("adding nodes is for admins")
        if type(entry) is not dict:
            raise ValidationError("node: must be a mapping like a [[node]] config entry")
        try:
            ncfg = self.dynamic_node_config(entry)
            check_node(ncfg, self.cfg, "node")
            # root and labqd's own user can read every file labqd can; anyone else may only
            # point it at files in its config directory
            if caller.uid not in (0, os.geteuid()):
                if ncfg.agent_socket is not None:
                    raise ConfigError("node.agent_socket", "is set in labqd's config file only")
                resolved = confine_node_paths(ncfg, self.cfg.config_dir, "node")
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
        with self.lock:
            if ncfg.name in self.nodes:
                raise ValidationError(f"node {ncfg.name!r} exists already", {"field": "name"})
            if ncfg.local and any(self.links[n].cfg.local for n in self.links):
                raise ValidationError("the local machine is a node already", {"field": "local"})
            self.store.add_dynamic_node(ncfg.name, entry)
            self._drained.pop(ncfg.name, None)
            link = self._add_node(ncfg, dynamic=True)
            self._set_node(ncfg.name, state="connecting", reason=None)
        link.start()
        return self._one_node(ncfg.name)

    def node_remove(self, caller, name: Any) -> dict:
        if not caller.admin:
            raise PermissionDenied("removing nodes is for admins")
        with self.lock:
            node = self._node_or_404(name)
            busy = [j["id"] for j in self.jobs.active.values()
                    if (j["state"] == S.RUNNING.value and ranks_on(j, name))
                    or sent_here(j, name)]
            if busy:
                raise InvalidState(f"node {name} still runs jobs {busy}; drain it and let them "
                                   "end (or cancel them) first", {"node": name, "jobs": busy})
            link = self.links.pop(name)
            del self.nodes[name]
            self.store.forget_node(name)
        link.stop()
        self.wake.set()
        return {"name": name, "removed": True, "from_config": not node.dynamic}
