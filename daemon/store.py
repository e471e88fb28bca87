"""The queue's durable state: peewee models on SQLite (WAL), schema versions and migrations.

labqd is the only writer. Every write goes through `Store.write()`, one lock and one
transaction, so writes are serialised by design; readers use their own connections.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField

from labq.errors import StorageError

SCHEMA_VERSION = 6
APPLICATION_ID = 0x6C616271  # "labq": marks the file as ours in the SQLite header

db = pw.DatabaseProxy()


class JSONField(pw.TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Base(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False


class Meta(Base):
    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class Job(Base):
    id = AutoIncrementField()  # AUTOINCREMENT: an id is never handed out twice
    owner = pw.CharField(index=True)
    owner_uid = pw.IntegerField(null=True)  # ownership is by uid; the name is for display
    group = pw.CharField()
    name = pw.CharField()
    command = JSONField()
    cwd = pw.TextField()
    env = JSONField()
    gpus = pw.IntegerField(default=0)
    gpu_type = pw.CharField(null=True)
    gpu_memory_mb = pw.IntegerField(null=True)
    cpus = pw.IntegerField(default=1)
    memory_mb = pw.IntegerField(null=True)
    time_limit_s = pw.IntegerField(null=True)
    priority = pw.IntegerField(default=5)
    dependencies = JSONField(default=list)
    partition = pw.CharField(default="default")
    requeue = pw.BooleanField(default=True)
    state = pw.CharField(index=True)
    exit_code = pw.IntegerField(null=True)
    signal = pw.IntegerField(null=True)
    reason = pw.TextField(null=True)
    submit_time = pw.DoubleField()
    eligible_time = pw.DoubleField(null=True)
    start_time = pw.DoubleField(null=True)
    end_time = pw.DoubleField(null=True)
    node = pw.CharField(null=True)
    gpu_indices = JSONField(default=list)
    restarts = pw.IntegerField(default=0)
    notify = pw.CharField(null=True)  # end, fail or all (labq.spec.NOTIFY_WHEN)
    # schema 5: experiments, arrays and sweeps, idempotency keys
    experiment = pw.CharField(null=True)
    array_id = pw.IntegerField(null=True)
    array_index = pw.IntegerField(null=True)
    array_limit = pw.IntegerField(null=True)
    params = JSONField(null=True)
    key = pw.CharField(null=True)
    # schema 6: preemption
    preemptible = pw.BooleanField(default=False)
    preemptions = pw.IntegerField(default=0)
    early_signal = pw.CharField(null=True)  # --signal: "USR1@120"


_NO_ENV = [f for f in Job._meta.sorted_fields if f.name != "env"]


class JobEvent(Base):
    job = pw.IntegerField(index=True)
    time = pw.DoubleField()
    who = pw.CharField()
    from_state = pw.CharField(null=True)
    to_state = pw.CharField()
    reason = pw.TextField(null=True)


class Node(Base):
    name = pw.CharField(primary_key=True)
    host = pw.CharField()
    state = pw.CharField()
    reason = pw.TextField(null=True)
    drained = pw.BooleanField(default=False)
    cpus = pw.IntegerField(default=0)
    memory_mb = pw.IntegerField(default=0)
    gpu_source = pw.CharField(null=True)
    last_seen = pw.DoubleField(null=True)


class Gpu(Base):
    node = pw.CharField()
    index = pw.IntegerField()
    type = pw.CharField()
    memory_mb = pw.IntegerField(default=0)
    uuid = pw.CharField(null=True)

    class Meta:
        indexes = ((("node", "index"), True),)


class Allocation(Base):
    """GPUs held by running jobs; the unique index makes double allocation impossible."""
    job = pw.IntegerField(index=True)
    node = pw.CharField()
    gpu_index = pw.IntegerField()

    class Meta:
        indexes = ((("node", "gpu_index"), True),)


class DynamicNode(Base):
    """Nodes added with `labq node add` while labqd runs; they survive restarts."""
    name = pw.CharField(primary_key=True)
    entry = JSONField()  # the node's config entry, as in [[node]]


class GroupSetting(Base):
    """Shares and limits set through the admin API; they override the config file."""
    group = pw.CharField(primary_key=True)
    settings = JSONField()


class NotifySetting(Base):
    """Where a user's notifications go, set with `labq notify set`."""
    uid = pw.IntegerField(primary_key=True)
    user = pw.CharField()
    webhook = pw.TextField(null=True)
    mail = pw.TextField(null=True)


class Notification(Base):
    """One message to send on one channel; written in the transaction of the job's change,
    so a change is never without its messages, whatever stops labqd afterwards."""
    id = pw.AutoField()
    job = pw.IntegerField(index=True)
    channel = pw.CharField()  # mail, webhook, command
    target = pw.TextField(null=True)  # the address or URL as it was when the job changed
    payload = JSONField()  # id, name, user, state, exit_code, node, runtime, event
    status = pw.CharField(index=True)  # pending, sending, sent, failed
    attempts = pw.IntegerField(default=0)
    next_try = pw.DoubleField()
    created = pw.DoubleField()
    done_time = pw.DoubleField(null=True)
    error = pw.TextField(null=True)


