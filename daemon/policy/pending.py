"""The policy's view of the active jobs between plans: running, other (held or waiting on a
dependency) and eligible pending jobs, the latter grouped into classes (priority.py) and kept in
priority order, plus an index from job id to job.

`plan` builds a `JobState` from the snapshot each time, or, when the daemon passes a `PlanMemo`,
keeps it inside the memo and brings it up to date with the jobs that changed since the last
plan. The daemon keeps its JobView objects stable: an unchanged job is the same object on every
pass and a changed job is a new object with the same id, so comparing the previous job list with
the new one by identity finds what changed. Nothing here is a source of truth: a memo gives
exactly the plan a fresh state would give, and falls back to a fresh state whenever it cannot
follow (another config, time running backwards, a large change).

Order within a class: (max(now - max_age_s, t0), submit time, id), where t0 is the eligible time,
else the submit time (ages saturate at max_age_s). A class keeps its members whose t0 is at or
before the age floor in `sat`, sorted by (submit, id), and the rest in `fresh`, sorted by (t0,
submit, id); priority order is `sat` followed by `fresh`. As time passes the floor rises and
members move from the front of `fresh` into `sat`.
"""
from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections import Counter, defaultdict
from itertools import chain, compress, islice, repeat
from operator import attrgetter, le, not_

from .placement import shape_of
from .priority import class_fields, getter
from .snapshot import JobView, PolicyConfig

ID = attrgetter("id")
TIME_LIMIT = attrgetter("time_limit_s")
SUBMIT_ORDER = getter(("submit_time", "id"))
_MISSING = object()
INF = float("inf")


def t0_of(job: JobView) -> float:
    return job.submit_time if job.eligible_time is None else job.eligible_time


def _fresh_order(job: JobView) -> tuple:
    return (t0_of(job), job.submit_time, job.id)


class PClass:
    """One class of eligible pending jobs (jobs that differ only in age)."""
    __slots__ = ("key", "head", "shape", "sat", "fresh", "tls", "_ordered")

    def __init__(self, key: tuple, head: JobView, sat: list, fresh: list):
        self.key = key
        self.head = head  # any member: carries the fields the class shares
        self.shape = shape_of(head)
        self.sat = sat
        self.fresh = fresh
        self.tls: Counter | None = None  # members by time_limit_s, once asked for
        self._ordered: list | None = None

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


