"""Holds: the GPUs a preemption frees belong to the job that preempted for them.

Victims free their GPUs only later in the daemon (SIGTERM, the grace, the news that the run
ended), and even in the replay, where they stop at once, the walk that follows ranks every
waiting job again: without a hold, a job ranked above the preemptor but that could not use
the node before (a wider job that now fits, say) takes it, and the preemptor waits on, its
victims requeued for nothing. So the caller keeps, for each preemptor, the node and the GPUs
its plan named (Plan.holds) until it starts, is no longer pending, or the hold's time is up;
each plan then keeps those GPUs from every other job while the walk runs and, once it has,
starts the preemptor on them if they are free. A preemptor that holds GPUs does not preempt
again: its GPUs are coming. A gang's hold names GPUs on each of its parts' nodes, and it starts
once every part fits there.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .limits import quota_reason
from .placement import Cluster, gpu_matches
from .snapshot import JobView, Start


@dataclass(frozen=True)
class Hold:
    node: str
    gpus: tuple[int, ...]
    until: float  # in the plans' time; past it the hold is dropped
    # a gang's other parts, (node, GPUs) each, in rank order after rank 0's above
    more: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def parts(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return ((self.node, self.gpus),) + self.more


def hold(named: tuple, until: float) -> Hold:
    """The Hold for what a plan named in Plan.holds: (node, GPUs) or, for a gang, the parts
    ((node, GPUs), ...)."""
    if named and isinstance(named[0], tuple):
        return Hold(named[0][0], named[0][1], until, tuple(named[1:]))
    return Hold(named[0], named[1], until)


def live(holds: Mapping[int, Hold] | None, now: float) -> dict[int, Hold]:
    return {} if not holds else {j: h for j, h in holds.items() if h.until >= now}


def withhold(cluster: Cluster, holds: Mapping[int, Hold]) -> list[tuple[int, tuple[int, ...]]]:
    """Take the free GPUs of each hold out of the cluster's free ones; returns what was taken,
    for `release`."""
    taken = []
    for h in holds.values():
        for node, gpus in h.parts():
            ns = cluster.by_name.get(node)
            if ns is None or not ns.up:
                continue
            g = tuple(x for x in gpus if x in ns.free)
            if g:
                before = len(ns.free)
                ns.free.difference_update(g)
                cluster._changed(ns)
                cluster._move(ns, before)
                taken.append((ns.idx, g))
    return taken


def release(cluster: Cluster, taken: list[tuple[int, tuple[int, ...]]]) -> None:
    for idx, g in taken:
        ns = cluster.nodes[idx]
        before = len(ns.free)
        ns.free.update(g)
        cluster._changed(ns)
        cluster._move(ns, before)


def start_holders(cluster: Cluster, holds: Mapping[int, Hold], lookup: Callable,
                  starts: list[Start], end_of: Callable[[JobView], float]) -> None:
    """Start each pending holder that the walk did not start on its node (a gang: on each of
    its nodes), the held GPUs first, when enough are free there; the start is recorded in
    `cluster` and `starts`."""
    started = {s.job for s in starts}
    for jid, h in holds.items():
        job = lookup(jid)
        if job is None or jid in started:
            continue
        placed = _place(cluster, job, h)
        if placed is None:
            continue
        # the limits held when it preempted; jobs started since may have used them up
        type_limits = cluster._type_limits.get(job.group, ())
        if quota_reason(cluster, job) or (
                type_limits and cluster._over_type_limit(job, placed, type_limits)):
            continue
        parts = tuple((ns.idx, gpus) for ns, gpus in placed) if job.nodes > 1 else None
        ns0, gpus0 = placed[0]
        cluster.start(job, ns0.idx, gpus0, end_of(job), parts)
        starts.append(Start(job.id, ns0.name, gpus0, tuple((ns.name, g) for ns, g in placed)
                            if parts else ()))


def _place(cluster: Cluster, job: JobView, h: Hold) -> list | None:
    """(node state, GPUs) of each of the job's parts on its hold's nodes, or None where one
    does not fit (or a gang's hold names too few nodes)."""
    parts = h.parts()
    if len(parts) != job.nodes:
        return None
    placed = []
    for node, held in parts:
        ns = cluster.by_name.get(node)
        if (ns is None or not ns.up or job.cpus > ns.free_cpus
                or job.memory_mb > ns.free_mem):
            return None
        usable = sorted((g not in held, g) for g in ns.free if gpu_matches(ns.slots[g], job))
        if len(usable) < job.gpus:
            return None
        placed.append((ns, tuple(sorted(g for _, g in usable[:job.gpus]))))
    return placed
