"""The active jobs of a snapshot sorted out for the policy, and PlanMemo, which keeps them
between plans.

`ActiveJobs` splits the jobs into running, other (held or waiting on a dependency) and the queue
of eligible pending jobs (queue.py), and indexes them by id. `plan` builds one from the snapshot
each time, or, when the daemon passes a `PlanMemo`, keeps it inside the memo and brings it up to
date with the jobs that changed since the last plan. The daemon keeps its JobView objects
stable: an unchanged job is the same object on every pass and a changed job is a new object with
the same id, so comparing the previous job list with the new one by identity finds what changed.
Nothing here is a source of truth: a memo gives exactly the plan a fresh ActiveJobs would give,
and falls back to a fresh one whenever it cannot follow (another config, time running
backwards, a large change).
"""
from __future__ import annotations

import threading
from itertools import islice, repeat
from operator import attrgetter

from .priority import class_key
from .queue import PendingQueue, age_floor
from .snapshot import JobView, PolicyConfig

ID = attrgetter("id")
_MISSING = object()


class JobIndex:
    """Job id -> (JobView, its JobClass if eligible else None) as of one plan: a shared base dict
    that is never modified once built, and a small dict of changes on top of it (None: the
    job is gone)."""
    __slots__ = ("_base", "_delta", "_source")

    def __init__(self, base: dict | None, delta: dict, source: tuple | None = None):
        self._base = base
        self._delta = delta
        self._source = source  # (jobs, classes): built into the base on first use

    def base(self) -> dict:
        if self._base is None:
            self._base = _index(*self._source)
            self._source = None
        return self._base

    def get(self, job_id) -> tuple | None:
        e = self._delta.get(job_id, _MISSING)
        if e is _MISSING:
            return (self._base if self._base is not None else self.base()).get(job_id)
        return e

    def values(self):
        delta = self._delta
        if delta:
            for jid, e in self.base().items():
                if jid not in delta:
                    yield e
            for e in delta.values():
                if e is not None:
                    yield e
        else:
            yield from self.base().values()


def _index(jobs, classes) -> dict:
    out = dict(zip(map(ID, jobs), zip(jobs, repeat(None))))
    for c in classes:
        lst = c.ordered()
        out.update(zip(map(ID, lst), zip(lst, repeat(c))))
    return out


