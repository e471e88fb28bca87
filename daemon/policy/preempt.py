"""Preemption (Slurm's PreemptMode=REQUEUE): which running jobs to stop and requeue so that a
waiting job that could otherwise not start starts now.

Who may be stopped: a job submitted preemptible, and with `preempt_over_share` any job of a
group that holds more GPUs than its share (its share over all groups' shares, of the GPUs of
the nodes that are up): the scavenger tier is then whatever a group runs beyond its share,
for as long as it does. A victim has run at least preempt_min_run_s (and, if it is set, at most
preempt_max_run_s: a long run is worth more than the wait it would save) and has been
preempted fewer than preempt_max times. A gang is stopped whole.

Who may preempt: a job that may not be stopped itself, when it is the top waiting job (the
reservation's) or, with `preempt_over_share`, the first waiting job of each class of a group
under its share, so long as at least half of it fits in what its group is owed and does not
hold, and its group holds at most preempt_share_floor of its share (below 1, natural turnover
fills the rest: a group nearly at its share does not throw away others' work for the last
GPUs of it). A job submitted preemptible is stopped only for a job it would rank below once
requeued, so two jobs never bounce each other; a requeued job keeps its age (from its submit,
or from when it was released or its dependency was met), so that starved_first still bounds
its wait, and a job that has waited max_age_s is never such a victim. The over-share tier is
taken back whatever the ranks, starved jobs included (fair-share is the promise there; the
GPUs freed are held for the preemptor, so the victim, first in line again, takes the next
ones), but only jobs of which at least half runs beyond their group's share: a group never
loses more than it runs beyond its share by more than half a job.

Where: on each node where the job could run, victims are taken latest start first (the least
work lost) until the job fits; the node losing the fewest GPU-seconds of work wins. A gang
takes the nodes that lose the least, free ones first. The GPUs freed there are the job's until
it starts (holds.py), and a job that holds GPUs does not preempt again.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from .placement import Cluster, could_ever_fit, gpu_matches, shape_of
from .priority import class_constant, starved_priority
from .queue import t0_of
from .snapshot import JobView, PolicyConfig

_INF = float("inf")


def share_gpus(cluster: Cluster, config: PolicyConfig,
               groups: Iterable[str]) -> dict[str, float]:
    """Each group's share of the up nodes' GPUs."""
    shares = dict(config.group_shares)
    for g in groups:
        shares.setdefault(g, 1.0)
    for g in cluster.group_gpus:
        shares.setdefault(g, 1.0)
    total = sum(shares.values())
    if total <= 0:
        return {}
    return {g: cluster.up_gpus * s / total for g, s in shares.items()}


def may_be_preempted(victim: JobView, now: float, config: PolicyConfig,
                     over: set[str] | None = None) -> bool:
    ran = now - _started(victim, now)
    return ((victim.preemptible or (over is not None and victim.group in over))
            and victim.preemptions < config.preempt_max
            and ran >= config.preempt_min_run_s
            and (config.preempt_max_run_s <= 0 or ran <= config.preempt_max_run_s))


def _started(job: JobView, now: float) -> float:
    # a start at time 0 (the replay's first instant) is a start
    return now if job.start_time is None else job.start_time


def _ranker(now: float, config: PolicyConfig, fs: Mapping, max_gpus: int):
    """A job's priority as a pending job (a running one: as it would be once requeued now,
    with the age it had), for many jobs: the part that jobs of one class share computed
    once."""
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
        t0 = t0_of(job)
        if starved is not None and t0 <= floor:
            return starved
        age = min(1.0, max(0.0, now - t0) * inv_age) if inv_age else 1.0
        return p + config.weight_age * age
    return ranked


def _pool(cluster: Cluster, running: Mapping[int, JobView], now: float, config: PolicyConfig,
          fs: Mapping, over: set[str] | None, busy: Container[str] = (),
          protect: float | None = None) -> list[tuple]:
    """(node, the jobs on it that may be preempted, latest start first, each as (its rank, the
    job, its GPUs on this node), GPUs free once they are stopped) for each up node with such
    jobs, but those in `busy` (GPUs there are held for a preemptor already). A job ranked at
    `protect` or above (starved) may be a victim only as part of what its group runs beyond
    its share (in `over`)."""
    out = []
    ranked = _ranker(now, config, fs, cluster.max_gpus)
    gangs = cluster.gang_parts
    over = over or set()
    limit = _INF if protect is None else protect
    for ns in cluster.nodes:
        if not ns.up or not ns.running or ns.name in busy:
            continue
        found = [v for jid in ns.running if (v := running.get(jid)) is not None
                 and may_be_preempted(v, now, config, over)]
        if found:
            found.sort(key=lambda v: (-_started(v, now), v.id))
            # a rank only matters for a job submitted preemptible (_Choice.allowed): the
            # tier takes the rest back whatever their rank, and ranking is most of a plan
            here = [(r, v, _gpus_on(v, ns.idx, gangs)) for v in found
                    if ((r := ranked(v) if v.preemptible else _INF) < limit
                        or v.group in over)]
            if here:
                out.append((ns, here, len(ns.free) + sum(len(g) for _, _, g in here)))
    return out


def _gpus_on(v: JobView, idx: int, gangs: Mapping[int, tuple]) -> tuple[int, ...]:
    for i, gpus in gangs.get(v.id) or ((idx, v.gpu_indices),):
        if i == idx:
            return tuple(gpus)
    return ()


def may_preempt(job: JobView, config: PolicyConfig, over: set[str] | None) -> bool:
    return not (job.preemptible or config.preempt_max <= 0
                or (over is not None and job.group in over))


def _within(left: Mapping[str, float], margin: Mapping[str, float], job: JobView) -> bool:
    """At least half of `job` fits in what its group is owed and does not hold (`left`: each
    group's share less what it holds), so starting it does not put its group over its share
    by more than the jobs that the tier may take back from a group; and its group holds at
    most preempt_share_floor of its share (`margin`: the part of its share it must lack)."""
    owed = left.get(job.group, 0.0)
    return owed >= job.gpus * job.nodes / 2 and owed >= margin.get(job.group, 0.0)


class _Choice:
    """What one plan's preemptions have used so far: the GPUs each group over its share may
    still lose (its run beyond its share), the victims taken and the nodes given."""

    def __init__(self, left: dict[str, float] | None, margin: dict[str, float]):
        self.beyond = None if left is None else {g: -r for g, r in left.items() if r < 0}
        self.left = left or {}
        self.margin = margin
        self.taken: set[int] = set()

    def within(self, job: JobView) -> bool:
        return _within(self.left, self.margin, job)

    def allowed(self, v: JobView, r: float, top: float, job: JobView,
                budget: dict[str, float]) -> bool:
        """`v` may make way for `job`: it was submitted preemptible and ranks below `job`
        (else it would start again at once), or it is part of what its group runs beyond
        its share, which a group under its share may take back whatever the ranks."""
        if v.id in self.taken:
            return False
        if v.preemptible and r < top:
            return True
        if self.beyond is None or job.group in self.beyond or not self.within(job):
            return False
        # at least half of it beyond: taking it back does not leave its group owed more
        # than the preemptor's group gets
        return budget.get(v.group, 0.0) >= v.gpus * v.nodes / 2


def _victims(job: JobView, pool: list[tuple], now: float, config: PolicyConfig, fs: Mapping,
             choice: _Choice, max_gpus: int, cluster: Cluster,
             busy: Container[str]) -> tuple[list[int], tuple]:
    """The victims on the best node of `pool` for `job` (a gang: on its best nodes, or on
    nodes free already), or [], and what `job` may hold once they are stopped: (node, GPUs),
    or a gang's ((node, GPUs), ...). Nodes given are taken out of `pool`."""
    top = _ranker(now, config, fs, max_gpus)(job)
    scored = []
    for entry in pool:
        got = _on_node(job, entry, top, now, choice, dict(choice.beyond or {}))
        if got is not None:
            scored.append(got)
    if job.nodes > 1:
        scored += _free_nodes(cluster, job, pool, busy)
    if len(scored) < job.nodes:
        return [], ()
    scored.sort(key=lambda e: e[0])
    budget = dict(choice.beyond or {})
    chosen: list[tuple] = []
    for _score, victims, entry in scored:
        if len(chosen) == job.nodes:
            break
        if victims:  # again, with what the nodes chosen before left of the budget
            got = _on_node(job, entry, top, now, choice, budget)
            if got is None:
                continue
            victims = got[1]
        chosen.append((victims, entry))
    if len(chosen) < job.nodes or not any(v for v, _ in chosen):
        return [], ()
    if choice.beyond is not None:
        choice.beyond.update(budget)
    held = []
    out: list[int] = []
    for victims, (ns, *_) in chosen:
        if any(e[0] is ns for e in pool):
            pool.remove(next(e for e in pool if e[0] is ns))  # one preemptor per node
        gpus = {g for v in victims for g in _gpus_on(v, ns.idx, cluster.gang_parts)}
        gpus.update(g for g in ns.free if gpu_matches(ns.slots[g], job))
        held.append((ns.name, tuple(sorted(gpus))))
        for v in victims:
            if v.id not in choice.taken:
                choice.taken.add(v.id)
                out.append(v.id)
    return out, (held[0] if job.nodes == 1 else tuple(held))


def _on_node(job: JobView, entry: tuple, top: float, now: float, choice: _Choice,
             budget: dict[str, float]) -> tuple | None:
    """(score, the victims, `entry`) for `job` (a gang: one part of it) on the pool entry's
    node, or None where the node cannot make way. Score: GPU-seconds of work lost, GPUs
    stopped (a gang victim's on every node), node index."""
    ns, found, most = entry
    if most < job.gpus or not could_ever_fit(ns, job):
        return None
    free = sum(1 for g in ns.free if gpu_matches(ns.slots[g], job))
    cpus, mem = ns.free_cpus, ns.free_mem
    chosen: list[JobView] = []
    for r, v, gpus in found:
        if free >= job.gpus and cpus >= job.cpus and mem >= job.memory_mb:
            break
        if not choice.allowed(v, r, top, job, budget):
            continue
        chosen.append(v)
        budget[v.group] = budget.get(v.group, 0.0) - v.gpus * v.nodes
        free += sum(1 for g in gpus if g in ns.slots and gpu_matches(ns.slots[g], job))
        cpus += v.cpus
        mem += v.memory_mb
    if (not chosen and job.nodes == 1) or free < job.gpus or cpus < job.cpus \
            or mem < job.memory_mb:
        return None  # a one-node job that fits there already waits for something else
    lost = sum(v.gpus * v.nodes * (now - _started(v, now)) for v in chosen)
    return (lost, sum(v.gpus * v.nodes for v in chosen), ns.idx), chosen, entry


def _free_nodes(cluster: Cluster, job: JobView, pool: list[tuple],
                busy: Container[str]) -> list[tuple]:
    """Nodes where a part of the gang `job` fits now, without preempting, as _on_node's."""
    inpool = {e[0].idx for e in pool}
    out = []
    for k in range(job.gpus, cluster.max_gpus + 1):
        for i in cluster.buckets[k]:
            ns = cluster.nodes[i]
            if (i in inpool or ns.name in busy or not could_ever_fit(ns, job)
                    or job.cpus > ns.free_cpus or job.memory_mb > ns.free_mem
                    or sum(1 for g in ns.free if gpu_matches(ns.slots[g], job)) < job.gpus):
                continue
            out.append(((0.0, 0, i), [], (ns, [], len(ns.free))))
    return out


def candidates(top: JobView | None, heads: Iterable[tuple[float, JobView]],
               over: set[str] | None) -> list[JobView]:
    """Who may preempt, best first: the top waiting job, then (with `over`) the first waiting
    job of each class of a group under its share, by priority (a group's first job may need
    a whole node where a later one of another shape fits in what can be taken back).
    `heads`: (priority, job) of each class's first waiting job."""
    out = [top] if top is not None else []
    if over is None:
        return out
    found = [(p, j) for p, j in heads
             if not (j.group in over or j.preemptible or j is top)]
    found.sort(key=lambda b: (-b[0], b[1].submit_time, b[1].id))
    return out + [j for _, j in found]


def choose(cluster: Cluster, top: JobView | None, heads: Iterable[tuple[float, JobView]],
           running: Mapping[int, JobView], now: float, config: PolicyConfig,
           fs: Mapping, groups: Iterable[str], holding: Container[int] = (),
           holds: dict | None = None) -> list[tuple[int, int]]:
    """(victim, the job it makes way for) for each candidate that preemption lets start,
    each on nodes of its own; a job in `holding` (GPUs freed for it are coming) is no
    candidate, and the nodes of those holds (a Mapping of policy.holds.Hold) are no one's
    to take. What each candidate may hold goes in `holds` (as Plan.holds)."""
    left: dict[str, float] | None = None
    margin: dict[str, float] = {}
    if config.preempt_over_share:
        shares = share_gpus(cluster, config, groups)
        left = {g: s - cluster.group_gpus.get(g, 0) for g, s in shares.items()}
        margin = {g: (1.0 - config.preempt_share_floor) * s for g, s in shares.items()}
    over = {g for g, r in left.items() if r < 0} if left is not None else None
    found = [j for j in candidates(top, heads, over)
             if j.id not in holding and may_preempt(j, config, over)
             and (j is top or _within(left or {}, margin, j))]
    if not found:
        return []  # before looking at the running jobs: most plans end here
    busy = ({n for h in holding.values() for n, _ in h.parts()}
            if isinstance(holding, Mapping) else set())
    pool = _pool(cluster, running, now, config, fs, over, busy, starved_priority(config))
    choice = _Choice(left, margin)
    out: list[tuple[int, int]] = []
    failed: set[tuple] = set()  # (group, shape): a later job of these finds no more
    most = max((e[2] for e in pool), default=0)  # the most GPUs one node could free
    for job in found:
        if not pool:
            break
        key = (job.group, shape_of(job))
        if (key in failed or (job.nodes == 1 and job.gpus > most)
                or (job is not top and not choice.within(job))):
            continue
        victims, held = _victims(job, pool, now, config, fs, choice, cluster.max_gpus,
                                 cluster, busy)
        if not victims:
            failed.add(key)
            continue
        out += [(v, job.id) for v in victims]
        most = max((e[2] for e in pool), default=0)
        choice.left[job.group] = choice.left.get(job.group, 0.0) - job.gpus * job.nodes
        if holds is not None:
            holds[job.id] = held
    return out
