"""The database's shape: peewee models on SQLite, the schema version, and the migrations that
bring an older file up to it (never edit a released one; add the next)."""
from __future__ import annotations

import json

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField

from .activejob import HOT

SCHEMA_VERSION = 12
APPLICATION_ID = 0x6C616271  # "labq": marks the file as ours in the SQLite header

db = pw.DatabaseProxy()


_EMPTY_JSON = {list: "[]", dict: "{}"}


class JSONField(pw.TextField):
    def db_value(self, value):
        if value is None:
            return None
        if not value and type(value) in _EMPTY_JSON:
            return _EMPTY_JSON[type(value)]  # most rows: a batch of 10k skips 10k dumps
        return json.dumps(value)

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
    # schema 8: staged files and results (labq.daemon.jobfiles)
    stage = JSONField(null=True)  # {token, files, bytes} of the upload the job runs in
    results = JSONField(null=True)  # the globs fetched when it ends
    files = JSONField(null=True)  # {state, bytes, count, note, scratch}: its results' copy
    purged_time = pw.DoubleField(null=True)  # when its files were removed
    # schema 9: preemption
    preemptible = pw.BooleanField(default=False)
    preemptions = pw.IntegerField(default=0)
    early_signal = pw.CharField(null=True)  # --signal: "USR1@120"
    # schema 10: gangs (labq.daemon.gangs): parts, and each running part's node and GPUs
    nodes = pw.IntegerField(default=1)
    parts = JSONField(null=True)
    # schema 11: the job's id in the Slurm pool it was sent to
    slurm_id = pw.CharField(null=True)
    # schema 12: the environment the job runs with is the stored one (Env) this names, with
    # the `env` column's variables added on top; without it, `env` is the whole environment
    env_id = pw.IntegerField(null=True)
    # the queue's change counter when the job last changed: what a poll asks for with
    # changed_since (version 6)
    seq = pw.IntegerField(null=True)


NO_ENV = [f for f in Job._meta.sorted_fields if f.name not in ("env", "env_id")]
# what labqd keeps in memory for an active job (labq.daemon.activejob.HOT)
HOT_FIELDS = [f for f in Job._meta.sorted_fields if f.name in HOT]


class JobEvent(Base):
    job = pw.IntegerField(index=True)
    time = pw.DoubleField()
    who = pw.CharField()
    from_state = pw.CharField(null=True)
    to_state = pw.CharField()
    reason = pw.TextField(null=True)


class Env(Base):
    """An environment jobs run with, stored once per user however many jobs share it: the
    exported environment is most of a submit's bytes, and a user's submits repeat it."""
    id = pw.AutoField()
    owner_uid = pw.IntegerField(null=True)
    digest = pw.CharField()  # SHA-256 of `body`
    body = pw.TextField()  # the variables as a JSON object, in their order

    class Meta:
        indexes = ((("owner_uid", "digest"), True),)


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


class Token(Base):
    """A token for labqd over TCP. Only its secret's SHA-256 is kept."""
    id = pw.AutoField()
    uid = pw.IntegerField(index=True)
    user = pw.CharField()
    digest = pw.CharField()
    created = pw.DoubleField()
    expires = pw.DoubleField()
    revoked = pw.DoubleField(null=True)
    last_used = pw.DoubleField(null=True)
    note = pw.TextField(null=True)


TABLES_V1 = [Meta, Job, JobEvent, Node, Gpu, Allocation]


def migrate_1(database: pw.Database) -> None:
    database.create_tables(TABLES_V1)


def migrate_2(database: pw.Database) -> None:
    database.create_tables([DynamicNode, GroupSetting])
    # the scheduler looks up a user's jobs and recent ends often
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_end_time" ON "job" ("end_time")')


def migrate_3(database: pw.Database) -> None:
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


def migrate_4(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "notify" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "notify" VARCHAR(255)')
    database.create_tables([NotifySetting, Notification])


V5_COLUMNS = (("experiment", "VARCHAR(255)"), ("array_id", "INTEGER"),
               ("array_index", "INTEGER"), ("array_limit", "INTEGER"), ("params", "TEXT"),
               ("key", "VARCHAR(255)"))


def migrate_5(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    for name, kind in V5_COLUMNS:
        if name not in cols:  # a new database has them from version 1's table
            database.execute_sql(f'ALTER TABLE "job" ADD COLUMN "{name}" {kind}')
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_experiment" ON "job" '
                         '("experiment", "owner_uid") WHERE "experiment" IS NOT NULL')
    # a key names one job of its submitter's, ever: a resubmit after a lost reply is refused
    database.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS "job_owner_key" ON "job" '
                         '("owner_uid", "key") WHERE "key" IS NOT NULL')


def migrate_6(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "seq" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "seq" INTEGER')
    # jobs from before: changed in id order, all before anything new
    database.execute_sql('UPDATE "job" SET "seq" = "id" WHERE "seq" IS NULL')
    # a listing walks one of these in id order (SQLite appends the rowid, which is the id) and
    # stops at its page: one user's jobs in a state, and every change since a poll
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_owner_state" ON "job" ("owner", "state")')
    database.execute_sql('CREATE INDEX IF NOT EXISTS "job_seq" ON "job" ("seq")')


def migrate_7(database: pw.Database) -> None:
    database.create_tables([Token])


V8_COLUMNS = (("stage", "TEXT"), ("results", "TEXT"), ("files", "TEXT"), ("purged_time", "REAL"))


def migrate_8(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    for name, kind in V8_COLUMNS:
        if name not in cols:  # a new database has them from version 1's table
            database.execute_sql(f'ALTER TABLE "job" ADD COLUMN "{name}" {kind}')



def migrate_9(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    for name in ("preemptible", "preemptions"):
        if name not in cols:
            database.execute_sql(f'ALTER TABLE "job" ADD COLUMN "{name}" INTEGER NOT NULL '
                                 'DEFAULT 0')
    if "early_signal" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "early_signal" VARCHAR(255)')


def migrate_10(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "nodes" not in cols:  # a new database has them from version 1's table
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "nodes" INTEGER NOT NULL DEFAULT 1')
    if "parts" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "parts" TEXT')


def migrate_11(database: pw.Database) -> None:
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "slurm_id" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "slurm_id" VARCHAR(255)')


def migrate_12(database: pw.Database) -> None:
    # jobs from before keep their whole environment in their own row
    cols = {r[1] for r in database.execute_sql('PRAGMA table_info("job")').fetchall()}
    if "env_id" not in cols:
        database.execute_sql('ALTER TABLE "job" ADD COLUMN "env_id" INTEGER')
    database.create_tables([Env])


# version -> function bringing the schema from version-1 up to it; never edit a released one
MIGRATIONS = {1: migrate_1, 2: migrate_2, 3: migrate_3, 4: migrate_4, 5: migrate_5,
              6: migrate_6, 7: migrate_7, 8: migrate_8,
              9: migrate_9, 10: migrate_10, 11: migrate_11, 12: migrate_12}
