"""The cluster as the policy sees it while planning, and best-fit placement into it.

`Cluster` holds free resources per node, the jobs running on each node with the time their
limit runs out (what backfill reserves against), and the in-use counters that limits are
checked against. Up nodes are indexed by their number of free GPUs, so best fit looks at the
fullest nodes that could take a job first instead of scanning every node: a 1-GPU job lands on a
node that is already busy and whole nodes stay free for 8-GPU jobs. A gang (JobView.nodes > 1)
takes one part on each of that many distinct nodes, the fullest that fit first, all at once.

The daemon builds one from a snapshot for each plan; the replay simulator keeps one alive and
applies starts and finishes to it, which is why starts are recorded here directly.
"""
from __future__ import annotations

from collections.abc import Iterable

from .ready import ReadyIndex
from .snapshot import GpuSlot, JobView, Limits, NodeView


def gpu_matches(slot: GpuSlot, job: JobView) -> bool:
    """The slot has the requested GPU type (case-insensitive substring) and enough memory."""
    if job.gpu_type and job.gpu_type.lower() not in slot.type.lower():
        return False
    if job.gpu_memory_mb and slot.memory_mb < job.gpu_memory_mb:
        return False
    return True


def runs_owner(node, job: JobView) -> bool:
    """The node's agent may run jobs of the job's owner."""
    if node.only_uid is not None and node.only_uid != job.owner_uid:
        return False
    return node.root_ok or job.owner_uid != 0


def could_ever_fit(node, job: JobView, any_owner: bool = False) -> bool:
    """The node, empty, could run the job (whatever its state); with `any_owner`, whoever's
    job it is."""
    if not any_owner and not runs_owner(node, job):
        return False
    if job.nodes > 1 and not node.gang_ok:
        return False
    if job.cpus > node.cpus or job.memory_mb > node.memory_mb:
        return False
    if job.gpus <= 0:
        return True
    if not job.gpu_type and not job.gpu_memory_mb:
        return len(node.gpus) >= job.gpus
    return sum(1 for g in node.gpus if gpu_matches(g, job)) >= job.gpus


def shape_of(job: JobView) -> tuple:
    """What placement depends on; jobs with equal shapes fit in the same places."""
    return (job.gpus, job.gpu_type, job.gpu_memory_mb, job.cpus, job.memory_mb, job.owner_uid,
            job.nodes)


def job_of_shape(shape: tuple) -> JobView:
    """A job of this shape, to ask where one would fit (placement looks at nothing else)."""
    gpus, gpu_type, gpu_memory_mb, cpus, memory_mb, owner_uid, nodes = shape
    return JobView(-1, "", "", "PENDING", 5, 0.0, gpus=gpus, gpu_type=gpu_type,
                   gpu_memory_mb=gpu_memory_mb, cpus=cpus, memory_mb=memory_mb,
                   owner_uid=owner_uid, nodes=nodes)


def parts_of(placed: tuple) -> tuple:
    """The (node index, GPUs) of each part of a placement: a job's one (node index, GPUs), or
    a gang's (rank 0's node index, rank 0's GPUs, every part's)."""
    return placed[2] if len(placed) == 3 else (placed,)


class NodeState:
    """A NodeView while a plan is made: what is free on it and what runs there until when,
    changed by the plan's starts (and the simulator's finishes)."""
    __slots__ = ("idx", "name", "state", "up", "cpus", "memory_mb", "gpus", "slots", "free",
                 "free_cpus", "free_mem", "running", "only_uid", "root_ok", "gang_ok", "_ends")

    def __init__(self, idx: int, name: str, state: str, cpus: int, memory_mb: int,
                 gpus: tuple[GpuSlot, ...], free: Iterable[int], free_cpus: int, free_mem: int,
                 only_uid: int | None = None, root_ok: bool = True, gang_ok: bool = True):
        self.idx = idx
        self.name = name
        self.state = state
        self.up = state == "up"
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.gpus = tuple(gpus)
        self.slots = {g.index: g for g in self.gpus}
        self.free = set(free)
        self.free_cpus = free_cpus
        self.free_mem = free_mem
        self.only_uid = only_uid
        self.root_ok = root_ok
        self.gang_ok = gang_ok
        # job id -> (end by its time limit, gpu indices, cpus, memory)
        self.running: dict[int, tuple[float, tuple[int, ...], int, int]] = {}
        self._ends: list | None = None

    def ends(self) -> list:
        """The running jobs' entries in order of their end (kept until `running` changes: the
        replay simulator keeps a cluster across many plans)."""
        if self._ends is None:
            self._ends = sorted(self.running.values())
        return self._ends


