"""The job table: the active jobs, the lock that guards them, and the rules that change them.

Active jobs (PENDING, HELD, RUNNING) live in memory as ActiveJob rows holding the fields that
scheduling reads; the rest (environment, command) stays in the store, which is also what
listings read, a page at a time. Every change goes through `transition` (or, for a scheduler
pass, `transition_many`): one store transaction that also writes the event rows.
Request handlers, the node registry and the scheduler call in here; nothing here knows about
RPyC or about how a node is reached (a running job is stopped through `RunControl`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol

from labq.errors import (
    InvalidState,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from labq.states import FINAL, JobState, allowed

from . import store as st
from .activejob import ActiveJob
from .admission import Admission
from .clock import SYSTEM, Clock
from .config import Config
from .gangs import log_key
from .identity import Caller
from .jobupdates import Updates
from .logcopy import LogCopies
from .policy import JobView, PlanMemo
from .policy.estimates import WAITING_REASONS
from .policy.fairshare import Run
from .policy.waiting import Reserved
from .views import dep_ids, job_view, sent_to_pool

log = logging.getLogger("labqd")
S = JobState
WAITING = (S.PENDING, S.HELD)
ACTIVE_STATES = [s.value for s in (S.PENDING, S.HELD, S.RUNNING)]
FINAL_STATES = {s.value for s in FINAL}
# transitions made under one hold of the lock: a request that changes thousands of jobs lets
# others in between chunks
CHUNK = 256
MAX_SPANS = 1 << 16  # stderr ranges in one read_log reply


class RunControl(Protocol):
    """How the job table stops a running job: the node registry asks the job's node."""

    def cancel_run(self, job: ActiveJob) -> None: ...


# one job's change for transition_many: the job, its new state, who, why, fields to set
Change = tuple[ActiveJob, JobState, str, "str | None", dict[str, Any]]


class Notifier(Protocol):
    """What messages a job's change sends: they are written with the change itself."""

    wake: threading.Event  # set once the messages are written

    def for_change(self, job: dict, dst: JobState, now: float) -> list[dict]: ...


class SpecCheck(Protocol):
    def check_spec(self, caller: Caller, spec: dict) -> None: ...


