"""Job dependencies with Slurm's meaning: afterok, afterany, afternotok."""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from .snapshot import Dependency

# a job that ended in one of these did not succeed
NOT_OK_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})

MET = "met"
WAITING = "waiting"
NEVER = "never"


def dependency_status(deps: Iterable[Dependency], active: Container[int],
                      ended: Mapping[int, str]) -> str:
    """MET when every dependency holds, NEVER when one cannot hold any more, else WAITING.

    `active` holds the ids of jobs still pending, held or running; `ended` maps ended jobs to
    their final state. A target in neither is unknown and can never satisfy anything."""
    status = MET
    for dep in deps:
        final = ended.get(dep.job)
        if final is None:
            if dep.job in active:
                status = WAITING
                continue
            return NEVER
        if dep.kind == "afterok":
            ok = final == "COMPLETED"
        elif dep.kind == "afternotok":
            ok = final in NOT_OK_STATES
        elif dep.kind == "afterany":
            ok = True
        else:
            return NEVER
        if not ok:
            return NEVER
    return status


def find_cycle(edges: Mapping[int, Iterable[int]], new_job_id: int,
               new_deps: Iterable[int]) -> list[int] | None:
    """The cycle that giving `new_job_id` the dependencies `new_deps` would close, or None.

    `edges` maps a job to the jobs it depends on. The cycle is returned as a path of ids that
    starts and ends with `new_job_id`."""
    parent: dict[int, int] = {}
    stack = []
    for d in new_deps:
        if d == new_job_id:
            return [new_job_id, new_job_id]
        if d not in parent:
            parent[d] = new_job_id
            stack.append(d)
    while stack:
        node = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == new_job_id:
                path = [node]
                while path[-1] != new_job_id:
                    path.append(parent[path[-1]])
                path.reverse()
                return path + [new_job_id]
            if nxt not in parent:
                parent[nxt] = node
                stack.append(nxt)
    return None


class _Active:
    """Ids of the active jobs, for dependency checks, from a lookup by id."""
    __slots__ = ("lookup",)

    def __init__(self, lookup):
        self.lookup = lookup

    def __contains__(self, job_id) -> bool:
        return self.lookup(job_id) is not None


def sort_out(others: Iterable, lookup, ended: Mapping[int, str], cancel_unsatisfiable: bool):
    """Held jobs and pending jobs with dependencies, sorted out for a plan.

    Returns (reasons of those that wait, the pending ones among them, eligible, cancels):
    a job whose dependency can never be met waits for DependencyNeverSatisfied (and is
    cancelled when `cancel_unsatisfiable`), else a held job for Held, else a job with a
    dependency not yet met for Dependency; a pending job whose dependencies are all met is
    eligible. A waiting pending job keeps a priority, without age. `lookup` finds an active job
    by id (None if there is none)."""
    fixed: dict[int, str] = {}
    frozen: list = []
    eligible: list = []
    cancels: list[tuple[int, str]] = []
    active = _Active(lookup)
    for j in others:
        status = dependency_status(j.dependencies, active, ended) if j.dependencies else MET
        if status == NEVER:
            fixed[j.id] = "DependencyNeverSatisfied"
            if cancel_unsatisfiable:
                cancels.append((j.id, "DependencyNeverSatisfied"))
        elif j.state == "HELD":
            fixed[j.id] = "Held"
        elif status == MET:
            eligible.append(j)
        else:
            fixed[j.id] = "Dependency"
        if j.state == "PENDING" and status != MET:
            frozen.append(j)
    cancels.sort()
    return fixed, frozen, eligible, cancels
