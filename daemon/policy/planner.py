"""The scheduling policy: a pure function from a snapshot to a plan.

`plan` sorts out held jobs and dependencies, builds the cluster and the queue of eligible jobs,
and walks the queue in priority order:
- a job over a limit waits with the limit as its reason and blocks nobody;
- otherwise it starts on the best-fitting node if it can;
- the first job that cannot start gets the backfill reservation (reason Resources);
- after that, lower-priority jobs start only where they cannot delay the reservation
  (backfill.py), or not at all when backfill is off (reason Priority).
The queue is made of classes of jobs that differ only in age (priority.py), so the walk merges
the heads of the classes and settles a whole class at once when its head cannot start. The
plan's reasons and priorities are mappings computed on access from what the walk decided per
class (reasons.py), so a plan costs in proportion to the classes and the starts, not the jobs.

With `Snapshot.memo` (a PlanMemo the daemon passes on every pass) the sorted-out jobs and the
classes are kept between plans and only the jobs that changed are applied (pending.py); the plan
is the same as without it.

The replay simulator calls `schedule` with a cluster and queue it keeps across events.
"""
from __future__ import annotations

import copy
import heapq
from bisect import insort
from collections import Counter
from itertools import count, islice

from . import fairshare
from .backfill import Reservation, reserve
from .dependencies import MET, NEVER, dependency_status
from .limits import quota_reason
from .memo import ActiveJobs, JobIndex, PlanMemo
from .placement import Cluster, shape_of
from .reasons import OPEN, PlanPriorities, PlanReasons, _Eligible
from .priority import class_constant, short_factor, size_factor, time_limit, user_factor
from .queue import JobClass, PendingQueue, t0_of
from .snapshot import JobView, Plan, PolicyConfig, Snapshot, Start


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


class _Active:
    """Ids of the jobs in the snapshot, for dependency checks."""
    __slots__ = ("lookup",)

    def __init__(self, lookup):
        self.lookup = lookup

    def __contains__(self, job_id) -> bool:
        return self.lookup(job_id) is not None


def _plan(st: ActiveJobs, snapshot: Snapshot, now: float) -> Plan:
    """The plan for the jobs in `st` (which is only read)."""
    cfg = snapshot.config
    out = Plan()
    fixed: dict[int, str] = {}  # reasons of jobs that are not eligible
    frozen: list[JobView] = []  # pending, waiting on a dependency: priority without age
    extra: list[JobView] = []  # pending with dependencies, all met: eligible
    if st.others:
        active = _Active(st.lookup)
        for j in st.others.values():
            status = dependency_status(j.dependencies, active, snapshot.ended) \
                if j.dependencies else MET
            if status == NEVER:
                fixed[j.id] = "DependencyNeverSatisfied"
                if cfg.cancel_unsatisfiable:
                    out.cancels.append((j.id, "DependencyNeverSatisfied"))
            elif j.state == "HELD":
                fixed[j.id] = "Held"
            elif status == MET:
                extra.append(j)
            else:
                fixed[j.id] = "Dependency"
            if j.state == "PENDING" and status != MET:
                frozen.append(j)
        out.cancels.sort()

    # the plan's reasons may consult the cluster after the plan is made: it gets its own
    # copy of the limits
    cluster = Cluster(snapshot.nodes, copy.deepcopy(cfg.limits))
    for j in st.running.values():
        cluster.add_running(j, (j.start_time or now) + time_limit(j, cfg))

    queue = st.queue
    keyf = queue.key
    classes = list(queue.classes.values())
    cpu_only = queue.cpu_only
    alias: dict = {}
    if extra:
        classes, cpu_only, alias = _with_extra(queue, classes, extra, now - cfg.max_age_s)
    pairs = {(c.head.group, c.head.owner) for c in classes}
    pairs.update((j.group, j.owner) for j in frozen)
    fs = fairshare.factors(snapshot.group_usage, snapshot.user_usage, cfg.group_shares,
                           cfg.user_shares, sorted(pairs))
    heads: dict[int, str] = {}
    # with a memo the shapes' time limits are kept up to date cheaply, and let the walk stop
    # early; without one, counting them would cost more than it saves
    shapes = queue.shapes() if st.kept else None
    if extra and shapes is not None:
        shapes = {s: Counter(t) for s, t in shapes.items()}
        for j in extra:
            shapes.setdefault(shape_of(j), Counter())[j.time_limit_s] += 1
    walk = _walk(cluster, classes, now, cfg, fs, cpu_only, True, out.starts, heads,
                 shapes=shapes)
    if walk.res_job is not None and walk.res is not None:
        out.estimates[walk.res_job.id] = walk.res.time

    frozen_prio: dict[int, float] = {}
    if frozen:
        const: dict[tuple, float] = {}
        for j in frozen:
            key = keyf(j)
            p = const.get(key)
            if p is None:
                p = const[key] = class_constant(j, cfg, fs[(j.group, j.owner)],
                                                cluster.max_gpus)
            frozen_prio[j.id] = p
    class_no = dict(zip(classes, count()))
    for c, merged in alias.items():
        class_no[c] = class_no[merged]
    extra_no = {j.id: (j, class_no[alias[keyf(j)]]) for j in extra}
    elig = _Eligible(st.index(), extra_no, class_no, queue.eligible + len(extra))
    _outputs(out, walk, elig, fixed, frozen_prio, heads, now, cfg, cluster)
    return out


