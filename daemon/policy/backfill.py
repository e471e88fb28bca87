"""EASY backfill: one reservation for the highest-priority job that cannot start.

Running jobs are assumed to end when their time limit runs out (a job past its limit is about to
be killed, so it counts as ending now). The reservation is the earliest time and node at which
the waiting job fits. A lower-priority job may start now if its own limit ends by then, or if it
keeps off what the reservation needs on that node: the reserved GPUs and the CPUs and memory
beyond what will be spare there. Either way the reserved job is never pushed later.

A gang's reservation is a whole set of nodes, the earliest time at which that many distinct
nodes can each take a part, and a lower-priority job keeps off what it needs on every one.

With starved_reservations above 1, starved jobs that cannot start after the top one reserve
too (StarvedReservations), each on nodes no other reservation holds: under a long overload one
reservation drains one node at a time, while jobs that need whole nodes queue up behind it.
"""
from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import dataclass, field

from .placement import Cluster, could_ever_fit, gpu_matches, parts_of, runs_owner
from .snapshot import JobView


@dataclass
class Reservation:
    job: int
    time: float
    node: int
    gpus: frozenset[int]
    spare_cpus: int
    spare_mem: int
    # a gang's: every node of its set (this one, rank 0's, included) -> what is held there
    parts: dict[int, Reservation] | None = field(default=None, repr=False)

    def on(self, node: int) -> Reservation | None:
        """What the reservation holds on node `node`, if anything."""
        if self.parts is not None:
            return self.parts.get(node)
        return self if node == self.node else None

    def allows(self, now: float, time_limit_s: float) -> bool:
        """A job with this limit started now ends before the reserved job starts."""
        return now + time_limit_s <= self.time

    def took(self, cpus: int, mem: int) -> None:
        """A job that outlasts the reservation now holds resources on the reserved node."""
        self.spare_cpus -= cpus
        self.spare_mem -= mem


class StarvedReservations:
    """The reservations of starved jobs after the top job's, by node: one node belongs to one
    reservation at most. A later job that outlasts a reservation keeps off what it holds."""

    def __init__(self) -> None:
        self.by_node: dict[int, Reservation] = {}
        self.made: list[Reservation] = []

    def add(self, res: Reservation) -> None:
        self.made.append(res)
        for i in (res.parts if res.parts is not None else (res.node,)):
            part = res.on(i)
            assert part is not None
            self.by_node[i] = part

    def in_way(self, placed: tuple, job: JobView, now: float, limit: float) -> bool:
        """Starting `job` (which runs `limit` seconds) on `placed` would delay one of them."""
        for i, gpus in parts_of(placed):
            hold = self.by_node.get(i)
            if hold is not None and not hold.allows(now, limit) and (
                    hold.gpus.intersection(gpus) or job.cpus > hold.spare_cpus
                    or job.memory_mb > hold.spare_mem):
                return True
        return False

    def took(self, placed: tuple, job: JobView, now: float, limit: float) -> None:
        for i, _ in parts_of(placed):
            hold = self.by_node.get(i)
            if hold is not None and not hold.allows(now, limit):
                hold.took(job.cpus, job.memory_mb)


class KeepOff:
    """What a job that runs `limit` seconds keeps off (placement's `avoid`): the top job's
    reservation unless the job ends before it, and each starved job's the same way."""

    def __init__(self, top: Reservation | None, more: StarvedReservations, now: float,
                 limit: float):
        self.top = top if top is not None and not top.allows(now, limit) else None
        self.more, self.now, self.limit = more, now, limit

    def on(self, node: int) -> Reservation | None:
        hold = self.top.on(node) if self.top is not None else None
        if hold is None:
            hold = self.more.by_node.get(node)
            if hold is not None and hold.allows(self.now, self.limit):
                return None
        return hold


