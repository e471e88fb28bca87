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
from .snapshot import Dependency, GpuSlot, JobView, NodeView, Snapshot

log = logging.getLogger("labqd.scheduler")
S = JobState


def build_snapshot(core: Core, now: float) -> Snapshot:
    """Called with core.lock held."""
    jobs = []
    used: dict[str, list] = {}
    dep_targets: set[int] = set()
    for j in core.active.values():
        deps = tuple(Dependency(*parse_dependency(d)) for d in j["dependencies"])
        dep_targets.update(d.job for d in deps)
        jobs.append(JobView(
            id=j["id"], owner=j["owner"], group=j["group"], state=j["state"],
            priority=j["priority"], submit_time=j["submit_time"], gpus=j["gpus"],
            gpu_type=j["gpu_type"], gpu_memory_mb=j["gpu_memory_mb"], cpus=j["cpus"],
            memory_mb=j["memory_mb"] or 0, time_limit_s=j["time_limit_s"], dependencies=deps,
            partition=j["partition"], eligible_time=j["eligible_time"], node=j["node"],
            gpu_indices=tuple(j["gpu_indices"] or ()), start_time=j["start_time"]))
        if j["state"] == S.RUNNING.value:
            u = used.setdefault(j["node"], [set(), 0, 0])
            u[0].update(j["gpu_indices"] or ())
            u[1] += j["cpus"]
            u[2] += j["memory_mb"] or 0
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
    return Snapshot(nodes=nodes, jobs=jobs, ended=ended)


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
        while not core._stopping:
            core.wake.wait(self.interval_s)
            core.wake.clear()
            if core._stopping:
                return
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
                time.sleep(1)

    def run_once(self) -> None:
        core = self.core
        with core.lock:
            now = time.time()
            snap = build_snapshot(core, now)
            plan = policy.plan(snap, now)
            for job_id, why in plan.cancels:
                job = core.active.get(job_id)
                if job is not None:
                    core._transition(job, S.CANCELLED, "labqd", why, end_time=now)
            for start in plan.starts:
                job = core.active.get(start.job)
                if job is None or start.node not in core.links:
                    continue
                core.start_job(job, start.node, start.gpus)
            changed = []
            for job_id, why in plan.reasons.items():
                job = core.active.get(job_id)
                if job is not None and job["state"] != S.RUNNING.value and job["reason"] != why:
                    job["reason"] = why
                    changed.append((job_id, why))
            for job_id, job in core.active.items():
                core.runtime[job_id] = {"priority_score": plan.priorities.get(job_id),
                                        "estimated_start": plan.estimates.get(job_id)}
            if changed:
                from .store import Job
                with core.store.write():
                    for job_id, why in changed:
                        Job.update(reason=why).where(Job.id == job_id).execute()
            self.passes += 1
