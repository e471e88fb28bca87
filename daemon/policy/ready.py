"""When each node could take a job of one size, from its running jobs' time limits, kept in
order across plans.

Backfill reserves for the top waiting job the earliest time some node (a gang: its N earliest
nodes) frees enough for it (backfill.py). Scanning every node for that costs in proportion to
the cluster on every plan; the replay simulator plans at almost every event on a cluster it
keeps, whose nodes change a few at a time. A ReadyIndex keeps, for one size (GPUs, CPUs,
memory, gang or not) of job without a GPU type or memory asked for, every node's time in a
heap and recomputes only the nodes that changed since it was last asked.
"""
from __future__ import annotations

import heapq

NOW = float("-inf")  # the node has room now


class ReadyIndex:
    """Nodes by (time they could take a job of this size, node index); see the module
    docstring. `dirty` holds the indexes of nodes changed since the last question."""

    def __init__(self, gpus: int, cpus: int, memory_mb: int, gang: bool, nodes: int):
        self.gpus, self.cpus, self.memory_mb, self.gang = gpus, cpus, memory_mb, gang
        self.dirty: set[int] = set(range(nodes))
        self.at: dict[int, float] = {}  # node index -> its current time (absent: never)
        self.heap: list[tuple[float, int]] = []  # may hold outdated entries

    def ready_at(self, ns) -> float | None:
        """When node `ns` could take the job by its running jobs' limits: NOW if it has room
        now, None if never (down, too small, or no gang allowed)."""
        if (not ns.up or self.cpus > ns.cpus or self.memory_mb > ns.memory_mb
                or len(ns.gpus) < self.gpus or (self.gang and not ns.gang_ok)):
            return None
        need, cpus, mem = self.gpus, self.cpus, self.memory_mb
        free, c, m = len(ns.free), ns.free_cpus, ns.free_mem
        if free >= need and c >= cpus and m >= mem:
            return NOW
        slots = ns.slots
        for end, gidx, jc, jm in ns.ends():
            free += sum(1 for g in gidx if g in slots)
            c += jc
            m += jm
            if free >= need and c >= cpus and m >= mem:
                return end
        return None

    def earliest(self, nodes: list, k: int) -> list[tuple[float, int]]:
        """The k (or fewer) nodes that could take the job first, as (time, node index) in
        that order."""
        at, heap = self.at, self.heap
        if self.dirty:
            for i in self.dirty:
                t = self.ready_at(nodes[i])
                if t is None:
                    at.pop(i, None)
                elif at.get(i) != t:
                    at[i] = t
                    heapq.heappush(heap, (t, i))
            self.dirty.clear()
            if len(heap) > 2 * len(at) + 64:
                self.heap = heap = sorted((t, i) for i, t in at.items())
        out: list[tuple[float, int]] = []
        taken: set[int] = set()
        while heap and len(out) < k:
            t, i = heapq.heappop(heap)
            if at.get(i) == t and i not in taken:
                taken.add(i)
                out.append((t, i))
        for e in out:
            heapq.heappush(heap, e)
        return out
