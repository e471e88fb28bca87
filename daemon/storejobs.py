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
_BOOLS = {i for i, (n, _) in enumerate(_PLAIN) if isinstance(Job._meta.fields[n], pw.BooleanField)}
_INSERTS: dict[tuple[int, ...], str] = {}


def _without_nulls(values: list[list[Any]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The INSERT of the columns some row gives a value, and the rows' values of them.
    sqlite3 binds None and bools through its adapter lookup, which costs more than the
    insert itself; a column left out is NULL all the same."""
    first = values[0]
    # the rows of a batch are mostly alike: only the first row's empty columns are searched
    empty = [i for i, v in enumerate(first) if v is None]
    for row in values[1:]:
        if not empty:
            break
        empty = [i for i in empty if row[i] is None]
    gone = set(empty)
    keep = tuple(i for i in range(len(first)) if i not in gone)
    sql = _INSERTS.get(keep)
    if sql is None:
        names = ", ".join(f'"{_COLUMNS[i]}"' for i in keep)
        sql = _INSERTS[keep] = (f'INSERT INTO "job" ({names}) '
                                f'VALUES ({", ".join("?" * len(keep))})')
    bools = [i for i in _BOOLS if i not in gone]
    for row in values:
        for i in bools:
            v = row[i]
            if v is not None:
                row[i] = int(v)
    pick = itemgetter(*keep)
    return sql, [pick(row) for row in values]


class JobRows:
    """Mixed into Store, which holds the database, its lock and its write transaction."""

    if TYPE_CHECKING:
        db: pw.SqliteDatabase
        lock: threading.RLock

        def write(self) -> AbstractContextManager[None]: ...
        def _next_seq(self) -> int: ...

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
        with self.write():
            seq = self.db.execute_sql(
                "SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone()
            first = (seq[0] if seq else 0) + 1
            rows = make_rows(first)
            values, events = [], []
            # a value many rows share is dumped once, an environment looked up once; each
            # is kept with its result, so that its id cannot name another one in the batch
            dumped: dict[int, tuple[Any, str]] = {}
            envs: dict[int, tuple[Any, int]] = {}
            for i, row in enumerate(rows):
                row["id"] = first + i
                row["seq"] = self._next_seq()
                values.append(self._job_values(row, dumped, envs))
                events.append((row["id"], row["submit_time"], who, row["state"],
                               row.get("reason")))
            sql, values = _without_nulls(values)
            cur = self.db.cursor()
            cur.executemany(sql, values)
            if all(e[4] is None for e in events):  # a NULL bound costs, one written not
                cur.executemany(_EVENT_NO_REASON_SQL, [e[:4] for e in events])
            else:
                cur.executemany(_EVENT_SQL, events)
        return rows

    def _job_values(self, row: dict[str, Any], dumped: dict[int, tuple[Any, str]],
                    envs: dict[int, tuple[Any, int]]) -> list[Any]:
        base, add = row.pop("env_base", None), row.pop("env_add", None)
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


_ENV_ID = [n for n, _ in _PLAIN].index("env_id")
_DEFAULTS = dict(_PLAIN + _JSON)
_PLAIN_VALUES = itemgetter(*(n for n, _ in _PLAIN))
_JSON_VALUES = itemgetter(*(n for n, _ in _JSON))
