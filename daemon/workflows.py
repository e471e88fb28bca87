"""Work that comes in many jobs: arrays and sweeps (one spec, many tasks), batches of specs with
partial success, and experiments (the jobs a user filed under one name).

Each submit here is one request and one store transaction however many jobs it queues, and
is checked whole before anything is written: an array is refused whole, a batch row by row.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields as _fields
from itertools import repeat
from typing import Any

from labq.errors import LabqError, NotFound, ValidationError
from labq.models import Job
from labq.spec import validate_submit
from labq.states import JobState
from labq.sweep import fill, grid, parse_array, task_env

from .identity import Caller
from .jobtable import JobTable
from .storejobs import JobBatch

S = JobState
# what a client reads of a job: a batch's reply sends these columns, in this order
JOB_FIELDS = [f.name for f in _fields(Job)]


@contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cycle collector paused while a batch is queued: its rows, jobs and reply
    are tens of thousands of objects, most of which live on, and the collector, run every
    700 new ones and at times over every object labqd holds, would find nothing among
    them. Two batches' pauses may overlap: one ends the other's early, no more."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
    with table.lock, collection_paused():
        admission = table.admission
        spec = admission.check_spec(caller, spec)
        admission.check_room(caller, n, whole=True)  # part of an array is worth less than none
        base = admission.new_row(caller, spec)
        command = base["command"]
        # a command without {NAME} is every task's: one object, stored as one text
        templated = any("{" in a for a in ([command] if type(command) is str else command))
        own_fields = ("array_index", "env_add") + ("key",) * (base["key"] is not None) + (
            "params",) * (params is not None) + ("command",) * templated

        def make(first: int) -> JobBatch:
            # the spec's environment is stored once for every task, each task's own
            # variables in its row
            proto = dict(base, array_id=first, array_limit=limit, key=None, params=None,
                         experiment=base["experiment"] or f"array-{first}", env=None,
                         env_base=base["env"])
            own = []
            for k, v in enumerate(values):
                task = {p: x for p, x in v.items() if p != "index"} or None
                mine: tuple[Any, ...] = (int(v["index"]), dict(
                    LABQ_ARRAY_ID=str(first), **task_env(int(v["index"]), task or {})))
                if base["key"] is not None:
                    mine += (base["key"] if k == 0 else None,)
                if params is not None:
                    mine += (task,)
                if templated:
                    mine += (fill(command, v),)
                own.append(mine)
            return JobBatch([proto], [0] * n, own_fields, own)
        batch = table.admission.admit(caller, make)
        vary = ["id", "seq"] + [f for f in own_fields if f != "env_add"]
        return job_table(batch, _picked(batch, vary), vary)


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
    with table.lock, collection_paused():
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
            return job_table(None, results, [])
        now = table.clock.time()
        made: dict[int, int] = {}  # a spec's row as queued, made once for its equal rows
        protos: list[dict] = []
        of = []
        for _, spec in ready:
            p = made.get(id(spec))
            if p is None:
                p = made[id(spec)] = len(protos)
                protos.append(table.admission.new_row(caller, spec, now))
            of.append(p)
        batch = table.admission.admit(caller, lambda first: JobBatch(protos, of))
        # rows of one spec differ in their id and change counter only
        vary = ["id", "seq"] + [f for f in JOB_FIELDS if f not in ("id", "seq", "env")
                                and any(p.get(f) != protos[0].get(f) for p in protos)]
        for (i, _), picked in zip(ready, _picked(batch, vary)):
            results[i] = picked
        return job_table(batch, results, vary)


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


def job_table(batch: JobBatch | None, results: list[Any], vary: list[str]) -> dict[str, Any]:
    """A reply of many jobs: `fields`; `shared`, the values every job has alike; `vary`, the
    fields that may differ (the caller knows which); and `results`, each a job's values of
    `vary` (see `_picked`), or an error. Ten thousand jobs as dicts repeat every field name
    and value ten thousand times, in the encoding and the decoding."""
    first = {} if batch is None else batch.row(0)
    first["env"] = None  # as a listing shows it: `job` gives the environment
    return {"fields": JOB_FIELDS, "shared": [first.get(f) for f in JOB_FIELDS],
            "vary": vary, "results": results}


def _picked(batch: JobBatch, vary: list[str]) -> list[list[Any]]:
    """Each row's values of the fields in `vary`, in the batch's order."""
    n = len(batch)
    cols: list[Any] = []
    for f in vary:
        if f == "id":
            cols.append(batch.ids)
        elif f == "seq":
            cols.append(range(batch.seq, batch.seq + n))
        elif f in batch.own_fields:
            j = batch.own_fields.index(f)
            cols.append([o[j] for o in batch.own or []])
        else:
            got = [p.get(f) for p in batch.protos]
            cols.append(repeat(got[0], n) if len(got) == 1 else [got[p] for p in batch.of])
    return list(map(list, zip(*cols)))


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