def _with_extra(queue: PendingQueue, classes: list, extra: list[JobView], floor: float):
    """The walk's classes with the pending jobs whose dependencies are met merged in (into
    copies: the state is not changed)."""
    def order(j: JobView) -> tuple:
        return (max(floor, t0_of(j)), j.submit_time, j.id)

    by_key: dict[tuple, list[JobView]] = {}
    for j in extra:
        by_key.setdefault(queue.key(j), []).append(j)
    out = []
    alias: dict = {}  # the state's class -> its copy with jobs merged in; key -> that copy
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




class _Walk:
    __slots__ = ("consts", "verdicts", "filtered", "res_job", "res", "window", "open_reason")


def _walk(cluster: Cluster, classes: list, now: float, config: PolicyConfig,
          fairshare_factors: dict, cpu_only: int, full: bool, starts: list,
          heads: dict, lazy: bool = True, shapes: dict | None = None) -> _Walk:
    """Start what can start now, recording the starts in `cluster` and `starts`.

    `classes` are JobClass objects. Reasons that are not the verdict of their class
    go into `heads`. With `full`, the classes the walk did not finish get a verdict (OPEN with
    `lazy`: the cluster, left as it is, answers when asked); without it the walk stops as
    soon as nothing more can start.

    `shapes` (the members' time limits by shape, over all classes) lets the walk stop once
    the reservation is made and no shape can start anything any more: then every class left
    waits for a limit or for Priority, which the cluster tells as well then as later."""
    wa = config.weight_age
    inv_age = 1.0 / config.max_age_s if config.max_age_s > 0 else 0.0
    floor = now - config.max_age_s
    default_tl = config.default_time_limit_s

    def prio(const: float, job: JobView) -> float:
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        return const + wa * (1.0 if t0 <= floor else max(0.0, now - t0) * inv_age)

    # the constant part of each class's priority (class_constant, inlined), and a heap of the
    # class heads: (-priority, submit, id, class no.)
    wf, wp = config.weight_fairshare, config.weight_priority
    ws, wsh = config.weight_size, config.weight_short
    max_gpus = cluster.max_gpus
    fs_get = fairshare_factors.get
    user_f: dict[int, float] = {}
    lists, consts, heap = [], [], []
    for n, c in enumerate(classes):
        h = c.head
        uf = user_f.get(h.priority)
        if uf is None:
            uf = user_f[h.priority] = user_factor(h.priority)
        const = wf * fs_get((h.group, h.owner), 1.0) + wp * uf
        if ws:
            const += ws * size_factor(h.gpus, max_gpus)
        if wsh:
            const += wsh * short_factor(h.time_limit_s, config)
        lst = c.ordered()
        lists.append(lst)
        consts.append(const)
        j = lst[0]
        t0 = j.submit_time if j.eligible_time is None else j.eligible_time
        heap.append((-(const + wa * (1.0 if t0 <= floor else max(0.0, now - t0) * inv_age)),
                     j.submit_time, j.id, n))
    heapq.heapify(heap)
    pos = [0] * len(lists)
    verdicts: list = [None] * len(lists)
    # classes cut by backfill -> how many members not yet walked fit in the window: only
    # these are walked further; the others wait (reason Priority)
    short_left: dict[int, int] = {}

    res: Reservation | None = None
    res_job: JobView | None = None
    res_done = False  # reservation computed (it may be None)
    window = 0.0
    failed_now: set[tuple] = set()  # shapes that fit nowhere now: resources only shrink
    failed_bf: set[tuple] = set()  # shapes that fit nowhere clear of the reservation
    # until the next start: best fit by shape (placement depends on the shape only, unless
    # per-type limits look at the group), and the limit in the way, if any, by shape and
    # the other fields that limits look at
    fits: dict[tuple, tuple] | None = None if cluster._type_limits else {}
    blocked: dict[tuple, str | None] = {}
    backfill = config.backfill
    feasibility, best_fit = cluster.feasibility, cluster.best_fit
    heappop, heappush = heapq.heappop, heapq.heappush

    # shapes that might still start something (once there is a reservation)
    settle = shapes is not None and fits is not None and lazy
    unsettled = set(shapes) if settle else set()
    settled_bf: set[tuple] = set()  # settled while the best fit is on the reserved node

    def min_tl(shape: tuple) -> float:
        return min(((default_tl if t is None else t) for t, k in shapes[shape].items() if k),
                   default=float("inf"))

    def next_short(lst: list, q: int) -> int:
        while (default_tl if lst[q].time_limit_s is None else lst[q].time_limit_s) > window:
            q += 1
        return q

    while heap:
        if cluster.total_free == 0 and not cpu_only and (res_job is not None or not full):
            break
        if settle and not unsettled and res_job is not None:
            break
        n = heappop(heap)[3]
        lst = lists[n]
        p = pos[n]
        job = lst[p]
        shape = classes[n].shape
        bkey = (shape, job.group, job.owner, job.partition)
        why = blocked.get(bkey, OPEN)
        if why is OPEN:
            why = blocked[bkey] = feasibility(job) or quota_reason(cluster, job)
        if why:
            # the head waits for this reason, and every later member for the same
            if settle and cluster._feasible.get(shape):
                unsettled.discard(shape)  # no node could ever run it
            heads[job.id] = why
            pos[n] = p + 1
            verdicts[n] = why
            continue
        placed = None
        if shape not in failed_now:
            placed = fits.get(shape) if fits is not None else None
            if placed is None:
                placed = best_fit(job)
                if placed is not None and fits is not None:
                    fits[shape] = placed
            if placed is None:
                if cluster.type_blocked:
                    heads[job.id] = "QuotaGroupGPUType"
                    pos[n] = p + 1
                    verdicts[n] = "QuotaGroupGPUType"
                    continue
                if not cluster._type_limits:
                    failed_now.add(shape)
                    unsettled.discard(shape)
        if res_job is None:
            if placed is None:
                res_job = job
                heads[job.id] = "Resources"
                pos[n] = p + 1
                verdicts[n] = "Priority"
                if not backfill:
                    break
                continue
        else:
            if placed is None:
                heads[job.id] = "Priority"
                pos[n] = p + 1
                verdicts[n] = "Priority"
                continue
            if not res_done:
                res, res_done = reserve(cluster, res_job, now), True
                if res is not None:
                    window = res.time - now
            tl = default_tl if job.time_limit_s is None else job.time_limit_s
            if res is not None and not res.allows(now, tl) and placed[0] == res.node:
                placed = None if shape in failed_bf else best_fit(job, avoid=res)
                if placed is None:
                    # no member of this class that outlasts the reservation can start now:
                    # they wait (reason Priority); the walk goes on with the others
                    failed_bf.add(shape)
                    if settle and not res.allows(now, min_tl(shape)):
                        # no job of this shape ends in time; all would go on the reserved
                        # node (until the next start)
                        unsettled.discard(shape)
                        settled_bf.add(shape)
                    heads[job.id] = "Priority"
                    left = 0
                    for t, k in classes[n].tl_counts().items():
                        if k and (default_tl if t is None else t) <= window:
                            left += k
                    if left:
                        for j in islice(lst, p + 1):
                            if (default_tl if j.time_limit_s is None else j.time_limit_s) \
                                    <= window:
                                left -= 1
                    short_left[n] = left
                    if left > 0:
                        p = pos[n] = next_short(lst, p + 1)
                        j = lst[p]
                        heappush(heap, (-prio(consts[n], j), j.submit_time, j.id, n))
                    else:
                        pos[n] = len(lst)
                    continue
                if placed[0] == res.node:
                    res.took(job.cpus, job.memory_mb)
        node_idx, gpus = placed
        cluster.start(job, node_idx, gpus, now + time_limit(job, config))
        if fits:
            fits.clear()
        if settled_bf:
            unsettled.update(settled_bf)
            settled_bf.clear()
        blocked.clear()
        starts.append(Start(job.id, cluster.nodes[node_idx].name, gpus))
        if job.gpus <= 0:
            cpu_only -= 1
        p += 1
        left = short_left.get(n)
        if left is not None:
            short_left[n] = left = left - 1
            p = next_short(lst, p) if left > 0 else len(lst)
        pos[n] = p
        if p < len(lst):
            j = lst[p]
            heappush(heap, (-prio(consts[n], j), j.submit_time, j.id, n))

    w = _Walk()
    w.open_reason = "Priority" if res_job is not None else "Resources"
    if full:
        if res_job is not None and not res_done:
            res = reserve(cluster, res_job, now)
        for _, _, _, n in heap:  # classes the walk did not reach the end of
            if lazy:
                verdicts[n] = OPEN
            else:
                job = lists[n][pos[n]]
                why = feasibility(job) or quota_reason(cluster, job)
                verdicts[n] = why or w.open_reason
    w.consts, w.verdicts = consts, verdicts
    w.filtered = frozenset(short_left)
    w.res_job, w.res, w.window = res_job, res, window
    return w


