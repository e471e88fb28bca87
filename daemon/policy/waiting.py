"""What a waiting job waits for beyond its reason: the plan's backfill reservation, and the
longest time limit with which the job would start now.

Users read "Priority" as "wait your turn"; what they can act on is the reservation in the way
(whose job, how many GPUs, until when) and whether a shorter --time would let backfill start
their job now. A job gets that limit when it fits now on the reservation's node, only on what
the reservation holds back, and its own limit outlasts the reservation: with a limit that ends
before the reserved job starts it would be started (backfill.Reservation.allows).
Like the reasons, these are computed on access, once per shape, from the cluster as the plan
left it.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from .backfill import Reservation
from .placement import Cluster, shape_of

_MISSING = object()


@dataclass(frozen=True)
class Reserved:
    """The plan's one backfill reservation."""
    job: int  # the job it is for
    node: str
    gpus: int  # how many GPUs it holds back
    until: float  # when the reserved job is expected to start


def reserved(res: Reservation | None, cluster: Cluster | None) -> Reserved | None:
    if res is None or cluster is None:
        return None
    return Reserved(res.job, cluster.nodes[res.node].name, len(res.gpus), res.time)


class BackfillLimits(Mapping):
    """job id -> the longest time limit (seconds) with which the job would start now, for the
    pending jobs that backfill keeps from starting."""

    def __init__(self, res: Reservation | None, cluster: Cluster | None, reasons: Mapping,
                 locate, now: float, default_tl: float):
        self._res, self._cluster, self._reasons = res, cluster, reasons
        self._locate = locate  # job id -> (JobView, class no.) of an eligible job, or None
        self._now, self._default_tl = now, default_tl
        self._window = res.time - now if res is not None else 0.0
        self._by_shape: dict[tuple, bool] = {}
        # best_fit notes what it found on the cluster: one question at a time
        self._lock = threading.Lock()

    def get(self, job_id, default=None):
        res = self._res
        if (res is None or self._cluster is None or self._window <= 0 or job_id == res.job
                or self._reasons.get(job_id) != "Priority"):
            return default
        found = self._locate(job_id)
        if found is None:
            return default
        job = found[0]
        limit = self._default_tl if job.time_limit_s is None else job.time_limit_s
        if limit <= self._window:
            return default  # it ends in time already: something else keeps it waiting
        key = (shape_of(job), job.group, job.partition)
        cut = self._by_shape.get(key)
        if cut is None:
            with self._lock:
                cut = self._by_shape[key] = self._cut_by(job)
        return self._window if cut else default

    def _cut_by(self, job) -> bool:
        """The job fits now, but only on what the reservation holds back."""
        cluster, res = self._cluster, self._res
        assert cluster is not None and res is not None
        placed = cluster.best_fit(job)
        if placed is None or placed[0] != res.node:
            return False
        return cluster.best_fit(job, avoid=res) is None

    def __getitem__(self, job_id):
        r = self.get(job_id, _MISSING)
        if r is _MISSING:
            raise KeyError(job_id)
        return r

    def __iter__(self):
        for job_id in self._reasons:
            if self.get(job_id) is not None:
                yield job_id

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return "BackfillLimits(...)"
