"""Preemption (Slurm's PreemptMode=REQUEUE): which running jobs to stop and requeue so that the
reserved job, the highest-priority job that cannot start, starts now.

Only a job that is not itself preemptible preempts, and only jobs that would rank below it once
requeued, so two jobs never bounce each other. A requeued job keeps its age (from its submit,
or from when it was released or its dependency was met), so that starved_first still bounds
its wait: a job that has waited max_age_s ranks above every job that has not and is never a
victim of one. A victim is preemptible, has run at least
preempt_min_run_s, and has been preempted fewer than preempt_max times. On each node where the
reserved job could run, victims are taken latest start first (the least work lost) until the
job fits; the node needing the fewest preempted GPUs wins, then the one losing the least run
time.
"""
from __future__ import annotations

from collections.abc import Mapping

from .placement import Cluster, could_ever_fit, gpu_matches
from .priority import class_constant, starved_priority
from .snapshot import JobView, PolicyConfig


def may_be_preempted(victim: JobView, now: float, config: PolicyConfig) -> bool:
    return (victim.preemptible and victim.preemptions < config.preempt_max
            and now - (victim.start_time or now) >= config.preempt_min_run_s)


def rank(job: JobView, now: float, config: PolicyConfig, fs: Mapping, max_gpus: int) -> float:
    """The job's priority as a pending job (a running one: as it would be once requeued now,
    with the age it had)."""
    p = class_constant(job, config, fs.get((job.group, job.owner), 1.0), max_gpus)
    t0 = job.submit_time if job.eligible_time is None else job.eligible_time
    starved = starved_priority(config)
    if starved is not None and t0 <= now - config.max_age_s:
        return starved
    age = min(1.0, max(0.0, now - t0) / config.max_age_s) if config.max_age_s > 0 else 1.0
    return p + config.weight_age * age


def victims(cluster: Cluster, job: JobView, running: Mapping[int, JobView], now: float,
            config: PolicyConfig, fs: Mapping) -> list[int]:
    """Running jobs to preempt so that `job` fits on one node now, or [] if none will do.
    A victim must rank below `job` once requeued, or it would start again at once."""
    if job.preemptible or config.preempt_max <= 0 or job.nodes > 1:
        return []
    # gangs neither preempt nor are preempted: that would take freeing several nodes at once
    running = {jid: v for jid, v in running.items() if v.nodes == 1}
    top = rank(job, now, config, fs, cluster.max_gpus)
    running = {jid: v for jid, v in running.items()
               if rank(v, now, config, fs, cluster.max_gpus) < top}
    best: tuple | None = None
    for ns in cluster.nodes:
        if not ns.up or not could_ever_fit(ns, job):
            continue
        free = sum(1 for g in ns.free if gpu_matches(ns.slots[g], job))
        cpus, mem = ns.free_cpus, ns.free_mem
        found = [running[jid] for jid in ns.running
                 if jid in running and may_be_preempted(running[jid], now, config)]
        found.sort(key=lambda v: (-(v.start_time or now), v.id))
        chosen: list[JobView] = []
        for v in found:
            if free >= job.gpus and cpus >= job.cpus and mem >= job.memory_mb:
                break
            chosen.append(v)
            free += sum(1 for g in v.gpu_indices if g in ns.slots
                        and gpu_matches(ns.slots[g], job))
            cpus += v.cpus
            mem += v.memory_mb
        if not chosen or free < job.gpus or cpus < job.cpus or mem < job.memory_mb:
            continue
        lost = sum(now - (v.start_time or now) for v in chosen)
        score = (sum(len(v.gpu_indices) for v in chosen), lost, ns.idx)
        if best is None or score < best[0]:
            best = (score, [v.id for v in chosen])
    return best[1] if best else []
