"""The walk down the queue: what starts now, in priority order, and why the rest waits.

The queue is made of classes of jobs that differ only in age (queue.py), each in priority
order. The walk keeps a heap of the class heads by priority and takes them in turn:
- placement: a job over a limit, or that no node could ever run, waits with that reason and
  blocks nobody; otherwise it starts on the best-fitting node if it can;
- reservation: the first job that cannot start is held for (reason Resources) and gets the
  backfill reservation (backfill.py);
- backfill: after that, lower-priority jobs start only where they cannot delay the reservation,
  or not at all when backfill is off (reason Priority).
Once the head of a class cannot start, none behind it can either: the class gets a verdict for
all its members, so the walk costs in proportion to the classes and the starts, not the jobs.

Until the next start the walk remembers, by shape (placement.shape_of), where a job would fit
and which limit stands in the way, since placement depends on the shape only (unless per-type
limits look at the group).
"""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection
from itertools import islice

from .backfill import KeepOff, Reservation, StarvedReservations, reserve, reserve_gang
from .limits import quota_reason
from .placement import Cluster, job_of_shape, parts_of
from .priority import short_factor, size_factor, starved_priority, time_limit, user_factor
from .queue import JobClass, t0_of
from .reasons import OPEN
from .snapshot import JobView, PolicyConfig, Start
from .streams import ShapeStreams

_WAITS = object()  # the job's class was settled while placing it