class ActiveJobs:
    """Active jobs sorted out for the policy (see the module docstring)."""

    def __init__(self, jobs: list[JobView], now: float, config: PolicyConfig):
        self.jobs = list(jobs)
        self.running: dict[int, JobView] = {}
        self.others: dict[int, JobView] = {}  # held, or pending with dependencies
        eligible = []
        running, others = self.running, self.others
        for j in self.jobs:
            s = j.state
            if s == "PENDING" and not j.dependencies:
                eligible.append(j)
            elif s == "RUNNING":
                running[j.id] = j
            else:
                others[j.id] = j
        self.queue = PendingQueue(config, now, eligible)
        self.base: dict | None = None
        self.delta: dict[int, tuple | None] = {}  # see JobIndex
        self.kept = False  # kept between plans (by a PlanMemo)

    def follow(self, jobs: list[JobView], now: float, config: PolicyConfig) -> bool:
        """Apply the difference between the previous job list and `jobs`. False (and the state
        is left unusable) when a fresh state is needed instead."""
        if class_key(config) is not self.queue.key:
            return False
        floor = age_floor(config, now)
        if floor < self.queue.floor:
            return False
        limit = max(1000, len(jobs) // 8)
        found = _diff(self.jobs, jobs, self.lookup, limit)
        if found is None:
            return False
        removed, added = found
        if removed or added:
            if self.base is None:
                self._freeze_base()
            for j in removed:
                self._remove(j)
            for j in added:
                self._add(j)
            self.jobs = list(jobs)
        self.queue.advance(floor)
        if len(self.delta) > max(2048, len(jobs) // 16):
            self._freeze_base()
        return True

    def lookup(self, job_id) -> JobView | None:
        e = self.delta.get(job_id, _MISSING)
        if e is _MISSING:
            e = self.base_dict().get(job_id)
        return None if e is None else e[0]

    def base_dict(self) -> dict:
        if self.base is None:
            self._freeze_base()
        return self.base

    def index(self) -> JobIndex:
        """The id index as of now, unaffected by later changes to this state."""
        if self.base is None:
            return JobIndex(None, {}, (self.jobs, list(self.queue.classes.values())))
        return JobIndex(self.base, dict(self.delta) if self.delta else {})

    def _freeze_base(self) -> None:
        if self.base is None:
            self.base = _index(self.jobs, self.queue.classes.values())
        else:
            base = self.base.copy()  # the old one may be in use by an earlier plan
            for jid, j in self.delta.items():
                if j is None:
                    base.pop(jid, None)
                else:
                    base[jid] = j
            self.base = base
        self.delta = {}

    def _remove(self, j: JobView) -> None:
        jid = j.id
        mine = self.lookup(jid)
        if mine is not j:
            if mine is None or mine != j:
                return  # not ours (a duplicate id): nothing recorded
            j = mine  # an equal object stood in for it (see _diff)
        self.delta[jid] = None
        if j.state == "RUNNING":
            self.running.pop(jid, None)
        elif j.state == "PENDING" and not j.dependencies:
            self.queue.remove(j)
        else:
            self.others.pop(jid, None)

    def _add(self, j: JobView) -> None:
        jid = j.id
        if self.lookup(jid) is not None:
            raise ValueError(f"job {jid} listed twice")  # a fresh state copes
        if j.state == "RUNNING":
            self.running[jid] = j
            self.delta[jid] = (j, None)
        elif j.state == "PENDING" and not j.dependencies:
            self.delta[jid] = (j, self.queue.add(j))
        else:
            self.others[jid] = j
            self.delta[jid] = (j, None)


def _diff(prev: list, cur: list, prev_lookup, limit: int):
    """(removed, added): jobs of `prev` missing from `cur` and jobs of `cur` missing from
    `prev`, by identity, or None when more than `limit` steps would be needed. Lists that
    mostly agree in order (the daemon lists its jobs in a stable order) cost little."""
    removed: list = []
    added: list = []
    i = k = 0
    np_, nc = len(prev), len(cur)
    steps = 0
    while i < np_ and k < nc:
        p, c = prev[i], cur[k]
        if p is c:
            # skip the common run: blocks, growing while they match, by list comparison
            # (identity first, then equality: a JobView equal to the one the state holds is
            # as good), then one by one
            size = 16
            while True:
                if (i + size <= np_ and k + size <= nc
                        and prev[i:i + size] == cur[k:k + size]):
                    i += size
                    k += size
                    if size < 4096:
                        size *= 2
                elif size > 16:
                    size //= 4
                else:
                    break
            while i < np_ and k < nc and prev[i] is cur[k]:
                i += 1
                k += 1
            continue
        steps += 1
        if steps > limit:
            return None
        if p.id == c.id:  # changed in place
            removed.append(p)
            added.append(c)
            i += 1
            k += 1
        elif prev_lookup(c.id) is None:  # new
            added.append(c)
            k += 1
        else:  # p gone (or moved: then it comes back as added)
            removed.append(p)
            i += 1
    if np_ - i + nc - k + steps > limit:
        return None
    removed.extend(islice(prev, i, None))
    added.extend(islice(cur, k, None))
    return removed, added


class PlanMemo:
    """A cache the daemon passes to `plan` (Snapshot.memo) on every pass, the same object each
    time, so that a plan costs in proportion to what changed rather than to the whole queue.

    The plan is exactly the one `plan` gives without a memo. Rules for the caller: a job that
    did not change is the same JobView object as in the previous snapshot; a job that changed is
    a new object (never modify a JobView that was handed to `plan`). One plan at a time per memo
    (a second, concurrent call plans without it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state: ActiveJobs | None = None
        self.fresh_builds = 0  # how often a fresh state was built (for tests and curiosity)

    def clear(self) -> None:
        self._state = None

    def state(self, jobs: list[JobView], now: float, config: PolicyConfig) -> ActiveJobs:
        """Called by plan with the lock held."""
        st = self._state
        self._state = None  # dropped if anything below raises
        try:
            ok = st is not None and st.follow(jobs, now, config)
        except Exception:
            ok = False
        if not ok:
            st = ActiveJobs(jobs, now, config)
            st.kept = True
            st.base_dict()  # the index the next passes update
            self.fresh_builds += 1
        self._state = st
        return st
