"""The scheduler's view of a job row: the policy's JobView, built once per change."""
from __future__ import annotations

from labq.spec import parse_dependency

from .policy import Dependency, JobView


def dep_ids(job: dict) -> list[int]:
    return [parse_dependency(d)[1] for d in job["dependencies"]]


def sent_to_pool(j: dict) -> bool:
    """A job labqd has sent to a Slurm pool that has not started it yet: PENDING in labq,
    with the pool as its node. It holds the pool's capacity and is no longer placed."""
    return j["state"] == "PENDING" and j["node"] is not None


def job_view(j: dict) -> JobView:
    n = j.get("nodes") or 1
    # to the policy a job waiting in a Slurm pool is running there: it holds its share of
    # the pool, and the policy neither places it again nor counts it as waiting
    return JobView(
        nodes=n, parts=tuple((p[0], tuple(p[1])) for p in j.get("parts") or ()),
        id=j["id"], owner=j["owner"], group=j["group"],
        state="RUNNING" if sent_to_pool(j) else j["state"],
        owner_uid=-1 if j.get("owner_uid") is None else j["owner_uid"],
        priority=j["priority"], submit_time=j["submit_time"], gpus=j["gpus"] // n,
        gpu_type=j["gpu_type"], gpu_memory_mb=j["gpu_memory_mb"], cpus=j["cpus"],
        memory_mb=j["memory_mb"] or 0, time_limit_s=j["time_limit_s"],
        dependencies=tuple(Dependency(*parse_dependency(d)) for d in j["dependencies"]),
        partition=j["partition"], eligible_time=j["eligible_time"], node=j["node"],
        gpu_indices=tuple(j["gpu_indices"] or ()), start_time=j["start_time"],
        array_id=j.get("array_id"), array_limit=j.get("array_limit"),
        preemptible=bool(j.get("preemptible")), preemptions=j.get("preemptions") or 0)
