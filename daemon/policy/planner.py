"""`plan`: the scheduling policy as a pure function from a snapshot to a plan.

`plan` sorts out held jobs and dependencies (dependencies.py), builds the cluster as the policy
sees it (placement.py) and walks the queue of eligible jobs in priority order (walk.py): what
can start starts, the first job that cannot gets the backfill reservation, and every other job
gets a pending reason. The plan's reasons and priorities are mappings computed on access from
what the walk decided per class (reasons.py), so a plan costs in proportion to the classes and
the starts, not the jobs.

With `Snapshot.memo` (a PlanMemo the daemon passes on every pass) the sorted-out jobs and the
queue are kept between plans and only the jobs that changed are applied (memo.py); the plan is
the same as without it.

The replay simulator calls `schedule` with a cluster and queue it keeps across events.
"""
from __future__ import annotations

import copy
from bisect import insort
from collections import Counter
from itertools import count

from . import fairshare, holds, preempt
from .dependencies import sort_out
from .memo import ActiveJobs, JobIndex, PlanMemo
from .placement import Cluster, shape_of
from .priority import class_constant, static_rank, time_limit
from .queue import JobClass, PendingQueue, t0_of
from .reasons import PlanPriorities, PlanReasons, _Eligible
from .snapshot import JobView, Plan, PolicyConfig, Snapshot
from .streams import ShapeStreams
from .waiting import BackfillLimits, reserved
from .walk import Walk


def plan(snapshot: Snapshot, now: float) -> Plan:
    memo = getattr(snapshot, "memo", None)
    if memo is not None:
        if not isinstance(memo, PlanMemo):
            raise TypeError("Snapshot.memo must be a PlanMemo")
        if memo._lock.acquire(blocking=False):
            try:
                return _plan(memo.state(snapshot.jobs, now, snapshot.config), snapshot, now)
            finally:
                memo._lock.release()
    return _plan(ActiveJobs(snapshot.jobs, now, snapshot.config), snapshot, now)


def _plan(st: ActiveJobs, snapshot: Snapshot, now: float) -> Plan:
    """The plan for the jobs in `st` (which is only read)."""
    cfg, queue = snapshot.config, st.queue
    out = Plan()
    fixed, frozen, extra, out.cancels = sort_out(st.others.values(), st.lookup,
                                                 snapshot.ended, cfg.cancel_unsatisfiable)
    # the plan's reasons may consult the cluster after the plan is made: it gets its own
    # copy of the limits
    cluster = Cluster(snapshot.nodes, copy.deepcopy(cfg.limits))
    for j in st.running.values():
        cluster.add_running(j, (j.start_time or now) + time_limit(j, cfg))
    classes, cpu_only, alias = list(queue.classes.values()), queue.cpu_only, {}
    if extra:
        classes, cpu_only, alias = _with_extra(queue, classes, extra)
    pairs = {(c.head.group, c.head.owner) for c in classes}
    pairs.update((j.group, j.owner) for j in frozen)
    fs = fairshare.factors(snapshot.group_usage, snapshot.user_usage, cfg.group_shares,
                           cfg.user_shares, sorted(pairs))
    # with a memo the shapes' time limits are kept up to date cheaply, and let the walk stop
    # early; without one, counting them would cost more than it saves
    shapes = _shapes(queue, extra) if st.kept else None
    heads: dict[int, str] = {}
    held = holds.live(snapshot.holds, now)
    taken = holds.withhold(cluster, held)
    walk = Walk(cluster, classes, now, cfg, fs, cpu_only, True, out.starts, heads,
                shapes=shapes).run()
    if held:
        holds.release(cluster, taken)
        holds.start_holders(cluster, held, lambda i: _pending(st.lookup(i)), out.starts,
                            lambda j: now + time_limit(j, cfg))
    if walk.res_job is not None and walk.res is not None:
        out.estimates[walk.res_job.id] = walk.res.time
    if st.running and (cfg.preempt_over_share or (
            walk.res_job is not None and any(j.preemptible for j in st.running.values()))):
        out.preempts = _preempts(walk, out.starts, st.running, snapshot, cluster, now,
                                 held, out.holds)
    frozen_prio = _frozen_priorities(frozen, queue.key, cfg, fs, cluster.max_gpus)
    class_no = dict(zip(classes, count()))
    for c, merged in alias.items():
        class_no[c] = class_no[merged]
    extra_no = {j.id: (j, class_no[alias[queue.key(j)]]) for j in extra}
    elig = _Eligible(st.index(), extra_no, class_no, queue.eligible + len(extra))
    _outputs(out, walk, elig, fixed, frozen_prio, heads, now, cfg, cluster)
    return out


