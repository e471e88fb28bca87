"""Holds: the GPUs a preemption frees belong to the job that preempted for them.

Victims free their GPUs only later in the daemon (SIGTERM, the grace, the news that the run
ended), and even in the replay, where they stop at once, the walk that follows ranks every
waiting job again: without a hold, a job ranked above the preemptor but that could not use
the node before (a wider job that now fits, say) takes it, and the preemptor waits on, its
victims requeued for nothing. So the caller keeps, for each preemptor, the node and the GPUs
its plan named (Plan.holds) until it starts, is no longer pending, or the hold's time is up;
each plan then keeps those GPUs from every other job while the walk runs and, once it has,
starts the preemptor on them if they are free. A preemptor that holds GPUs does not preempt
again: its GPUs are coming.
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


def live(holds: Mapping[int, Hold] | None, now: float) -> dict[int, Hold]:
    return {} if not holds else {j: h for j, h in holds.items() if h.until >= now}


def withhold(cluster: Cluster, holds: Mapping[int, Hold]) -> list[tuple[int, tuple[int, ...]]]:
    """Take the free GPUs of each hold out of the cluster's free ones; returns what was taken,
    for `release`."""
    taken = []
    for h in holds.values():
        ns = cluster.by_name.get(h.node)
        if ns is None or not ns.up:
            continue
        g = tuple(x for x in h.gpus if x in ns.free)
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
    """Start each pending holder that the walk did not start on its node, the held GPUs
    first, when enough are free there; the start is recorded in `cluster` and `starts`."""
    started = {s.job for s in starts}
    for jid, h in holds.items():
        job = lookup(jid)
        ns = cluster.by_name.get(h.node)
        if (job is None or jid in started or ns is None or not ns.up or job.nodes > 1
                or job.cpus > ns.free_cpus or job.memory_mb > ns.free_mem):
            continue
        usable = sorted((g not in h.gpus, g) for g in ns.free if gpu_matches(ns.slots[g], job))
        if len(usable) < job.gpus:
            continue
        gpus = tuple(sorted(g for _, g in usable[:job.gpus]))
        # the limits held when it preempted; jobs started since may have used them up
        type_limits = cluster._type_limits.get(job.group, ())
        if quota_reason(cluster, job) or (
                type_limits and cluster._over_type_limit(job, [(ns, gpus)], type_limits)):
            continue
        cluster.start(job, ns.idx, gpus, end_of(job))
        starts.append(Start(job.id, ns.name, gpus))