TABLES_V1 = [Meta, Job, JobEvent, Node, Gpu, Allocation]


def _migrate_1(database: pw.Database) -> None:
    database.create_tables(TABLES_V1)


def _migrate_2(database: pw.Database) -> None:
    database.create_tables([DynamicNode, GroupSetting])
    # the scheduler looks up a user's jobs and recent ends often
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_end_time" ON "job" ("end_time")')


def _migrate_3(database: pw.Database) -> None:
    import pwd
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "owner_uid" in cols:  # a new database: version 1 made the table as it is today
        return
    database.execute_sql('ALTER TABLE "job" ADD COLUMN "owner_uid" INTEGER')
    # jobs from before owners were kept by uid: the account that has the name now. A name that
    # no longer exists keeps NULL, and such jobs can only be touched by admins.
    for (owner,) in database.execute_sql('SELECT DISTINCT "owner" FROM "job"').fetchall():
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            continue
        database.execute_sql('UPDATE "job" SET "owner_uid" = ? WHERE "owner" = ?', (uid, owner))


def _migrate_4(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "notify" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "notify" VARCHAR(255)')
    database.create_tables([NotifySetting, Notification])


_V5_COLUMNS = (("experiment", "VARCHAR(255)"), ("array_id", "INTEGER"),
               ("array_index", "INTEGER"), ("array_limit", "INTEGER"), ("params", "TEXT"),
               ("key", "VARCHAR(255)"))


def _migrate_5(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    for name, kind in _V5_COLUMNS:
        if name not in cols:  # a new database has them from version 1's table
            database.execute_sql(f'ALTER TABLE "job" ADD COLUMN "{name}" {kind}')
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_experiment" ON "job" '
                         '("experiment", "owner_uid") WHERE "experiment" IS NOT NULL')
    # a key names one job of its submitter's, ever: a resubmit after a lost reply is refused
    database.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS "job_owner_key" ON "job" '
                         '("owner_uid", "key") WHERE "key" IS NOT NULL')


def _migrate_6(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    for name in ("preemptible", "preemptions"):
        if name not in cols:
            database.execute_sql(f'ALTER TABLE "job" ADD COLUMN "{name}" INTEGER NOT NULL '
                                 'DEFAULT 0')
    if "early_signal" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "early_signal" VARCHAR(255)')


# version -> function bringing the schema from version-1 up to it; never edit a released one
MIGRATIONS = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3, 4: _migrate_4, 5: _migrate_5,
              6: _migrate_6}


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