def _pending(job: JobView | None) -> JobView | None:
    return job if job is not None and job.state == "PENDING" else None


def _preempts(walk: Walk, starts: list, running: dict, snapshot: Snapshot, cluster: Cluster,
              now: float, holding: dict, made: dict) -> list[tuple[int, int]]:
    cfg = snapshot.config
    heads = list(_waiting_heads(walk, starts)) if cfg.preempt_over_share else []
    pairs = {(j.group, j.owner) for j in running.values()}
    pairs.update((j.group, j.owner) for _, j in heads)
    if walk.res_job is not None:
        pairs.add((walk.res_job.group, walk.res_job.owner))
    fs = fairshare.factors(snapshot.group_usage, snapshot.user_usage, cfg.group_shares,
                           cfg.user_shares, sorted(pairs))
    return preempt.choose(cluster, walk.res_job, heads, running, now, cfg, fs,
                          {g for g, _ in pairs}, holding, made)


def _waiting_heads(walk: Walk, starts: list):
    """(priority, job) of each class's first job that did not start, unless a limit or the
    nodes keep its class waiting (preempting would not start it)."""
    started = {s.job for s in starts}
    for n, lst in enumerate(walk.lists):
        v = walk.verdicts[n]
        if isinstance(v, str) and v not in ("Priority", "Resources"):
            continue
        for j in lst:
            if j.id not in started:
                yield walk._priority(walk.consts[n], j), j
                break


def _with_extra(queue: PendingQueue, classes: list, extra: list[JobView]):
    """The walk's classes with the pending jobs whose dependencies are met merged in (into
    copies: the queue is not changed)."""
    floor = queue.floor

    def order(j: JobView) -> tuple:
        return (max(floor, t0_of(j)), j.submit_time, j.id)

    by_key: dict[tuple, list[JobView]] = {}
    for j in extra:
        by_key.setdefault(queue.key(j), []).append(j)
    out = []
    alias: dict = {}  # the queue's class -> its copy with jobs merged in; key -> that copy
    for c in classes:
        add = by_key.pop(c.key, None)
        if add:
            lst = list(c.ordered())
            for j in add:
                insort(lst, j, key=order)
            alias[c] = alias[c.key] = JobClass(c.key, c.head, lst, [])
            c = alias[c]
        out.append(c)
    for key, add in by_key.items():
        alias[key] = JobClass(key, add[0], sorted(add, key=order), [])
        out.append(alias[key])
    return out, queue.cpu_only + sum(1 for j in extra if j.gpus <= 0), alias


def _shapes(queue: PendingQueue, extra: list[JobView]) -> dict[tuple, Counter]:
    """Time limits by shape over the queue and the jobs merged into the walk."""
    shapes = queue.shapes()
    if extra:
        shapes = {s: Counter(t) for s, t in shapes.items()}
        for j in extra:
            shapes.setdefault(shape_of(j), Counter())[j.time_limit_s] += 1
    return shapes


def _frozen_priorities(frozen: list[JobView], keyf, cfg: PolicyConfig, fs: dict,
                       max_gpus: int) -> dict[int, float]:
    """Priorities of the pending jobs waiting on a dependency: no age, the rest as their
    class's."""
    out: dict[int, float] = {}
    const: dict[tuple, float] = {}
    for j in frozen:
        key = keyf(j)
        p = const.get(key)
        if p is None:
            p = const[key] = class_constant(j, cfg, fs[(j.group, j.owner)], max_gpus)
        out[j.id] = p
    return out


