"""Limits that make a job wait (never drop it): counted over running jobs plus the starts made
earlier in the same plan, which the cluster's counters already include."""
from __future__ import annotations

from .placement import Cluster
from .snapshot import JobView


def quota_reason(cluster: Cluster, job: JobView) -> str | None:
    """The first limit that starting `job` now would exceed, as a pending reason.

    The per-(group, GPU type) limit depends on which GPUs the job would get, so placement
    checks it (Cluster.best_fit). An array's throttle (`--array ...%N`) is the user's own limit
    on the array's tasks running at once: ArrayThrottle."""
    lim, gpus = cluster.limits, job.gpus * job.nodes
    cap = lim.group_gpus.get(job.group)
    if cap is not None and cluster.group_gpus.get(job.group, 0) + gpus > cap:
        return "QuotaGroupGPU"
    if lim.user_jobs is not None and cluster.user_jobs.get(job.owner, 0) + 1 > lim.user_jobs:
        return "QuotaUserJobs"
    if lim.user_gpus is not None and cluster.user_gpus.get(job.owner, 0) + gpus > lim.user_gpus:
        return "QuotaUserGPU"
    cap = lim.partition_user_jobs.get(job.partition)
    if cap is not None and cluster.partition_user_jobs.get((job.partition, job.owner), 0) + 1 > cap:
        return "QuotaPartitionJobs"
    if job.array_limit and cluster.array_jobs.get(job.array_id, 0) + 1 > job.array_limit:
        return "ArrayThrottle"
    return None
