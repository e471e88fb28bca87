"""The walk's classes in priority order when priorities do not change with time (no weight on
age or fair-share, as for the replay's sjf-oracle and vc-fifo), for a walk for the starts alone.

The walk's usual heap of class heads is built anew on every plan, in proportion to the
classes; a queue whose every job is a class of its own (the oracle's: each time limit its own
priority) makes that the cost of a plan. Here the queue keeps, per shape, its classes in order
(PendingQueue.by_shape) and the walk merges the shapes, taking classes only as it reaches them.
A shape the walk has settled (it can start nothing more, walk.py) is passed over whole: its
classes would all wait, and a walk for the starts alone gives them no reason.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable


class ShapeStreams:
    """Classes by shape (each list in walk order) merged into one walk order."""

    def __init__(self, by_shape: dict[tuple, list]):
        self.by_shape = by_shape
        self.cursor = dict.fromkeys(by_shape, 0)  # per shape, its next class not yet taken
        self.back: dict[tuple, list] = {}  # per shape, (-priority, submit, id, n) put back
        # (key of the shape's first item, shape); an entry whose key is no longer its
        # shape's first is stale and passed over
        self.top = [(lst[0].rank, shape) for shape, lst in by_shape.items() if lst]
        heapq.heapify(self.top)

    def _first(self, shape: tuple) -> tuple | None:
        lst, k, back = self.by_shape[shape], self.cursor[shape], self.back.get(shape)
        nxt = lst[k].rank if k < len(lst) else None
        if back and (nxt is None or back[0][:3] < nxt):
            return back[0][:3]
        return nxt

    def pop(self, settled: Callable[[tuple], bool], number: Callable) -> int | None:
        """The number of the next class in walk order (`number` numbers a class the walk
        has not seen), passing over the shapes `settled` says are; None when none is left."""
        top = self.top
        while top:
            key, shape = top[0]
            if settled(shape) or self._first(shape) != key:
                heapq.heappop(top)
                continue
            lst, k, back = self.by_shape[shape], self.cursor[shape], self.back.get(shape)
            if back and back[0][:3] == key:
                n = heapq.heappop(back)[3]
            else:
                n = number(lst[k])
                self.cursor[shape] = k + 1
            nxt = self._first(shape)
            if nxt is None:
                heapq.heappop(top)
            else:
                heapq.heapreplace(top, (nxt, shape))
            return n
        return None

    def push(self, shape: tuple, entry: tuple) -> None:
        """Put a class back at its next member: (-priority, submit, id, n)."""
        first = self._first(shape)
        heapq.heappush(self.back.setdefault(shape, []), entry)
        if first is None or entry[:3] < first:
            heapq.heappush(self.top, (entry[:3], shape))