class JobIndex:
    """Job id -> (JobView, its PClass if eligible else None) as of one plan: a shared base dict
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


class JobState:
    """Active jobs sorted out for the policy (see the module docstring)."""

    def __init__(self, jobs: list[JobView], now: float, config: PolicyConfig):
        self.fields = class_fields(config)
        self.keyf = getter(self.fields)
        self.floor = now - config.max_age_s
        self.jobs = list(jobs)
        self.running: dict[int, JobView] = {}
        self.others: dict[int, JobView] = {}  # held, or pending with dependencies
        self.classes: dict[tuple, PClass] = {}
        self.eligible = 0  # members of the classes
        self.cpu_only = 0  # members asking for no GPU
        self.base: dict | None = None
        self.delta: dict[int, tuple | None] = {}  # see JobIndex
        self.shape_tls: dict[tuple, Counter] | None = None  # see shapes()
        self.next_move = -INF  # no fresh member's t0 is below this (see _advance)
        self.kept = False  # kept between plans (by a PlanMemo)
        self._build()

    # -- a fresh state ---------------------------------------------------------------------
    def _build(self) -> None:
        jobs = self.jobs
        eligible = []
        running, others = self.running, self.others
        for j in jobs:
            s = j.state
            if s == "PENDING" and not j.dependencies:
                eligible.append(j)
            elif s == "RUNNING":
                running[j.id] = j
            else:
                others[j.id] = j
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
            sat, fresh = eligible[:k], eligible[k:]
        else:
            old = list(map(le, t0, repeat(floor)))
            sat = list(compress(eligible, old))
            fresh_t0 = [t for t, o in zip(t0, old) if not o]
            fresh = list(compress(eligible, map(not_, old)))
            order = sorted(range(len(fresh)), key=fresh_t0.__getitem__)  # stable
            fresh = [fresh[i] for i in order]
        keyf = self.keyf
        classes = self.classes
        groups: dict[tuple, list[JobView]] = defaultdict(list)
        for job in sat:
            groups[keyf(job)].append(job)
        for key, lst in groups.items():
            classes[key] = PClass(key, lst[0], lst, [])
        groups = defaultdict(list)
        for job in fresh:
            groups[keyf(job)].append(job)
        for key, lst in groups.items():
            c = classes.get(key)
            if c is None:
                classes[key] = PClass(key, lst[0], [], lst)
            else:
                c.fresh = lst
        self.cpu_only = sum(len(c) for c in classes.values() if c.head.gpus <= 0)
        self.eligible = len(eligible)

    # -- bringing a kept state up to date --------------------------------------------------
    def follow(self, jobs: list[JobView], now: float, config: PolicyConfig) -> bool:
        """Apply the difference between the previous job list and `jobs`. False (and the state
        is left unusable) when a fresh state is needed instead."""
        if class_fields(config) != self.fields:
            return False
        floor = now - config.max_age_s
        if floor < self.floor:
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
        if floor > self.floor:
            self._advance(floor)
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
            return JobIndex(None, {}, (self.jobs, list(self.classes.values())))
        return JobIndex(self.base, dict(self.delta) if self.delta else {})

    def _freeze_base(self) -> None:
        if self.base is None:
            self.base = _index(self.jobs, self.classes.values())
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
            key = self.keyf(j)
            c = self.classes[key]
            lst, order = (c.sat, SUBMIT_ORDER) if t0_of(j) <= self.floor else (c.fresh,
                                                                                _fresh_order)
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
                st = self.shape_tls[c.shape]
                st[j.time_limit_s] -= 1
                if not any(st.values()):
                    del self.shape_tls[c.shape]
            self.eligible -= 1
            if j.gpus <= 0:
                self.cpu_only -= 1
            if not (c.sat or c.fresh):
                del self.classes[key]
            elif c.head is j:
                c.head = c.sat[0] if c.sat else c.fresh[0]
        else:
            self.others.pop(jid, None)

    def _add(self, j: JobView) -> None:
        jid = j.id
        if self.lookup(jid) is not None:
            raise ValueError(f"job {jid} listed twice")  # a fresh state copes
        self.delta[jid] = (j, None)
        if j.state == "RUNNING":
            self.running[jid] = j
        elif j.state == "PENDING" and not j.dependencies:
            key = self.keyf(j)
            c = self.classes.get(key)
            if c is None:
                c = self.classes[key] = PClass(key, j, [], [])
            self.delta[jid] = (j, c)
            t0 = t0_of(j)
            if t0 <= self.floor:
                insort(c.sat, j, key=SUBMIT_ORDER)
            else:
                insort(c.fresh, j, key=_fresh_order)
                if t0 < self.next_move:
                    self.next_move = t0
            c._ordered = None
            if c.tls is not None:
                c.tls[j.time_limit_s] += 1
            if self.shape_tls is not None:
                self.shape_tls.setdefault(c.shape, Counter())[j.time_limit_s] += 1
            self.eligible += 1
            if j.gpus <= 0:
                self.cpu_only += 1
        else:
            self.others[jid] = j

    def _advance(self, floor: float) -> None:
        """Move members whose t0 the new age floor has passed from `fresh` into `sat`."""
        self.floor = floor
        if floor < self.next_move:
            return
        next_move = INF
        for c in self.classes.values():
            f = c.fresh
            if not f:
                continue
            t = t0_of(f[0])
            if t > floor:
                if t < next_move:
                    next_move = t
            else:
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
        """Members' time limits by shape (placement.shape_of), over all classes."""
        if self.shape_tls is None:
            out: dict[tuple, Counter] = {}
            for c in self.classes.values():
                t = out.get(c.shape)
                if t is None:
                    out[c.shape] = Counter(c.tl_counts())
                else:
                    t.update(c.tl_counts())
            self.shape_tls = out
        return self.shape_tls


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
        self._state: JobState | None = None
        self.fresh_builds = 0  # how often a fresh state was built (for tests and curiosity)

    def clear(self) -> None:
        self._state = None

    def state(self, jobs: list[JobView], now: float, config: PolicyConfig) -> JobState:
        """Called by plan with the lock held."""
        st = self._state
        self._state = None  # dropped if anything below raises
        try:
            ok = st is not None and st.follow(jobs, now, config)
        except Exception:
            ok = False
        if not ok:
            st = JobState(jobs, now, config)
            st.kept = True
            st.base_dict()  # the index the next passes update
            self.fresh_builds += 1
        self._state = st
        return st