class Store:
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
        self._migrate()
        self.cluster_id = self._meta("cluster_id")

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
            try:
                with self.db.atomic():
                    yield
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

    def insert_job(self, fields: dict[str, Any], who: str) -> int:
        with self.write():
            job_id = self._insert(Job, fields)
            self.add_event(job_id, who, None, fields["state"], fields.get("reason"),
                           fields["submit_time"])
        return job_id

    def insert_jobs(self, make_rows: Callable[[int], list[dict[str, Any]]],
                    who: str) -> list[dict[str, Any]]:
        """Many jobs in one transaction, with ids first, first + 1, ...: `make_rows(first)`
        builds the rows knowing their ids (an array's tasks carry the first one's)."""
        with self.write():
            seq = self.db.execute_sql(
                "SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone()
            first = (seq[0] if seq else 0) + 1
            rows = make_rows(first)
            for i, row in enumerate(rows):
                row["id"] = first + i
            self._insert_many(Job, rows)
            self._insert_many(JobEvent, [
                {"job": r["id"], "time": r["submit_time"], "who": who, "from_state": None,
                 "to_state": r["state"], "reason": r.get("reason")} for r in rows])
        return rows

    def _insert_many(self, model: type[Base], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = model._meta.fields
        defaults = {name: f.default for name, f in fields.items() if f.default is not None}
        keys = tuple(sorted(set().union(*rows, defaults)))
        cols = ", ".join(f'"{fields[k].column_name}"' for k in keys)
        sql = (f'INSERT INTO "{model._meta.table_name}" ({cols}) '
               f'VALUES ({", ".join("?" * len(keys))})')
        # peewee's per-value conversion costs more than SQLite's insert; the rows hold plain
        # values already, and only JSON columns need converting
        json_keys = [k for k in keys if isinstance(fields[k], JSONField)]
        plain = all(k in r for r in rows for k in keys)
        values = []
        for r in rows:
            if not plain:
                r = {k: r[k] if k in r else (d() if callable(d := defaults.get(k)) else d)
                     for k in keys}
            if json_keys:
                r = dict(r)
                for k in json_keys:
                    v = r[k]
                    r[k] = None if v is None else json.dumps(v)
            values.append([r[k] for k in keys])
        self.db.cursor().executemany(sql, values)

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
        Job.update(**fields).where(Job.id == job_id).execute()

    def record_transition(self, job_id: int, fields: dict[str, Any], who: str, src: str,
                          dst: str, reason: str | None, when: float,
                          notices: Sequence[dict[str, Any]] = ()) -> None:
        """A job's new state, its event row, its GPU allocation and the notifications it
        sends, in one transaction."""
        with self.write():
            for n in notices:
                self._insert(Notification, dict(n, job=job_id, status="pending",
                                                next_try=when, created=when))
            Job.update(**fields).where(Job.id == job_id).execute()
            self.add_event(job_id, who, src, dst, reason, when)
            Allocation.delete().where(Allocation.job == job_id).execute()
            if dst == "RUNNING" and fields.get("gpu_indices"):
                Allocation.insert_many([{"job": job_id, "node": fields["node"], "gpu_index": g}
                                        for g in fields["gpu_indices"]]).execute()

    def record_priority(self, job_id: int, state: str, who: str, old: int, new: int) -> None:
        with self.write():
            Job.update(priority=new).where(Job.id == job_id).execute()
            self.add_event(job_id, who, state, state, f"priority {old} -> {new}")

    def runs_since(self, since: float) -> list[dict[str, Any]]:
        """Jobs that started and had not ended by `since`: what fair-share usage counts."""
        q = (Job.select(Job.group, Job.owner, Job.gpu_indices, Job.cpus, Job.start_time,
                        Job.end_time, Job.state)
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

    # -- notifications ---------------------------------------------------------------------
    def notify_settings(self) -> dict[int, dict[str, Any]]:
        return {r["uid"]: r for r in NotifySetting.select().dicts()}

    def save_notify_setting(self, uid: int, user: str, **fields: Any) -> None:
        with self.write():
            NotifySetting.insert(uid=uid, user=user, **fields).on_conflict(
                conflict_target=[NotifySetting.uid],
                update={NotifySetting.user: user, **{getattr(NotifySetting, k): v
                                                     for k, v in fields.items()}}).execute()

    def notifications_due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        return list(Notification.select().where((Notification.status == "pending")
                                                & (Notification.next_try <= now))
                    .order_by(Notification.next_try, Notification.id).limit(limit).dicts())

    def next_notification_time(self) -> float | None:
        row = (Notification.select(pw.fn.MIN(Notification.next_try).alias("t"))
               .where(Notification.status == "pending").dicts().first())
        return row["t"] if row else None

    def notifications(self, job_id: int) -> list[dict[str, Any]]:
        return list(Notification.select().where(Notification.job == job_id)
                    .order_by(Notification.id).dicts())

    def claim_notification(self, nid: int) -> bool:
        """Mark it being sent; False if it was not pending. Sending happens only after this
        is committed, so a message is never sent twice, whenever labqd stops."""
        with self.write():
            return bool(Notification.update(status="sending", attempts=Notification.attempts + 1)
                        .where((Notification.id == nid) & (Notification.status == "pending"))
                        .execute())

    def finish_notification(self, nid: int, status: str, when: float, *,
                            error: str | None = None, next_try: float | None = None,
                            event: tuple[int, str, str] | None = None) -> None:
        """Sent, failed for good, or back to pending for another try at `next_try`; `event`
        (job, state, reason) goes into the job's history in the same transaction."""
        fields: dict[str, Any] = {"status": status, "error": error}
        if next_try is not None:
            fields["next_try"] = next_try
        if status in ("sent", "failed"):
            fields["done_time"] = when
        with self.write():
            Notification.update(**fields).where(Notification.id == nid).execute()
            if event is not None:
                job, state, reason = event
                self.add_event(job, "labqd", state, state, reason, when)

    def unfinished_sends(self) -> list[dict[str, Any]]:
        """Messages a stopped labqd was sending: whether they left is unknown."""
        return list(Notification.select().where(Notification.status == "sending").dicts())

    # -- reads -----------------------------------------------------------------------------
    def job_row(self, job_id: int) -> dict[str, Any] | None:
        row = Job.select().where(Job.id == job_id).dicts().first()
        return row

    def job_rows(self, *, states: list[str] | None = None, owner: str | None = None,
                 ids: list[int] | None = None, limit: int | None = None,
                 newest_first: bool = True, with_env: bool = True,
                 experiment: str | None = None) -> list[dict[str, Any]]:
        # listings leave the environment in the database: it is the biggest column, and a
        # listing must never show it
        q = Job.select() if with_env else Job.select(*_NO_ENV)
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
        return list(q.dicts())

    def events(self, job_id: int) -> list[dict[str, Any]]:
        return list(JobEvent.select().where(JobEvent.job == job_id)
                    .order_by(JobEvent._meta.primary_key).dicts())

    def integrity_check(self) -> str:
        return self.db.execute_sql("PRAGMA integrity_check").fetchone()[0]
