"""Plan.reasons and Plan.priorities as read-only mappings computed on access.

A plan has a reason for every waiting job and a priority for every pending one; writing them all
out would cost more than the plan itself on a big queue. Instead the plan keeps what they are
made of: per class the constant part of the priority and the verdict of the walk, per job the
exceptions (the head a class was stopped at, jobs that did not start, jobs that are not
eligible), and the job index of the plan's snapshot. A lookup costs a few dict lookups; only
iterating (`items()`, `dict(...)`, comparing with a dict) visits every job. Both compare equal to
a plain dict with the same items. They never change once the plan is made.
"""
from __future__ import annotations

from collections.abc import Mapping

from .limits import quota_reason
from .memo import JobIndex

_MISSING = object()
OPEN = object()  # a class's verdict that the plan's final cluster gives when asked


class _Eligible:
    """Which jobs were eligible (in the policy's queue) in the plan, and their classes."""
    __slots__ = ("index", "extra", "class_no", "count")

    def __init__(self, index: JobIndex, extra: dict, class_no: dict, count: int):
        self.index = index  # id -> (job, its class, or None when not eligible)
        self.extra = extra  # id -> (job, class no.): pending with dependencies, all met
        self.class_no = class_no  # class -> its number in the plan
        self.count = count

    def locate(self, job_id):
        """(job, class number) of an eligible job, else None."""
        e = self.extra.get(job_id) if self.extra else None
        if e is not None:
            return e
        e = self.index.get(job_id)
        if e is None or e[1] is None:
            return None
        return e[0], self.class_no[e[1]]

    def jobs(self):
        for j, c in self.index.values():
            if c is not None:
                yield j
        for j, _ in self.extra.values():
            yield j


class PlanReasons(Mapping):
    """job id -> pending reason, for every pending or held job the plan does not start."""
    __slots__ = ("_fixed", "_heads", "_started", "_elig", "_verdicts", "_filtered", "_window",
                 "_default_tl", "_cluster", "_open_reason")

    def __init__(self, fixed: dict, heads: dict, started: set, elig: _Eligible,
                 verdicts: list, filtered: frozenset, window: float, default_tl: float, cluster,
                 open_reason: str):
        self._fixed = fixed  # jobs not eligible: held, dependencies
        self._heads = heads  # eligible jobs whose reason is not their class's verdict
        self._started = started
        self._elig = elig
        # class number -> reason of the members the walk did not reach; OPEN: the walk
        # stopped before the class, whose reason is then what the final cluster says
        self._verdicts = verdicts
        self._filtered = filtered  # classes cut by backfill: members outlasting the window wait
        self._window = window
        self._default_tl = default_tl
        self._cluster = cluster  # as the plan left it; never changed again
        self._open_reason = open_reason

    def get(self, job_id, default=None):
        r = self._fixed.get(job_id)
        if r is not None:
            return r
        if job_id in self._started:
            return default
        r = self._heads.get(job_id)
        if r is not None:
            return r
        found = self._elig.locate(job_id)
        if found is None:
            return default
        j, n = found
        if n in self._filtered:
            tl = self._default_tl if j.time_limit_s is None else j.time_limit_s
            if tl > self._window:
                return "Priority"
        r = self._verdicts[n]
        if r is OPEN:
            cluster = self._cluster
            r = cluster.feasibility(j) or quota_reason(cluster, j) or self._open_reason
            self._verdicts[n] = r  # the same for every member
        return default if r is None else r

    def __getitem__(self, job_id):
        r = self.get(job_id, _MISSING)
        if r is _MISSING:
            raise KeyError(job_id)
        return r

    def __contains__(self, job_id) -> bool:
        return self.get(job_id, _MISSING) is not _MISSING

    def __len__(self) -> int:
        return len(self._fixed) + self._elig.count - len(self._started)

    def __iter__(self):
        yield from self._fixed
        started = self._started
        for j in self._elig.jobs():
            if j.id not in started:
                yield j.id

    def __repr__(self) -> str:
        return f"PlanReasons({len(self)} jobs)"


class PlanPriorities(Mapping):
    """job id -> priority, for every pending job."""
    __slots__ = ("_frozen", "_elig", "_consts", "_now", "_floor", "_wa", "_inv_age", "_starved")

    def __init__(self, frozen: dict, elig: _Eligible, consts: list, now: float, floor: float,
                 weight_age: float, inv_age: float, starved: float | None = None):
        self._frozen = frozen  # waiting on a dependency: no age
        self._elig = elig
        self._consts = consts  # class number -> the part of the priority its members share
        self._now = now
        self._floor = floor
        self._wa = weight_age
        self._inv_age = inv_age
        self._starved = starved  # priority.starved_priority

    def get(self, job_id, default=None):
        p = self._frozen.get(job_id)
        if p is not None:
            return p
        found = self._elig.locate(job_id)
        if found is None:
            return default
        j, n = found
        t = j.submit_time if j.eligible_time is None else j.eligible_time
        now = self._now
        if t <= self._floor and self._starved is not None:
            return self._starved
        return self._consts[n] + self._wa * (
            1.0 if t <= self._floor else (now - t) * self._inv_age if t < now else 0.0)

    def __getitem__(self, job_id):
        p = self.get(job_id, _MISSING)
        if p is _MISSING:
            raise KeyError(job_id)
        return p

    def __contains__(self, job_id) -> bool:
        return self.get(job_id, _MISSING) is not _MISSING

    def __len__(self) -> int:
        return len(self._frozen) + self._elig.count

    def __iter__(self):
        yield from self._frozen
        for j in self._elig.jobs():
            yield j.id

    def __repr__(self) -> str:
        return f"PlanPriorities({len(self)} jobs)"