def reserve(cluster: Cluster, job: JobView, now: float,
            exclude: Collection[int] = ()) -> Reservation | None:
    """The earliest start of `job` from the running jobs' limits, or None if nothing known to
    end would ever free enough for it. Nodes in `exclude` (indexes) are not considered."""
    best: Reservation | None = None
    need, cpus, mem = job.gpus, job.cpus, job.memory_mb
    plain = not job.gpu_type and not job.gpu_memory_mb
    restricted = cluster.restricted
    if plain and cluster.kept and not restricted:
        first = [e for e in cluster.ready(job, 1 + len(exclude)) if e[1] not in exclude][:1]
        if not first:
            return None
        if first[0][0] > now:  # else several nodes tie at now: the scan below picks
            return _earliest_part(cluster.nodes[first[0][1]], job, now, None)
    for ns in cluster.nodes:
        if not ns.up or (exclude and ns.idx in exclude):
            continue
        if plain:  # could_ever_fit, inlined: this loop runs over every node
            if (cpus > ns.cpus or mem > ns.memory_mb or len(ns.gpus) < need
                    or (restricted and not runs_owner(ns, job))):
                continue
        elif not could_ever_fit(ns, job):
            continue
        c, m = ns.free_cpus, ns.free_mem
        ends = ns.ends()
        if plain:
            if len(ns.free) >= need and c >= cpus and m >= mem:
                best = Reservation(job.id, now, ns.idx, frozenset(sorted(ns.free)[:need]),
                                   c - cpus, m - mem)
                break
            # it frees nothing before its first running job ends: once a reservation is known
            # most nodes are passed over here
            if best is not None and (not ends or max(now, ends[0][0]) >= best.time):
                continue
            free_now = sorted(ns.free)
            match = ns.slots
        else:
            match = {g for g, s in ns.slots.items() if gpu_matches(s, job)}
            free_now = [g for g in sorted(ns.free) if g in match]
        got: list[int] = []  # GPUs freed by ending jobs, taken first so free ones stay usable
        t = now
        if len(free_now) < need or c < cpus or m < mem:
            for end, gidx, jc, jm in ends:
                got.extend(g for g in gidx if g in match)
                c += jc
                m += jm
                t = max(now, end)
                if len(got) + len(free_now) >= need and c >= cpus and m >= mem:
                    break
                if best is not None and t >= best.time:
                    break
            else:
                continue
            if best is not None and t >= best.time:
                continue
        gpus = (got + free_now)[:need]
        if best is None or t < best.time:
            best = Reservation(job.id, t, ns.idx, frozenset(gpus), c - cpus, m - mem)
            if t <= now:
                break
    return best


def reserve_gang(cluster: Cluster, job: JobView, now: float,
                 exclude: Collection[int] = ()) -> Reservation | None:
    """The earliest start of the gang `job`: when the `job.nodes`-th node that could take a
    part can take it; None if fewer nodes than that ever could. A node that can take its part
    earlier holds it from then on (its running jobs only end). Nodes in `exclude` are not
    considered."""
    if cluster.kept and not cluster.restricted and not job.gpu_type and not job.gpu_memory_mb:
        first = [e for e in cluster.ready(job, job.nodes + len(exclude))
                 if e[1] not in exclude][:job.nodes]
        if len(first) < job.nodes:
            return None
        if first[-1][0] > now:  # else nodes that tie at now may be left out in another order
            return _gang_reservation(job, [_earliest_part(cluster.nodes[i], job, now, None)
                                           for _, i in first])
    best: list[tuple[float, int, Reservation]] = []  # the job.nodes earliest, as a max-heap
    for ns in cluster.nodes:
        if ns.up and could_ever_fit(ns, job) and not (exclude and ns.idx in exclude):
            # a node that is not earlier than the latest of the earliest so far changes nothing
            bound = -best[0][0] if len(best) == job.nodes else None
            got = _earliest_part(ns, job, now, bound)
            if got is None:
                continue
            if len(best) < job.nodes:
                heapq.heappush(best, (-got.time, -got.node, got))
            else:
                heapq.heapreplace(best, (-got.time, -got.node, got))
    if len(best) < job.nodes:
        return None
    return _gang_reservation(job, [r for _, _, r in best])


def _gang_reservation(job: JobView, parts: list) -> Reservation:
    """The gang's reservation from each of its nodes' earliest part: all from the latest."""
    chosen = sorted(parts, key=lambda r: (r.time, r.node))
    t = chosen[-1].time
    for r in chosen:
        r.time = t
    first = chosen[0]
    return Reservation(job.id, t, first.node, first.gpus, first.spare_cpus, first.spare_mem,
                       {r.node: r for r in chosen})


def _earliest_part(ns, job: JobView, now: float, bound: float | None) -> Reservation | None:
    """When node `ns` can take one part of `job`, from its running jobs' limits; None if never,
    or not before `bound`."""
    match = {g for g, s in ns.slots.items() if gpu_matches(s, job)}
    free_now = [g for g in sorted(ns.free) if g in match]
    c, m, t = ns.free_cpus, ns.free_mem, now
    got: list[int] = []
    if len(free_now) < job.gpus or c < job.cpus or m < job.memory_mb:
        for end, gidx, jc, jm in ns.ends():
            t = max(now, end)
            if bound is not None and t >= bound:
                return None
            got.extend(g for g in gidx if g in match)
            c, m = c + jc, m + jm
            if len(got) + len(free_now) >= job.gpus and c >= job.cpus and m >= job.memory_mb:
                break
        else:
            return None
    elif bound is not None and t >= bound:
        return None
    return Reservation(job.id, t, ns.idx, frozenset((got + free_now)[:job.gpus]),
                       c - job.cpus, m - job.memory_mb)
