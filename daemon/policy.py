"""The scheduling policy: a pure function from a snapshot to a plan.

`plan` sorts out held jobs and dependencies, builds the cluster and the queue of eligible jobs,
and hands them to `schedule`, which walks the queue in priority order:
- a job over a limit waits with the limit as its reason and blocks nobody;
- otherwise it starts on the best-fitting node if it can;
- the first job that cannot start gets the backfill reservation (reason Resources);
- after that, lower-priority jobs start only where they cannot delay the reservation
  (backfill.py), or not at all when backfill is off (reason Priority).
The replay simulator calls `schedule` with a cluster and queue it keeps across events.
"""
from __future__ import annotations

import heapq
from itertools import islice
from operator import attrgetter

from . import fairshare
from .backfill import Reservation, reserve
from .dependencies import MET, NEVER, dependency_status
from .limits import quota_reason
from .placement import Cluster, could_ever_fit, gpu_matches, shape_of  # noqa: F401 (public)
from .priority import PendingQueue, time_limit
from .snapshot import JobView, Plan, PolicyConfig, Snapshot, Start

__all__ = ["plan", "schedule", "gpu_matches", "could_ever_fit"]


def plan(snapshot: Snapshot, now: float) -> Plan:
    cfg = snapshot.config
    out = Plan()
    jobs = snapshot.jobs
    running = [j for j in jobs if j.state == "RUNNING"]
    eligible = [j for j in jobs if j.state == "PENDING" and not j.dependencies]
    others = [j for j in jobs if j.state != "RUNNING" and (j.state != "PENDING" or j.dependencies)]

    frozen: list[JobView] = []  # pending, waiting on a dependency: priority without age
    if others:
        active = {j.id for j in jobs}
        for j in others:
            status = dependency_status(j.dependencies, active, snapshot.ended) \
                if j.dependencies else MET
            if status == NEVER:
                out.reasons[j.id] = "DependencyNeverSatisfied"
                if cfg.cancel_unsatisfiable:
                    out.cancels.append((j.id, "DependencyNeverSatisfied"))
            elif j.state == "HELD":
                out.reasons[j.id] = "Held"
            elif status == MET:
                eligible.append(j)
            else:
                out.reasons[j.id] = "Dependency"
            if j.state == "PENDING" and status != MET:
                frozen.append(j)

    cluster = Cluster(snapshot.nodes, cfg.limits)
    for j in running:
        cluster.add_running(j, (j.start_time or now) + time_limit(j, cfg))
    queue = PendingQueue.build(eligible, now, cfg)
    pairs = {(c.head.group, c.head.owner) for c in queue.classes.values()}
    pairs.update((j.group, j.owner) for j in frozen)
    fs = fairshare.factors(snapshot.group_usage, snapshot.user_usage, cfg.group_shares,
                           cfg.user_shares, pairs)
    schedule(cluster, queue, now, cfg, fs, out=out)
    if frozen:
        fq = PendingQueue(cfg)
        for j in frozen:
            fq.add(j)
        for c in fq.classes.values():
            p = c.constant(cfg, fs[(c.head.group, c.head.owner)], cluster.max_gpus)
            out.priorities.update(dict.fromkeys(c.members, p))
    return out


