"""A plain reference planner with the semantics of README's "Scheduling" section, written for
clarity and nothing else: every pending job in priority order, one at a time, against a simple
model of the cluster. `plan()` must give the same starts, reasons and priorities; it gets there
by grouping jobs into classes, caching by shape and stopping early, none of which is here.

The rules, as `plan()` applies them:
- priority = w_fairshare * F + w_priority * (p - 1) / 9 + w_size * min(1, gpus / largest node)
  + w_short / (1 + limit / default limit) + w_age * min(1, age / max_age), the age counted from
  the eligible time, else the submit time; a pending job waiting on a dependency has no age;
  with starved_first (and w_age > 0), a job of age >= max_age instead gets the sum of all the
  weights, the most any job can have, so that such jobs go first in submit order;
  ties go to the earlier submit, then the lower id;
- dependencies: one that can never be met -> DependencyNeverSatisfied (and a cancel if so
  configured), else held -> Held, else one not met yet -> Dependency; the rest are eligible;
- a job that no up node could ever run, or over a limit, waits with that reason; a task of an
  array with a throttle (%N) waits with ArrayThrottle while N of its tasks run;
- otherwise best fit: the up node with the fewest free GPUs that fits it (ties: the node that
  has had that many free GPUs the longest), the lowest free GPU indices that match;
- the first job that cannot start is reserved for (Resources) at the earliest time a node frees
  enough for it, running jobs ending at their time limits; later jobs start only if backfill is
  on and they end by then or keep off the reserved GPUs and what the reserved job needs of the
  node's CPUs and memory; the others wait (Priority);
- jobs that differ only in age (same group, user and uid, priority, partition and request;
  time limit when the short factor counts; array when it is throttled) are settled together:
  once one waits, the ones behind it wait for the same reason (the reserved job's twins, and
  those of a job kept off by backfill, for Priority, except that twins kept off by backfill
  whose limits end by the reservation are still tried).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from labq.daemon.policy import Plan, Snapshot, Start, fairshare

NOT_OK = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


def dependency_status(job, active_ids, ended) -> str:
    status = "met"
    for d in job.dependencies:
        if d.job in ended:
            final = ended[d.job]
            ok = {"afterok": final == "COMPLETED", "afternotok": final in NOT_OK,
                  "afterany": True}.get(d.kind, False)
            if not ok:
                return "never"
        elif d.job in active_ids:
            status = "waiting"
        else:
            return "never"
    return status


def slot_matches(slot, job) -> bool:
    if job.gpu_type and job.gpu_type.lower() not in slot.type.lower():
        return False
    return not (job.gpu_memory_mb and slot.memory_mb < job.gpu_memory_mb)


def may_run(node, job) -> bool:
    if node.only_uid is not None and node.only_uid != job.owner_uid:
        return False
    return node.root_ok or job.owner_uid != 0


def fits_empty(node, job, owner_matters=True) -> bool:
    if owner_matters and not may_run(node, job):
        return False
    if job.cpus > node.cpus or job.memory_mb > node.memory_mb:
        return False
    return job.gpus <= 0 or sum(slot_matches(g, job) for g in node.gpus) >= job.gpus


@dataclass
class Node:
    view: object  # the NodeView
    free: set
    free_cpus: int
    free_mem: int
    since: int  # when its number of free GPUs last changed
    running: list = field(default_factory=list)  # (end, gpu indices, cpus, memory)


@dataclass
class Reservation:
    time: float
    node: Node
    gpus: set
    spare_cpus: int
    spare_mem: int


class Reference:
    def __init__(self, snapshot: Snapshot, now: float):
        self.s, self.now, self.cfg = snapshot, now, snapshot.config
        self.nodes = [Node(n, set(n.free_gpus), n.free_cpus, n.free_memory_mb, i)
                      for i, n in enumerate(snapshot.nodes)]
        self.clock = len(self.nodes)
        (self.group_gpus, self.user_gpus, self.user_jobs, self.part_jobs, self.type_gpus,
         self.array_jobs) = ({}, {}, {}, {}, {}, {})
        for j in snapshot.jobs:
            if j.state == "RUNNING":
                node = next((n for n in self.nodes if n.view.name == j.node), None)
                end = (j.start_time or now) + self.limit(j)
                if node is not None:
                    node.running.append((end, tuple(j.gpu_indices), j.cpus, j.memory_mb))
                self.count(j, node, j.gpu_indices)

    def limit(self, job) -> float:
        return self.cfg.default_time_limit_s if job.time_limit_s is None else job.time_limit_s

    def count(self, job, node, gpus) -> None:
        add = lambda d, k, v: d.__setitem__(k, d.get(k, 0) + v)  # noqa: E731
        add(self.group_gpus, job.group, job.gpus)
        add(self.user_gpus, job.owner, job.gpus)
        add(self.user_jobs, job.owner, 1)
        add(self.part_jobs, (job.partition, job.owner), 1)
        if job.array_limit:
            add(self.array_jobs, job.array_id, 1)
        slots = {g.index: g for g in node.view.gpus} if node else {}
        for (g, t) in self.cfg.limits.group_gpu_type:
            if g == job.group:
                add(self.type_gpus, (g, t),
                    sum(1 for i in gpus if i in slots and t.lower() in slots[i].type.lower()))

    # -- priority ----------------------------------------------------------------------------
    def priority(self, job, fs: dict, with_age: bool) -> float:
        c = self.cfg
        largest = max((len(n.gpus) for n in self.s.nodes), default=0)
        size = min(1.0, job.gpus / largest) if largest > 0 else 0.0
        short = 1.0 / (1.0 + max(0.0, self.limit(job)) / c.default_time_limit_s)
        user = (min(10, max(1, job.priority)) - 1) / 9.0
        p = (c.weight_fairshare * fs[(job.group, job.owner)] + c.weight_priority * user
             + c.weight_size * size + c.weight_short * short)
        if not with_age:
            return p
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        starved = c.starved_first and c.weight_age > 0 and c.max_age_s > 0
        if starved and t0 <= self.now - c.max_age_s:
            # waited max_age_s: ahead of every job that has not, by submit time among them
            return (c.weight_fairshare + c.weight_priority + c.weight_size + c.weight_short
                    + c.weight_age)
        if c.max_age_s > 0:
            age = min(1.0, max(0.0, self.now - t0) / c.max_age_s)
        else:
            age = 1.0 if t0 <= self.now else 0.0
        return p + c.weight_age * age

    def twins(self, job) -> tuple:
        """What jobs that differ only in age share."""
        key = (job.group, job.owner, job.owner_uid, job.priority, job.partition, job.gpus,
               job.gpu_type, job.gpu_memory_mb, job.cpus, job.memory_mb,
               job.array_id if job.array_limit else None)
        return key + ((job.time_limit_s,) if self.cfg.weight_short else ())

    # -- where a job could go ----------------------------------------------------------------
    def never_fits(self, job) -> str | None:
        can = [n for n in self.nodes if fits_empty(n.view, job)]
        if any(n.view.state == "up" for n in can):
            return None
        if can:
            return "NodeDown"
        if any(fits_empty(n.view, job, owner_matters=False) for n in self.nodes):
            return "NoNodeForUser"
        return "NoNodeFits"

    def over_limit(self, job) -> str | None:
        lim = self.cfg.limits
        g, u = job.group, job.owner
        if g in lim.group_gpus and self.group_gpus.get(g, 0) + job.gpus > lim.group_gpus[g]:
            return "QuotaGroupGPU"
        if lim.user_jobs is not None and self.user_jobs.get(u, 0) + 1 > lim.user_jobs:
            return "QuotaUserJobs"
        if lim.user_gpus is not None and self.user_gpus.get(u, 0) + job.gpus > lim.user_gpus:
            return "QuotaUserGPU"
        cap = lim.partition_user_jobs.get(job.partition)
        if cap is not None and self.part_jobs.get((job.partition, u), 0) + 1 > cap:
            return "QuotaPartitionJobs"
        if job.array_limit and self.array_jobs.get(job.array_id, 0) + 1 > job.array_limit:
            return "ArrayThrottle"
        return None

    def over_type_limit(self, job, node, gpus) -> bool:
        slots = {g.index: g for g in node.view.gpus}
        for (g, t), cap in self.cfg.limits.group_gpu_type.items():
            k = sum(1 for i in gpus if t.lower() in slots[i].type.lower())
            if g == job.group and k and self.type_gpus.get((g, t), 0) + k > cap:
                return True
        return False

    def best_fit(self, job, avoid: tuple = ()):
        """((node, gpus) or None, whether a per-type group limit stood in the way), kept off
        what the reservations in `avoid` hold."""
        type_blocked = False
        up = [n for n in self.nodes if n.view.state == "up" and len(n.free) >= job.gpus]
        for n in sorted(up, key=lambda n: (len(n.free), n.since)):
            if job.cpus > n.free_cpus or job.memory_mb > n.free_mem or not may_run(n.view, job):
                continue
            holds = [r for r in avoid if n is r.node]
            if any(job.cpus > r.spare_cpus or job.memory_mb > r.spare_mem for r in holds):
                continue
            if job.gpus <= 0:
                return (n, ()), False
            slots = {g.index: g for g in n.view.gpus}
            usable = sorted(i for i in n.free if slot_matches(slots[i], job)
                            and not any(i in r.gpus for r in holds))
            if len(usable) < job.gpus:
                continue
            gpus = tuple(usable[:job.gpus])
            if self.over_type_limit(job, n, gpus):
                type_blocked = True
                continue
            return (n, gpus), False
        return None, type_blocked

    def reserve(self, job, exclude: tuple = ()) -> Reservation | None:
        """The earliest time and node, not in `exclude`, at which `job` fits as running jobs
        reach their limits."""
        best = None
        for n in self.nodes:
            if n.view.state != "up" or not fits_empty(n.view, job) or n in exclude:
                continue
            match = {g.index for g in n.view.gpus if slot_matches(g, job)}
            free = [i for i in sorted(n.free) if i in match]
            freed, cpus, mem, t = [], n.free_cpus, n.free_mem, self.now
            ending = sorted(n.running)
            while len(free) + len(freed) < job.gpus or cpus < job.cpus or mem < job.memory_mb:
                if not ending:
                    break
                end, gpus, c, m = ending.pop(0)
                freed += [i for i in gpus if i in match]
                cpus, mem, t = cpus + c, mem + m, max(self.now, end)
            else:
                if best is None or t < best.time:
                    best = Reservation(t, n, set((freed + free)[:job.gpus]), cpus - job.cpus,
                                       mem - job.memory_mb)
        return best

    def may_reserve_more(self, job, more: list) -> bool:
        """A starved job may hold a reservation after the top job's, while there are fewer
        than starved_reservations."""
        c = self.cfg
        t0 = job.submit_time if job.eligible_time is None else job.eligible_time
        return not (len(more) + 1 >= c.starved_reservations or not c.starved_first
                    or not c.weight_age > 0 or not c.max_age_s > 0
                    or t0 > self.now - c.max_age_s)

    def reserve_more(self, job, res: Reservation | None, more: list) -> bool:
        """The starved `job` after the top one reserves a node that no reservation holds."""
        r = self.reserve(job, exclude=tuple(h.node for h in [res] + more if h is not None))
        if r is not None:
            more.append(r)
        return r is not None

    def start(self, job, node: Node, gpus: tuple) -> None:
        if gpus:
            self.clock += 1
            node.since = self.clock
        node.free -= set(gpus)
        node.free_cpus -= job.cpus
        node.free_mem -= job.memory_mb
        node.running.append((self.now + self.limit(job), gpus, job.cpus, job.memory_mb))
        self.count(job, node, gpus)

    # -- the plan ------------------------------------------------------------------------------
    def plan(self) -> Plan:
        s, cfg = self.s, self.cfg
        out = Plan(reasons={}, priorities={})
        active = {j.id for j in s.jobs}
        eligible, waiting = [], []
        for j in s.jobs:
            if j.state == "RUNNING":
                continue
            status = dependency_status(j, active, s.ended)
            if status == "never":
                out.reasons[j.id] = "DependencyNeverSatisfied"
                if cfg.cancel_unsatisfiable:
                    out.cancels.append((j.id, "DependencyNeverSatisfied"))
            elif j.state == "HELD":
                out.reasons[j.id] = "Held"
            elif status == "waiting":
                out.reasons[j.id] = "Dependency"
            if j.state == "PENDING":
                (eligible if status == "met" else waiting).append(j)
        out.cancels.sort()
        fs = fairshare.factors(s.group_usage, s.user_usage, cfg.group_shares, cfg.user_shares,
                               {(j.group, j.owner) for j in eligible + waiting})
        for j in waiting:
            out.priorities[j.id] = self.priority(j, fs, with_age=False)
        for j in eligible:
            out.priorities[j.id] = self.priority(j, fs, with_age=True)
        eligible.sort(key=lambda j: (-out.priorities[j.id], j.submit_time, j.id))
        self.walk(eligible, out)
        return out

    def walk(self, queue: list, out: Plan) -> None:
        held = None  # the reserved job
        res = None
        more: list[Reservation] = []  # starved jobs' reservations after the top job's
        settled: dict[tuple, str] = {}  # twins -> what the ones behind wait for
        kept_off: dict[tuple, float] = {}  # twins -> window: longer limits wait for Priority
        for j in queue:
            key = self.twins(j)
            if key in kept_off and self.limit(j) > kept_off[key]:
                out.reasons[j.id] = "Priority"
                continue
            if key in settled:
                out.reasons[j.id] = settled[key]
                continue
            why = self.never_fits(j) or self.over_limit(j)
            if why:
                out.reasons[j.id] = settled[key] = why
                continue
            if held is not None and not self.cfg.backfill:
                out.reasons[j.id] = "Priority"
                continue
            placed, type_blocked = self.best_fit(j)
            if placed is None and type_blocked:
                out.reasons[j.id] = settled[key] = "QuotaGroupGPUType"
                continue
            if placed is None:
                out.reasons[j.id] = "Priority" if held is not None else "Resources"
                may = key not in kept_off and self.may_reserve_more(j, more)
                if held is None:
                    held, res = j, self.reserve(j)
                    if res is not None:
                        out.estimates[j.id] = res.time
                elif may:
                    may = self.reserve_more(j, res, more)
                if not may:  # else its starved twins behind it may reserve
                    settled[key] = "Priority"
                continue
            node, gpus = placed
            ends = self.now + self.limit(j)
            if res is not None and node is res.node and ends > res.time:
                placed, _ = self.best_fit(j, avoid=(res,))
                if placed is None:
                    out.reasons[j.id] = "Priority"
                    kept_off[key] = res.time - self.now
                    continue
                node, gpus = placed
                if node is res.node:
                    res.spare_cpus -= j.cpus
                    res.spare_mem -= j.memory_mb
            if any(r.node is node and ends > r.time and (
                    set(gpus) & r.gpus or j.cpus > r.spare_cpus or j.memory_mb > r.spare_mem)
                   for r in more):
                outlasted = [r for r in ([res] if res is not None else []) + more
                             if ends > r.time]
                placed, _ = self.best_fit(j, avoid=tuple(outlasted))
                if placed is None:
                    out.reasons[j.id] = "Priority"
                    if res is not None:
                        kept_off[key] = res.time - self.now
                    else:
                        settled[key] = "Priority"
                    continue
                node, gpus = placed
                if res is not None and node is res.node and ends > res.time:
                    res.spare_cpus -= j.cpus
                    res.spare_mem -= j.memory_mb
            for r in more:
                if r.node is node and ends > r.time:
                    r.spare_cpus -= j.cpus
                    r.spare_mem -= j.memory_mb
            self.start(j, node, gpus)
            out.starts.append(Start(j.id, node.view.name, gpus))


def reference_plan(snapshot: Snapshot, now: float) -> Plan:
    return Reference(snapshot, now).plan()
