"""The daemon's state and the rules that change it.

Active jobs (PENDING, HELD, RUNNING) live in memory as dict rows mirroring the store; every
change goes through `_transition`, one store transaction that also writes the event row.
Handlers of the RPyC service and node links call in here; nothing here knows about RPyC.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from labq.errors import (InvalidState, NotFound, PermissionDenied, QuotaExceeded,
                         ValidationError)
from labq.spec import parse_dependency, validate_submit
from labq.states import FINAL, JobState, allowed

from . import store as st
from .config import Config
from .logcopy import LogCopies
from .nodes import NodeLink

log = logging.getLogger("labqd")
S = JobState


@dataclass
class Caller:
    uid: int
    user: str
    group: str  # primary group
    groups: frozenset[str]
    admin: bool

    def may_touch(self, job: dict) -> bool:
        return self.admin or job["owner"] == self.user


@dataclass
class NodeInfo:
    name: str
    host: str
    state: str = "connecting"  # connecting, up, down, refused
    reason: str | None = None
    drained: bool = False
    cpus: int = 0
    memory_mb: int = 0
    gpus: list[dict] = field(default_factory=list)  # index, type, memory_mb, uuid
    gpu_source: str | None = None
    stats: dict = field(default_factory=dict)
    last_seen: float | None = None
    job_root: str = ""


def _dep_ids(job: dict) -> list[int]:
    return [parse_dependency(d)[1] for d in job["dependencies"]]


class Core:
    def __init__(self, cfg: Config, store: st.Store):
        self.cfg = cfg
        self.store = store
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # any job changed state
        self.wake = threading.Event()  # the scheduler should run
        self.logs = LogCopies(cfg.state_dir / "logs", cfg.log_copy_max_bytes)
        self.active: dict[int, dict] = {r["id"]: r for r in store.job_rows(
            states=[s.value for s in (S.PENDING, S.HELD, S.RUNNING)], newest_first=False)}
        self.ended_states: dict[int, str] = {}  # cache for dependency checks
        self.cancel_requests: dict[int, str] = {}  # running job -> who asked
        self.runtime: dict[int, dict] = {}  # job -> priority_score, estimated_start
        self.view_cache: dict[int, Any] = {}  # job -> the scheduler's JobView of it
        self.nodes: dict[str, NodeInfo] = {}
        self.links: dict[str, NodeLink] = {}
        self._stopping = False
        drained = {n.name: n.drained for n in st.Node.select()}
        for ncfg in cfg.nodes:
            if not ncfg.enabled:
                continue
            self.nodes[ncfg.name] = NodeInfo(ncfg.name, "local" if ncfg.local else ncfg.host,
                                             drained=drained.get(ncfg.name, False),
                                             job_root=ncfg.job_root)
            self.links[ncfg.name] = NodeLink(ncfg, store.cluster_id, self,
                                             heartbeat_s=cfg.heartbeat_s,
                                             timeout_s=cfg.node_timeout_s)

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def stop(self) -> None:
        self._stopping = True
        for link in self.links.values():
            link.stop()
        self.wake.set()

    # -- transitions -----------------------------------------------------------------------
    def _transition(self, job: dict, dst: JobState, who: str, reason: str | None,
                    **fields: Any) -> None:
        src = JobState(job["state"])
        if not allowed(src, dst):
            raise InvalidState(f"job {job['id']} is {src.value}; it cannot become {dst.value}",
                               {"id": job["id"], "state": src.value})
        now = fields.pop("when", None) or time.time()
        fields.update(state=dst.value, reason=reason)
        with self.store.write():
            st.Job.update(**fields).where(st.Job.id == job["id"]).execute()
            self.store.add_event(job["id"], who, src.value, dst.value, reason, now)
            if dst != S.RUNNING:
                st.Allocation.delete().where(st.Allocation.job == job["id"]).execute()
            if dst == S.RUNNING:
                st.Allocation.insert_many([{"job": job["id"], "node": fields["node"],
                                            "gpu_index": g} for g in fields["gpu_indices"]]
                                          ).execute()
        job.update(fields)
        self.view_cache.pop(job["id"], None)
        if dst in FINAL:
            self.active.pop(job["id"], None)
            self.runtime.pop(job["id"], None)
            self.cancel_requests.pop(job["id"], None)
            self.ended_states[job["id"]] = dst.value
            self.logs.notify()
        self.wake.set()
        self.changed.notify_all()

    # -- jobs: requests --------------------------------------------------------------------
    def submit(self, caller: Caller, raw: Any) -> dict:
        spec = validate_submit(raw)
        group = spec.pop("group") or caller.group
        if group != caller.group and group not in caller.groups and not caller.admin:
            raise PermissionDenied(f"{caller.user} is not a member of group {group!r}",
                                   {"group": group})
        self._check_submit_limits(caller, spec)
        hold = spec.pop("hold")
        now = time.time()
        with self.lock:
            deps = [parse_dependency(d)[1] for d in spec["dependencies"]]
            missing = [d for d in deps if d not in self.active and self._ended_state(d) is None]
            if missing:
                raise ValidationError(f"dependencies: no job {', '.join(map(str, missing))}",
                                      {"field": "dependencies", "missing": missing})
            row = dict(spec, owner=caller.user, group=group, submit_time=now,
                       state=(S.HELD if hold else S.PENDING).value,
                       reason="Held" if hold else None, gpu_indices=[], restarts=0,
                       eligible_time=None if deps else now)
            row["id"] = self.store.insert_job(row, caller.user)
            for key in ("exit_code", "signal", "start_time", "end_time", "node"):
                row.setdefault(key, None)
            self.active[row["id"]] = row
        self.wake.set()
        return row

    def _check_submit_limits(self, caller: Caller, spec: dict) -> None:
        lim = self.cfg.limits
        if "job_max_gpus" in lim and spec["gpus"] > lim["job_max_gpus"]:
            raise QuotaExceeded(f"a job may ask for at most {lim['job_max_gpus']} GPUs "
                                f"(limits.job_max_gpus); this one asks for {spec['gpus']}",
                                {"limit": "job_max_gpus", "value": lim["job_max_gpus"]})
        if "job_max_time" in lim and (spec["time_limit_s"] or 0) > lim["job_max_time"]:
            raise QuotaExceeded(f"time limit above the largest allowed, {lim['job_max_time']} s "
                                "(limits.job_max_time)",
                                {"limit": "job_max_time", "value": lim["job_max_time"]})
        if "user_max_pending" in lim:
            with self.lock:
                n = sum(1 for j in self.active.values()
                        if j["owner"] == caller.user and j["state"] != S.RUNNING.value)
            if n >= lim["user_max_pending"]:
                raise QuotaExceeded(f"{caller.user} already has {n} pending jobs, the most "
                                    "allowed (limits.user_max_pending)",
                                    {"limit": "user_max_pending", "value": n})

    def _ended_state(self, job_id: int) -> str | None:
        if job_id in self.ended_states:
            return self.ended_states[job_id]
        row = st.Job.select(st.Job.state).where(st.Job.id == job_id).first()
        if row is not None and JobState(row.state) in FINAL:
            self.ended_states[job_id] = row.state
            return row.state
        return None

    def job_row(self, job_id: Any) -> dict:
        if type(job_id) is not int:
            raise ValidationError("id: must be an integer", {"field": "id"})
        with self.lock:
            job = self.active.get(job_id)
            if job is not None:
                return dict(job, **self.runtime.get(job_id, {}))
        row = self.store.job_row(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}", {"id": job_id})
        return row

    def view(self, caller: Caller, row: dict) -> dict:
        out = {k: v for k, v in row.items()}
        if not caller.may_touch(row):
            out["env"] = None
        out.setdefault("priority_score", None)
        out.setdefault("estimated_start", None)
        return out

    def jobs(self, caller: Caller, states=None, user=None, limit=None,
             include_ended=True) -> list[dict]:
        want = set(states or [])
        with self.lock:
            rows = [dict(j, **self.runtime.get(j["id"], {})) for j in self.active.values()]
        rows = [r for r in rows if (not want or r["state"] in want) and
                (not user or r["owner"] == user)]
        if include_ended and (not want or want & {s.value for s in FINAL}):
            ended = self.store.job_rows(states=sorted(want & {s.value for s in FINAL}) or
                                        [s.value for s in FINAL], owner=user, limit=limit)
            rows += ended
        rows.sort(key=lambda r: r["id"])
        if limit:
            rows = rows[-limit:]
        return [self.view(caller, r) for r in rows]

    def cancel(self, caller: Caller, ids: list[int], reason: str | None) -> list[dict]:
        rows = [self._owned(caller, i) for i in ids]  # check all before changing any
        out = []
        with self.lock:
            for row in rows:
                job = self.active.get(row["id"])
                if job is None:
                    out.append(row)  # already ended: cancelling is a no-op, as in scancel
                    continue
                why = f"cancelled by {caller.user}" + (f": {reason}" if reason else "")
                if job["state"] == S.RUNNING.value:
                    self.cancel_requests[job["id"]] = why
                    link = self.links.get(job["node"])
                    if link is not None:
                        link.request("cancel", job=job["id"], reason="cancel")
                else:
                    self._transition(job, S.CANCELLED, caller.user, why, end_time=time.time())
        # a running job ends once its process group is gone; wait a moment for it
        deadline = time.monotonic() + self.cfg.kill_grace_s + 2
        with self.changed:
            while (any(r["id"] in self.active for r in rows)
                   and time.monotonic() < deadline and not self._stopping):
                self.changed.wait(0.2)
        return [self.view(caller, self.job_row(r["id"])) for r in rows]

    def _owned(self, caller: Caller, job_id: Any) -> dict:
        row = self.job_row(job_id)
        if not caller.may_touch(row):
            raise PermissionDenied(f"job {job_id} belongs to {row['owner']}",
                                   {"id": job_id, "owner": row["owner"]})
        return row

    def hold(self, caller: Caller, ids: list[int]) -> list[dict]:
        return self._hold_release(caller, ids, S.PENDING, S.HELD, "held by")

    def release(self, caller: Caller, ids: list[int]) -> list[dict]:
        return self._hold_release(caller, ids, S.HELD, S.PENDING, "released by")

    def _hold_release(self, caller, ids, src, dst, verb) -> list[dict]:
        rows = [self._owned(caller, i) for i in ids]
        with self.lock:
            for row in rows:
                if row["state"] != src.value:
                    raise InvalidState(f"job {row['id']} is {row['state']}, not {src.value}",
                                       {"id": row["id"], "state": row["state"]})
            for row in rows:
                job = self.active[row["id"]]
                extra = {"eligible_time": time.time()} if dst == S.PENDING else {}
                self._transition(job, dst, caller.user, f"{verb} {caller.user}"
                                 if dst == S.HELD else None, **extra)
        return [self.view(caller, self.job_row(r["id"])) for r in rows]

    def wait(self, caller: Caller, ids: list[int], timeout: float) -> list[dict]:
        for i in ids:
            self.job_row(i)  # NotFound early
        deadline = time.monotonic() + max(0.0, min(timeout, 60.0))
        with self.changed:
            while any(i in self.active for i in ids) and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
        return [self.view(caller, self.job_row(i)) for i in ids]

    def events(self, caller: Caller, job_id: int) -> list[dict]:
        self.job_row(job_id)
        return [{"job": e["job"], "time": e["time"], "who": e["who"],
                 "from_state": e["from_state"], "to_state": e["to_state"],
                 "reason": e["reason"]} for e in self.store.events(job_id)]

    def read_log(self, caller: Caller, job_id: int, offset: int, wait: float,
                 max_bytes: int) -> tuple[bytes, int, bool]:
        row = self._owned(caller, job_id)
        max_bytes = max(1, min(max_bytes, 4 << 20))
        deadline = time.monotonic() + max(0.0, min(wait, 30.0))
        while True:
            done = row["id"] not in self.active
            data = self.logs.read(row["id"], offset, max_bytes)
            if data or done:
                return data, offset + len(data), done and not data
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                return b"", offset, False
            self.logs.wait(row["id"], offset, left)

    # -- nodes: requests -------------------------------------------------------------------
    def node_list(self) -> list[dict]:
        with self.lock:
            holders: dict[tuple[str, int], int] = {}
            running: dict[str, list[int]] = {}
            used: dict[str, list[int]] = {}
            for j in self.active.values():
                if j["state"] == S.RUNNING.value:
                    running.setdefault(j["node"], []).append(j["id"])
                    u = used.setdefault(j["node"], [0, 0])
                    u[0] += j["cpus"]
                    u[1] += j["memory_mb"] or 0
                    for g in j["gpu_indices"]:
                        holders[(j["node"], g)] = j["id"]
            out = []
            for n in self.nodes.values():
                stats_gpus = {g["index"]: g for g in n.stats.get("gpus", [])}
                gpus = []
                for g in n.gpus:
                    s = stats_gpus.get(g["index"], {})
                    gpus.append(dict(g, utilization=s.get("utilization"),
                                     memory_used_mb=s.get("memory_used_mb"),
                                     job=holders.get((n.name, g["index"]))))
                u = used.get(n.name, [0, 0])
                state = "drain" if n.drained and n.state == "up" else n.state
                out.append({"name": n.name, "host": n.host, "state": state,
                            "reason": n.reason, "cpus": n.cpus, "memory_mb": n.memory_mb,
                            "free_cpus": n.cpus - u[0], "free_memory_mb": n.memory_mb - u[1],
                            "cpu_percent": n.stats.get("cpu_percent"),
                            "memory_used_mb": n.stats.get("memory_used_mb"),
                            "gpu_source": n.gpu_source, "gpus": gpus,
                            "running_jobs": sorted(running.get(n.name, [])),
                            "last_seen": n.last_seen})
            return out

    def set_drain(self, caller: Caller, name: str, drained: bool) -> dict:
        if not caller.admin:
            raise PermissionDenied("draining and resuming nodes is for admins")
        with self.lock:
            node = self.nodes.get(name) if type(name) is str else None
            if node is None:
                raise NotFound(f"no node {name!r}", {"node": name})
            with self.store.write():
                st.Node.update(drained=drained).where(st.Node.name == name).execute()
            node.drained = drained
            if not drained and name in self.links:
                self.links[name].retry_now()
        self.wake.set()
        return next(n for n in self.node_list() if n["name"] == name)

    # -- nodes: link callbacks -------------------------------------------------------------
    def node_refused(self, link: NodeLink, why: str) -> None:
        log.error("node %s refused: %s", link.name, why)
        self._set_node(link.name, state="refused", reason=why)

    def node_down(self, link: NodeLink, why: str) -> None:
        node = self.nodes[link.name]
        if node.state != "down" or node.reason != why:
            log.warning("node %s down: %s", link.name, why)
        self._set_node(link.name, state="down", reason=why)

    def _set_node(self, name: str, **fields: Any) -> None:
        with self.lock:
            node = self.nodes[name]
            for k, v in fields.items():
                setattr(node, k, v)
            with self.store.write():
                st.Node.insert(name=name, host=node.host, state=node.state, reason=node.reason,
                               drained=node.drained, cpus=node.cpus, memory_mb=node.memory_mb,
                               gpu_source=node.gpu_source, last_seen=node.last_seen
                               ).on_conflict_replace().execute()
        self.wake.set()

    def _node_gpus(self, link: NodeLink, hello: dict) -> tuple[list[dict], str]:
        cfg = link.cfg
        if cfg.gpus is not None:
            return ([{"index": g.get("index", i), "type": g["type"],
                      "memory_mb": g.get("memory_mb", 0), "uuid": None}
                     for i, g in enumerate(cfg.gpus)], "config")
        detected = [{"index": g["index"], "type": g["type"], "memory_mb": g["memory_mb"],
                     "uuid": g.get("uuid")} for g in hello.get("gpus", [])]
        if cfg.gpu_indices is not None:
            detected = [g for g in detected if g["index"] in set(cfg.gpu_indices)]
        if not detected:
            log.info("node %s: no GPUs detected (%s); it takes CPU jobs only", link.name,
                     "; ".join(hello.get("gpu_notes", [])) or "none found")
        return detected, hello.get("gpu_source", "none")

    def node_up(self, link: NodeLink, hello: dict, agent_jobs: list[dict]) -> None:
        gpus, source = self._node_gpus(link, hello)
        with self.lock:
            node = self.nodes[link.name]
            node.cpus = link.cfg.cpus or hello.get("cpus", 1)
            node.memory_mb = link.cfg.memory_mb or hello.get("memory_mb", 0)
            node.gpus, node.gpu_source = gpus, source
            node.last_seen = time.time()
            with self.store.write():
                st.Gpu.delete().where(st.Gpu.node == link.name).execute()
                if gpus:
                    st.Gpu.insert_many([dict(g, node=link.name) for g in gpus]).execute()
            self._set_node(link.name, state="up", reason=None)
            log.info("node %s up: %d CPUs, %d MiB, %d GPUs (%s)", link.name, node.cpus,
                     node.memory_mb, len(gpus), source)
            self._reconcile(link, {j["job"]: j for j in agent_jobs})

    def _reconcile(self, link: NodeLink, found: dict[int, dict]) -> None:
        """Match what the agent has with what the store says runs there."""
        for job in list(self.active.values()):
            if job["state"] != S.RUNNING.value or job["node"] != link.name:
                continue
            if job["id"] in found:
                self._watch(link, job)
                if job["id"] in self.cancel_requests:
                    link.request("cancel", job=job["id"], reason="cancel")
            else:
                # the daemon stopped between recording the start and the launch reaching
                # the node: launch now; the agent refuses a second launch of an id
                log.info("job %d: start was in flight, launching on %s", job["id"], link.name)
                self._launch(link, job)
        for job_id, info in found.items():
            job = self.active.get(job_id)
            if job is not None and job["state"] == S.RUNNING.value and job["node"] == link.name:
                continue
            if info.get("exit") is None:
                log.warning("job %d: stale copy on %s, stopping it", job_id, link.name)
                link.request("cancel", job=job_id, reason="stale")
                if job is not None:
                    with self.store.write():
                        self.store.add_event(job_id, "labqd", job["state"], job["state"],
                                             f"killed a stale copy on {link.name}")
            else:
                link.request("forget", job=job_id)

    def _watch(self, link: NodeLink, job: dict) -> None:
        offset = self.logs.resume_offset(job["id"])
        if offset is None:
            link.request("watch", job=job["id"], offset=1 << 62)
        else:
            link.request("watch", job=job["id"], offset=offset)

    def node_stats(self, link: NodeLink, reply: dict) -> None:
        if not reply.get("ok"):
            return
        node = self.nodes[link.name]
        stats = {k: reply[k] for k in ("cpu_percent", "memory_used_mb") if k in reply}
        if "gpus" in reply:
            stats["gpus"] = reply["gpus"]
        elif "gpus" in node.stats:
            stats["gpus"] = node.stats["gpus"]
        node.stats = stats
        node.last_seen = time.time()

    def node_event(self, link: NodeLink, msg: dict) -> None:
        ev = msg.get("ev")
        if ev == "log":
            import base64
            node = self.nodes[link.name]
            self.logs.append(int(msg["job"]), int(msg["offset"]), base64.b64decode(msg["data"]),
                             link.name, f"{node.job_root}/{self.store.cluster_id}/{msg['job']}/log")
        elif ev == "exit":
            self._job_exited(link, msg)

    def _job_exited(self, link: NodeLink, msg: dict) -> None:
        job_id = int(msg["job"])
        with self.lock:
            job = self.active.get(job_id)
            if job is None or job["state"] != S.RUNNING.value or job["node"] != link.name:
                link.request("forget", job=job_id)  # a stale copy ended
                return
            code, sig, why = msg.get("code"), msg.get("signal"), msg.get("reason")
            end = msg.get("end") or time.time()
            fields = dict(exit_code=code, signal=sig, end_time=end)
            if job_id in self.cancel_requests:
                self._transition(job, S.CANCELLED, "labqd", self.cancel_requests[job_id],
                                 **fields)
            elif why == "timeout":
                self._transition(job, S.TIMEOUT, "labqd",
                                 f"time limit of {job['time_limit_s']} s reached", **fields)
            elif why == "lost":
                self._transition(job, S.NODE_FAIL, "labqd",
                                 f"the job's supervisor on {link.name} vanished", **fields)
            elif code == 0:
                self._transition(job, S.COMPLETED, "labqd", None, **fields)
            else:
                detail = f"killed by signal {sig}" if sig else f"exit code {code}"
                self._transition(job, S.FAILED, "labqd", detail, **fields)
        link.request("forget", job=job_id)

    # -- starting jobs ---------------------------------------------------------------------
    def start_job(self, job: dict, node: str, gpus: tuple[int, ...]) -> None:
        self._transition(job, S.RUNNING, "labqd", None, node=node, gpu_indices=list(gpus),
                         start_time=time.time(), exit_code=None, signal=None, end_time=None)
        self._launch(self.links[node], job)

    def launch_env(self, job: dict) -> dict[str, str]:
        env = dict(job["env"] or {})
        env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, job["gpu_indices"])),
                   CUDA_DEVICE_ORDER="PCI_BUS_ID", LABQ_JOB_ID=str(job["id"]),
                   LABQ_JOB_NAME=job["name"], LABQ_NODE=job["node"],
                   LABQ_RESTART_COUNT=str(job["restarts"]))
        return env

    def _launch(self, link: NodeLink, job: dict) -> None:
        cmd = job["command"]
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        remaining = None
        if job["time_limit_s"]:
            # a relaunch after a restart keeps the original deadline
            remaining = max(1, int(job["time_limit_s"] - (time.time() - job["start_time"])))
        job_id = job["id"]

        def reply(r: dict) -> None:
            if r.get("ok") or r.get("code") in ("exists", "down"):
                return  # started, or already there, or the node went away (reconciled later)
            with self.lock:
                j = self.active.get(job_id)
                if j is not None and j["state"] == S.RUNNING.value:
                    self._transition(j, S.FAILED, "labqd",
                                     f"launch on {link.name} failed: {r.get('error')}",
                                     end_time=time.time())
        link.request("launch", reply, job=job_id, argv=argv, env=self.launch_env(job),
                     cwd=job["cwd"], time_limit_s=remaining, grace_s=self.cfg.kill_grace_s)

    def integrity(self) -> str:
        return self.store.integrity_check()

    def pid(self) -> int:
        return os.getpid()