def schedule(cluster: Cluster, queue: PendingQueue, now: float, config: PolicyConfig,
             fairshare_factors: dict[tuple[str, str], float], *, out: Plan | None = None,
             full: bool = True) -> Plan:
    """Start what can start now, recording the starts in `cluster`.

    With `full` (what the daemon needs) every queued job also gets its priority and a reason
    and the reserved job an estimate; without it the walk stops as soon as nothing more can
    start (what the simulator needs)."""
    out = out if out is not None else Plan()
    wa = config.weight_age
    inv_age = 1.0 / config.max_age_s if config.max_age_s > 0 else 0.0
    floor = now - config.max_age_s

    def prio(const: float, job: JobView) -> float:
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        return const + wa * (1.0 if t0 <= floor else max(0.0, now - t0) * inv_age)

    # heap of class heads: (-priority, submit, id, class no.)
    heap = []
    lists, consts, pos, verdicts = [], [], [], []
    for n, c in enumerate(queue.classes.values()):
        lst = c.jobs()
        const = c.constant(config, fairshare_factors.get((c.head.group, c.head.owner), 1.0),
                           cluster.max_gpus)
        lists.append(lst)
        consts.append(const)
        pos.append(0)
        verdicts.append(None)
        j = lst[0]
        heap.append((-prio(const, j), j.submit_time, j.id, n))
    heapq.heapify(heap)

    reasons = out.reasons
    res: Reservation | None = None
    res_job: JobView | None = None
    res_done = False  # reservation computed (it may be None)
    failed_now: set[tuple] = set()  # shapes that fit nowhere now: resources only shrink
    failed_bf: set[tuple] = set()  # shapes that fit nowhere clear of the reservation
    backfill = config.backfill
    cpu_only = queue.cpu_only

    def kill(n: int, verdict: str, head_reason: str) -> None:
        # every later member of class n waits for the same reason
        reasons[lists[n][pos[n]].id] = head_reason
        pos[n] += 1
        verdicts[n] = verdict

    while heap:
        if cluster.total_free == 0 and not cpu_only and (res_job is not None or not full):
            break
        _, _, _, n = heapq.heappop(heap)
        job = lists[n][pos[n]]
        why = cluster.feasibility(job) or quota_reason(cluster, job)
        if why:
            kill(n, why, why)
            continue
        shape = shape_of(job)
        placed = None
        if shape not in failed_now:
            placed = cluster.best_fit(job)
            if placed is None:
                if cluster.type_blocked:
                    kill(n, "QuotaGroupGPUType", "QuotaGroupGPUType")
                    continue
                if not cluster._type_limits:
                    failed_now.add(shape)
        if res_job is None:
            if placed is None:
                res_job = job
                kill(n, "Priority", "Resources")
                if not backfill:
                    break
                continue
        else:
            if placed is None:
                kill(n, "Priority", "Priority")
                continue
            if not res_done:
                res, res_done = reserve(cluster, res_job, now), True
            tl = time_limit(job, config)
            if res is not None and not res.allows(now, tl) and placed[0] == res.node:
                placed = None if shape in failed_bf else cluster.best_fit(job, avoid=res)
                if placed is None:
                    # no member of this class that outlasts the reservation can start now
                    failed_bf.add(shape)
                    window = res.time - now
                    lst = lists[n]
                    rest = lst[pos[n] + 1:]
                    keep = [j for j in rest if time_limit(j, config) <= window]
                    reasons[job.id] = "Priority"
                    if len(keep) < len(rest):
                        kept = {j.id for j in keep}
                        reasons.update(dict.fromkeys(
                            (j.id for j in rest if j.id not in kept), "Priority"))
                    lists[n] = keep
                    pos[n] = 0
                    _push(heap, n, lists, pos, consts, prio)
                    continue
                if placed[0] == res.node:
                    res.took(job.cpus, job.memory_mb)
        node_idx, gpus = placed
        cluster.start(job, node_idx, gpus, now + time_limit(job, config))
        out.starts.append(Start(job.id, cluster.nodes[node_idx].name, gpus))
        if job.gpus <= 0:
            cpu_only -= 1
        pos[n] += 1
        _push(heap, n, lists, pos, consts, prio)

    if not full:
        return out
    if res_job is not None:
        if not res_done:
            res = reserve(cluster, res_job, now)
        if res is not None:
            out.estimates[res_job.id] = res.time
    started = {s.job for s in out.starts}
    for _, _, _, n in heap:  # classes the walk did not reach the end of
        job = lists[n][pos[n]]
        why = cluster.feasibility(job) or quota_reason(cluster, job)
        verdicts[n] = why or ("Priority" if res_job is not None else "Resources")
    get_id = attrgetter("id")
    for n, c in enumerate(queue.classes.values()):
        const = consts[n]
        lst = c.jobs()
        out.priorities.update(zip(map(get_id, lst), [
            const + wa * (1.0 if t <= floor else (now - t) * inv_age if t < now else 0.0)
            for t in [j.submit_time if j.eligible_time is None else j.eligible_time
                      for j in lst]]))
        walked = lists[n]
        if verdicts[n] is not None and pos[n] < len(walked):
            reasons.update(dict.fromkeys(map(get_id, islice(walked, pos[n], None)), verdicts[n]))
    for jid in started:
        reasons.pop(jid, None)
    return out


def _push(heap, n, lists, pos, consts, prio) -> None:
    lst = lists[n]
    if pos[n] < len(lst):
        j = lst[pos[n]]
        heapq.heappush(heap, (-prio(consts[n], j), j.submit_time, j.id, n))
