"""The queue's durable state on SQLite (WAL): every statement labqd runs, as Store methods.
The tables and their migrations are in schema.py.

labqd is the only writer. Every write goes through `Store.write()`, one lock and one
transaction, so writes are serialised by design; readers use their own connections.
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee as pw

from labq.errors import StorageError

from .schema import (
    APPLICATION_ID,
    HOT_FIELDS,
    MIGRATIONS,
    NO_ENV,
    SCHEMA_VERSION,
    Allocation,
    Base,
    DynamicNode,
    Gpu,
    GroupSetting,
    Job,
    JobEvent,
    Meta,
    Node,
    Notification,
    Token,
    db,
)
from .storejobs import JobRows
from .storenotify import NotificationRows

# (job id, changed fields, who, from state, to state, reason, when, notifications to send):
# one job's transition
Transition = tuple[int, dict[str, Any], str, str, str, "str | None", float,
                   Sequence[dict[str, Any]]]


class ForeignDatabase(Exception):
    """The file exists but is not a labq database, is corrupt, or is from a newer release."""


def _check_file(path: Path) -> None:
    """Refuse a corrupt or foreign file before peewee may write to it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in
                      con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            check = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ForeignDatabase(f"{path} is not a readable SQLite database ({e}); "
                              "labqd will not overwrite it") from None
    if check != "ok":
        raise ForeignDatabase(f"{path} is corrupt (quick_check: {check}); restore a backup")
    if app_id != APPLICATION_ID and tables:
        raise ForeignDatabase(f"{path} is an SQLite database of another program "
                              f"(tables: {', '.join(sorted(tables)[:5])}); labqd will not touch it")


