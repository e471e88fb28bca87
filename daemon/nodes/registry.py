"""The node registry: every node's live view and link, link events, reconciliation, requeue,
starting runs and the admin's node requests. Jobs change only through the job table.

A run of a job on a node is keyed "<id>.<restarts>", so a requeued job's new run never meets
what an earlier run left on a node, and a stale copy is recognised as such. A gang's part
`rank` > 0 is "<id>.<restarts>.<rank>" on its own node (labq.daemon.gangs).
"""
from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from labq.errors import LabqError
from labq.states import JobState

from .. import store as st
from ..clock import SYSTEM, Clock
from ..config import NODE, NodeConfig, node_config
from ..gangs import log_key, parts, ranks_on
from ..jobtable import JobTable
from .ends import record_ends
from .info import NodeInfo, accounts, node_gpus, parse_part_key, run_key
from .launching import Launcher
from .link import NodeLink
from .slurmpool import (
    pool_event,
    pool_gpus,
    pool_node_size,
    record_slurm_id,
    sent_here,
)

if TYPE_CHECKING:
    from .filemove import FileMover

log = logging.getLogger("labqd")
S = JobState
# a run directory without a started shepherd after this long was left by an agent that died
# mid-launch
LAUNCH_GRACE_S = 30



class NodeRegistry:
    """Implements the links' LinkEvents and the job table's RunControl."""

    def __init__(self, cfg, store: st.Store, jobs: JobTable, wake: threading.Event,
                 clock: Clock = SYSTEM):
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.jobs = jobs
        self.lock = jobs.lock  # one lock: a node's state and its jobs change together
        self.wake = wake
        self.nodes: dict[str, NodeInfo] = {}
        self.links: dict[str, NodeLink] = {}
        self.drained_at_start = store.drained_nodes()
        self.files: FileMover | None = None  # staged files and results, set by the core
        self.launcher = Launcher(self)
        # runs told to stop whose job no longer holds their GPUs (a preempted job queued
        # again, the other parts of a gang that ended): run key -> (job id, node, GPUs,
        # CPUs, MiB, until). The scheduler counts them busy until they end, as Slurm does in
        # a preemption's grace time, so no job starts on GPUs a stopping run still holds
        self.stopping: dict[str, tuple[int, str, list[int], int, int, float]] = {}
        for ncfg in cfg.nodes:
            if ncfg.enabled:
                self.add_node(ncfg)
        for entry in store.dynamic_nodes():
            self.add_node(self.dynamic_node_config(entry))

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()

    def preempt(self, job: dict, by: dict) -> None:
        """Stop a preemptible job's run (SIGTERM, the grace, SIGKILL) and queue it again, in
        the same way as a run lost with its node, but with the age it had (eligible_time
        kept), so that starved_first still bounds its wait; its next run has a new key, so
        the end of this one changes nothing. A gang is stopped and queued again whole."""
        self.cancel_run(job, "preempt")
        where = ", ".join(dict.fromkeys(n for n, _ in parts(job)))
        why = (f"preempted by job {by['id']} of {by['owner']} (group {by['group']}) "
               f"on {where}")
        log.info("job %d: %s", job["id"], why)
        ranks = range(len(job["parts"] or ((),)))
        self.jobs.transition(job, S.PENDING, "labqd", why, restarts=job["restarts"] + 1,
                             preemptions=job.get("preemptions", 0) + 1, node=None,
                             gpu_indices=[], parts=None, start_time=None)
        for rank in ranks:
            self.jobs.logs.new_run(log_key(job["id"], rank), job["restarts"], why)

    def cancel_run(self, job: dict, reason: str = "cancel", but: int | None = None) -> None:
        """Stop a job's run: each part of a gang's (but part `but`)."""
        for rank, (node, _) in enumerate(parts(job)):
            link = self.links.get(node)
            if link is not None and rank != but:
                key = run_key(job, rank)
                link.request("cancel", self._stop_reply(key), job=key, reason=reason)
                self._until_ended(job, rank)

    def _stop_reply(self, key: str) -> Callable[[dict], None]:
        def reply(r: dict) -> None:
            if r.get("code") == "unknown":  # it had ended already (a part before rank 0)
                with self.lock:
                    if self.stopping.pop(key, None) is not None:
                        self.wake.set()
        return reply

    def _until_ended(self, job: dict, rank: int) -> None:
        node, gpus = parts(job)[rank]
        # SIGTERM, the grace, SIGKILL (after an early signal, twice the grace), and the news
        until = self.clock.monotonic() + 2 * self.cfg.kill_grace_s + 30
        self.stopping[run_key(job, rank)] = (job["id"], node, list(gpus), job["cpus"],
                                             job["memory_mb"] or 0, until)

    def stopping_runs(self, running: set[int]) -> list[tuple[str, list[int], int, int]]:
        """(node, GPUs, CPUs, MiB) of the runs still stopping whose job no longer runs: its
        own view counts them while it does. Called with the lock held."""
        now = self.clock.monotonic()
        for key in [k for k, v in self.stopping.items() if v[5] < now]:
            del self.stopping[key]  # its end never came (its node went away, say)
        return [(node, gpus, cpus, mem) for job_id, node, gpus, cpus, mem, _ in
                self.stopping.values() if job_id not in running]

    @contextmanager
    def together(self) -> Iterator[None]:
        """This thread's requests to each node meanwhile go in one write (NodeLink.together)."""
        with ExitStack() as stack:
            for link in list(self.links.values()):
                stack.enter_context(link.together())
            yield

    def gpu_counts(self) -> list[int | None]:
        """The GPU count of each node, None for one not seen up since labqd started (gangs
        are checked against it)."""
        with self.lock:
            return [len(n.gpus) if n.cpus else None for n in self.nodes.values()]

    # -- building ----------------------------------------------------------------------------
    def add_node(self, ncfg: NodeConfig, dynamic: bool = False) -> NodeLink:
        self.nodes[ncfg.name] = NodeInfo(ncfg.name, "local" if ncfg.local else ncfg.host,
                                         drained=self.drained_at_start.get(ncfg.name, False),
                                         job_root=ncfg.job_root, dynamic=dynamic,
                                         kind=ncfg.kind, partition=ncfg.partition,
                                         max_jobs=ncfg.max_jobs if ncfg.kind == "slurm"
                                         else None)
        link = self.links[ncfg.name] = NodeLink(ncfg, self.store.cluster_id, self,
                                                heartbeat_s=self.cfg.heartbeat_s,
                                                timeout_s=self.cfg.node_timeout_s,
                                                clock=self.clock)
        return link

    @staticmethod
    def dynamic_node_config(entry: dict) -> NodeConfig:
        return node_config(NODE("node", entry), "node")

    # -- link callbacks ----------------------------------------------------------------------
    def node_refused(self, link: NodeLink, why: str) -> None:
        log.error("node %s refused: %s", link.name, why)
        node = self.nodes.get(link.name)
        if node is not None and node.down_since is None:
            # refused at the first connect (labqd restarted meanwhile): its runs must still
            # be requeued once the grace period has passed
            node.down_since = self.clock.monotonic()
        self.set_node(link.name, state="refused", reason=why)

    def node_down(self, link: NodeLink, why: str) -> None:
        node = self.nodes.get(link.name)
        if node is None:
            return
        if node.state != "down" or node.reason != why:
            log.warning("node %s down: %s", link.name, why)
        if node.down_since is None:
            node.down_since = self.clock.monotonic()
        self.set_node(link.name, state="down", reason=why)

    def set_node(self, name: str, **fields: Any) -> None:
        with self.lock:
            node = self.nodes.get(name)
            if node is None:
                return
            for k, v in fields.items():
                setattr(node, k, v)
            try:
                self.store.save_node(name, host=node.host, state=node.state,
                                     reason=node.reason, drained=node.drained, cpus=node.cpus,
                                     memory_mb=node.memory_mb, gpu_source=node.gpu_source,
                                     last_seen=node.last_seen)
            except LabqError as e:  # a full disk must not take the node link down with it
                log.error("cannot record the state of node %s: %s", name, e.message)
        self.wake.set()

    def node_up(self, link: NodeLink, hello: dict, agent_jobs: list[dict]) -> None:
        gpus, source = (pool_gpus(link.cfg), "slurm") if link.cfg.kind == "slurm" else (
            node_gpus(link.name, link.cfg, hello))
        only_uid, root_ok, words = accounts(link.cfg, hello, self.cfg.serves_others)
        with self.lock:
            node = self.nodes.get(link.name)
            if node is None:
                return
            node.agent_uid, node.agent_user = hello.get("euid"), hello.get("user")
            node.only_uid, node.root_ok, node.accounts = only_uid, root_ok, words
            node.containment = hello.get("containment") or "none"
            if hello.get("containment_note"):
                node.containment += " (" + hello["containment_note"] + ")"
            node.cpus = link.cfg.cpus or hello.get("cpus", 1)
            node.memory_mb = link.cfg.memory_mb or hello.get("memory_mb", 0)
            if link.cfg.kind == "slurm":
                node.cpus, node.memory_mb = pool_node_size(link.cfg)
            node.gpus, node.gpu_source = gpus, source
            node.last_seen = self.clock.time()
            node.down_since = None
            try:
                self.store.save_gpus(link.name, gpus)
            except LabqError as e:  # a full disk must not keep the node from coming up
                log.error("cannot record the GPUs of node %s: %s", link.name, e.message)
            self.set_node(link.name, state="up", reason=None)
            log.info("node %s up: %d CPUs, %d MiB, %d GPUs (%s), agent pid %s", link.name,
                     node.cpus, node.memory_mb, len(gpus), source, hello.get("pid"))
            node.stats["agent_pid"] = hello.get("pid")
            self._reconcile(link, {j["job"]: j for j in agent_jobs})
        if self.files is not None:
            self.files.node_up(link)

    def _reconcile(self, link: NodeLink, found: dict[str, dict]) -> None:
        """Match the runs the agent has with what the store says runs there."""
        mine = set()
        for job in list(self.jobs.active.values()):
            if sent_here(job, link.name):
                ranks = [0]  # a Slurm pool's job: one part, which Slurm may still hold
            elif job["state"] == S.RUNNING.value:
                ranks = ranks_on(job, link.name)
            else:
                continue
            for rank in ranks:
                key = run_key(job, rank)
                mine.add(key)
                self._reconcile_run(link, job, rank, found.get(key))
        for key, info in found.items():
            if key in mine:
                continue
            if info.get("exit") is None:
                job_id, run, _ = parse_part_key(key)
                log.warning("job %s: stopping a stale copy on %s", key, link.name)
                link.request("cancel", job=key, reason="stale")
                # watch it (without its log) so that its exit arrives and its directory goes
                link.request("watch", job=key, offset=1 << 62)
                self._note(job_id, f"killed a stale copy (run {run}) on {link.name}")
            else:
                link.request("forget", job=key)

    def _reconcile_run(self, link: NodeLink, job: dict, rank: int, info: dict | None) -> None:
        """Match one run (part `rank` of the job) with what the agent says of it."""
        key = run_key(job, rank)
        if info is not None and not info.get("started"):
            age = info.get("age", 0)
            if age > LAUNCH_GRACE_S:
                self._relaunch(link, job, rank)
            else:
                # a shepherd may still be on its way up; look again once it surely
                # would have written its pid
                self._watch(link, job, rank)
                timer = threading.Timer(LAUNCH_GRACE_S - age + 1, self._recheck_launch,
                                        (link, key))
                timer.daemon = True
                timer.start()
        elif info is not None:
            if info.get("slurm_id"):  # labqd may have stopped before sbatch answered
                record_slurm_id(self.store, job, info["slurm_id"])
            self._watch(link, job, rank)
            if job["id"] in self.jobs.cancel_requests:
                link.request("cancel", job=key, reason="cancel")
        else:
            # labqd stopped between recording the start and the launch reaching the
            # node: launch now; the agent refuses a second launch of the same run
            log.info("job %d: its start was in flight; launching on %s", job["id"],
                     link.name)
            self.launcher.launch_run(link, job, rank=rank)

    def _relaunch(self, link: NodeLink, job: dict, rank: int = 0) -> None:
        """The run's directory was made but its shepherd never started (the agent died in
        between): nothing of it runs, so launch it afresh."""
        log.warning("job %d: the launch on %s never started; launching again", job["id"],
                    link.name)
        link.request("forget", job=run_key(job, rank))
        self.launcher.launch_run(link, job, rank=rank)

    def _recheck_launch(self, link: NodeLink, key: str) -> None:
        def listed(reply: dict) -> None:
            info = {j["job"]: j for j in reply.get("jobs", [])}.get(key)
            with self.lock:
                job = self.current(link, key)
                if job is not None and info is not None and not info.get("started"):
                    self._relaunch(link, job, parse_part_key(key)[2])
        link.request("list", listed)

    def _note(self, job_id: int, text: str) -> None:
        row = self.jobs.active.get(job_id) or self.store.job_row(job_id)
        if row is None:
            return
        try:
            with self.store.write():
                self.store.add_event(job_id, "labqd", row["state"], row["state"], text)
        except LabqError as e:
            log.error("cannot record event for job %d: %s", job_id, e.message)

    def _watch(self, link: NodeLink, job: dict, rank: int = 0) -> None:
        offset = self.jobs.logs.resume_offset(log_key(job["id"], rank))
        link.request("watch", job=run_key(job, rank),
                     offset=1 << 62 if offset is None else offset)

    def node_stats(self, link: NodeLink, reply: dict) -> None:
        node = self.nodes.get(link.name)
        if not reply.get("ok") or node is None:
            return
        stats = {k: reply[k] for k in ("cpu_percent", "memory_used_mb") if k in reply}
        stats["agent_pid"] = node.stats.get("agent_pid")
        if "pool" in reply:
            node.pool = reply["pool"]
        if "gpus" in reply:
            stats["gpus"] = reply["gpus"]
        elif "gpus" in node.stats:
            stats["gpus"] = node.stats["gpus"]
        node.stats = stats
        node.last_seen = self.clock.time()

    def current(self, link: NodeLink, key: str) -> dict | None:
        """The active job whose current run on this node `key` names, if any."""
        job_id, run, rank = parse_part_key(key)
        job = self.jobs.active.get(job_id)
        if (job is None or job["restarts"] != run
                or not ((job["state"] == S.RUNNING.value and rank in ranks_on(job, link.name))
                        or (rank == 0 and sent_here(job, link.name)))):
            return None
        return job

    def node_event(self, link: NodeLink, msg: dict) -> None:
        ev = msg.get("ev")
        if ev == "log":
            job_id, _, rank = parse_part_key(msg["job"])
            job = self.current(link, msg["job"])
            # a gang's part stopped as its gang ended still says its last words
            if job is None and not (rank and job_id not in self.jobs.active):
                return  # output of a stale copy
            node = self.nodes[link.name]
            try:
                self.jobs.logs.append(log_key(job_id, rank),
                                      int(msg["offset"]), base64.b64decode(msg["data"]),
                                      link.name, f"{node.job_root}/{self.store.cluster_id}/"
                                      f"{link.name}/{msg['job']}/log", _spans(msg.get("err")))
            except OSError as e:
                log.error("cannot keep the log of job %d: %s", job_id, e)
        elif ev in ("exit", "exits"):
            record_ends(self, link, msg["exits"] if ev == "exits" else [msg])
        elif ev == "slurm":
            with self.lock:
                job = self.current(link, msg["job"])
                if job is not None:
                    pool_event(self.jobs, job, msg, self.clock)
        elif ev == "warning":
            log.warning("node %s: %s", link.name, msg.get("error"))

    def ended_forget(self, link: NodeLink, job: dict, key: str) -> None:
        if self.files is not None and job["id"] not in self.jobs.active:
            self.files.ended(link, job)
        link.request("forget", job=key)

    def lost(self, job: dict, why: str) -> None:
        """A run is gone with its node: requeue it (same id) or end it NODE_FAIL. A gang goes
        whole: its parts on other nodes are stopped."""
        if job["parts"]:
            self.cancel_run(job)
        cancelled = self.jobs.cancel_requests.get(job["id"])
        if cancelled:
            # cancelled while its node was unreachable: end it, never start it again
            self.jobs.transition(job, S.CANCELLED, "labqd", f"{cancelled} ({why})",
                             end_time=self.clock.time())
        elif job["requeue"]:
            self.requeue(job, why)
        else:
            self.jobs.transition(job, S.NODE_FAIL, "labqd", why, end_time=self.clock.time())

    def requeue(self, job: dict, why: str) -> None:
        """Queue a job again under its id, one restart more (a gang whole), with the age it
        had (eligible_time kept, as a preempted job's): losing its node is no reason to wait
        longer, and starved_first still bounds its wait."""
        ranks = range(len(job["parts"] or ((),)))
        self.jobs.transition(job, S.PENDING, "labqd", f"requeued: {why}",
                             restarts=job["restarts"] + 1, node=None, gpu_indices=[],
                             parts=None, start_time=None)
        for rank in ranks:
            self.jobs.logs.new_run(log_key(job["id"], rank), job["restarts"], why)

    def check_nodes(self) -> float | None:
        """Requeue the runs of nodes down longer than the grace period; return the seconds
        until the next such deadline (None if no node is down)."""
        grace = self.cfg.requeue_grace_s
        now = self.clock.monotonic()
        nearest = None
        with self.lock:
            for node in self.nodes.values():
                if node.state not in ("down", "refused") or node.down_since is None:
                    continue
                left = node.down_since + grace - now
                running = [j for j in self.jobs.active.values()
                           if j["state"] == S.RUNNING.value and ranks_on(j, node.name)]
                if node.kind == "slurm":
                    # Slurm runs them meanwhile, reconciled when the host is back; only what
                    # was cancelled ends now (its Slurm job is cancelled then, as a stale copy)
                    running = [j for j in self.jobs.active.values()
                               if j["node"] == node.name and j["id"] in self.jobs.cancel_requests]
                if left > 0:
                    if running:
                        nearest = left if nearest is None else min(nearest, left)
                    continue
                for job in running:
                    log.warning("job %d: node %s down for %d s; %s", job["id"], node.name,
                                grace, "requeueing" if job["requeue"] else "NODE_FAIL")
                    self.lost(job, f"node {node.name} was down for {grace} s")
        return nearest



def _spans(err: object) -> list[tuple[int, int]]:
    """The stderr ranges of a log event; none from an agent that sends none."""
    if not isinstance(err, list):
        return []
    return [(s, e) for s, e in (p for p in err if isinstance(p, list) and len(p) == 2)
            if type(s) is int and type(e) is int and 0 <= s < e]
