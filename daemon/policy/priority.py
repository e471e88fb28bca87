"""Multifactor priority (Slurm's): a weighted sum of factors in [0, 1].

- age: (now - eligible) / max_age_s, capped at 1; eligible is `eligible_time`, else the submit
  time. It stays 0 while a job is held or waits on a dependency (the daemon sets
  `eligible_time` when that ends).
- fair-share: see fairshare.py.
- user priority: 1..10 mapped to 0..1.
- size: GPUs asked for relative to the largest node (weight 0 unless configured).
- short: 1 / (1 + time limit / default time limit), favouring short limits (weight 0 unless
  configured).
Ties go to the earlier submit, then the lower id.

Pending jobs are kept in classes of jobs that differ only in age: same group, user, user
priority, partition and request. Within a class priority order is age order, so the policy merges
the heads of the classes instead of sorting every job, and once the head of a class cannot start
none behind it can either. The replay simulator keeps a PendingQueue alive across events; `plan`
keeps its classes in pending.py (also across plans, with a memo).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from itertools import islice
from operator import attrgetter, le, lt

from .placement import shape_of
from .snapshot import JobView, PolicyConfig

_REQUEST = ("group", "owner", "priority", "partition", "gpus", "gpu_type", "gpu_memory_mb",
            "cpus", "memory_mb")


def age_factor(job: JobView, now: float, max_age_s: float) -> float:
    t0 = job.submit_time if job.eligible_time is None else job.eligible_time
    if max_age_s <= 0:
        return 1.0
    return min(1.0, max(0.0, now - t0) / max_age_s)


def user_factor(priority: int) -> float:
    return (min(10, max(1, priority)) - 1) / 9.0


def size_factor(gpus: int, largest_node_gpus: int) -> float:
    return min(1.0, gpus / largest_node_gpus) if largest_node_gpus > 0 else 0.0


def short_factor(time_limit_s: float | None, config: PolicyConfig) -> float:
    tl = config.default_time_limit_s if time_limit_s is None else time_limit_s
    return 1.0 / (1.0 + max(0.0, tl) / config.default_time_limit_s)


def time_limit(job: JobView, config: PolicyConfig) -> float:
    return config.default_time_limit_s if job.time_limit_s is None else job.time_limit_s


def getter(fields: tuple[str, ...]):
    """job -> the tuple of these fields; what attrgetter(*fields) does, faster on CPython
    3.11 (attribute loads in a function are specialised, attrgetter's are not)."""
    if not all(f.isidentifier() for f in fields):
        raise ValueError(fields)
    return eval("lambda j: (" + "".join(f"j.{f}, " for f in fields) + ")")


def class_fields(config: PolicyConfig) -> tuple[str, ...]:
    """The JobView fields that make up a job's class under this config."""
    return _REQUEST + (("time_limit_s",) if config.weight_short else ())


def class_constant(head: JobView, config: PolicyConfig, fairshare: float,
                   largest_node_gpus: int) -> float:
    """The part of the priority that every member of `head`'s class shares."""
    p = config.weight_fairshare * fairshare + config.weight_priority * user_factor(head.priority)
    if config.weight_size:
        p += config.weight_size * size_factor(head.gpus, largest_node_gpus)
    if config.weight_short:
        p += config.weight_short * short_factor(head.time_limit_s, config)
    return p


class JobClass:
    __slots__ = ("key", "head", "members", "_list")

    def __init__(self, key: tuple, head: JobView):
        self.key = key
        self.head = head  # any member: carries the shared fields
        self.members: dict[int, JobView] | None = {}  # None: only _list is kept
        self._list: list[JobView] | None = None

    def jobs(self) -> list[JobView]:
        """Members in priority order."""
        if self._list is None:
            self._list = list(self.members.values())
        return self._list

    def __len__(self) -> int:
        return len(self.members) if self.members is not None else len(self._list)

    ordered = jobs

    @property
    def shape(self) -> tuple:
        return shape_of(self.head)

    def tl_counts(self) -> Counter:
        """How many members have each time_limit_s (None included)."""
        return Counter(j.time_limit_s for j in self.jobs())

    def constant(self, config: PolicyConfig, fairshare: float, largest_node_gpus: int) -> float:
        """The part of the priority every member shares."""
        return class_constant(self.head, config, fairshare, largest_node_gpus)


class PendingQueue:
    """Eligible pending jobs grouped into classes, each in priority order.

    `add` must be called in order of (eligible time, submit time, id) within a class; `build`
    sorts. A job's class depends on the config (size and short factors split classes)."""

    def __init__(self, config: PolicyConfig):
        self._key = getter(class_fields(config))
        self.classes: dict[tuple, JobClass] = {}
        self.cpu_only = 0  # members asking for no GPU: they may fit when no GPU is free

    def __len__(self) -> int:
        return sum(len(c) for c in self.classes.values())

    def add(self, job: JobView) -> None:
        key = self._key(job)
        c = self.classes.get(key)
        if c is None:
            c = self.classes[key] = JobClass(key, job)
        c.members[job.id] = job
        c._list = None
        if job.gpus <= 0:
            self.cpu_only += 1

    def discard(self, job: JobView) -> None:
        key = self._key(job)
        c = self.classes.get(key)
        if c is None or c.members.pop(job.id, None) is None:
            return
        c._list = None
        if job.gpus <= 0:
            self.cpu_only -= 1
        if not c.members:
            del self.classes[key]

    @classmethod
    def build(cls, jobs: list[JobView], now: float, config: PolicyConfig) -> "PendingQueue":
        q = cls(config)
        submit = list(map(attrgetter("submit_time"), jobs))
        ids = list(map(attrgetter("id"), jobs))
        # snapshots usually list jobs by id, which is submit order: skip the sort then
        if not (all(map(le, submit, islice(submit, 1, None)))
                and all(map(lt, ids, islice(ids, 1, None)))):
            jobs = sorted(jobs, key=attrgetter("submit_time", "id"))
        groups: dict[tuple, list[JobView]] = defaultdict(list)
        for key, job in zip(map(q._key, jobs), jobs):
            groups[key].append(job)
        floor = now - config.max_age_s  # ages saturate: older jobs tie and go by submit time
        for key, lst in groups.items():
            if any(j.eligible_time is not None for j in lst):
                t0 = [max(floor, j.submit_time if j.eligible_time is None else j.eligible_time)
                      for j in lst]
                order = sorted(range(len(lst)), key=t0.__getitem__)  # stable: ties keep submit order
                lst = [lst[i] for i in order]
            c = q.classes[key] = JobClass(key, lst[0])
            c.members = None
            c._list = lst
            q.cpu_only += len(lst) if lst[0].gpus <= 0 else 0
        return q
