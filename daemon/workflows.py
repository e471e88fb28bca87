"""Work that comes in many jobs: arrays and sweeps (one spec, many tasks), batches of specs with
partial success, and experiments (the jobs a user filed under one name).

Each submit here is one request and one store transaction however many jobs it queues, and
is checked whole before anything is written: an array is refused whole, a batch row by row.
"""
from __future__ import annotations

from dataclasses import fields as _fields
from typing import Any

from labq.errors import LabqError, NotFound, ValidationError
from labq.models import Job
from labq.spec import validate_submit
from labq.states import JobState
from labq.sweep import fill, grid, parse_array, task_env

from .identity import Caller
from .jobtable import JobTable

S = JobState
# what a client reads of a job: a batch's reply sends these columns, in this order
JOB_FIELDS = [f.name for f in _fields(Job)]


def submit_tasks(table: JobTable, caller: Caller, spec: dict, array: str | None,
                 params: list[tuple[str, list[str]]] | None,
                 max_running: int | None) -> dict[str, Any]:
    """An array (`array`: Slurm's syntax) or a sweep (`params`: the grid of their values):
    one job per task, sharing the first task's id as their array id. Refused whole. The
    reply is a table of jobs (see `job_table`), without their environments."""
    limit: int | None = None
    if array is not None:
        indices, limit = parse_array(array)
        values: list[dict[str, str]] = [{"index": str(i)} for i in indices]
    else:
        values = [dict(v, index=str(i)) for i, v in enumerate(grid(params or []))]
    limit = max_running or limit
    n = len(values)
    with table.lock:
        admission = table.admission
        spec = admission.check_spec(caller, spec)
        admission.check_room(caller, n, whole=True)  # part of an array is worth less than none
        base = admission.new_row(caller, spec)
        command = base["command"]
        # a command without {NAME} is every task's: one object, stored as one text
        templated = any("{" in a for a in ([command] if type(command) is str else command))

        def make_rows(first: int) -> list[dict]:
            rows = []
            for k, v in enumerate(values):
                task = {p: x for p, x in v.items() if p != "index"} or None
                # the spec's environment is stored once for every task, each task's own
                # variables in its row
                rows.append(dict(base, array_id=first, array_index=int(v["index"]),
                                 array_limit=limit, key=base["key"] if k == 0 else None,
                                 experiment=base["experiment"] or f"array-{first}",
                                 command=fill(command, v) if templated else command,
                                 params=task, gpu_indices=[], env=None, env_base=base["env"],
                                 env_add=dict(LABQ_ARRAY_ID=str(first),
                                              **task_env(int(v["index"]), task or {}))))
            return rows
        rows = table.admission.admit(caller, make_rows)
    vary = ["id", "seq", "array_index"] + ["key"] * (base["key"] is not None) + [
        "params"] * (params is not None) + ["command"] * templated
    return job_table(rows, rows, vary)


def task_count(array: str | None, params: list[tuple[str, list[str]]] | None) -> int:
    """How many jobs an array or a sweep makes."""
    if array is not None:
        return len(parse_array(array)[0])
    n = 1
    for _name, values in params or []:
        n *= len(values)
    return n


def submit_many(table: JobTable, caller: Caller, specs: list[Any], defaults: dict[str, Any],
                rows: list[int] | None = None) -> dict[str, Any]:
    """Every valid row queued in one transaction; row k is `specs[rows[k]]` (each spec once
    however many rows repeat it), or `specs[k]` without `rows`. The reply is a table, one
    entry per row in order: the job's values, or {"error": ...} (see `job_table`)."""
    order = rows if rows is not None else range(len(specs))
    results: list[Any] = [None] * len(order)
    with table.lock:
        ready = _checked(table, caller, specs, defaults, order, results)
        if ready:
            try:
                room = table.admission.check_room(caller, len(ready))
            except LabqError as e:
                for i, _ in ready:
                    results[i] = {"error": e.to_wire()}
                ready = []
                room = 0
            for i, _ in ready[room:]:
                results[i] = {"error": {
                    "code": "QUOTA_EXCEEDED", "message": "more pending jobs than "
                    "limits.user_max_pending allows", "details": {"limit": "user_max_pending"}}}
            ready = ready[:room]
        if not ready:
            return job_table([], results, [])
        now = table.clock.time()
        made: dict[int, dict] = {}  # a spec's row as queued, made once for its equal rows

        def make_rows(first: int) -> list[dict]:
            out = []
            for _, spec in ready:
                base = made.get(id(spec))
                if base is None:
                    base = made[id(spec)] = table.admission.new_row(caller, spec, now)
                out.append(dict(base, gpu_indices=[]))
            return out
        queued = table.admission.admit(caller, make_rows)
    for (i, _), row in zip(ready, queued):
        results[i] = row
    # rows of one spec differ in their id and change counter only
    first = next(iter(made.values()))
    return job_table(queued, results, ["id", "seq"] + [
        f for f in JOB_FIELDS if f not in ("id", "seq", "env")
        and any(t.get(f) != first.get(f) for t in made.values())])


