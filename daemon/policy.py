"""The scheduling policy: a pure function from a snapshot to a plan."""
from __future__ import annotations

from .snapshot import JobView, NodeView, Plan, Snapshot, Start


def gpu_matches(slot, job: JobView) -> bool:
    if job.gpu_type and job.gpu_type.lower() not in slot.type.lower():
        return False
    if job.gpu_memory_mb and slot.memory_mb < job.gpu_memory_mb:
        return False
    return True


def fits(node: NodeView, job: JobView, free_gpus, free_cpus, free_mem) -> tuple[int, ...] | None:
    if node.state != "up" or job.cpus > free_cpus or job.memory_mb > free_mem:
        return None
    usable = [g.index for g in node.gpus if g.index in free_gpus and gpu_matches(g, job)]
    if len(usable) < job.gpus:
        return None
    return tuple(sorted(usable)[: job.gpus])


def could_ever_fit(node: NodeView, job: JobView) -> bool:
    usable = [g for g in node.gpus if gpu_matches(g, job)]
    return len(usable) >= job.gpus and job.cpus <= node.cpus and job.memory_mb <= node.memory_mb


def plan(snapshot: Snapshot, now: float) -> Plan:
    result = Plan()
    free = {n.name: [set(n.free_gpus), n.free_cpus, n.free_memory_mb] for n in snapshot.nodes}
    pending = sorted((j for j in snapshot.jobs if j.state != "RUNNING"),
                     key=lambda j: (-j.priority, j.submit_time, j.id))
    for job in pending:
        if job.state == "HELD":
            result.reasons[job.id] = "Held"
            continue
        result.priorities[job.id] = float(job.priority)
        if job.dependencies:
            result.reasons[job.id] = "Dependency"
            continue
        if not any(could_ever_fit(n, job) for n in snapshot.nodes):
            result.reasons[job.id] = "NoNodeFits"
            continue
        for node in snapshot.nodes:
            gpus, cpus, mem = free[node.name]
            chosen = fits(node, job, gpus, cpus, mem)
            if chosen is not None:
                gpus.difference_update(chosen)
                free[node.name][1] -= job.cpus
                free[node.name][2] -= job.memory_mb
                result.starts.append(Start(job.id, node.name, chosen))
                break
        else:
            result.reasons[job.id] = "Resources"
    return result
