"""Job states and the one table of transitions the daemon allows."""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    HELD = "HELD"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT,
                   JobState.NODE_FAIL})
ACTIVE = frozenset(JobState) - FINAL

S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # PENDING -> PENDING: sent to a Slurm pool (still waiting there), or back from it;
    # PENDING -> FAILED: the pool's sbatch refused the job
    S.PENDING: frozenset({S.RUNNING, S.HELD, S.CANCELLED, S.PENDING, S.FAILED}),
    S.HELD: frozenset({S.PENDING, S.CANCELLED}),
    # RUNNING -> PENDING is a requeue after a node was lost
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL, S.PENDING}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMEOUT: frozenset(),
    S.NODE_FAIL: frozenset(),
}


def allowed(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]