def _outputs(out: Plan, walk: Walk, elig: _Eligible, fixed: dict, frozen_prio: dict,
             heads: dict, now: float, cfg: PolicyConfig, cluster: Cluster | None) -> None:
    started = {s.job for s in out.starts}
    out.reasons = PlanReasons(fixed, heads, started, elig, walk.verdicts, walk.filtered,
                              walk.window, cfg.default_time_limit_s, cluster, walk.open_reason)
    inv_age = 1.0 / cfg.max_age_s if cfg.max_age_s > 0 else 0.0
    out.priorities = PlanPriorities(frozen_prio, elig, walk.consts, now, now - cfg.max_age_s,
                                    cfg.weight_age, inv_age, walk.starved)
    res = walk.res if walk.res_job is not None else None
    out.reservation = reserved(res, cluster)
    out.backfill_limits = BackfillLimits(res, cluster, out.reasons, elig.locate, now,
                                         cfg.default_time_limit_s)


def schedule(cluster: Cluster, queue: PendingQueue, now: float, config: PolicyConfig,
             fairshare_factors: dict[tuple[str, str], float], *, out: Plan | None = None,
             full: bool = True, running: dict[int, JobView] | None = None,
             held: dict | None = None, lookup=None) -> Plan:
    """Start what can start now from a queue the caller keeps (the replay simulator), recording
    the starts in `cluster`.

    With `full` every queued job also gets its priority and a reason and the reserved job an
    estimate (as `plan` gives them); without it the walk stops as soon as nothing more can
    start and the plan holds the starts only. With `running` (the running jobs, by id, as
    RUNNING JobViews; `fairshare_factors` must cover their groups and users) the plan also
    names the preemptions that would let waiting jobs start, as `plan` does. `held`: the
    live holds (holds.py), with `lookup` (job id -> its pending JobView, or None)."""
    out = out if out is not None else Plan()
    heads: dict[int, str] = {}
    streams = None
    if not full and not config.weight_age and not config.weight_fairshare:
        # priorities that do not change with time: the queue keeps its classes in order
        basis = (config.weight_priority, config.weight_size, config.weight_short,
                 config.default_time_limit_s, config.short_step, cluster.max_gpus)
        streams = ShapeStreams(queue.by_shape(static_rank(config, cluster.max_gpus), basis))
    classes = list(queue.classes.values()) if streams is None else []
    # the caller goes on changing the cluster: verdicts are settled now. A walk for the starts
    # alone stops once no shape can start anything
    walk = Walk(cluster, classes, now, config, fairshare_factors, queue.cpu_only, full,
                out.starts, heads, lazy=False, shapes=None if full else queue.shapes(),
                order=None if full else queue.shape_order, streams=streams,
                find_top=bool(running))
    if held:
        taken = holds.withhold(cluster, held)
        walk.run()
        holds.release(cluster, taken)
        holds.start_holders(cluster, held, lookup, out.starts,
                            lambda j: now + time_limit(j, config))
    else:
        walk.run()
    if running and (walk.res_job is not None or config.preempt_over_share):
        heads = list(_waiting_heads(walk, out.starts)) if config.preempt_over_share else []
        out.preempts = preempt.choose(cluster, walk.res_job, heads, running, now, config,
                                      fairshare_factors, {g for g, _ in fairshare_factors},
                                      held or (), out.holds)
    if not full:
        return out
    if walk.res_job is not None and walk.res is not None:
        out.estimates[walk.res_job.id] = walk.res.time
    elig = _Eligible(JobIndex(None, {}, ((), classes)), {}, dict(zip(classes, count())),
                     len(queue))
    _outputs(out, walk, elig, dict(out.reasons), dict(out.priorities), heads, now, config,
             None)
    return out
