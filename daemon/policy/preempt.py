"""Preemption (Slurm's PreemptMode=REQUEUE): which running jobs to stop and requeue so that a
waiting job that could otherwise not start starts now.

Who may be stopped: a job submitted preemptible, and with `preempt_over_share` any job of a
group that holds more GPUs than its share (its share over all groups' shares, of the GPUs of
the nodes that are up): the scavenger tier is then whatever a group runs beyond its share,
for as long as it does. A victim has run at least preempt_min_run_s and has been preempted
fewer than preempt_max times.

Who may preempt: a job that may not be stopped itself, when it is the top waiting job (the
reservation's) or, with `preempt_over_share`, the first waiting job of a group under its
share. Only jobs that would rank below it once requeued are stopped, so two jobs never bounce
each other. A requeued job keeps its age (from its submit, or from when it was released or its
dependency was met), so that starved_first still bounds its wait: a job that has waited
max_age_s ranks above every job that has not and is never a victim of one.

Where: on each node where the job could run, victims are taken latest start first (the least
work lost) until the job fits; the node needing the fewest preempted GPUs wins, then the one
losing the least run time. Gangs neither preempt nor are preempted: that would take freeing
several nodes at once. The GPUs freed there are the job's until it starts (holds.py), and a
job that holds GPUs does not preempt again.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from .placement import Cluster, could_ever_fit, gpu_matches
from .priority import class_constant, starved_priority
from .snapshot import JobView, PolicyConfig


def over_share(cluster: Cluster, config: PolicyConfig, groups: Iterable[str]) -> set[str]:
    """The groups holding more GPUs than their share of the up nodes' GPUs; shares are over
    the configured groups and `groups` (a group not configured has a share of 1)."""
    shares = dict(config.group_shares)
    for g in groups:
        shares.setdefault(g, 1.0)
    total = sum(shares.values())
    gpus = cluster.up_gpus
    if total <= 0:
        return set()
    return {g for g, n in cluster.group_gpus.items()
            if n > gpus * shares.get(g, 1.0) / total}


def may_be_preempted(victim: JobView, now: float, config: PolicyConfig,
                     over: set[str] | None = None) -> bool:
    return ((victim.preemptible or (over is not None and victim.group in over))
            and victim.preemptions < config.preempt_max
            and now - _started(victim, now) >= config.preempt_min_run_s)


def _started(job: JobView, now: float) -> float:
    # a start at time 0 (the replay's first instant) is a start
    return now if job.start_time is None else job.start_time


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


def _ranker(now: float, config: PolicyConfig, fs: Mapping, max_gpus: int):
    """rank() for many jobs, the part of it that jobs of one request share computed once."""
    consts: dict[tuple, float] = {}
    starved = starved_priority(config)
    floor = now - config.max_age_s
    inv_age = 1.0 / config.max_age_s if config.max_age_s > 0 else 0.0

    def ranked(job: JobView) -> float:
        key = (job.group, job.owner, job.priority, job.gpus, job.time_limit_s)
        p = consts.get(key)
        if p is None:
            p = consts[key] = class_constant(job, config, fs.get((job.group, job.owner), 1.0),
                                             max_gpus)
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        if starved is not None and t0 <= floor:
            return starved
        age = min(1.0, max(0.0, now - t0) * inv_age) if inv_age else 1.0
        return p + config.weight_age * age
    return ranked


def _pool(cluster: Cluster, running: Mapping[int, JobView], now: float, config: PolicyConfig,
          fs: Mapping, over: set[str] | None) -> list[tuple]:
    """(node, the jobs on it that may be preempted, latest start first, each with its rank,
    GPUs free once they are stopped) for each up node with such jobs."""
    out = []
    ranked = _ranker(now, config, fs, cluster.max_gpus)
    for ns in cluster.nodes:
        if not ns.up or not ns.running:
            continue
        found = [v for jid in ns.running if (v := running.get(jid)) is not None
                 and v.nodes == 1 and may_be_preempted(v, now, config, over)]
        if found:
            found.sort(key=lambda v: (-_started(v, now), v.id))
            out.append((ns, [(ranked(v), v) for v in found],
                        len(ns.free) + sum(len(v.gpu_indices) for v in found)))
    return out


def may_preempt(job: JobView, config: PolicyConfig, over: set[str] | None) -> bool:
    return not (job.preemptible or config.preempt_max <= 0 or job.nodes > 1
                or (over is not None and job.group in over))


def _victims(job: JobView, pool: list[tuple], now: float, config: PolicyConfig, fs: Mapping,
             over: set[str] | None, max_gpus: int) -> tuple[list[int], tuple]:
    """The victims on the best node of `pool` for `job`, or [], and (the node's name, the
    GPUs `job` may have there once they are stopped). A victim must rank below `job` once
    requeued, or it would start again at once."""
    if not may_preempt(job, config, over):
        return [], ()
    top = rank(job, now, config, fs, max_gpus)
    best: tuple | None = None
    for ns, found, most in pool:
        if most < job.gpus or not could_ever_fit(ns, job):
            continue
        free = sum(1 for g in ns.free if gpu_matches(ns.slots[g], job))
        chosen = _enough(ns, job, [v for r, v in found if r < top], free)
        if chosen is None:
            continue
        lost = sum(now - _started(v, now) for v in chosen)
        score = (sum(len(v.gpu_indices) for v in chosen), lost, ns.idx)
        if best is None or score < best[0]:
            best = (score, chosen, ns)
    if best is None:
        return [], ()
    ns = best[2]
    pool.remove(next(e for e in pool if e[0] is ns))  # one preemptor per node
    held = {g for v in best[1] for g in v.gpu_indices}
    held.update(g for g in ns.free if gpu_matches(ns.slots[g], job))
    return [v.id for v in best[1]], (ns.name, tuple(sorted(held)))


def _enough(ns, job: JobView, found: list[JobView], free: int) -> list[JobView] | None:
    """The first of `found` (in order) that, stopped, let `job` fit on the node; None if all
    of them would not do, or none is needed."""
    cpus, mem = ns.free_cpus, ns.free_mem
    chosen: list[JobView] = []
    for v in found:
        if free >= job.gpus and cpus >= job.cpus and mem >= job.memory_mb:
            break
        chosen.append(v)
        free += sum(1 for g in v.gpu_indices if g in ns.slots and gpu_matches(ns.slots[g], job))
        cpus += v.cpus
        mem += v.memory_mb
    if not chosen or free < job.gpus or cpus < job.cpus or mem < job.memory_mb:
        return None
    return chosen


def candidates(top: JobView | None, heads: Iterable[tuple[float, JobView]],
               over: set[str] | None) -> list[JobView]:
    """Who may preempt, best first: the top waiting job, then (with `over`) the first waiting
    job of each group under its share, by priority. `heads`: (priority, job) of each class's
    first waiting job."""
    out = [top] if top is not None else []
    if over is None:
        return out
    best: dict[str, tuple[float, JobView]] = {}
    for p, j in heads:
        if j.group in over or j.preemptible or j.nodes > 1 or j is top:
            continue
        b = best.get(j.group)
        if b is None or (p, -j.submit_time, -j.id) > (b[0], -b[1].submit_time, -b[1].id):
            best[j.group] = (p, j)
    if top is not None:
        best.pop(top.group, None)
    out += [j for _, j in sorted(best.values(), key=lambda b: (-b[0], b[1].submit_time,
                                                               b[1].id))]
    return out


def choose(cluster: Cluster, top: JobView | None, heads: Iterable[tuple[float, JobView]],
           running: Mapping[int, JobView], now: float, config: PolicyConfig,
           fs: Mapping, groups: Iterable[str], holding: Container[int] = (),
           holds: dict | None = None) -> list[tuple[int, int]]:
    """(victim, the job it makes way for) for each candidate that preemption lets start,
    each on a node of its own; a job in `holding` (GPUs freed for it are coming) is no
    candidate. Each candidate's node and the GPUs it may have there go in `holds`."""
    over = over_share(cluster, config, groups) if config.preempt_over_share else None
    found = [j for j in candidates(top, heads, over)
             if j.id not in holding and may_preempt(j, config, over)]
    if not found:
        return []  # before looking at the running jobs: most plans end here
    pool = _pool(cluster, running, now, config, fs, over)
    out: list[tuple[int, int]] = []
    for job in found:
        if not pool:
            break
        victims, held = _victims(job, pool, now, config, fs, over, cluster.max_gpus)
        out += [(v, job.id) for v in victims]
        if victims and holds is not None:
            holds[job.id] = held
    return out