class Walk:
    """One walk over `classes`, recording the starts in `cluster`, `starts` and the reasons
    that are not the verdict of their class in `heads`.

    With `full`, the classes the walk did not finish get a verdict (OPEN with `lazy`: the
    cluster, left as it is, answers when asked); without it the walk stops as soon as nothing
    more can start. `shapes` (the members' time limits by shape, over all classes) lets the walk
    stop once the reservation is made and no shape can start anything any more: then every
    class left waits for a limit or for Priority, which the cluster tells as well then as later
    (and a walk for the starts alone needs no verdicts). A shape can start nothing more when no
    set of nodes has as many GPUs free as it asks, or when no node clear of the reservation
    has and every member not started outlasts the reservation.

    What the plan reads afterwards: `consts` (per class, the part of the priority its members
    share), `verdicts`, `filtered` (classes cut by backfill), `res_job`, `res`, `window` and
    `open_reason`."""

    def __init__(self, cluster: Cluster, classes: list[JobClass], now: float,
                 config: PolicyConfig, fairshare_factors: dict, cpu_only: int, full: bool,
                 starts: list, heads: dict, lazy: bool = True, shapes: dict | None = None,
                 order: dict | None = None, streams: ShapeStreams | None = None,
                 find_top: bool = False):
        self.cluster, self.classes, self.now, self.config = cluster, classes, now, config
        # with `streams` (a walk for the starts alone), the classes come from it, numbered as
        # the walk reaches them, instead of from `classes`
        self.streams = streams
        self.find_top = find_top  # walk on to the top job that cannot start, for preemption
        self.cpu_only, self.full, self.lazy, self.shapes = cpu_only, full, lazy, shapes
        self.order = order  # per shape, its limits in `shapes` in ascending order (None left out)
        self.starts, self.heads = starts, heads
        self.default_tl = config.default_time_limit_s
        self.weight_age = config.weight_age
        self.inv_age = 1.0 / config.max_age_s if config.max_age_s > 0 else 0.0
        self.floor = now - config.max_age_s
        self.starved = starved_priority(config)
        if streams is None:
            self._queue_heads(fairshare_factors)
        else:
            self.lists, self.consts, self.heap = [], [], []
        self.pos = [0] * len(classes)  # per class, the member the walk is at
        self.verdicts: list = [None] * len(classes)
        # classes cut by backfill -> how many members not yet walked fit in the window: only
        # these are walked further; the others wait (reason Priority)
        self.short_left: dict[int, int] = {}
        self.res: Reservation | None = None
        self.res_job: JobView | None = None
        self.res_done = False  # reservation computed (it may be None)
        # starved jobs' reservations after the top job's (config.starved_reservations)
        self.more = StarvedReservations()
        self.more_jobs: list[JobView] = []
        self.reserving = config.starved_reservations > 1 and self.starved is not None
        self.window = 0.0
        self.failed_now: set[tuple] = set()  # shapes that fit nowhere now: resources only shrink
        self.failed_bf: set[tuple] = set()  # shapes that fit nowhere clear of the reservation
        self.fits: dict[tuple, tuple] | None = None if cluster._type_limits else {}
        self.blocked: dict[tuple, str | None] = {}  # limit in the way, by what limits look at
        self.settle = shapes is not None and self.fits is not None and (lazy or not full)
        self.unsettled = set(shapes) if self.settle else set()  # shapes that might still start
        self.started_tls: dict[tuple, Counter] = {}  # by shape, time limits of the starts
        self.settled_bf: set[tuple] = set()  # settled while the best fit is on the reserved node
        self.open_reason = "Resources"
        self.filtered: frozenset = frozenset()

    def _queue_heads(self, fairshare_factors: dict) -> None:
        """The constant part of each class's priority, and a heap of the class heads:
        (-priority, submit, id, class no.).

        class_constant and _priority, inlined: this runs over every class on every plan, and
        the calls cost a tenth of a warm plan on a big queue. The sums are the same, in the
        same order, so that priorities are equal to the last bit."""
        cfg, max_gpus, fs = self.config, self.cluster.max_gpus, fairshare_factors.get
        wf, wp, ws, wsh = (cfg.weight_fairshare, cfg.weight_priority, cfg.weight_size,
                           cfg.weight_short)
        wa, floor, now, inv_age = self.weight_age, self.floor, self.now, self.inv_age
        starved = self.starved
        # a class's constant is kept on it with what it was computed from: the replay
        # simulator walks the same classes at every event
        basis = (wf, wp, ws, wsh, cfg.default_time_limit_s, cfg.short_step, max_gpus)
        user_f: dict[int, float] = {}
        self.lists = lists = []
        self.consts = consts = []
        self.heap = heap = []
        for n, c in enumerate(self.classes):
            h = c.head
            f = fs((h.group, h.owner), 1.0)
            kept = c.const
            if kept is not None and kept[0] == f and kept[1] == basis:
                const = kept[2]
            else:
                uf = user_f.get(h.priority)
                if uf is None:
                    uf = user_f[h.priority] = user_factor(h.priority)
                const = wf * f + wp * uf
                if ws:
                    const += ws * size_factor(h.gpus, max_gpus)
                if wsh:
                    const += wsh * short_factor(h.time_limit_s, cfg)
                c.const = (f, basis, const)
            lst = c.ordered()
            lists.append(lst)
            consts.append(const)
            j = lst[0]
            if not wa:
                heap.append((-const, j.submit_time, j.id, n))
                continue
            t0 = j.submit_time if j.eligible_time is None else j.eligible_time
            if t0 <= floor and starved is not None:
                heap.append((-starved, j.submit_time, j.id, n))
                continue
            age = 1.0 if t0 <= floor else max(0.0, now - t0) * inv_age
            heap.append((-(const + wa * age), j.submit_time, j.id, n))
        heapq.heapify(heap)

    def _priority(self, const: float, job: JobView) -> float:
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        if t0 <= self.floor and self.starved is not None:
            return self.starved
        age = 1.0 if t0 <= self.floor else max(0.0, self.now - t0) * self.inv_age
        return const + self.weight_age * age

    def _push(self, n: int) -> None:
        """Put class `n` back on the heap at the member the walk is at."""
        j = self.lists[n][self.pos[n]]
        entry = (-self._priority(self.consts[n], j), j.submit_time, j.id, n)
        if self.streams is None:
            heapq.heappush(self.heap, entry)
        else:
            self.streams.push(self.classes[n].shape, entry)

    def _pop(self) -> int | None:
        """The next class in priority order, or None."""
        if self.streams is None:
            return heapq.heappop(self.heap)[3] if self.heap else None
        return self.streams.pop(self._passed_over, self._number)

    def _passed_over(self, shape: tuple) -> bool:
        return self.settle and shape not in self.unsettled

    def _number(self, c: JobClass) -> int:
        """Number a class the streams give the walk (its priority is fixed: -rank[0])."""
        self.classes.append(c)
        self.lists.append(c.ordered())
        self.consts.append(-c.rank[0])
        self.pos.append(0)
        self.verdicts.append(None)
        return len(self.classes) - 1

    def _settle(self, n: int, job: JobView, reason: str, verdict: str) -> None:
        """`job`, the head of class `n`, waits for `reason`, and the members behind it for
        `verdict`; the class is not walked further."""
        self.heads[job.id] = reason
        self.pos[n] += 1
        self.verdicts[n] = verdict

    # -- the walk --------------------------------------------------------------------------
    def run(self) -> Walk:
        backfill = self.config.backfill
        while not self._nothing_more():
            n = self._pop()
            if n is None:
                break
            job = self.lists[n][self.pos[n]]
            placed = self._place(n, job)
            if placed is _WAITS:
                continue
            if self.res_job is None:
                if placed is None:
                    self._hold_for(n, job)
                    if not backfill:
                        break
                    continue
            elif placed is None:
                if not (self.reserving and self._reserve_more(n, job)):
                    self._settle(n, job, "Priority", "Priority")
                continue
            else:
                placed = self._backfill(n, job, placed)
                if placed is not None and self.more_jobs:
                    placed = self._clear_of_more(n, job, placed)
                if placed is None:
                    continue
            self._start(n, job, placed)
        self._close()
        return self

    def _nothing_more(self) -> bool:
        """Nothing more can start (once there is a reservation, or when only starts are
        wanted): no GPU is free and no job left asks for none, or no shape can start."""
        if self.res_job is None and (self.full or self.find_top):
            return False
        if self.cluster.total_free == 0 and not self.cpu_only:
            return True
        return self.res_job is not None and self.settle and not self.unsettled

    # -- placement -------------------------------------------------------------------------
    def _place(self, n: int, job: JobView):
        """(node index, GPUs) where `job` fits now, None, or _WAITS when a limit (or no node)
        makes its class wait."""
        cluster, shape = self.cluster, self.classes[n].shape
        key = (shape, job.group, job.owner, job.partition, job.array_limit and job.array_id)
        why = self.blocked.get(key, OPEN)
        if why is OPEN:
            why = self.blocked[key] = cluster.feasibility(job) or quota_reason(cluster, job)
        if why:
            if self.settle and cluster._feasible.get(shape):
                self.unsettled.discard(shape)  # no node could ever run it
            self._settle(n, job, why, why)
            return _WAITS
        if shape in self.failed_now:
            return None
        fits = self.fits
        placed = fits.get(shape) if fits is not None else None
        if placed is None:
            placed = cluster.fit(job)
            if placed is not None and fits is not None:
                fits[shape] = placed
        if placed is None:
            if cluster.type_blocked:
                self._settle(n, job, "QuotaGroupGPUType", "QuotaGroupGPUType")
                return _WAITS
            if not cluster._type_limits:
                self.failed_now.add(shape)
                self.unsettled.discard(shape)
        return placed

    def _start(self, n: int, job: JobView, placed: tuple) -> None:
        node_idx, gpus = placed[0], placed[1]
        parts = placed[2] if len(placed) == 3 else None
        self.cluster.start(job, node_idx, gpus, self.now + time_limit(job, self.config), parts)
        if self.fits:
            self.fits.clear()
        if self.settle:
            shape = self.classes[n].shape
            started = self.started_tls.get(shape)
            if started is None:
                started = self.started_tls[shape] = Counter()
            started[job.time_limit_s] += 1
            if self.settled_bf and self.full:
                # a walk for the starts alone keeps them settled: a shape with no fit clear of
                # the reservation finds none as resources shrink
                self.unsettled.update(self.settled_bf)
                self.settled_bf.clear()
            if self.res_job is not None:
                self._settle_shapes()
        self.blocked.clear()
        names = self.cluster.nodes
        self.starts.append(Start(job.id, names[node_idx].name, gpus) if parts is None else
                           Start(job.id, names[node_idx].name, gpus,
                                 tuple((names[i].name, g) for i, g in parts)))
        if job.gpus <= 0:
            self.cpu_only -= 1
        p = self.pos[n] + 1
        left = self.short_left.get(n)
        if left is not None:
            self.short_left[n] = left = left - 1
            p = self._next_short(n, p) if left > 0 else len(self.lists[n])
        self.pos[n] = p
        if p < len(self.lists[n]):
            self._push(n)

    # -- reservation -----------------------------------------------------------------------
    def _hold_for(self, n: int, job: JobView) -> None:
        """The first job that cannot start: the reservation is for it (made when a later job
        could start, or at the end); its class waits behind it."""
        self.res_job = job
        if self.reserving and self._may_reserve_more(n, job):
            self._go_on(n, job, "Resources")  # the starved members behind it may reserve
        else:
            self._settle(n, job, "Resources", "Priority")
        if self.settle and self.config.backfill:  # else the walk ends here
            self._settle_shapes()

    def _settle_shapes(self) -> None:
        """Settle the shapes that ask for more GPUs on more nodes than are free now (resources
        only shrink while the walk goes on). A walk for the starts alone also settles, before
        it meets them, the shapes that fit only where the reservation holds and whose every
        member not started outlasts it."""
        buckets, cluster = self.cluster.buckets, self.cluster
        for shape in [s for s in self.unsettled if s[0] > 0]:
            if sum(len(b) for b in buckets[shape[0]:]) < shape[6]:
                self.unsettled.discard(shape)
        if self.full or not self.unsettled:
            return
        res = self._reserve()
        for shape in list(self.unsettled):
            job = job_of_shape(shape)
            placed = cluster.fit(job)
            if placed is None:
                self.unsettled.discard(shape)
            elif (res is not None and any(res.on(i) is not None for i, _ in parts_of(placed))
                  and not res.allows(self.now, self._shortest(shape))
                  and cluster.fit(job, avoid=res) is None):
                self.unsettled.discard(shape)

    def _reserve(self) -> Reservation | None:
        if not self.res_done:
            self.res, self.res_done = _reserve_for(self.cluster, self.res_job, self.now), True
            if self.res is not None:
                self.window = self.res.time - self.now
        return self.res

    def _reserve_more(self, n: int, job: JobView) -> bool:
        """A starved job after the top one that cannot start reserves too, on nodes no other
        reservation holds, while there are fewer than starved_reservations; the walk goes on
        with the member behind it."""
        if not self._may_reserve_more(n, job):
            return False
        top = self._reserve()
        taken = set(self.more.by_node)
        if top is not None:
            taken.update(top.parts if top.parts is not None else (top.node,))
        res = _reserve_for(self.cluster, job, self.now, taken)
        if res is None:
            return False
        self.more.add(res)
        self.more_jobs.append(job)
        # its reason and estimate stay those of a job behind the top one: a walk that stops
        # early, once nothing more can start, would not have reached it
        self._go_on(n, job, "Priority")
        return True

    def _may_reserve_more(self, n: int, job: JobView) -> bool:
        """`job`, starved and unable to start, may hold a reservation after the top job's."""
        cfg = self.config
        return not (len(self.more_jobs) + 1 >= cfg.starved_reservations
                    or self.starved is None or not cfg.backfill or n in self.short_left
                    or t0_of(job) > self.floor)

    def _go_on(self, n: int, job: JobView, reason: str) -> None:
        """`job` waits for `reason`; the walk goes on with the member of class `n` behind it."""
        self.heads[job.id] = reason
        self.pos[n] += 1
        if self.pos[n] < len(self.lists[n]):
            self._push(n)

    # -- backfill --------------------------------------------------------------------------
    def _clear_of_more(self, n: int, job: JobView, placed_: tuple) -> tuple | None:
        """Where `job`, clear of the top job's reservation at `placed_`, may start without
        delaying the starved jobs' after it, or None."""
        now, limit = self.now, self._limit(job)
        if self.more.in_way(placed_, job, now, limit):
            placed_ = self.cluster.fit(job, avoid=KeepOff(self.res, self.more, now, limit))
            if placed_ is None:
                # as for the top job's: the members behind it that end before it go on
                if self.res is not None:
                    self._keep_short(n, job)
                else:
                    self._settle(n, job, "Priority", "Priority")
                return None
            if self.res is not None and not self.res.allows(now, limit):
                for i, _ in parts_of(placed_):
                    hold = self.res.on(i)
                    if hold is not None:
                        hold.took(job.cpus, job.memory_mb)
        self.more.took(placed_, job, now, limit)
        return placed_

    def _backfill(self, n: int, job: JobView, placed: tuple) -> tuple | None:
        """Where `job` may start without delaying the top job's reservation, or None."""
        res = self._reserve()
        if res is None:
            return placed
        if len(placed) == 2 and res.parts is None:
            if placed[0] != res.node:
                return placed
        elif all(res.on(i) is None for i, _ in parts_of(placed)):
            return placed
        if res.allows(self.now, self._limit(job)):
            return placed
        shape = self.classes[n].shape
        placed = None if shape in self.failed_bf else self.cluster.fit(job, avoid=res)
        if placed is None:
            self._cut(n, job, shape)
            return None
        for i, _ in parts_of(placed):
            hold = res.on(i)
            if hold is not None:
                hold.took(job.cpus, job.memory_mb)
        return placed

    def _cut(self, n: int, job: JobView, shape: tuple) -> None:
        """No member of class `n` that outlasts the reservation can start now: they wait
        (reason Priority); the walk goes on with the members that end in time."""
        self.failed_bf.add(shape)
        if self.settle and not self.res.allows(self.now, self._shortest(shape)):
            # no job of this shape ends in time; all would go on the reserved node (until the
            # next start)
            self.unsettled.discard(shape)
            self.settled_bf.add(shape)
        self._keep_short(n, job)

    def _keep_short(self, n: int, job: JobView) -> None:
        """`job` waits (Priority), and of the members behind it only those whose limit ends
        within the window are walked."""
        self.heads[job.id] = "Priority"
        left = self._short_members_left(n)
        self.short_left[n] = left
        if left > 0:
            self.pos[n] = self._next_short(n, self.pos[n] + 1)
            self._push(n)
        else:
            self.pos[n] = len(self.lists[n])

    def _limit(self, job: JobView) -> float:
        return self.default_tl if job.time_limit_s is None else job.time_limit_s

    def _shortest(self, shape: tuple) -> float:
        """The shortest time limit of any queued job of this shape the walk did not start."""
        dtl, started, tls = self.default_tl, self.started_tls.get(shape) or {}, self.shapes[shape]
        if self.order is None:
            return min(((dtl if t is None else t) for t, k in tls.items()
                        if k > started.get(t, 0)), default=float("inf"))
        # the queue's limits in order: the walk started few of them
        out = dtl if tls.get(None, 0) > started.get(None, 0) else float("inf")
        for t in self.order[shape]:
            if t >= out:
                break
            if tls[t] > started.get(t, 0):
                return t
        return out

    def _short_members_left(self, n: int) -> int:
        """Members of class `n` after the one the walk is at whose limit fits the window."""
        dtl, window = self.default_tl, self.window
        left = sum(k for t, k in self.classes[n].tl_counts().items()
                   if k and (dtl if t is None else t) <= window)
        if left:
            for j in islice(self.lists[n], self.pos[n] + 1):
                if (dtl if j.time_limit_s is None else j.time_limit_s) <= window:
                    left -= 1
        return left

    def _next_short(self, n: int, q: int) -> int:
        """The first member of class `n` from `q` on whose limit fits the window."""
        lst, dtl, window = self.lists[n], self.default_tl, self.window
        while (dtl if lst[q].time_limit_s is None else lst[q].time_limit_s) > window:
            q += 1
        return q

    # -- the end ---------------------------------------------------------------------------
    def _close(self) -> None:
        """Verdicts for the classes the walk did not reach the end of."""
        self.open_reason = "Priority" if self.res_job is not None else "Resources"
        if self.full:
            if self.res_job is not None and not self.res_done:
                self.res = _reserve_for(self.cluster, self.res_job, self.now)
            for _, _, _, n in self.heap:
                if self.lazy:
                    self.verdicts[n] = OPEN
                else:
                    job = self.lists[n][self.pos[n]]
                    why = self.cluster.feasibility(job) or quota_reason(self.cluster, job)
                    self.verdicts[n] = why or self.open_reason
        self.filtered = frozenset(self.short_left)


def _reserve_for(cluster: Cluster, job: JobView, now: float,
                 exclude: Collection[int] = ()) -> Reservation | None:
    return (reserve_gang(cluster, job, now, exclude) if job.nodes > 1
            else reserve(cluster, job, now, exclude))