class JobTable(Updates):
    def __init__(self, cfg: Config, store: st.Store, logs: LogCopies, wake: threading.Event,
                 clock: Clock = SYSTEM):
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # any job changed state
        self.wake = wake  # the scheduler should run
        self.logs = logs
        self.runs: RunControl | None = None  # set once the node registry exists
        self.notifier: Notifier | None = None
        # called with (job, new state, when) on every transition, under the lock (metrics)
        self.observers: list[Callable[[dict, JobState, float], None]] = []
        self.files: SpecCheck | None = None  # staged uploads and results limits
        # the GPU count of each of the cluster's nodes, which gangs are checked against
        self.node_sizes: Callable[[], list[int | None]] = list
        self.stopping = False
        self.active: dict[int, ActiveJob] = {r["id"]: ActiveJob(r)
                                             for r in store.active_rows(ACTIVE_STATES)}
        self.ended_states: dict[int, str] = {}  # cache for dependency checks
        self.cancel_requests: dict[int, str] = {}  # running job -> who asked
        # active job -> the waits to wake when it ends (JobTable.wait)
        self.enders: dict[int, list[threading.Condition]] = {}
        # the latest plan's figures: job -> computed priority, job -> expected start
        self.priorities: dict[int, float] = {}
        self.estimates: dict[int, float] = {}
        # active job -> the jobs it waits on
        self.dep_edges: dict[int, list[int]] = {i: dep_ids(j) for i, j in self.active.items()
                                                if j["dependencies"]}
        self.reasons: dict[int, str] = {}  # the latest plan's pending reasons
        # jobs waiting in a Slurm pool -> the start Slurm expects (`squeue --start`)
        self.pool_estimates: dict[int, float] = {}
        # the latest plan's backfill reservation as a reply shows it, and the longest time
        # limits with which jobs it keeps waiting would start now
        self.reservation: dict | None = None
        self.backfill_limits: Mapping[int, float] = {}
        # the scheduler's view of every pending and running job, kept current on each change,
        # and the ids of running ones, so a scheduler pass does not walk the whole queue in
        # Python. Held jobs' views are kept apart: a pass looks only at those that dependencies
        # tie to the others, so 100k held jobs cost a pass nothing
        self.views: dict[int, JobView] = {}
        self.held: dict[int, JobView | None] = {}
        for j in self.active.values():
            self.set_view(j)
        self.plan_memo = PlanMemo()  # lets the policy keep its grouping between passes
        self.running: set[int] = {i for i, j in self.active.items()
                                  if j["state"] == S.RUNNING.value or sent_to_pool(j)}
        # owner uid -> jobs PENDING or HELD, so the submit limit costs O(1), not O(queue)
        self.waiting: Counter[int] = Counter(j["owner_uid"] for j in self.active.values()
                                             if j["state"] != S.RUNNING.value)
        self.ended_runs: list[Run] = []  # runs that ended since the last usage accrual
        self.admission = Admission(self)  # a submit's checks and the rows it queues

    def set_plan(self, reasons, priorities, estimates: dict[int, float],
                 reservation: Reserved | None = None,
                 backfill_limits: Mapping[int, float] | None = None) -> None:
        """The latest plan's figures, read when a job is shown (called with the lock held)."""
        self.reasons, self.priorities = reasons, priorities
        self.estimates = {k: v for k, v in estimates.items() if k in self.active}
        self.reservation = None if reservation is None else asdict(reservation)
        # not `or {}`: its truth would count the limits, working out every one of them
        self.backfill_limits = {} if backfill_limits is None else backfill_limits

    # -- transitions -----------------------------------------------------------------------
    def transition(self, job: ActiveJob, dst: JobState, who: str, reason: str | None,
                   **fields: Any) -> None:
        self.transition_many([(job, dst, who, reason, fields)])

    def transition_many(self, changes: list[Change]) -> None:
        """Several jobs' transitions, written in one store transaction with the messages they
        send, and then applied in memory; if any is not allowed or the write fails, none
        happens."""
        rows: list[st.Transition] = []
        for job, dst, who, reason, fields in changes:
            src = JobState(job["state"])
            if not allowed(src, dst):
                raise InvalidState(f"job {job['id']} is {src.value}; it cannot become "
                                   f"{dst.value}", {"id": job["id"], "state": src.value})
            now = fields.pop("when", None) or self.clock.time()
            fields.update(state=dst.value, reason=reason)
            rows.append((job["id"], fields, who, src.value, dst.value, reason, now,
                         self._notices(job, dst, fields, now)))
        self.store.record_transitions(rows)
        if self.notifier is not None and any(row[7] for row in rows):
            self.notifier.wake.set()
        for (job, dst, _who, _reason, fields), row in zip(changes, rows, strict=True):
            self._applied(job, JobState(row[3]), dst, fields, row[6])
        self.wake.set()
        if any(dst in FINAL for _, dst, *_ in changes):
            # every waiter waits for jobs to end: a start wakes none of them for nothing
            self.changed.notify_all()

    def _notices(self, job: ActiveJob, dst: JobState, fields: dict[str, Any],
                 now: float) -> list[dict]:
        if self.notifier is None or not job["notify"]:
            return []
        # a message names the job: the name is one of the fields kept on disk
        name = self.store.cold_fields(job["id"]).get("name")
        return self.notifier.for_change(dict(job, **fields, name=name), dst, now)

    def _applied(self, job: ActiveJob, src: JobState, dst: JobState, fields: dict[str, Any],
                 now: float) -> None:
        """The in-memory side of a transition the store has recorded."""
        for observe in self.observers:
            observe(job, dst, now)
        if src == S.RUNNING and job["start_time"]:
            n = job["nodes"] or 1  # a gang's parts each hold as many as rank 0
            self.ended_runs.append(Run(job["group"], job["owner"], len(job["gpu_indices"]) * n,
                                       job["cpus"] * n, job["start_time"], now))
        if (src in WAITING) != (dst in WAITING):
            self.waiting[job["owner_uid"]] += 1 if dst in WAITING else -1
        job.update(fields)
        self.running.discard(job["id"])
        if dst == S.RUNNING or sent_to_pool(job):
            self.running.add(job["id"])
        else:
            self.pool_estimates.pop(job["id"], None)
        self.set_view(job)
        if dst in FINAL:
            self.active.pop(job["id"], None)
            self.dep_edges.pop(job["id"], None)
            self.cancel_requests.pop(job["id"], None)
            self.ended_states[job["id"]] = dst.value
            for woken in self.enders.pop(job["id"], ()):
                woken.notify()
            self.logs.notify()

    def ended_state(self, job_id: int) -> str | None:
        if job_id in self.ended_states:
            return self.ended_states[job_id]
        state = self.store.job_state(job_id)
        if state is not None and JobState(state) in FINAL:
            self.ended_states[job_id] = state
            return state
        return None

    def job_row(self, job_id: Any) -> dict:
        if type(job_id) is not int:
            raise ValidationError("id: must be an integer", {"field": "id"})
        # the store has every field and is written before memory changes, under the lock
        row = self.store.job_row(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}", {"id": job_id})
        return self._with_plan(row)

    def set_view(self, job: ActiveJob) -> None:
        self.views.pop(job["id"], None)
        self.held.pop(job["id"], None)
        if job["state"] == S.HELD.value:
            # most held jobs are never looked at by a plan (see held_views): their view is
            # made when one first is, which keeps a batch of held submits cheap
            self.held[job["id"]] = None
        elif job["state"] in ACTIVE_STATES:
            self.views[job["id"]] = job_view(job)

    def held_views(self, targets: set[int]) -> list[JobView]:
        """The held jobs a plan must see: those with dependencies (which may never be met)
        and those other jobs depend on (which are not yet met). The rest wait for Held."""
        out = []
        for i in targets.union(self.dep_edges):
            if i in self.held:
                view = self.held[i]
                if view is None:
                    view = self.held[i] = job_view(self.active[i])
                out.append(view)
        return out

    def running_views(self) -> list[JobView]:
        return [self.views[i] for i in self.running]

    def _with_plan(self, row: dict) -> dict:
        """A stored row with the latest plan's figures, if the job is active."""
        job_id, active = row["id"], row["state"] in ACTIVE_STATES
        row["priority_score"] = self.priorities.get(job_id) if active else None
        row["estimated_start"] = self.estimates.get(job_id) if active else None
        if row["state"] == S.HELD.value:  # not every held job is in the plan
            row["reason"] = self.reasons.get(job_id, "Held")
        elif row["state"] == S.PENDING.value:
            row["reason"] = self.reasons.get(job_id, row["reason"])
            if sent_to_pool(row):  # the pool's own word: Slurm's estimated start
                row["estimated_start"] = self.pool_estimates.get(job_id)
            elif self.reservation is not None and row["reason"] in WAITING_REASONS:
                row["reservation"] = self.reservation
                row["backfill_limit_s"] = self.backfill_limits.get(job_id)
        return row

    def view(self, caller: Caller, row: dict) -> dict:
        out = {k: v for k, v in row.items()}
        if not caller.may_touch(row):
            out["env"] = None
            out["key"] = None
        out.setdefault("priority_score", None)
        out.setdefault("estimated_start", None)
        out.setdefault("reservation", None)
        out.setdefault("backfill_limit_s", None)
        return out

    def list_jobs(self, caller: Caller, states: list[str] | None = None,
                  where: dict[str, Any] | None = None, limit: int | None = None,
                  after_id: int | None = None, changed_since: int | None = None,
                  include_ended: bool = True, with_env: bool = False) -> list[dict]:
        """One page: past `after_id` oldest first, changed since `changed_since` in the order
        of change, or else the newest `limit` (oldest first)."""
        want = list(states or [])
        if not include_ended:
            want = [s for s in (want or ACTIVE_STATES) if s not in FINAL_STATES]
            if not want:
                return []
        newest = after_id is None and changed_since is None and limit is not None
        rows = self.store.job_page(states=want or None, where=where, after_id=after_id,
                                   changed_since=changed_since, limit=limit,
                                   newest_first=newest, with_env=with_env)
        if newest:
            rows.reverse()
        with self.lock:
            out = [self.view(caller, self._with_plan(r)) for r in rows]
        for r in out:
            # a listing shows the queue, not what others run or with which secrets; `job`
            # gives the owner the environment
            if not with_env:
                r["env"] = None
            if not caller.may_touch(r):
                r.update(command=[], cwd="", env=None)
        return out

    def cancel(self, caller: Caller, ids: list[int], reason: str | None,
               wait: bool = True) -> list[dict]:
        self._owned_ids(caller, ids)  # check all before changing any
        why = f"cancelled by {caller.user}" + (f": {reason}" if reason else "")
        seen: set[int] = set()
        for start in range(0, len(ids), CHUNK):
            with self.lock:
                # the queued ones of a chunk end in one transaction, not one each
                queued: list[Change] = []
                for job in self._active_once(ids[start:start + CHUNK], seen):
                    if job["state"] == S.RUNNING.value or sent_to_pool(job):
                        # a job waiting in a Slurm pool ends once scancel has taken it
                        self.cancel_requests[job["id"]] = why
                        if self.runs is not None:
                            self.runs.cancel_run(job)
                    else:
                        queued.append((job, S.CANCELLED, caller.user, why,
                                       {"end_time": self.clock.time()}))
                if queued:
                    self.transition_many(queued)
        # a running job ends once its process group is gone; wait a moment for it
        deadline = time.monotonic() + (self.cfg.kill_grace_s + 2 if wait else 0)
        with self.changed:
            while (any(i in self.active for i in ids)
                   and time.monotonic() < deadline and not self.stopping):
                self.changed.wait(0.2)
        return [self.view(caller, r) for r in self._rows(ids)]

    def _rows(self, ids: list[int]) -> list[dict]:
        """Many jobs at once, in one query per 900 (SQLite's bound on variables)."""
        found = {}
        for chunk in range(0, len(ids), 900):
            for row in self.store.job_rows(ids=ids[chunk:chunk + 900], with_env=False):
                found[row["id"]] = row
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no job {', '.join(map(str, missing[:10]))}"
                           + (" …" if len(missing) > 10 else ""), {"id": missing[0]})
        with self.lock:
            return [self._with_plan(found[i]) for i in ids]

    def _owned_ids(self, caller: Caller, ids: list[int]) -> None:
        """Each job the caller's to touch: an active one checked in memory (a cancel of ten
        thousand then reads their rows once, for its reply), the others from the store."""
        with self.lock:
            active = [j for i in ids if (j := self.active.get(i)) is not None]
            rest = [i for i in ids if i not in self.active]
        self._check_owned(caller, active + (self._rows(rest) if rest else []))

    def _check_owned(self, caller: Caller, rows: list) -> list:
        for row in rows:
            if not caller.may_touch(row):
                raise PermissionDenied(f"job {row['id']} belongs to {row['owner']}",
                                       {"id": row["id"], "owner": row["owner"]})
        return rows

    def _owned(self, caller: Caller, job_id: Any) -> dict:
        return self._check_owned(caller, [self.job_row(job_id)])[0]

    def hold(self, caller: Caller, ids: list[int]) -> list[dict]:
        return self._hold_release(caller, ids, S.PENDING, S.HELD, "held by")

    def release(self, caller: Caller, ids: list[int]) -> list[dict]:
        return self._hold_release(caller, ids, S.HELD, S.PENDING, "released by")

    def _hold_release(self, caller, ids, src, dst, verb) -> list[dict]:
        rows = self._check_owned(caller, self._rows(ids))
        with self.lock:
            for row in rows:
                if row["state"] != src.value:
                    raise InvalidState(f"job {row['id']} is {row['state']}, not {src.value}",
                                       {"id": row["id"], "state": row["state"]})
                if sent_to_pool(row):
                    raise InvalidState(f"job {row['id']} waits in the Slurm pool "
                                       f"{row['node']}; cancel it instead",
                                       {"id": row["id"], "node": row["node"]})
        why = f"{verb} {caller.user}" if dst == S.HELD else None
        seen: set[int] = set()
        for start in range(0, len(ids), CHUNK):
            with self.lock:
                extra = {"eligible_time": self.clock.time()} if dst == S.PENDING else {}
                # one changed while an earlier chunk was made is left as it is
                changes: list[Change] = [
                    (job, dst, caller.user, why, dict(extra))
                    for job in self._active_once(ids[start:start + CHUNK], seen)
                    if job["state"] == src.value]
                if changes:
                    self.transition_many(changes)
        return [self.view(caller, r) for r in self._rows(ids)]

    def _active_once(self, ids: list[int], seen: set[int]) -> list[ActiveJob]:
        """The jobs of `ids` still active and not in `seen` (added there): a job named twice
        changes once, and one ended meanwhile not at all. Called with the lock held."""
        out = [j for i in dict.fromkeys(ids)
               if i not in seen and (j := self.active.get(i)) is not None]
        seen.update(j["id"] for j in out)
        return out

    def wait(self, caller: Caller, ids: list[int], timeout: float) -> list[dict]:
        if not all(i in self.active for i in ids):
            self._rows(ids)  # NotFound early
        deadline = time.monotonic() + max(0.0, min(timeout, 60.0))
        k = len(ids)  # ids from k on have ended, for good: a wake looks only before them
        with self.lock:
            woken = threading.Condition(self.lock)
            while not self.stopping:
                while k and ids[k - 1] not in self.active:
                    k -= 1
                left = deadline - time.monotonic()
                if not k or left <= 0:
                    break
                # woken when that job ends (the newest, likely the last), not by every end
                enders = self.enders.setdefault(ids[k - 1], [])
                enders.append(woken)
                woken.wait(left)
                if woken in enders:
                    enders.remove(woken)
                    if not enders:
                        self.enders.pop(ids[k - 1], None)
        return [self.view(caller, r) for r in self._rows(ids)]

    def wake_waits(self) -> None:
        """Every wait looks again now (labqd is stopping). Called with the lock held."""
        self.changed.notify_all()
        for enders in self.enders.values():
            for woken in enders:
                woken.notify()

    def events(self, caller: Caller, job_id: int) -> list[dict]:
        self.job_row(job_id)
        return [{"job": e["job"], "time": e["time"], "who": e["who"],
                 "from_state": e["from_state"], "to_state": e["to_state"],
                 "reason": e["reason"]} for e in self.store.events(job_id)]

    def read_log(self, caller: Caller, job_id: int, offset: int, wait: float,
                 max_bytes: int, part: int = 0) -> tuple[bytes, int, bool, list[tuple[int, int]]]:
        """Bytes from `offset` of the job's log (part `part`'s of a gang), the offset after
        them, whether the log is complete, and the stderr ranges among the bytes (relative to
        them)."""
        row = self._owned(caller, job_id)
        if part >= (row.get("nodes") or 1):
            raise NotFound(f"job {row['id']} has no part {part}: it runs on "
                           f"{row.get('nodes') or 1} node(s), parts 0 to "
                           f"{(row.get('nodes') or 1) - 1}", {"id": row["id"], "part": part})
        key = log_key(row["id"], part)
        max_bytes = max(1, min(max_bytes, 4 << 20))
        if offset < 0:  # that many bytes before the current end: start a long log at its tail
            offset = max(0, self.logs.size(key) + offset)
        deadline = time.monotonic() + max(0.0, min(wait, 30.0))
        while True:
            done = row["id"] not in self.active
            data = self.logs.read(key, offset, max_bytes)
            if data or done:
                # read after the bytes: the ranges of all of them are written by then
                spans = [(s - offset, e - offset) for s, e in
                         self.logs.err_spans(key, offset, offset + len(data),
                                             MAX_SPANS + 1)]
                if len(spans) > MAX_SPANS:  # a reply of bounded size: the rest comes next
                    data, spans = data[:spans[MAX_SPANS][0]], spans[:MAX_SPANS]
                return data, offset + len(data), done and not data, spans
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping:
                return b"", offset, False, []
            self.logs.wait(key, offset, left)

