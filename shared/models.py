"""Plain dataclasses that the client returns. They are built from the JSON the daemon sends."""
from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any

from .states import JobState

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed import DataclassInstance


@cache
def _names(cls: type[DataclassInstance]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _known(cls: type[DataclassInstance], data: dict[str, Any]) -> dict[str, Any]:
    """Fields this version knows; a newer daemon may send more."""
    names = _names(cls)
    return {k: v for k, v in data.items() if k in names}


def _fresh(v: Any) -> Any:
    """A copy of a decoded JSON value that shares no list or mapping with it."""
    if type(v) is list:
        return [_fresh(x) if type(x) in (list, dict) else x for x in v]
    if type(v) is dict:
        return {k: _fresh(x) if type(x) in (list, dict) else x for k, x in v.items()}
    return v


@dataclass
class Job:
    """A job as labqd reports it: its spec, state and where and how it ran."""

    id: int
    owner: str
    group: str
    name: str
    command: list[str] | str  # empty in a listing of another user's job
    state: JobState
    cwd: str = ""
    env: dict[str, str] | None = None  # only the owner and admins see it
    gpus: int = 0
    gpu_type: str | None = None
    gpu_memory_mb: int | None = None
    cpus: int = 1
    memory_mb: int | None = None
    time_limit_s: int | None = None
    priority: int = 5
    dependencies: list[str] = field(default_factory=list)
    partition: str = "default"
    requeue: bool = True
    preemptible: bool = False  # may be stopped and requeued for a job that is not
    preemptions: int = 0
    early_signal: str | None = None  # --signal SIG@SECS
    nodes: int = 1  # more than 1: a gang, one part on each of that many nodes
    # a running gang's parts, [node, [GPU indices]] in rank order (node and gpu_indices are
    # rank 0's)
    parts: list[list[Any]] | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    submit_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    node: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    restarts: int = 0
    notify: str | None = None  # end, fail or all: when the owner is told
    priority_score: float | None = None
    estimated_start: float | None = None
    # a waiting job: the backfill reservation in its way, {job, node, gpus, until} (the
    # job's own where it is the reserved one), and the longest --time that would start it now
    reservation: dict[str, Any] | None = None
    backfill_limit_s: float | None = None
    # the queue's change counter when this job last changed: `jobs(changed_since=...)`
    seq: int | None = None
    experiment: str | None = None
    array_id: int | None = None  # the first task's id, for every task of an array or sweep
    array_index: int | None = None
    array_limit: int | None = None  # at most this many tasks of the array run at once
    params: dict[str, str] | None = None  # a sweep task's values
    key: str | None = None  # the submitter's idempotency key; only they and admins see it
    stage: dict[str, Any] | None = None  # {token, files, bytes}: what was staged for it
    results: list[str] | None = None  # the globs copied back when it ends
    files: dict[str, Any] | None = None  # its results' copy: {state, bytes, count, note}
    purged_time: float | None = None  # when its log copy, results and scratch were removed
    slurm_id: str | None = None  # its job id in the Slurm pool it was sent to

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        d = _known(cls, data)
        d["state"] = JobState(d["state"])
        return cls(**d)

    @classmethod
    def table_reader(cls, names: list[str]) -> Callable[[list[Any]], Job]:
        """What makes a job of each row of a reply's table, whose columns are `names`.
        Positional arguments: a dataclass's __init__ binds fifty keywords by name, which
        cost most of reading ten thousand jobs."""
        at = {n: i for i, n in enumerate(names)}
        picks = [at.get(f.name) for f in fields(cls)]
        if None in picks:  # an older labqd left a field out: its default, by name
            return lambda values: cls.from_dict(dict(zip(names, values)))
        state = [f.name for f in fields(cls)].index("state")

        def read(values: list[Any]) -> Job:
            args = [values[i] for i in picks]  # type: ignore[index]  # no None: checked
            args[state] = JobState(args[state])
            return cls(*args)
        return read

    @classmethod
    def table_rows(cls, table: dict[str, Any]) -> list[Job | dict[str, Any]]:
        """The entries of a reply's table of jobs, in order: a job, or the entry as sent
        where it is not one (an error). The table has `fields`, and `results`, each a job's
        values; or, from labqd since schema 12, the values every job has alike in `shared`
        and each job's values of the fields in `vary`."""
        names, vary, results = table["fields"], table.get("vary"), table["results"]
        read = cls.table_reader(names)
        if vary is None:
            return [read(r) if type(r) is list else r for r in results]
        # one job made from the shared values, and each job a copy of its fields with its
        # own values put in: binding fifty arguments per job costs more than the copy
        proto = read(list(table["shared"])).__dict__
        put = [f for f in vary if f in proto]
        skip = [f not in proto for f in vary]
        skipping = any(skip)  # a newer labqd's field this client does not know
        state = "state" in put
        # a shared list or mapping is each job's own, as if each had been sent whole
        own = [(f, v, all(type(x) not in (list, dict) for x in
                          (v.values() if type(v) is dict else v)))
               for f, v in proto.items() if type(v) in (list, dict) and f not in vary]
        new = cls.__new__
        out: list[Job | dict[str, Any]] = []
        # the jobs all live on: the cycle collector, run every 700 new objects, would walk
        # them again and again and find nothing (unless the caller has it off already)
        collecting = gc.isenabled()
        gc.disable()
        try:
            for r in results:
                if type(r) is not list:
                    out.append(r)
                    continue
                d = proto.copy()
                d.update(zip(put, [v for v, s in zip(r, skip) if not s] if skipping else r,
                             strict=True))
                if state:
                    d["state"] = JobState(d["state"])
                for f, v, flat in own:
                    d[f] = v.copy() if flat else _fresh(v)
                job = new(cls)
                job.__dict__ = d
                out.append(job)
        finally:
            if collecting:
                gc.enable()
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @property
    def shell(self) -> bool:
        return isinstance(self.command, str)

    @property
    def finished(self) -> bool:
        return self.state.final


@dataclass
class Gpu:
    """One GPU of a node, and the job holding it."""

    index: int
    type: str
    memory_mb: int
    uuid: str | None = None
    utilization: float | None = None  # percent
    memory_used_mb: int | None = None
    job: int | None = None  # the job holding it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gpu:
        return cls(**_known(cls, data))


@dataclass
class Node:
    """A node: its state, capacity, what is free, its GPUs and running jobs."""

    name: str
    host: str
    state: str  # up, down, drain, connecting, refused
    reason: str | None = None
    cpus: int = 0
    memory_mb: int = 0
    free_cpus: int = 0
    free_memory_mb: int = 0
    cpu_percent: float | None = None
    memory_used_mb: int | None = None
    gpu_source: str | None = None  # nvml, nvidia-smi, config, none
    gpus: list[Gpu] = field(default_factory=list)
    running_jobs: list[int] = field(default_factory=list)
    last_seen: float | None = None
    # whose jobs the node runs, and as whom, in words (a root agent: everyone, as themselves)
    runs_jobs_of: str | None = None
    # how a job is kept together and limited: cgroup2, cgroup1 or none (process group only)
    containment: str | None = None
    kind: str = "host"  # or "slurm": a Slurm cluster behind its login host
    # a Slurm pool's partition from sinfo (nodes, nodes_up, nodes_alloc, gpus, gpus_alloc)
    # and labq's share (labq_running, labq_waiting, labq_gpus, max_gpus, max_jobs)
    pool: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        d = _known(cls, data)
        d["gpus"] = [Gpu.from_dict(g) for g in d.get("gpus", [])]
        return cls(**d)


@dataclass
class Event:
    """One state change of a job: when, who, from and to which state, and why."""

    job: int
    time: float
    who: str
    from_state: str | None
    to_state: str
    reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(**_known(cls, data))
