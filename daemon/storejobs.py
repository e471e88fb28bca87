"""The store's job rows as they are queued, and the environments they run with. Part of
Store, whose SQL this is.

A submit queues up to ten thousand rows in one transaction, so their INSERT is built once
and fed plain values; the environment, most of a submit's bytes, is stored once per user
and distinct content (`env` table) and each job names it (`env_id`), with the variables that
are its own (an array task's) in its `env` column.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import peewee as pw

from .schema import Job, JSONField

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

# environments remembered by the writer (content -> id) and by readers (id -> variables):
# a lab's users submit with a handful each, a cache this size holds them all
ENV_CACHE = 512
_EMPTY = {list: "[]", dict: "{}"}
_EVENT_SQL = ('INSERT INTO "job_event" ("job", "time", "who", "from_state", "to_state", '
              '"reason") VALUES (?, ?, ?, NULL, ?, ?)')
_EVENT_NO_REASON_SQL = _EVENT_SQL.replace("?, ?)", "?, NULL)")


def _columns() -> tuple[list[str], list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The columns of a job row, its plain ones and its JSON ones, each with the value a
    row that leaves it out gets."""
    fields = Job._meta.sorted_fields
    plain, js = [], []
    for f in fields:
        d = f.default() if callable(f.default) else f.default
        (js if isinstance(f, JSONField) else plain).append((f.name, d))
    names = [n for n, _ in plain] + [n for n, _ in js]
    return [Job._meta.fields[n].column_name for n in names], plain, js


_COLUMNS, _PLAIN, _JSON = _columns()
_BOOLS = [i for i, (n, _) in enumerate(_PLAIN) if isinstance(Job._meta.fields[n], pw.BooleanField)]
_AT = {n: i for i, n in enumerate([n for n, _ in _PLAIN] + [n for n, _ in _JSON])}
_INSERTS: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[str, Any]] = {}


@dataclass
class JobBatch:
    """The rows of one submit, most of them alike: row k is `protos[of[k]]` with its own
    values of `own_fields` (`own[k]`, in that order), the id `first + k` and the change
    counter `seq + k`. A row's environment is as `insert_jobs` says; `env_add` may be one
    of its own fields. Ten thousand rows built as dicts cost more than SQLite storing them."""
    protos: list[dict[str, Any]]
    of: list[int]
    own_fields: tuple[str, ...] = ()
    own: list[tuple[Any, ...]] | None = None
    first: int = 0  # the ids and change counters, set when the rows are stored
    seq: int = 0

    def __len__(self) -> int:
        return len(self.of)

    @property
    def ids(self) -> range:
        return range(self.first, self.first + len(self.of))

    def row(self, k: int) -> dict[str, Any]:
        """Row k whole, as it was queued."""
        row = dict(self.protos[self.of[k]], id=self.first + k, seq=self.seq + k)
        if self.own is not None:
            row.update(zip(self.own_fields, self.own[k]))
        row.pop("env_base", None)
        row.pop("env_add", None)
        return row


def _insert_of(lead: tuple[int, ...], empty: tuple[int, ...]) -> tuple[str, Any]:
    """The INSERT of the columns `lead` and then those not in `empty`, and what picks the
    latter from a prototype's values; built once for each such set."""
    got = _INSERTS.get((lead, empty))
    if got is None:
        gone = set(lead).union(empty)
        keep = [i for i in range(len(_COLUMNS)) if i not in gone]
        cols = lead + tuple(keep)
        names = ", ".join(f'"{_COLUMNS[i]}"' for i in cols)
        sql = f'INSERT INTO "job" ({names}) VALUES ({", ".join("?" * len(cols))})'
        # itemgetter of one index returns the value, not a 1-tuple
        pick = itemgetter(*keep) if len(keep) > 1 else lambda v: tuple(v[i] for i in keep)
        got = _INSERTS[(lead, empty)] = (sql, pick)
    return got


def _json(v: Any) -> str | None:
    return json.dumps(v) if v else None if v is None else _EMPTY[type(v)]


