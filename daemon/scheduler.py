"""The scheduler loop: build a snapshot of the daemon's state, ask the policy, apply the plan.

It runs when something changed (a submit, a job end, a node coming or going) and on a short
timer so that ageing and start estimates stay fresh. The policy itself is pure.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from labq.states import JobState

from . import policy
from .activejob import ActiveJob
from .clock import SYSTEM, Clock
from .fairctl import FairShare
from .jobtable import Change, JobTable
from .nodes.registry import NodeRegistry
from .policy import GpuSlot, NodeView, Snapshot, estimate
from .policy.fairshare import Run
from .policy.holds import Hold, hold

log = logging.getLogger("labqd.scheduler")
S = JobState
RUNNING, PENDING = S.RUNNING.value, S.PENDING.value


def build_snapshot(table: JobTable, registry: NodeRegistry, fair: FairShare,
                   now: float) -> Snapshot:
    """Called with the job lock held. The job table keeps a view of every pending and running
    job up to date, so this costs O(nodes + running jobs + dependencies), not O(queue); held
    jobs come in only where a dependency ties them to the rest."""
    targets = {t for deps in table.dep_edges.values() for t in deps}
    jobs = list(table.views.values()) + table.held_views(targets)
    used: dict[str, list] = {}
    for view in table.running_views():
        for node, gpus in view.parts or ((view.node, view.gpu_indices),):
            u = used.setdefault(node, [set(), 0, 0])
            u[0].update(gpus)
            u[1] += view.cpus
            u[2] += view.memory_mb
    for node, gpus, cpus, mem in registry.stopping_runs(table.running):
        u = used.setdefault(node, [set(), 0, 0])
        u[0].update(gpus)
        u[1] += cpus
        u[2] += mem
    nodes = []
    for n in registry.nodes.values():
        u = used.get(n.name, [set(), 0, 0])
        if n.max_jobs is not None and pool_jobs(table, n.name) >= n.max_jobs:
            u = [{g["index"] for g in n.gpus}, n.cpus, n.memory_mb]  # the pool is full
        state = "drain" if n.drained else ("up" if n.state == "up" else "down")
        slots = tuple(GpuSlot(g["index"], g["type"], g["memory_mb"] or 0) for g in n.gpus)
        nodes.append(NodeView(name=n.name, state=state, cpus=n.cpus, memory_mb=n.memory_mb,
                              gpus=slots, free_gpus=frozenset(g.index for g in slots) - u[0],
                              free_cpus=n.cpus - u[1], free_memory_mb=n.memory_mb - u[2],
                              only_uid=n.only_uid, root_ok=n.root_ok,
                              gang_ok=n.kind != "slurm"))
    ended = {}
    for t in targets:
        if t not in table.active:
            s = table.ended_state(t)
            if s is not None:
                ended[t] = s
    running = [Run(v.group, v.owner, len(v.gpu_indices) * v.nodes, v.cpus * v.nodes,
                   v.start_time)
               for v in table.running_views() if v.start_time]
    acc = fair.accounting
    acc.advance(running, table.ended_runs, now)
    table.ended_runs = []
    return Snapshot(nodes=nodes, jobs=jobs, ended=ended, group_usage=acc.group_usage,
                    user_usage=acc.user_usage, config=fair.policy_config, memo=table.plan_memo)


def pool_jobs(table: JobTable, node: str) -> int:
    """Jobs labq has in a Slurm pool, waiting there or running."""
    return sum(1 for v in table.running_views() if v.node == node)


class Scheduler:
    def __init__(self, jobs: JobTable, nodes: NodeRegistry, fair: FairShare,
                 interval_s: float = 15.0, clock: Clock = SYSTEM):
        self.jobs, self.nodes, self.fair = jobs, nodes, fair
        self.clock = clock
        self.interval_s = interval_s
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.passes = 0
        self.expected: dict[int, float] = {}
        self.estimated_at = 0.0
        # pending job id -> the GPUs its preemption freed, its until it starts (policy.holds)
        self.holds: dict[int, Hold] = {}
        # called after each turn of the loop with the pass's seconds: the watchdog's pings
        # come from here, so a loop that hangs stops them
        self.observers: list[Callable[[float], None]] = []

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        jobs = self.jobs
        last_start, last_cost = 0.0, 0.0
        while not jobs.stopping:
            deadline = self.nodes.check_nodes()
            jobs.wake.wait(self.interval_s if deadline is None
                           else min(self.interval_s, deadline + 0.05))
            # a burst of submits is served by one pass, not one pass per submit, and the
            # scheduler never takes more than about half of the daemon's time
            gap = last_start + max(0.005, 3 * last_cost) - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            jobs.wake.clear()
            if jobs.stopping:
                return
            last_start = time.monotonic()
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
                time.sleep(1)
            last_cost = time.monotonic() - last_start
            for observe in self.observers:
                observe(last_cost)

    def run_once(self) -> None:
        jobs = self.jobs
        now = self.clock.time()
        with jobs.lock:
            snap = build_snapshot(jobs, self.nodes, self.fair, now)
            self.holds = {i: h for i, h in self.holds.items() if h.until >= now
                          and (j := jobs.active.get(i)) is not None and j["state"] == PENDING}
            snap.holds = dict(self.holds)
        # the policy runs without the lock: submits and reads go on meanwhile, and the plan
        # is checked against the state it finds when applied
        plan = policy.plan(snap, now)
        # estimates beyond the reservation are a courtesy: refreshed at most every second on
        # a lab's queue (not on every pass of a burst of short jobs), every interval on a big
        # one, and left to the reservation on a huge one
        n = len(snap.jobs)
        since = now - self.estimated_at
        if (n < 5000 and since >= 1.0) or (n < 20000 and since >= self.interval_s):
            self.expected = estimate(snap, plan, now)
            self.estimated_at = now
        elif n >= 20000:
            self.expected = {}
        self.expected.update(plan.estimates)  # the reservation itself is the plan's word
        with jobs.lock:
            self._apply(plan)
            # pending reasons and priorities are read from the latest plan when shown; they
            # are stored with a job only when it changes state
            jobs.set_plan(plan.reasons, plan.priorities, self.expected, plan.reservation,
                          plan.backfill_limits)
            self.passes += 1

    def _usable(self, name: str) -> bool:
        node = self.nodes.nodes.get(name)
        return node is not None and node.state == "up" and not node.drained

    def _apply(self, plan: policy.Plan) -> None:
        """The plan's cancels and starts, as one store transaction; then the launches, once
        the starts are on disk (called with the job lock held)."""
        jobs = self.jobs
        changes: list[Change] = []
        seen: set[int] = set()  # one change per job, or the second would be checked stale
        for job_id, why in plan.cancels:
            job = jobs.active.get(job_id)
            if job is not None and job["state"] != RUNNING and job_id not in seen:
                seen.add(job_id)
                changes.append((job, S.CANCELLED, "labqd", why, {"end_time": self.clock.time()}))
        # with preempt_over_share the plan picks victims of a group over its share, whether
        # or not they were submitted preemptible
        any_job = self.fair.policy_config.preempt_over_share
        for victim_id, for_id in plan.preempts:
            victim, by = jobs.active.get(victim_id), jobs.active.get(for_id)
            if (victim is not None and by is not None and victim["state"] == RUNNING
                    and (victim["preemptible"] or any_job) and by["state"] == PENDING
                    and victim_id not in seen):
                seen.add(victim_id)
                self.nodes.preempt(victim, by)
                if for_id in plan.holds:
                    # the victims' SIGTERM, grace and SIGKILL, and the news of their end
                    until = self.clock.time() + 2 * self.nodes.cfg.kill_grace_s + 60
                    self.holds[for_id] = hold(plan.holds[for_id], until)
        started: list[ActiveJob] = []
        for start in plan.starts:
            job = jobs.active.get(start.job)
            if (job is None or job["state"] != PENDING or start.job in seen
                    or not all(self._usable(n) for n, _ in start.parts or ((start.node, ()),))):
                continue
            seen.add(start.job)
            dst, why = self.nodes.launcher.start_state(start.node)
            changes.append((job, dst, "labqd", why,
                            self.nodes.launcher.start_fields(start.node, start.gpus, start.parts)))
            started.append(job)
        if changes:
            jobs.transition_many(changes)
        # what the launches need from disk, in one read
        cold = jobs.store.cold_fields_many([j["id"] for j in started]) if started else {}
        with self.nodes.together():
            for job in started:
                self.nodes.launcher.launch(dict(job, **cold.get(job["id"], {})))
