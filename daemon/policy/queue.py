"""The queue of eligible pending jobs: jobs grouped into classes, each kept in priority order.

A class is the jobs that differ only in age (priority.class_key): every member shares the rest
of the priority, so within a class priority order is age order. The walk merges the heads of
the classes instead of sorting every job, and once the head of a class cannot start none behind
it can either.

Order within a class: (max(floor, t0), submit time, id), where t0 is the eligible time, else the
submit time, and the age floor is now - max_age_s (ages saturate at max_age_s; see age_floor
for a weight of 0). A class keeps
its members whose t0 is at or before the floor in `sat`, sorted by (submit, id), and the rest in
`fresh`, sorted by (t0, submit, id); priority order is `sat` followed by `fresh`. As time passes
the floor rises and members move from the front of `fresh` into `sat` (`advance`).

The daemon's plans keep one in their ActiveJobs (memo.py), across plans with a PlanMemo; the
replay simulator keeps one alive across events, adding submitted jobs and removing started ones.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import Counter, defaultdict
from itertools import chain, compress, repeat
from operator import attrgetter, le, not_

from .placement import shape_of
from .priority import class_key
from .snapshot import JobView, PolicyConfig

TIME_LIMIT = attrgetter("time_limit_s")
RANK = attrgetter("rank")
SUBMIT_ORDER = attrgetter("submit_time", "id")
INF = float("inf")


def age_floor(config: PolicyConfig, now: float) -> float:
    """The t0 at or before which ages are saturated. With no weight on age every job counts as
    saturated: jobs of a class then tie on priority and go by submit time, then id."""
    return now - config.max_age_s if config.weight_age else INF


def t0_of(job: JobView) -> float:
    return job.submit_time if job.eligible_time is None else job.eligible_time


def _fresh_order(job: JobView) -> tuple:
    return (t0_of(job), job.submit_time, job.id)


class JobClass:
    """One class of eligible pending jobs (jobs that differ only in age)."""
    __slots__ = ("key", "head", "shape", "sat", "fresh", "tls", "_ordered", "const", "rank")

    def __init__(self, key: tuple, head: JobView, sat: list, fresh: list):
        self.key = key
        self.head = head  # any member: carries the fields the class shares
        self.shape = shape_of(head)
        self.sat = sat
        self.fresh = fresh
        self.tls: Counter | None = None  # members by time_limit_s, once asked for
        self._ordered: list | None = None
        # (fair-share factor, weights, constant part of the priority): kept by the walk
        self.const: tuple | None = None
        self.rank: tuple = ()  # where it goes in PendingQueue.by_shape

    def tl_counts(self) -> Counter:
        """How many members have each time_limit_s (None included)."""
        if self.tls is None:
            self.tls = Counter(map(TIME_LIMIT, chain(self.sat, self.fresh)))
        return self.tls

    def __len__(self) -> int:
        return len(self.sat) + len(self.fresh)

    def ordered(self) -> list[JobView]:
        """Members in priority order; the caller must not modify the list, and may keep it
        only until the class changes."""
        if not self.fresh:
            return self.sat
        if not self.sat:
            return self.fresh
        if self._ordered is None:
            self._ordered = self.sat + self.fresh
        return self._ordered


class PendingQueue:
    """Eligible pending jobs (PENDING, no dependency left) in classes (see the module
    docstring). `jobs` fills it at once, in any order; `add` and `remove` follow changes."""

    def __init__(self, config: PolicyConfig, now: float, jobs: list[JobView] = ()):
        self.key = class_key(config)
        self.floor = age_floor(config, now)
        self.classes: dict[tuple, JobClass] = {}
        self.eligible = 0  # members of the classes
        self.cpu_only = 0  # members asking for no GPU: they may fit when no GPU is free
        self.shape_tls: dict[tuple, Counter] | None = None  # see shapes()
        self.shape_order: dict[tuple, list[float]] = {}  # see shapes()
        self._by_shape: dict[tuple, list[JobClass]] | None = None  # see by_shape()
        self._rank = None
        self._rank_basis: tuple = ()
        self.next_move = -INF  # no fresh member's t0 is below this (see advance)
        if jobs:
            self._fill(list(jobs))

    def __len__(self) -> int:
        return self.eligible

    def _fill(self, eligible: list[JobView]) -> None:
        sat, fresh = self._split(eligible)
        keyf, classes = self.key, self.classes
        groups: dict[tuple, list[JobView]] = defaultdict(list)
        for job in sat:
            groups[keyf(job)].append(job)
        for key, lst in groups.items():
            classes[key] = JobClass(key, lst[0], lst, [])
        groups = defaultdict(list)
        for job in fresh:
            groups[keyf(job)].append(job)
        for key, lst in groups.items():
            c = classes.get(key)
            if c is None:
                classes[key] = JobClass(key, lst[0], [], lst)
            else:
                c.fresh = lst
        self.cpu_only = sum(len(c) for c in classes.values() if c.head.gpus <= 0)
        self.eligible = len(eligible)

    def _split(self, eligible: list[JobView]) -> tuple[list, list]:
        """(sat, fresh) over all jobs, each in its order."""
        submit = [j.submit_time for j in eligible]
        ids = [j.id for j in eligible]
        # snapshots usually list jobs by id, which is submit order: skip the sort then
        # (sorting a sorted list costs one comparison a job)
        if not (submit == sorted(submit) and ids == sorted(ids)):
            eligible.sort(key=SUBMIT_ORDER)
            submit = [j.submit_time for j in eligible]
        floor = self.floor
        elig_t = [j.eligible_time for j in eligible]
        if elig_t.count(None) == len(elig_t):
            t0 = submit
        else:
            t0 = [s if e is None else e for s, e in zip(submit, elig_t)]
        if t0 is submit or t0 == sorted(t0):
            # t0 ascending (the usual case): the (submit, id) order is also the (t0, submit,
            # id) order, and the members past the age floor come first
            k = bisect_right(t0, floor)
            return eligible[:k], eligible[k:]
        old = list(map(le, t0, repeat(floor)))
        sat = list(compress(eligible, old))
        fresh_t0 = [t for t, o in zip(t0, old) if not o]
        fresh = list(compress(eligible, map(not_, old)))
        order = sorted(range(len(fresh)), key=fresh_t0.__getitem__)  # stable
        return sat, [fresh[i] for i in order]

    def add(self, j: JobView) -> JobClass:
        """Queue a job; returns its class."""
        key = self.key(j)
        c = self.classes.get(key)
        new = c is None
        if c is None:
            c = self.classes[key] = JobClass(key, j, [], [])
        t0 = t0_of(j)
        if t0 <= self.floor:
            insort(c.sat, j, key=SUBMIT_ORDER)
        else:
            insort(c.fresh, j, key=_fresh_order)
            if t0 < self.next_move:
                self.next_move = t0
        c._ordered = None
        if self._by_shape is not None and (new or c.ordered()[0] is j):
            self._rerank(c, None if new else c.rank)
        if c.tls is not None:
            c.tls[j.time_limit_s] += 1
        if self.shape_tls is not None:
            st = self.shape_tls.get(c.shape)
            if st is None:
                st = self.shape_tls[c.shape] = Counter()
                self.shape_order[c.shape] = []
            tl = j.time_limit_s
            st[tl] += 1
            if st[tl] == 1 and tl is not None:
                insort(self.shape_order[c.shape], tl)
        self.eligible += 1
        if j.gpus <= 0:
            self.cpu_only += 1
        return c

    def remove(self, j: JobView) -> None:
        """Take a queued job out (the very object that was queued)."""
        key = self.key(j)
        c = self.classes[key]
        lst, order = (c.sat, SUBMIT_ORDER) if t0_of(j) <= self.floor else (c.fresh,
                                                                            _fresh_order)
        first = bool(lst) and lst[0] is j and (lst is c.sat or not c.sat)
        if lst and lst[0] is j:  # the usual case: the class's first job started
            i = 0
        else:
            i = bisect_left(lst, order(j), key=order)
            while i < len(lst) and lst[i] is not j:
                i += 1
            if i == len(lst):
                i = next(k for k, x in enumerate(lst) if x is j)
        del lst[i]
        c._ordered = None
        if c.tls is not None:
            c.tls[j.time_limit_s] -= 1
        if self.shape_tls is not None:
            st, tl = self.shape_tls[c.shape], j.time_limit_s
            st[tl] -= 1
            if not st[tl]:
                del st[tl]
                if tl is not None:
                    order = self.shape_order[c.shape]
                    del order[bisect_left(order, tl)]
                if not st:
                    del self.shape_tls[c.shape]
                    del self.shape_order[c.shape]
        self.eligible -= 1
        if j.gpus <= 0:
            self.cpu_only -= 1
        if not (c.sat or c.fresh):
            del self.classes[key]
            if self._by_shape is not None:
                ranked = self._by_shape[c.shape]
                del ranked[bisect_left(ranked, c.rank, key=RANK)]
                if not ranked:
                    del self._by_shape[c.shape]
            return
        if c.head is j:
            c.head = c.sat[0] if c.sat else c.fresh[0]
        if first and self._by_shape is not None:
            self._rerank(c, c.rank)

    def by_shape(self, rank, basis: tuple) -> dict[tuple, list[JobClass]]:
        """The classes by shape, each list in the order of `rank` (priority.static_rank, whose
        result depends on nothing but `basis` and the class), kept up to date once asked for.
        For a queue whose priorities do not change with time: no weight on age or fair-share."""
        if self._by_shape is None or basis != self._rank_basis:
            self._rank, self._rank_basis = rank, basis
            out: dict[tuple, list[JobClass]] = {}
            for c in self.classes.values():
                c.rank = rank(c)
                out.setdefault(c.shape, []).append(c)
            for lst in out.values():
                lst.sort(key=RANK)
            self._by_shape = out
        return self._by_shape

    def _rerank(self, c: JobClass, old: tuple | None) -> None:
        """Put class `c`, whose first member changed, where it now goes in by_shape."""
        assert self._by_shape is not None and self._rank is not None
        ranked = self._by_shape.setdefault(c.shape, [])
        if old is not None:
            del ranked[bisect_left(ranked, old, key=RANK)]
        c.rank = self._rank(c)
        insort(ranked, c, key=RANK)

    def advance(self, floor: float) -> None:
        """Raise the age floor to `floor` (age_floor(config, now)): members whose t0 it passed
        move from `fresh` into `sat`."""
        if floor <= self.floor:
            return
        self.floor = floor
        if floor < self.next_move:
            return
        self._by_shape = None  # the order of classes changes with their age
        next_move = INF
        for c in self.classes.values():
            f = c.fresh
            if not f:
                continue
            t = t0_of(f[0])
            if t > floor:
                if t < next_move:
                    next_move = t
                continue
            k = bisect_right(f, floor, key=t0_of)
            moved = f[:k]
            del f[:k]
            c._ordered = None
            if len(moved) > 32:
                c.sat = sorted(c.sat + moved, key=SUBMIT_ORDER)
            else:
                for j in moved:
                    insort(c.sat, j, key=SUBMIT_ORDER)
            if f and t0_of(f[0]) < next_move:
                next_move = t0_of(f[0])
        self.next_move = next_move

    def shapes(self) -> dict[tuple, Counter]:
        """Members' time limits by shape (placement.shape_of), over all classes, with no zero
        counts; once asked for, kept up to date, and `shape_order` with it: per shape, the
        limits (not None) in ascending order."""
        if self.shape_tls is None:
            out: dict[tuple, Counter] = {}
            for c in self.classes.values():
                t = out.get(c.shape)
                if t is None:
                    out[c.shape] = Counter(c.tl_counts())
                else:
                    t.update(c.tl_counts())
            for t in out.values():
                for tl in [tl for tl, k in t.items() if not k]:
                    del t[tl]
            self.shape_tls = out
            self.shape_order = {shape: sorted(tl for tl in t if tl is not None)
                                for shape, t in out.items()}
        return self.shape_tls