class JobRows:
    """Mixed into Store, which holds the database, its lock and its write transaction."""

    if TYPE_CHECKING:
        db: pw.SqliteDatabase
        lock: threading.RLock
        seq: int

        def write(self) -> AbstractContextManager[None]: ...

    _env_ids: dict[tuple[int | None, tuple[tuple[str, str], ...]], int]
    _env_bodies: dict[int, dict[str, str]]

    def forget_envs(self) -> None:
        """A write failed: an environment it added may be gone with it."""
        self._env_ids = {}

    def insert_job(self, fields: dict[str, Any], who: str) -> int:
        return int(self.insert_jobs(lambda first: [fields], who)[0]["id"])

    def insert_jobs(self, make_rows: Callable[[int], list[dict[str, Any]]],
                    who: str) -> list[dict[str, Any]]:
        """Many jobs in one transaction, with ids first, first + 1, ...: `make_rows(first)`
        builds the rows knowing their ids (an array's tasks carry the first one's). A row's
        `env` is its whole environment; or its environment is `env_base` (shared with other
        rows: stored once) with `env_add` added, and `env` is not read."""
        rows: list[dict[str, Any]] = []

        def make(first: int) -> JobBatch:
            rows.extend(make_rows(first))
            return JobBatch(rows, list(range(len(rows))))
        batch = self.insert_batch(make, who)
        return [batch.row(k) for k in range(len(batch))]

    def insert_batch(self, make: Callable[[int], JobBatch], who: str) -> JobBatch:
        """The rows `make(first id)` builds, in one transaction, each with a submit event."""
        with self.write():
            seq = self.db.execute_sql(
                "SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone()
            first = (seq[0] if seq else 0) + 1
            batch = make(first)
            batch.first, batch.seq = first, self.seq + 1
            self.seq += len(batch)  # under the write's lock
            cur = self.db.cursor()
            cur.executemany(*self._batch_values(batch))
            # every row of a prototype has the same event but for its job
            ev = [(p["submit_time"], who, p["state"], p.get("reason")) for p in batch.protos]
            sql = _EVENT_SQL
            if not any([e[3] for e in ev]):  # a NULL bound costs, one written not
                sql, ev = _EVENT_NO_REASON_SQL, [e[:3] for e in ev]
            if len(ev) == 1:
                one = ev[0]
                cur.executemany(sql, [(i, *one) for i in batch.ids])
            else:
                cur.executemany(sql, [(i, *ev[p]) for i, p in zip(batch.ids, batch.of)])
        return batch

    def _batch_values(self, batch: JobBatch) -> tuple[str, list[tuple[Any, ...]]]:
        """The INSERT of a batch and its rows' values: each prototype's values made once,
        each row's its id, change counter and own values put before them. The INSERT leaves
        out the columns no row fills: sqlite3 binds None and bools through its adapter
        lookup, which costs more than the insert itself; a column left out is NULL."""
        # a value many rows share is dumped once, an environment looked up once; each is
        # kept with its result, so that its id cannot name another one in the batch
        dumped: dict[int, tuple[Any, str]] = {}
        envs: dict[int, tuple[Any, int]] = {}
        protos = [self._job_values(p, dumped, envs) for p in batch.protos]
        lead = _LEAD
        if batch.own_fields:
            lead += tuple(_AT["env" if f == "env_add" else f] for f in batch.own_fields)
        # the prototypes are mostly alike: only the first one's empty columns are searched
        empty = [i for i, v in enumerate(protos[0]) if v is None]
        for values in protos[1:]:
            if not empty:
                break
            empty = [i for i in empty if values[i] is None]
        sql, pick = _insert_of(lead, tuple(empty))
        rest = [pick(v) for v in protos]
        ids, seqs = batch.ids, range(batch.seq, batch.seq + len(batch))
        if batch.own is not None:
            own = _own_values(batch, protos)
            values = [(i, s, *o) + rest[p] for i, s, o, p in zip(ids, seqs, own, batch.of)]
        elif len(rest) == 1:
            one = rest[0]
            values = [(i, s) + one for i, s in zip(ids, seqs)]
        else:
            values = [(i, s) + rest[p] for i, s, p in zip(ids, seqs, batch.of)]
        return sql, values

    def _job_values(self, row: dict[str, Any], dumped: dict[int, tuple[Any, str]],
                    envs: dict[int, tuple[Any, int]]) -> list[Any]:
        base, add = row.get("env_base"), row.get("env_add")
        if base is None:
            base = row["env"]
        env_id = None
        if base:
            known = envs.get(id(base))
            if known is None:
                known = envs[id(base)] = (base, self._env_ref(row.get("owner_uid"), base))
            env_id = known[1]
        full = {**_DEFAULTS, **row}
        out = list(_PLAIN_VALUES(full))
        out[_ENV_ID] = env_id
        for i in _BOOLS:
            if out[i] is not None:
                out[i] = int(out[i])
        if env_id is not None:
            full["env"] = add or {}
        elif add is not None:  # nothing shared: what is added is the whole environment
            full["env"] = add
        for v in _JSON_VALUES(full):
            if not v:
                out.append(None if v is None else _EMPTY[type(v)])
            else:
                done = dumped.get(id(v))
                if done is None:
                    done = dumped[id(v)] = (v, json.dumps(v))
                out.append(done[1])
        return out

    def _env_ref(self, uid: int | None, env: dict[str, str]) -> int:
        """The id of the caller's stored environment with these variables, stored now if
        it is new. Called inside a write."""
        key = (uid, tuple(env.items()))
        env_id = self._env_ids.get(key)
        if env_id is not None:
            return env_id
        body = json.dumps(env)
        digest = hashlib.sha256(body.encode()).hexdigest()
        row = self.db.execute_sql('SELECT "id" FROM "env" WHERE "owner_uid" IS ? AND '
                                  '"digest" = ?', (uid, digest)).fetchone()
        env_id = row[0] if row else self.db.execute_sql(
            'INSERT INTO "env" ("owner_uid", "digest", "body") VALUES (?, ?, ?)',
            (uid, digest, body)).lastrowid
        if len(self._env_ids) >= ENV_CACHE:
            self._env_ids = {}
        self._env_ids[key] = env_id
        return int(env_id)

    def with_envs(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows read with their `env` and `env_id` columns, with each job's whole
        environment as `env`."""
        bodies = self._env_bodies
        want = {r["env_id"] for r in rows if r.get("env_id") is not None} - bodies.keys()
        if want:
            if len(bodies) + len(want) > ENV_CACHE:
                bodies = self._env_bodies = {}
            found = {}
            ids = list(want)
            for at in range(0, len(ids), 900):  # SQLite's bound on variables
                chunk = ids[at:at + 900]
                found.update(self.db.execute_sql(
                    f'SELECT "id", "body" FROM "env" WHERE "id" IN '
                    f'({", ".join("?" * len(chunk))})', chunk).fetchall())
            for i, body in found.items():
                bodies[i] = json.loads(body)
        for r in rows:
            env_id = r.pop("env_id", None)
            if env_id is not None:
                r["env"] = dict(bodies[env_id], **(r["env"] or {}))
        return rows


_ENV_ID = _AT["env_id"]
_LEAD = (_AT["id"], _AT["seq"])
_DEFAULTS = dict(_PLAIN + _JSON)
_PLAIN_VALUES = itemgetter(*(n for n, _ in _PLAIN))
_JSON_VALUES = itemgetter(*(n for n, _ in _JSON))


def _own_values(batch: JobBatch, protos: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Each row's values of its own fields, as stored."""
    own = batch.own or []
    cols: list[list[Any]] = []
    for j, f in enumerate(batch.own_fields):
        got = [o[j] for o in own]
        if f == "env_add":  # as _job_values: beside a stored environment, {} for none
            env = _AT["env"]
            cols.append([_json(a or {}) if protos[p][_ENV_ID] is not None
                         else _json(a) if a is not None else protos[p][env]
                         for a, p in zip(got, batch.of)])
        elif _AT[f] >= len(_PLAIN):
            cols.append([_json(v) for v in got])
        elif _AT[f] in _BOOLS:
            cols.append([None if v is None else int(v) for v in got])
        else:
            cols.append(got)
    return list(zip(*cols))
