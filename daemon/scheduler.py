"""The scheduler loop: build a snapshot of the daemon's state, ask the policy, apply the plan.

It runs when something changed (a submit, a job end, a node coming or going) and on a short
timer so that ageing and start estimates stay fresh. The policy itself is pure.
"""
from __future__ import annotations

import logging
import threading
import time

from labq.spec import parse_dependency
from labq.states import JobState

from . import policy
from .core import Core
from .fairshare import Run
from .snapshot import Dependency, GpuSlot, JobView, NodeView, Snapshot
from .store import Job

log = logging.getLogger("labqd.scheduler")
S = JobState


def job_view(j: dict) -> JobView:
    return JobView(
        id=j["id"], owner=j["owner"], group=j["group"], state=j["state"],
        priority=j["priority"], submit_time=j["submit_time"], gpus=j["gpus"],
        gpu_type=j["gpu_type"], gpu_memory_mb=j["gpu_memory_mb"], cpus=j["cpus"],
        memory_mb=j["memory_mb"] or 0, time_limit_s=j["time_limit_s"],
        dependencies=tuple(Dependency(*parse_dependency(d)) for d in j["dependencies"]),
        partition=j["partition"], eligible_time=j["eligible_time"], node=j["node"],
        gpu_indices=tuple(j["gpu_indices"] or ()), start_time=j["start_time"])


def build_snapshot(core: Core, now: float) -> Snapshot:
    """Called with core.lock held; job views are cached until the job changes."""
    jobs = []
    used: dict[str, list] = {}
    dep_targets: set[int] = set()
    cache = core.view_cache
    for j in core.active.values():
        view = cache.get(j["id"])
        if view is None:
            view = cache[j["id"]] = job_view(j)
        jobs.append(view)
        if view.dependencies:
            dep_targets.update(d.job for d in view.dependencies)
        if view.state == "RUNNING":
            u = used.setdefault(view.node, [set(), 0, 0])
            u[0].update(view.gpu_indices)
            u[1] += view.cpus
            u[2] += view.memory_mb
    nodes = []
    for n in core.nodes.values():
        u = used.get(n.name, [set(), 0, 0])
        state = "drain" if n.drained else ("up" if n.state == "up" else "down")
        slots = tuple(GpuSlot(g["index"], g["type"], g["memory_mb"] or 0) for g in n.gpus)
        nodes.append(NodeView(name=n.name, state=state, cpus=n.cpus, memory_mb=n.memory_mb,
                              gpus=slots, free_gpus=frozenset(g.index for g in slots) - u[0],
                              free_cpus=n.cpus - u[1], free_memory_mb=n.memory_mb - u[2]))
    ended = {}
    for t in dep_targets:
        if t not in core.active:
            s = core._ended_state(t)
            if s is not None:
                ended[t] = s
    running = [Run(v.group, v.owner, len(v.gpu_indices), v.cpus, v.start_time)
               for v in jobs if v.state == "RUNNING" and v.start_time]
    acc = core.accounting
    acc.advance(running, core.ended_runs, now)
    core.ended_runs = []
    return Snapshot(nodes=nodes, jobs=jobs, ended=ended, group_usage=acc.group_usage,
                    user_usage=acc.user_usage, config=core.policy_config)


class Scheduler:
    def __init__(self, core: Core, interval_s: float = 15.0):
        self.core = core
        self.interval_s = interval_s
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.passes = 0

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        core = self.core
        last_start, last_cost = 0.0, 0.0
        while not core._stopping:
            deadline = core.check_nodes()
            core.wake.wait(self.interval_s if deadline is None
                           else min(self.interval_s, deadline + 0.05))
            # a burst of submits is served by one pass, not one pass per submit, and the
            # scheduler never takes more than about half of the daemon's time
            gap = last_start + max(0.002, 2 * last_cost) - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            core.wake.clear()
            if core._stopping:
                return
            last_start = time.monotonic()
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
                time.sleep(1)
            last_cost = time.monotonic() - last_start

    def run_once(self) -> None:
        core = self.core
        now = time.time()
        with core.lock:
            snap = build_snapshot(core, now)
        # the policy runs without the lock: submits and reads go on meanwhile, and the plan
        # is checked against the state it finds when applied
        plan = policy.plan(snap, now)
        with core.lock:
            for job_id, why in plan.cancels:
                job = core.active.get(job_id)
                if job is not None and job["state"] != S.RUNNING.value:
                    core._transition(job, S.CANCELLED, "labqd", why, end_time=time.time())
            for start in plan.starts:
                job = core.active.get(start.job)
                node = core.nodes.get(start.node)
                if (job is None or job["state"] != S.PENDING.value or node is None
                        or node.state != "up" or node.drained):
                    continue
                core.start_job(job, start.node, start.gpus)
            changed = []
            for job_id, why in plan.reasons.items():
                job = core.active.get(job_id)
                if job is not None and job["state"] != S.RUNNING.value and job["reason"] != why:
                    job["reason"] = why
                    changed.append((job_id, why))
            core.runtime = {job_id: {"priority_score": plan.priorities.get(job_id),
                                     "estimated_start": plan.estimates.get(job_id)}
                            for job_id in core.active}
            if changed:
                with core.store.write():
                    for job_id, why in changed:
                        Job.update(reason=why).where(Job.id == job_id).execute()
            self.passes += 1
