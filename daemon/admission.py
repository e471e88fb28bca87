"""Admitting jobs to the queue, for the job table: a submit's checks (group, limits,
dependencies, key, room) and the rows it queues in one transaction."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labq.errors import DuplicateJob, PermissionDenied, QuotaExceeded, ValidationError
from labq.spec import experiment_dependency, parse_dependency, validate_submit
from labq.states import JobState

from .activejob import HOT, ActiveJob
from .gangs import fit_to_cluster
from .identity import Caller
from .policy.dependencies import find_cycle
from .storejobs import JobBatch
from .views import dep_ids

if TYPE_CHECKING:
    from .jobtable import JobTable

S = JobState
HELD, PENDING = S.HELD.value, S.PENDING.value
# a user's PENDING and HELD jobs at most, unless limits.user_max_pending says otherwise: a
# runaway submit loop fills the queue, not labqd's memory
DEFAULT_USER_MAX_PENDING = 10_000


class Admission:
    """Admits jobs to the job table, through its public surface: its lock, active jobs and
    their counts, the store, the config and the clock."""

    def __init__(self, table: JobTable) -> None:
        self.table = table

    def submit(self, caller: Caller, raw: Any, valid: bool = False) -> dict:
        """Queue one job; `valid`: `raw` is what validate_submit returned already."""
        spec = raw if valid else validate_submit(raw)
        with self.table.lock:
            spec = self.check_spec(caller, spec)
            self.check_room(caller, 1)
            row = self.new_row(caller, spec)
            batch = self.admit(caller, lambda first: JobBatch([row], [0]))
            row.update(id=batch.first, seq=batch.seq)
            return row

    def check_spec(self, caller: Caller, spec: dict, keys: set[str] | None = None) -> dict:
        """A validated spec made ready to queue, or the error that refuses it: the group it
        is charged to, limits on its size, its dependencies (experiments named in them
        expanded to their jobs) and its key. Called with the lock held; `keys` are those
        taken earlier in the same batch."""
        spec = dict(spec)
        group = spec.pop("group") or caller.group
        if group != caller.group and group not in caller.groups and not caller.admin:
            raise PermissionDenied(f"{caller.user} is not a member of group {group!r}",
                                   {"group": group})
        spec["group"] = group
        self.check_submit_limits(caller, spec)
        fit_to_cluster(spec, self.table.node_sizes())
        if self.table.files is not None:
            self.table.files.check_spec(caller, spec)
        deps = self._dependencies(caller, spec["dependencies"])
        spec["dependencies"] = [f"{k}:{j}" for k, j in deps]
        key = spec.get("key")
        if key is not None:
            existing = self.table.store.job_by_key(caller.uid, key)
            if existing is not None:
                raise DuplicateJob(f"key {key!r} is already job {existing}; nothing was "
                                   "queued", {"id": existing, "key": key})
            if keys is not None:
                if key in keys:
                    raise DuplicateJob(f"key {key!r} is given twice in this batch",
                                       {"key": key})
                keys.add(key)
        return spec

    def _dependencies(self, caller: Caller, raw: list[str]) -> list[tuple[str, int]]:
        deps: list[tuple[str, int]] = []
        for d in raw:
            exp = experiment_dependency(d)
            if exp is None:
                deps.append(parse_dependency(d))
                continue
            ids = self.table.store.experiment_job_ids(exp[1], caller.uid)
            if not ids:
                raise ValidationError(f"dependencies: you have no jobs in experiment "
                                      f"{exp[1]!r}", {"field": "dependencies"})
            deps.extend((exp[0], i) for i in ids)
        deps = sorted(set(deps))
        ids = [j for _, j in deps]
        t = self.table
        missing = [d for d in ids if d not in t.active and t.ended_state(d) is None]
        if missing:
            raise ValidationError(f"dependencies: no job {', '.join(map(str, missing[:10]))}",
                                  {"field": "dependencies", "missing": missing[:100]})
        # ids are handed out after the dependencies are checked to exist, so a new job
        # cannot close a cycle today; the check guards any future way of adding edges
        cycle = find_cycle(self.table.dep_edges, 0, ids) if ids else None
        if cycle:
            raise ValidationError("dependencies: would form a cycle "
                                  + " -> ".join(map(str, cycle)), {"field": "dependencies"})
        return deps

    def check_room(self, caller: Caller, n: int, whole: bool = False) -> int:
        """How many of `n` more waiting jobs the caller may have (limits.user_max_pending);
        QuotaExceeded when not even one, or with `whole` when not all `n`."""
        most = self.table.cfg.limits.get("user_max_pending", DEFAULT_USER_MAX_PENDING)
        have = self.table.waiting[caller.uid]
        if have >= most or (whole and have + n > most):
            more = f" and asks for {n} more" if whole else ""
            raise QuotaExceeded(f"{caller.user} already has {have} pending jobs{more}; the "
                                f"most allowed is {most} (limits.user_max_pending); nothing "
                                "was queued", {"limit": "user_max_pending", "value": have})
        return min(n, most - have)

    def new_row(self, caller: Caller, spec: dict, now: float | None = None) -> dict:
        """The row of a checked spec, as it is queued now (or at `now`)."""
        row = dict(spec, owner=caller.user, owner_uid=caller.uid,
                   submit_time=self.table.clock.time() if now is None else now,
                   gpu_indices=[], restarts=0,
                   preemptions=0, nodes=spec.get("nodes") or 1, parts=None)
        hold = row.pop("hold")
        row.update(state=(S.HELD if hold else S.PENDING).value, reason="Held" if hold else None,
                   eligible_time=None if row["dependencies"] else row["submit_time"])
        for key in ("experiment", "array_id", "array_index", "array_limit", "params", "key",
                    "early_signal", "exit_code", "signal", "start_time", "end_time", "node"):
            row.setdefault(key, None)
        return row

    def admit(self, caller: Caller, make: Callable[[int], JobBatch]) -> JobBatch:
        """Queue the rows of the batch `make(first id)` builds, in one transaction; called
        with the lock held, after every row was checked."""
        table = self.table
        batch = table.store.insert_batch(make, caller.user)
        ids = batch.ids
        protos = [ActiveJob(p) for p in batch.protos]  # each made by new_row: every field
        if len(batch) == 1:  # a single submit: its prototype is its job
            protos[0].id = batch.first
            jobs = protos
        else:
            jobs = [protos[p].copy(i) for i, p in zip(ids, batch.of)]
        for j, f in enumerate(batch.own_fields):
            if f in HOT:
                for job, own in zip(jobs, batch.own or []):
                    job[f] = own[j]
        table.active.update(zip(ids, jobs))
        if all([p.state == HELD for p in protos]):
            # as set_view does for each: a held job's view is made when a plan first looks
            table.held.update(dict.fromkeys(ids))
        else:
            for job in jobs:
                table.set_view(job)
        if any([p.dependencies for p in protos]):
            for i, p in zip(ids, batch.of):
                if protos[p].dependencies:
                    table.dep_edges[i] = dep_ids(batch.protos[p])
        table.waiting[caller.uid] += len(batch)
        if any([p.state == PENDING for p in protos]):
            table.wake.set()  # a held job changes no one's plan until it is released
        return batch

    def check_submit_limits(self, caller: Caller, spec: dict) -> None:
        lim = self.table.cfg.limits
        if "job_max_gpus" in lim and spec["gpus"] > lim["job_max_gpus"]:
            raise QuotaExceeded(f"a job may ask for at most {lim['job_max_gpus']} GPUs "
                                f"(limits.job_max_gpus); this one asks for {spec['gpus']}",
                                {"limit": "job_max_gpus", "value": lim["job_max_gpus"]})
        if "job_max_time" in lim and (spec["time_limit_s"] or 0) > lim["job_max_time"]:
            raise QuotaExceeded(f"time limit above the largest allowed, {lim['job_max_time']} s "
                                "(limits.job_max_time)",
                                {"limit": "job_max_time", "value": lim["job_max_time"]})
