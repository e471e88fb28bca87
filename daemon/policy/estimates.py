"""Expected start times for pending jobs: a shadow schedule on time limits.

The plan reserves resources for the top waiting job only (EASY backfill). Users want a time
for their own job too, so after each plan the daemon lays the next waiting jobs, in priority
order, onto each node's GPUs: every GPU is free from the moment the job holding it reaches its
time limit, and an estimated job holds its GPUs from its estimate on. Jobs without GPUs are
laid out the same way on CPU slots. Like Slurm's, these are estimates on time limits: jobs
that end early only make them earlier. Pure: no clock, no I/O.
"""
from __future__ import annotations

import heapq

from .placement import gpu_matches
from .snapshot import JobView, Plan, Snapshot

WAITING_REASONS = {"Resources", "Priority"}  # reasons that end when resources free up


class _Timeline:
    """When each GPU of one node, and enough of its CPUs, will be free in the shadow schedule."""

    def __init__(self, view, now: float):
        self.view = view
        self.gpu_free = {g.index: now for g in view.gpus}  # GPU index -> free from
        self.cpu_holds: list[tuple[float, int]] = []  # (until, cpus) of jobs holding CPUs

    def hold(self, gpus, cpus: int, until: float) -> None:
        for g in gpus:
            self.gpu_free[g] = max(self.gpu_free.get(g, until), until)
        self.cpu_holds.append((until, cpus))

    def earliest(self, job: JobView, now: float) -> tuple[float, list[int]] | None:
        if job.gpus > 0:
            free = sorted((self.gpu_free[g.index], g.index) for g in self.view.gpus
                          if gpu_matches(g, job))
            if len(free) < job.gpus:
                return None
            chosen = free[:job.gpus]
            return max(now, chosen[-1][0]), [i for _, i in chosen]
        if job.cpus > self.view.cpus:
            return None
        # the first moment enough CPU slots have been given back
        need = job.cpus - (self.view.cpus - sum(c for _, c in self.cpu_holds))
        t = now
        for until, cpus in sorted(self.cpu_holds):
            if need <= 0:
                break
            need -= cpus
            t = until
        return max(now, t), []


def estimate(snapshot: Snapshot, plan: Plan, now: float, limit: int | None = None
             ) -> dict[int, float]:
    """Expected start of the waiting jobs, highest priority first; by default as many as keep
    the work near 40,000 GPU looks (all of them on a lab's few nodes)."""
    if limit is None:
        total_gpus = sum(len(n.gpus) for n in snapshot.nodes)
        limit = min(1000, max(20, 40000 // max(1, total_gpus)))
    default = snapshot.config.default_time_limit_s
    nodes = {n.name: _Timeline(n, now) for n in snapshot.nodes if n.state == "up"}
    if not nodes:
        return {}

    def duration(job: JobView) -> float:
        return job.time_limit_s or default

    by_id = {j.id: j for j in snapshot.jobs}
    for job in snapshot.jobs:
        if job.state == "RUNNING":
            until = max(now, (job.start_time or now) + duration(job))
            for name, gpus in job.parts or ((job.node, job.gpu_indices),):
                if name in nodes:
                    nodes[name].hold(gpus, job.cpus, until)
    started = set()
    for s in plan.starts:
        job = by_id.get(s.job)
        if job is not None:
            for name, gpus in s.parts or ((s.node, s.gpus),):
                if name in nodes:
                    nodes[name].hold(gpus, job.cpus, now + duration(job))
            started.add(s.job)
    waiting = [j for j in snapshot.jobs if j.state == "PENDING" and j.id not in started
               and plan.reasons.get(j.id) in WAITING_REASONS]
    top = heapq.nsmallest(limit, waiting, key=lambda j: (-plan.priorities.get(j.id, 0.0),
                                                         j.submit_time, j.id))
    out: dict[int, float] = {}
    for job in top:
        # each node's earliest for one part; a gang starts when its last part can
        found = sorted(((f[0], n, node, f[1]) for n, node in enumerate(nodes.values())
                        if (f := node.earliest(job, now)) is not None), key=lambda x: x[:2])
        if len(found) < job.nodes:
            continue  # fits on too few nodes that are up
        chosen = found[:job.nodes]
        t = chosen[-1][0]
        for _, _, node, gpus in chosen:
            node.hold(gpus, job.cpus, t + duration(job))
        out[job.id] = t
    return out