def _checked(table: JobTable, caller: Caller, specs: list[Any], defaults: dict[str, Any],
             order: Any, results: list[Any]) -> list[tuple[int, dict]]:
    """(row, checked spec) of each valid row; each refused one's error in `results`. A spec
    repeated by several rows is checked once, unless it has a key (which only one may
    take)."""
    ready: list[tuple[int, dict]] = []
    keys: set[str] = set()
    seen: dict[int, dict] = {}  # spec index -> its checked spec, or {"error": ...}
    for i, s in enumerate(order):
        got = seen.get(s)
        if got is None:
            raw = specs[s]
            try:
                if type(raw) is not dict:
                    raise ValidationError("a row must be a mapping of submit fields",
                                          {"field": "spec"})
                got = _row_spec(table, caller, raw, defaults, keys)
            except LabqError as e:
                got = {"error": e.to_wire()}
            if type(raw) is not dict or raw.get("key") is None:
                seen[s] = got
        if "error" in got:
            results[i] = got
        else:
            ready.append((i, got))
    return ready


def _row_spec(table: JobTable, caller: Caller, raw: dict, defaults: dict[str, Any],
              keys: set[str]) -> dict:
    """One row's spec, merged with the defaults, checked."""
    merged = dict(defaults, **raw)
    shared, own = defaults.get("env") or {}, raw.get("env")
    if type(own) is dict:  # else the check says what is wrong with it
        merged["env"] = dict(shared, **own)
    spec = table.admission.check_spec(caller, validate_submit(merged), keys)
    if own and shared:
        # the exported environment is stored once for the batch, a row's own variables
        # in its row
        spec.update(env_base=shared, env_add=own)
    return spec


def job_table(rows: list[dict], results: list[Any], vary: list[str]) -> dict[str, Any]:
    """A reply of many jobs: `fields`; `shared`, the values every job has alike; `vary`, the
    fields that may differ (the caller knows which); and `results`, each a job's values of
    `vary` (or another entry kept as it is, an error). Ten thousand jobs as dicts repeat
    every field name and value ten thousand times, in the encoding and the decoding."""
    for row in rows:
        row["env"] = None  # as a listing shows it: `job` gives the environment
        for key in ("priority_score", "estimated_start", "reservation", "backfill_limit_s"):
            row.setdefault(key, None)
    first = rows[0] if rows else {}
    at = {id(r): k for k, r in enumerate(rows)}
    picked = [[r.get(f) for f in vary] for r in rows]
    out = [picked[at[id(r)]] if id(r) in at else r for r in results]
    return {"fields": JOB_FIELDS, "shared": [first.get(f) for f in JOB_FIELDS],
            "vary": vary, "results": out}


def experiment_ids(table: JobTable, caller: Caller, name: str,
                   states: tuple[JobState, ...] | None = None) -> list[int]:
    """The caller's jobs of an experiment (an admin's: everyone's), those in `states` only
    when given; NotFound when there are none."""
    owner = None if caller.admin else caller.uid
    if states is not None:
        want = {s.value for s in states}
        with table.lock:
            ids = [i for i, j in table.active.items() if j["experiment"] == name
                   and j["state"] in want and (owner is None or j["owner_uid"] == owner)]
    else:
        ids = table.store.experiment_job_ids(name, owner)
    if not ids:
        which = "" if states is None else " " + "/".join(s.value for s in states)
        raise NotFound(f"no{which} jobs {'of yours ' if owner is not None else ''}in "
                       f"experiment {name!r}", {"experiment": name})
    return ids