def _outputs(out: Plan, walk: _Walk, elig: _Eligible, fixed: dict, frozen_prio: dict,
             heads: dict, now: float, cfg: PolicyConfig, cluster: Cluster | None) -> None:
    started = {s.job for s in out.starts}
    out.reasons = PlanReasons(fixed, heads, started, elig, walk.verdicts, walk.filtered,
                              walk.window, cfg.default_time_limit_s, cluster, walk.open_reason)
    inv_age = 1.0 / cfg.max_age_s if cfg.max_age_s > 0 else 0.0
    out.priorities = PlanPriorities(frozen_prio, elig, walk.consts, now, now - cfg.max_age_s,
                                    cfg.weight_age, inv_age)


def schedule(cluster: Cluster, queue: PendingQueue, now: float, config: PolicyConfig,
             fairshare_factors: dict[tuple[str, str], float], *, out: Plan | None = None,
             full: bool = True) -> Plan:
    """Start what can start now from a queue the caller keeps (the replay simulator), recording
    the starts in `cluster`.

    With `full` every queued job also gets its priority and a reason and the reserved job an
    estimate (as `plan` gives them); without it the walk stops as soon as nothing more can
    start and the plan holds the starts only."""
    out = out if out is not None else Plan()
    classes = list(queue.classes.values())
    heads: dict[int, str] = {}
    # the caller goes on changing the cluster: verdicts are settled now
    walk = _walk(cluster, classes, now, config, fairshare_factors, queue.cpu_only, full,
                 out.starts, heads, lazy=False)
    if not full:
        return out
    if walk.res_job is not None and walk.res is not None:
        out.estimates[walk.res_job.id] = walk.res.time
    elig = _Eligible(JobIndex(None, {}, ((), classes)), {}, dict(zip(classes, count())),
                     sum(map(len, classes)))
    _outputs(out, walk, elig, dict(out.reasons), dict(out.priorities), heads, now, config,
             None)
    return out