class Cluster:
    """With `kept` (a cluster the caller keeps across plans, as the replay simulator does),
    when nodes could take the waiting jobs is kept in ReadyIndexes between plans."""

    def __init__(self, nodes: Iterable[NodeView], limits: Limits | None = None,
                 kept: bool = False):
        self.limits = limits or Limits()
        self.kept = kept
        self._ready: dict[tuple, ReadyIndex] = {}
        self.nodes: list[NodeState] = []
        self.restricted = False  # some node runs only some owners' jobs
        self.by_name: dict[str, NodeState] = {}
        for n in nodes:
            ns = NodeState(len(self.nodes), n.name, n.state, n.cpus, n.memory_mb, n.gpus,
                           n.free_gpus, n.free_cpus, n.free_memory_mb, n.only_uid, n.root_ok,
                           n.gang_ok)
            self.nodes.append(ns)
            self.restricted = self.restricted or n.only_uid is not None or not n.root_ok
            self.by_name[n.name] = ns
        self.max_gpus = max((len(n.gpus) for n in self.nodes), default=0)
        self.up_gpus = sum(len(ns.gpus) for ns in self.nodes if ns.up)
        # up nodes by free GPU count; dicts keep a stable order
        self.buckets: list[dict[int, None]] = [{} for _ in range(self.max_gpus + 1)]
        self.total_free = 0
        for ns in self.nodes:
            if ns.up:
                self.buckets[len(ns.free)][ns.idx] = None
                self.total_free += len(ns.free)
        # job id -> (job, node idx or -1, gpu indices, end); a gang's are its rank 0's
        self.jobs: dict[int, tuple] = {}
        self.gang_parts: dict[int, tuple] = {}  # gang id -> ((node idx, gpu indices), ...)
        self.group_gpus: dict[str, int] = {}
        self.user_gpus: dict[str, int] = {}
        self.user_jobs: dict[str, int] = {}
        self.partition_user_jobs: dict[tuple[str, str], int] = {}
        self.group_type_gpus: dict[tuple[str, str], int] = {}
        self.array_jobs: dict[int | None, int] = {}  # throttled array -> its tasks running
        self._type_limits: dict[str, list[tuple[str, tuple[str, str]]]] = {}
        for (g, t) in self.limits.group_gpu_type:
            self._type_limits.setdefault(g, []).append((t.lower(), (g, t)))
        self._feasible: dict[tuple, str | None] = {}
        # set by best_fit when only a per-type group limit stood in the way
        self.type_blocked = False

    # -- bookkeeping ---------------------------------------------------------------------
    def _count(self, job: JobView, slots: list[GpuSlot], sign: int) -> None:
        g, u, n = job.group, job.owner, job.gpus * job.nodes * sign
        self.group_gpus[g] = self.group_gpus.get(g, 0) + n
        self.user_gpus[u] = self.user_gpus.get(u, 0) + n
        self.user_jobs[u] = self.user_jobs.get(u, 0) + sign
        pu = (job.partition, u)
        self.partition_user_jobs[pu] = self.partition_user_jobs.get(pu, 0) + sign
        if job.array_limit:
            self.array_jobs[job.array_id] = self.array_jobs.get(job.array_id, 0) + sign
        for t, key in self._type_limits.get(g, ()):
            k = sum(1 for s in slots if t in s.type.lower())
            if k:
                self.group_type_gpus[key] = self.group_type_gpus.get(key, 0) + k * sign

    def add_running(self, job: JobView, end: float) -> None:
        """Record a job already running whose resources the nodes' free figures exclude."""
        slots: list[GpuSlot] = []
        known = []
        for name, gpus in job.parts or ((job.node or "", job.gpu_indices),):
            ns = self.by_name.get(name)
            idx = tuple(gpus)
            if ns is not None:
                slots += [ns.slots[i] for i in idx if i in ns.slots]
                ns.running[job.id] = (end, idx, job.cpus, job.memory_mb)
                self._changed(ns)
            known.append((ns.idx if ns else -1, idx))
        self.jobs[job.id] = (job, known[0][0], known[0][1], end)
        if job.parts:
            self.gang_parts[job.id] = tuple(known)
        self._count(job, slots, 1)

    def start(self, job: JobView, node_idx: int, gpus: tuple[int, ...], end: float,
              parts: tuple | None = None) -> None:
        """Allocate a job's resources on a node, or a gang's on each of its `parts`' nodes."""
        slots: list[GpuSlot] = []
        for i, g in parts or ((node_idx, gpus),):
            ns = self.nodes[i]
            before = len(ns.free)
            ns.free.difference_update(g)
            ns.free_cpus -= job.cpus
            ns.free_mem -= job.memory_mb
            ns.running[job.id] = (end, g, job.cpus, job.memory_mb)
            self._changed(ns)
            self._move(ns, before)
            slots += [ns.slots[k] for k in g]
        self.jobs[job.id] = (job, node_idx, gpus, end)
        if parts:
            self.gang_parts[job.id] = parts
        self._count(job, slots, 1)

    def finish(self, job_id: int) -> None:
        """Release a job's resources (all of a gang's parts)."""
        job, node_idx, gpus, _ = self.jobs.pop(job_id)
        slots = []
        for i, g in self.gang_parts.pop(job_id, None) or ((node_idx, gpus),):
            if i < 0:
                continue
            ns = self.nodes[i]
            before = len(ns.free)
            ns.running.pop(job_id, None)
            self._changed(ns)
            ns.free.update(g)
            ns.free_cpus += job.cpus
            ns.free_mem += job.memory_mb
            self._move(ns, before)
            slots += [ns.slots[k] for k in g]
        self._count(job, slots, -1)

    def _changed(self, ns: NodeState) -> None:
        ns._ends = None
        for index in self._ready.values():
            index.dirty.add(ns.idx)

    def _move(self, ns: NodeState, before: int) -> None:
        after = len(ns.free)
        if ns.up and after != before:
            del self.buckets[before][ns.idx]
            self.buckets[after][ns.idx] = None
            self.total_free += after - before

    # -- questions -----------------------------------------------------------------------
    def ready(self, job: JobView, k: int) -> list[tuple[float, int]]:
        """The k nodes that could take a part of `job` first by the running jobs' limits, as
        (time, node index) in that order; the time is ready.NOW where there is room now. Only
        for a job with no GPU type or memory asked for, on a cluster whose nodes run anyone's
        jobs."""
        key = (job.gpus, job.cpus, job.memory_mb, job.nodes > 1)
        index = self._ready.get(key)
        if index is None:
            index = self._ready[key] = ReadyIndex(*key, len(self.nodes))
        return index.earliest(self.nodes, k)

    def feasibility(self, job: JobView) -> str | None:
        """None if some up node could ever run the job, else NodeDown, NoNodeFits or
        NoNodeForUser (nodes would fit, but none may run jobs as the job's owner)."""
        shape = shape_of(job)
        verdict = self._feasible.get(shape, "")
        if verdict == "" and job.nodes > 1:
            verdict = self._feasible[shape] = self._gang_feasibility(job)
        elif verdict == "":
            verdict = "NoNodeFits"
            for ns in self.nodes:
                if verdict == "NoNodeFits" and self.restricted and not runs_owner(ns, job):
                    if could_ever_fit(ns, job, any_owner=True):
                        verdict = "NoNodeForUser"
                    continue
                if could_ever_fit(ns, job):
                    if ns.up:
                        verdict = None
                        break
                    verdict = "NodeDown"
            self._feasible[shape] = verdict
        return verdict

    def _gang_feasibility(self, job: JobView) -> str | None:
        """feasibility() for a gang: it needs `job.nodes` distinct nodes that could run a
        part each."""
        up = down = others = 0
        for ns in self.nodes:
            if could_ever_fit(ns, job):
                up += ns.up
                down += not ns.up
            elif self.restricted and could_ever_fit(ns, job, any_owner=True):
                others += 1
        if up >= job.nodes:
            return None
        if up + down >= job.nodes:
            return "NodeDown"
        return "NoNodeForUser" if up + down + others >= job.nodes else "NoNodeFits"

    def fit(self, job: JobView, avoid=None) -> tuple | None:
        """best_fit for a job, gang_fit for a gang."""
        return self.gang_fit(job, avoid) if job.nodes > 1 else self.best_fit(job, avoid)

    def gang_fit(self, job: JobView, avoid=None) -> tuple | None:
        """A gang's placement, (rank 0's node index, its GPUs, every part's (node index,
        GPUs)), one part on each of `job.nodes` distinct nodes, the fullest that fit first;
        or None. All parts start now or none does. `avoid` as for best_fit, on every node of
        the reservation."""
        self.type_blocked = False
        if job.gpus * job.nodes > self.total_free:
            return None
        parts: list[tuple[int, tuple[int, ...]]] = []
        for k in range(job.gpus, self.max_gpus + 1):
            for i in self.buckets[k]:
                got = self._part_on(self.nodes[i], job, avoid)
                if got is None:
                    continue
                parts.append((i, got))
                if len(parts) < job.nodes:
                    continue
                if self._type_limits.get(job.group) and self._over_type_limit(
                        job, [(self.nodes[n], g) for n, g in parts],
                        self._type_limits[job.group]):
                    self.type_blocked = True
                    return None
                return parts[0][0], parts[0][1], tuple(parts)
        return None

    def _part_on(self, ns: NodeState, job: JobView, avoid) -> tuple[int, ...] | None:
        """The GPUs one part of a gang would get on node `ns` now, or None."""
        if not ns.gang_ok:
            return None
        if job.cpus > ns.free_cpus or job.memory_mb > ns.free_mem:
            return None
        if self.restricted and not runs_owner(ns, job):
            return None
        hold = avoid.on(ns.idx) if avoid is not None else None
        if hold is not None and (job.cpus > hold.spare_cpus or job.memory_mb > hold.spare_mem):
            return None
        usable = sorted(g for g in ns.free if gpu_matches(ns.slots[g], job)
                        and not (hold is not None and g in hold.gpus))
        return tuple(usable[:job.gpus]) if len(usable) >= job.gpus else None

    def best_fit(self, job: JobView, avoid=None) -> tuple[int, tuple[int, ...]] | None:
        """(node index, GPU indices) leaving the fewest free GPUs behind, or None.

        `avoid` is a backfill reservation: on its node the job may use neither the reserved
        GPUs nor more CPUs or memory than the reservation leaves spare."""
        self.type_blocked = False
        need = job.gpus
        if need > self.total_free:
            return None
        cpus, mem = job.cpus, job.memory_mb
        plain = not job.gpu_type and not job.gpu_memory_mb
        type_limits = self._type_limits.get(job.group)
        nodes = self.nodes
        for k in range(need, self.max_gpus + 1):
            for i in self.buckets[k]:
                ns = nodes[i]
                if cpus > ns.free_cpus or mem > ns.free_mem:
                    continue
                if self.restricted and not runs_owner(ns, job):
                    continue
                hold = avoid.on(i) if avoid is not None else None
                on_reserved = hold is not None
                if on_reserved and (cpus > hold.spare_cpus or mem > hold.spare_mem):
                    continue
                if need == 0:
                    return i, ()
                if plain and not on_reserved:
                    usable = sorted(ns.free)
                else:
                    usable = sorted(g for g in ns.free if gpu_matches(ns.slots[g], job)
                                    and not (on_reserved and g in hold.gpus))
                    if len(usable) < need:
                        continue
                chosen = tuple(usable[:need])
                if type_limits and self._over_type_limit(job, [(ns, chosen)], type_limits):
                    self.type_blocked = True
                    continue
                return i, chosen
        return None

    def _over_type_limit(self, job, placed, type_limits) -> bool:
        """Starting `job` on `placed`, [(node, GPUs)], would exceed a per-type group limit."""
        for t, key in type_limits:
            k = sum(1 for ns, chosen in placed for g in chosen if t in ns.slots[g].type.lower())
            if k and self.group_type_gpus.get(key, 0) + k > self.limits.group_gpu_type[key]:
                return True
        return False