class Store(NotificationRows, JobRows):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_file(self.path)
        self.db = pw.SqliteDatabase(str(self.path), pragmas={
            "journal_mode": "wal", "busy_timeout": 10000, "synchronous": "normal",
            "foreign_keys": 1}, check_same_thread=False)
        db.initialize(self.db)
        self.lock = threading.RLock()
        self._sql_cache: dict[tuple, str] = {}
        self._env_ids, self._env_bodies = {}, {}
        self._migrate()
        self.cluster_id = self._meta("cluster_id")
        # the last change counter handed out; advanced inside each write
        self.seq: int = self.db.execute_sql('SELECT MAX("seq") FROM "job"').fetchone()[0] or 0
        self.committed_seq = self.seq  # the last one a reader can see

    # -- schema ----------------------------------------------------------------------------
    def _meta(self, key: str, default: str | None = None) -> str | None:
        row = Meta.get_or_none(Meta.key == key)
        return row.value if row else default

    def _migrate(self) -> None:
        with self.lock, self.db.atomic():
            has_meta = self.db.table_exists("meta")
            version = int(self._meta("schema_version", "0")) if has_meta else 0
            if version > SCHEMA_VERSION:
                raise ForeignDatabase(f"{self.path} has schema version {version}, newer than "
                                      f"this labq understands ({SCHEMA_VERSION}); upgrade labq")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.db)
                Meta.replace(key="schema_version", value=str(v)).execute()
            if version == 0:
                self.db.execute_sql(f"PRAGMA application_id = {APPLICATION_ID}")
                Meta.replace(key="cluster_id", value=uuid.uuid4().hex[:12]).execute()

    @property
    def schema_version(self) -> int:
        return int(self._meta("schema_version", "0"))

    def close(self) -> None:
        self.db.close()

    # -- writes ----------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[None]:
        """One serialised transaction; a failed write surfaces as StorageError."""
        with self.lock:
            done = False
            try:
                with self.db.atomic():
                    yield
                done = True
                if self.db.transaction_depth() == 0:  # the outermost write: committed
                    self.committed_seq = self.seq
            except (pw.OperationalError, sqlite3.OperationalError) as e:
                # a COMMIT that fails on a full disk makes SQLite roll back by itself; peewee's
                # ROLLBACK then fails with "no transaction is active", which hides the cause
                causes, err = [], e
                while err is not None and len(causes) < 8:
                    causes.append(str(err))
                    err = err.__context__
                msg = next((m for m in causes if "full" in m or "disk" in m
                            or "readonly" in m or "I/O" in m), str(e))
                if "full" in msg or "disk" in msg or "readonly" in msg or "I/O" in msg:
                    raise StorageError(f"labqd cannot write its database ({msg}); "
                                       "nothing was changed", {"database": str(self.path)}) from e
                raise
            finally:
                if not done:
                    self.forget_envs()

    def _insert(self, model: type[Base], row: dict[str, Any]) -> int:
        """INSERT with SQL built once per column set: peewee's query builder costs more than
        SQLite's commit on the submit path."""
        fields = model._meta.fields
        for name, f in fields.items():
            if name not in row and f.default is not None:
                row[name] = f.default() if callable(f.default) else f.default
        keys = tuple(sorted(row))
        sql = self._sql_cache.get((model, keys))
        if sql is None:
            fields = model._meta.fields
            cols = ", ".join(f'"{fields[k].column_name}"' for k in keys)
            sql = (f'INSERT INTO "{model._meta.table_name}" ({cols}) '
                   f'VALUES ({", ".join("?" * len(keys))})')
            self._sql_cache[(model, keys)] = sql
        return self.db.execute_sql(sql, [fields[k].db_value(row[k]) for k in keys]).lastrowid

    def add_event(self, job: int, who: str, src: str | None, dst: str, reason: str | None,
                  when: float | None = None) -> None:
        self._insert(JobEvent, {"job": job, "time": when or time.time(), "who": who,
                                "from_state": src, "to_state": dst, "reason": reason})

    def _next_seq(self) -> int:
        self.seq += 1  # called inside a write, under its lock
        return self.seq

    def job_by_key(self, owner_uid: int | None, key: str) -> int | None:
        row = (Job.select(Job.id).where((Job.owner_uid == owner_uid) & (Job.key == key))
               .first())
        return None if row is None else row.id

    def experiment_job_ids(self, name: str, owner_uid: int | None) -> list[int]:
        """Ids of an experiment's jobs, a user's (or everyone's: owner_uid None)."""
        q = Job.select(Job.id).where(Job.experiment == name)
        if owner_uid is not None:
            q = q.where(Job.owner_uid == owner_uid)
        return [r[0] for r in q.order_by(Job.id).tuples()]

    def experiments(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Per experiment (and owner): jobs by state, the first submit and the last end."""
        q = (Job.select(Job.experiment, Job.owner, Job.state, pw.fn.COUNT(Job.id),
                        pw.fn.MIN(Job.submit_time), pw.fn.MAX(Job.end_time))
             .where(Job.experiment.is_null(False)))
        if owner:
            q = q.where(Job.owner == owner)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for name, who, state, n, first, last in q.group_by(Job.experiment, Job.owner,
                                                          Job.state).tuples():
            e = out.setdefault((who, name), {"name": name, "owner": who, "counts": {},
                                             "total": 0, "first_submit": first,
                                             "last_end": None})
            e["counts"][state] = n
            e["total"] += n
            e["first_submit"] = min(e["first_submit"], first)
            if last is not None and (e["last_end"] is None or last > e["last_end"]):
                e["last_end"] = last
        return sorted(out.values(), key=lambda e: (e["first_submit"], e["owner"], e["name"]))

    def update_job(self, job_id: int, **fields: Any) -> None:
        self._update(Job, job_id, dict(fields, seq=self._next_seq()))

    def _update(self, model: type[Base], row_id: int, fields: dict[str, Any]) -> None:
        """UPDATE of one row by id, its SQL built once per column set (as `_insert`)."""
        meta = model._meta.fields
        keys = tuple(sorted(fields))
        sql = self._sql_cache.get((model, "update", keys))
        if sql is None:
            sets = ", ".join(f'"{meta[k].column_name}" = ?' for k in keys)
            sql = f'UPDATE "{model._meta.table_name}" SET {sets} WHERE "id" = ?'
            self._sql_cache[(model, "update", keys)] = sql
        self.db.execute_sql(sql, [meta[k].db_value(fields[k]) for k in keys] + [row_id])

    def _select_by_ids(self, fields: Sequence[pw.Field], ids: Sequence[int]) -> list[dict]:
        """Rows of `job` by id, as peewee's dicts() makes them, with SQL built once per shape:
        a job's end and a client's wait read rows this way many times a second."""
        names = tuple(f.name for f in fields)
        env = "env" in names
        if env and "env_id" not in names:
            fields, names = (*fields, Job.env_id), (*names, "env_id")
        key = (Job, "select", names, len(ids))
        sql = self._sql_cache.get(key)
        if sql is None:
            cols = ", ".join(f'"{f.column_name}"' for f in fields)
            sql = f'SELECT {cols} FROM "job" WHERE "id" IN ({", ".join("?" * len(ids))})'
            self._sql_cache[key] = sql
        conv = [(f.name, f.python_value) for f in fields]
        rows = [{name: value(v) for (name, value), v in zip(conv, r)}
                for r in self.db.execute_sql(sql, list(ids))]
        return self.with_envs(rows) if env else rows

    def record_transition(self, job_id: int, fields: dict[str, Any], who: str, src: str,
                          dst: str, reason: str | None, when: float,
                          notices: Sequence[dict[str, Any]] = ()) -> None:
        """A job's new state, its event row, its GPU allocation and the notifications it
        sends, in one transaction."""
        self.record_transitions([(job_id, fields, who, src, dst, reason, when, notices)])

    def record_transitions(self, changes: list[Transition]) -> None:
        """Many jobs' transitions (a scheduler pass's starts) in one transaction: one commit
        instead of one per job, and none of them if any fails."""
        with self.write():
            for job_id, fields, who, src, dst, reason, when, notices in changes:
                for n in notices:
                    self._insert(Notification, dict(n, job=job_id, status="pending",
                                                    next_try=when, created=when))
                self._update(Job, job_id, dict(fields, seq=self._next_seq()))
                self.add_event(job_id, who, src, dst, reason, when)
                self.db.execute_sql('DELETE FROM "allocation" WHERE "job" = ?', [job_id])
                if dst != "RUNNING":
                    continue
                held = fields.get("parts") or [[fields.get("node"), fields.get("gpu_indices")]]
                for node, gpus in held:
                    for g in gpus or ():
                        self._insert(Allocation, {"job": job_id, "node": node, "gpu_index": g})

    def record_change(self, job_id: int, state: str, who: str, field: str, why: str,
                      value: int) -> None:
        """A waiting job's priority or time limit changed, with an event that says so."""
        column = {"priority": Job.priority, "time_limit_s": Job.time_limit_s}[field]
        with self.write():
            Job.update({column: value, Job.seq: self._next_seq()}).where(
                Job.id == job_id).execute()
            self.add_event(job_id, who, state, state, why)

    def runs_since(self, since: float) -> list[dict[str, Any]]:
        """Jobs that started and had not ended by `since`: what fair-share usage counts."""
        q = (Job.select(Job.group, Job.owner, Job.gpu_indices, Job.cpus, Job.start_time,
                        Job.end_time, Job.state, Job.nodes)
             .where(Job.start_time.is_null(False) &
                    (Job.end_time.is_null() | (Job.end_time > since))))
        return list(q.dicts())

    def job_state(self, job_id: int) -> str | None:
        row = Job.select(Job.state).where(Job.id == job_id).first()
        return None if row is None else row.state

    # -- nodes and groups ----------------------------------------------------------------
    def drained_nodes(self) -> dict[str, bool]:
        return {n.name: n.drained for n in Node.select()}

    def set_drained(self, name: str, drained: bool) -> None:
        with self.write():
            Node.update(drained=drained).where(Node.name == name).execute()

    def save_node(self, name: str, **fields: Any) -> None:
        with self.write():
            Node.insert(name=name, **fields).on_conflict_replace().execute()

    def save_gpus(self, node: str, gpus: list[dict[str, Any]]) -> None:
        with self.write():
            Gpu.delete().where(Gpu.node == node).execute()
            if gpus:
                Gpu.insert_many([dict(g, node=node) for g in gpus]).execute()

    def dynamic_nodes(self) -> list[dict[str, Any]]:
        """Config entries of the nodes added while labqd ran."""
        return [row.entry for row in DynamicNode.select()]

    def add_dynamic_node(self, name: str, entry: dict[str, Any]) -> None:
        with self.write():
            DynamicNode.replace(name=name, entry=entry).execute()

    def forget_node(self, name: str) -> None:
        with self.write():
            for model, col in ((DynamicNode, DynamicNode.name), (Node, Node.name),
                               (Gpu, Gpu.node)):
                model.delete().where(col == name).execute()

    def group_settings(self) -> dict[str, dict[str, Any]]:
        return {r.group: r.settings for r in GroupSetting.select()}

    def save_group_settings(self, group: str, settings: dict[str, Any]) -> None:
        with self.write():
            GroupSetting.replace(group=group, settings=settings).execute()

    # -- reads -----------------------------------------------------------------------------
    def job_row(self, job_id: int) -> dict[str, Any] | None:
        rows = self._select_by_ids(Job._meta.sorted_fields, [job_id])
        return rows[0] if rows else None

    def job_rows(self, *, states: list[str] | None = None, owner: str | None = None,
                 ids: list[int] | None = None, limit: int | None = None,
                 newest_first: bool = True, with_env: bool = True,
                 experiment: str | None = None) -> list[dict[str, Any]]:
        # listings leave the environment in the database: it is the biggest column, and a
        # listing must never show it
        if ids is not None and not (states or owner or limit or experiment is not None):
            rows = []
            for at in range(0, len(ids), 900):  # SQLite's bound on variables
                rows += self._select_by_ids(Job._meta.sorted_fields if with_env else NO_ENV,
                                            ids[at:at + 900])
            rows.sort(key=lambda r: r["id"], reverse=newest_first)
            return rows
        q = Job.select() if with_env else Job.select(*NO_ENV)
        if states:
            q = q.where(Job.state.in_(states))
        if owner:
            q = q.where(Job.owner == owner)
        if ids is not None:
            q = q.where(Job.id.in_(ids))
        if experiment is not None:
            q = q.where(Job.experiment == experiment)
        q = q.order_by(Job.id.desc() if newest_first else Job.id)
        if limit:
            q = q.limit(limit)
        return self.with_envs(list(q.dicts())) if with_env else list(q.dicts())

    def active_rows(self, states: list[str]) -> list[dict[str, Any]]:
        """Jobs in these states, oldest first, without the fields labqd leaves on disk."""
        return list(Job.select(*HOT_FIELDS).where(Job.state.in_(states)).order_by(Job.id).dicts())

    def cold_fields(self, job_id: int) -> dict[str, Any]:
        """What a launch needs besides what labqd keeps in memory."""
        rows = self._select_by_ids((Job.name, Job.command, Job.cwd, Job.env, Job.stage,
                                    Job.results), [job_id])
        return rows[0] if rows else {}

    def cold_fields_many(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """cold_fields of several jobs in one read: a scheduler pass's launches."""
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            for row in self._select_by_ids((Job.id, Job.name, Job.command, Job.cwd, Job.env,
                                            Job.stage, Job.results), ids[i:i + 500]):
                out[row.pop("id")] = row
        return out

    def job_page(self, *, states: list[str] | None = None, where: dict[str, Any] | None = None,
                 after_id: int | None = None, changed_since: int | None = None,
                 limit: int | None = None, newest_first: bool = False,
                 with_env: bool = False) -> list[dict[str, Any]]:
        """One page of a listing, read through an index in id order so that it costs what it
        returns, not the size of the queue.

        `where` holds column equality filters (owner, ...). With `after_id` the page is the
        first `limit` jobs past it; with `changed_since`, the jobs changed since that change
        counter, in the order they changed; else the oldest (or newest) `limit`."""
        rows = self._page(states=states, where=where, after_id=after_id,
                          changed_since=changed_since, limit=limit, newest_first=newest_first,
                          with_env=with_env)
        return self.with_envs(rows) if with_env else rows

    def _page(self, *, states: list[str] | None, where: dict[str, Any] | None,
              after_id: int | None, changed_since: int | None, limit: int | None,
              newest_first: bool, with_env: bool) -> list[dict[str, Any]]:
        cols = Job._meta.sorted_fields if with_env else NO_ENV
        q = Job.select(*cols)
        for name, value in (where or {}).items():
            q = q.where(getattr(Job, name) == value)
        if changed_since is not None:
            q = q.where(Job.seq > changed_since).order_by(Job.seq)
            if states:
                q = q.where(Job.state.in_(states))
            return list((q.limit(limit) if limit else q).dicts())
        if after_id is not None:
            q = q.where(Job.id > after_id)
        q = q.order_by(Job.id.desc() if newest_first else Job.id)
        if limit:
            q = q.limit(limit)
        if not states:
            return list(q.dicts())
        # one walk per state, each along its (state, id) index, merged: an IN over the states
        # would make SQLite sort every matching row before it can stop at the page's end
        rows = [r for s in states for r in q.where(Job.state == s).dicts()]
        rows.sort(key=lambda r: r["id"], reverse=newest_first)
        return rows[:limit] if limit else rows

    def events(self, job_id: int) -> list[dict[str, Any]]:
        return list(JobEvent.select().where(JobEvent.job == job_id)
                    .order_by(JobEvent._meta.primary_key).dicts())

    # -- tokens ----------------------------------------------------------------------------
    def tokens(self) -> list[dict[str, Any]]:
        return list(Token.select().order_by(Token.id).dicts())

    def insert_token(self, row: dict[str, Any]) -> int:
        with self.write():
            return int(Token.insert(**row).execute())

    def revoke_tokens(self, ids: list[int], when: float) -> None:
        with self.write():
            Token.update(revoked=when).where(Token.id.in_(ids), Token.revoked.is_null()).execute()

    def token_used(self, token_id: int, when: float) -> None:
        with self.write():
            Token.update(last_used=when).where(Token.id == token_id).execute()

    # -- staged files and results --------------------------------------------------------------
    def set_files(self, job_id: int, files: dict[str, Any] | None, **fields: Any) -> None:
        """A job's results copy changed; `fields` may set its reason (ResultsIncomplete) and
        purged_time too."""
        assert set(fields) <= {"reason", "purged_time"}, fields
        with self.write():
            Job.update(files=files, **fields).where(Job.id == job_id).execute()

    def results_due(self, node: str) -> list[dict[str, Any]]:
        """Ended jobs of `node` whose results are still to be copied."""
        state = pw.fn.json_extract(Job.files, "$.state")
        return list(Job.select(*NO_ENV).where(
            (Job.node == node) & Job.end_time.is_null(False)
            & state.in_(["pending", "incomplete"])).dicts())

    def scratch_due(self, before: float) -> list[dict[str, Any]]:
        """Ended jobs, ended before `before`, whose node scratch directory is still there."""
        return list(Job.select(Job.id, Job.node, Job.restarts, Job.files, Job.owner_uid).where(
            (Job.end_time < before)
            & pw.fn.json_extract(Job.files, "$.scratch").is_null(False)).dicts())

    def purgeable(self, before: float) -> list[dict[str, Any]]:
        """Jobs that ended before `before` whose files have not been purged."""
        return list(Job.select(Job.id, Job.node, Job.restarts, Job.files, Job.stage,
                               Job.owner_uid).where(
            (Job.end_time < before) & Job.purged_time.is_null()).dicts())

    def stage_tokens_in_use(self, since: float) -> set[str]:
        """Upload tokens of jobs active or ended after `since`: their files stay."""
        token = pw.fn.json_extract(Job.stage, "$.token")
        q = Job.select(token.alias("t")).where(
            Job.stage.is_null(False) & (Job.end_time.is_null() | (Job.end_time >= since)))
        return {r["t"] for r in q.dicts()}

    def results_bytes(self, owner_uid: int) -> int:
        """What a user's kept results take."""
        size = pw.fn.SUM(pw.fn.json_extract(Job.files, "$.bytes"))
        row = Job.select(size.alias("n")).where(
            (Job.owner_uid == owner_uid) & Job.purged_time.is_null()).dicts().first()
        return int((row or {}).get("n") or 0)

    def integrity_check(self) -> str:
        return self.db.execute_sql("PRAGMA integrity_check").fetchone()[0]
