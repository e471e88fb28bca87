"""The SQLite store: WAL, schema versions, refusing files that are not ours."""
import hashlib
import shutil
import sqlite3
import subprocess
import time

import pytest

from labq.daemon import schema
from labq.daemon import store as st
from labq.daemon.storejobs import JobBatch


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_fields(**kw):
    base = dict(owner="alice", group="lab", name="n", command=["true"], cwd="/", env={},
                state="PENDING", submit_time=time.time())
    base.update(kw)
    return base


def test_new_database_is_wal_versioned_and_marked(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    assert s.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert s.schema_version == st.SCHEMA_VERSION
    assert s.db.execute_sql("PRAGMA application_id").fetchone()[0] == st.APPLICATION_ID
    s.close()


def test_job_ids_are_never_reused(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    a = s.insert_job(job_fields(), "alice")
    b = s.insert_job(job_fields(), "alice")
    st.Job.delete().where(st.Job.id == b).execute()
    c = s.insert_job(job_fields(), "alice")
    assert (a, b, c) == (1, 2, 3)
    assert [e["to_state"] for e in s.events(a)] == ["PENDING"]
    s.close()


def test_reopening_keeps_data_and_cluster_id(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    s.insert_job(job_fields(), "alice")
    cid = s.cluster_id
    s.close()
    s2 = st.Store(tmp_path / "labq.db")
    assert s2.cluster_id == cid and s2.job_row(1)["owner"] == "alice"
    s2.close()


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.commit()
    con.close()
    before = digest(path)
    with pytest.raises(st.ForeignDatabase, match="another program"):
        st.Store(path)
    assert digest(path) == before


def test_garbage_file_is_refused_untouched(tmp_path):
    path = tmp_path / "labq.db"
    path.write_bytes(b"this is not a database" * 100)
    before = digest(path)
    with pytest.raises(st.ForeignDatabase, match="not a readable SQLite"):
        st.Store(path)
    assert digest(path) == before


def test_newer_schema_is_refused(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    st.Meta.replace(key="schema_version", value=str(st.SCHEMA_VERSION + 1)).execute()
    s.close()
    with pytest.raises(st.ForeignDatabase, match="newer"):
        st.Store(tmp_path / "labq.db")


def test_labqd_stops_with_a_clear_error_on_a_foreign_database(tmp_path):
    path = tmp_path / "labq.db"
    path.write_bytes(b"garbage" * 1000)
    cfg = tmp_path / "labq.toml"
    cfg.write_text(f'[daemon]\ndatabase = "{path}"\nsocket = "{tmp_path}/s.sock"\n')
    r = subprocess.run([shutil.which("labqd"), "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "not a readable SQLite database" in r.stderr
    assert path.read_bytes() == b"garbage" * 1000


def test_a_first_release_database_migrates_keeping_its_jobs(tmp_path):
    path = tmp_path / "labq.db"
    import peewee as pw
    old = pw.SqliteDatabase(str(path))
    st.db.initialize(old)
    schema.migrate_1(old)
    # the first release kept owners by name only, and knew no experiments, arrays or keys
    old.execute_sql('ALTER TABLE "job" DROP COLUMN "owner_uid"')
    old.execute_sql('ALTER TABLE "job" DROP COLUMN "notify"')  # and had no notifications
    for name, _ in schema.V5_COLUMNS + schema.V8_COLUMNS:
        old.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    for name in ("preemptible", "preemptions", "early_signal"):  # nor preemption
        old.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    for name in ("nodes", "parts", "env_id"):  # nor gangs, nor stored environments
        old.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    old.execute_sql(f"PRAGMA application_id = {st.APPLICATION_ID}")
    st.Meta.insert_many([{"key": "schema_version", "value": "1"},
                         {"key": "cluster_id", "value": "abc"}]).execute()
    for owner in ("alice", "root"):
        fields = job_fields(gpus=0, owner=owner)
        fields.pop("owner_uid", None)
        for name, f in st.Job._meta.fields.items():
            if (name not in fields and name not in ("owner_uid", "notify", "preemptible",
                                                    "preemptions", "nodes", "env_id")
                    and f.default is not None):
                fields[name] = f.default() if callable(f.default) else f.default
        cols = ", ".join(f'"{k}"' for k in fields)
        old.execute_sql(f'INSERT INTO "job" ({cols}) VALUES ({", ".join("?" * len(fields))})',
                        [st.Job._meta.fields[k].db_value(v) for k, v in fields.items()])
    old.close()
    s = st.Store(path)
    assert s.schema_version == st.SCHEMA_VERSION == 12
    assert s.cluster_id == "abc" and s.job_row(1)["owner"] == "alice"
    # owners become uids where the account exists; a name nobody has now stays unowned
    assert s.job_row(1)["owner_uid"] is None and s.job_row(2)["owner_uid"] == 0
    assert s.db.table_exists("dynamic_node") and s.db.table_exists("group_setting")
    assert s.job_row(1)["notify"] is None and s.db.table_exists("notification")
    # every old job counts as changed before anything new, so a first poll sees them all
    assert [r["seq"] for r in s.job_page(changed_since=0)] == [1, 2] and s.seq == 2
    assert s.integrity_check() == "ok"
    s.close()


def test_a_notification_is_claimed_once_and_one_left_sending_is_not_resent(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    job = s.insert_job(job_fields(), "alice")
    note = {"channel": "webhook", "target": "http://h/x", "payload": {"state": "COMPLETED"}}
    s.record_transition(job, {"state": "CANCELLED"}, "alice", "PENDING", "CANCELLED", None,
                        100.0, [note, dict(note, channel="command", target=None)])
    due = s.notifications_due(100.0)
    assert [n["channel"] for n in due] == ["webhook", "command"]
    assert s.notifications_due(99.0) == []
    first, second = (n["id"] for n in due)
    assert s.claim_notification(first) and not s.claim_notification(first)
    s.finish_notification(first, "sent", 101.0)
    assert s.claim_notification(second)  # and labqd stops while sending it
    s.close()
    s = st.Store(tmp_path / "labq.db")
    assert [n["id"] for n in s.unfinished_sends()] == [second]
    assert s.notifications_due(1e12) == []
    s.finish_notification(second, "failed", 102.0, error="stopped",
                          event=(job, "CANCELLED", "not sent again"))
    assert s.events(job)[-1]["reason"] == "not sent again"
    assert {n["status"] for n in s.notifications(job)} == {"sent", "failed"}
    s.close()


def test_batches_get_consecutive_ids_in_one_transaction_and_keys_stay_unique(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    s.insert_job(job_fields(owner_uid=1000), "alice")

    def tasks(first):
        return [job_fields(owner_uid=1000, array_id=first, array_index=k, experiment="e",
                           key="k1" if k == 0 else None) for k in range(3)]
    rows = s.insert_jobs(tasks, "alice")
    assert [r["id"] for r in rows] == [2, 3, 4]
    assert [r["array_id"] for r in s.job_rows(ids=[2, 3, 4], newest_first=False)] == [2, 2, 2]
    assert [e["to_state"] for e in s.events(4)] == ["PENDING"]
    assert s.job_by_key(1000, "k1") == 2 and s.job_by_key(1001, "k1") is None
    assert s.experiment_job_ids("e", 1000) == [2, 3, 4] and s.experiment_job_ids("e", 1) == []
    [exp] = s.experiments()
    assert (exp["name"], exp["owner"], exp["counts"], exp["total"]) == (
        "e", "alice", {"PENDING": 3}, 3)
    # the same key twice for one owner cannot be written, even past the daemon's check;
    # and nothing of the failed batch is left
    with pytest.raises(Exception):
        s.insert_jobs(lambda first: [job_fields(owner_uid=1000),
                                     job_fields(owner_uid=1000, key="k1")], "alice")
    assert s.job_row(5) is None
    s.insert_job(job_fields(owner_uid=1001, key="k1"), "bob")
    s.close()


def test_a_schema_4_database_gains_the_workflow_columns(tmp_path):
    path = tmp_path / "labq.db"
    s = st.Store(path)
    s.insert_job(job_fields(owner_uid=1000), "alice")
    for name, _ in schema.V5_COLUMNS:
        s.db.execute_sql('DROP INDEX IF EXISTS "job_experiment"')
        s.db.execute_sql('DROP INDEX IF EXISTS "job_owner_key"')
        s.db.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    st.Meta.replace(key="schema_version", value="4").execute()
    s.close()
    s = st.Store(path)
    assert s.schema_version == st.SCHEMA_VERSION == 12 and s.db.table_exists("token")
    assert s.job_row(1)["experiment"] is None and s.job_row(1)["key"] is None
    assert s.integrity_check() == "ok"
    s.close()


def _queue(s):
    """Jobs 1-12: alice and bob in turn, every third one RUNNING, job 12 COMPLETED."""
    for i in range(1, 13):
        s.insert_job(job_fields(owner="alice" if i % 2 else "bob",
                                state="COMPLETED" if i == 12 else
                                "RUNNING" if i % 3 == 0 else "PENDING"), "x")


def test_pages_walk_the_queue_in_id_order_each_job_once(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    _queue(s)
    seen, after = [], 0
    while True:
        page = s.job_page(states=["PENDING", "RUNNING"], after_id=after, limit=4)
        seen += [r["id"] for r in page]
        if len(page) < 4:
            break
        after = page[-1]["id"]
    assert seen == list(range(1, 12))  # the last page ends exactly at a boundary: 11 = 4+4+3
    assert [r["id"] for r in s.job_page(after_id=8, limit=100)] == [9, 10, 11, 12]
    assert s.job_page(after_id=12, limit=5) == []
    # without a cursor a limit keeps the newest
    assert [r["id"] for r in s.job_page(limit=3, newest_first=True)] == [12, 11, 10]


def test_pages_filter_by_state_and_owner_and_never_carry_the_environment(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    _queue(s)
    bob_running = s.job_page(states=["RUNNING"], where={"owner": "bob"}, after_id=0)
    assert [r["id"] for r in bob_running] == [6]
    assert [r["id"] for r in s.job_page(states=["COMPLETED", "PENDING"], after_id=9,
                                        limit=2)] == [10, 11]
    s.insert_job(job_fields(owner="bob", experiment="lr-sweep"), "bob")
    assert [r["id"] for r in s.job_page(where={"experiment": "lr-sweep", "owner": "bob"},
                                        after_id=0, limit=5)] == [13]
    assert all("env" not in r for r in s.job_page(after_id=0))
    assert s.job_page(after_id=0, limit=1, with_env=True)[0]["env"] == {}


def test_changes_come_in_the_order_they_were_made(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    _queue(s)
    mark = s.committed_seq
    assert s.job_page(changed_since=mark) == []
    s.record_transitions([(5, {"state": "HELD"}, "alice", "PENDING", "HELD", None, 1.0, ()),
                          (2, {"state": "HELD"}, "bob", "PENDING", "HELD", None, 1.0, ())])
    s.record_change(7, "PENDING", "alice", "priority", "priority 5 -> 4", 4)
    changed = s.job_page(changed_since=mark)
    assert [r["id"] for r in changed] == [5, 2, 7] and s.committed_seq == changed[-1]["seq"]
    assert [r["id"] for r in s.job_page(changed_since=mark, where={"owner": "bob"})] == [2]
    # one pass's transitions are one transaction: a bad one leaves the others unwritten
    with pytest.raises(Exception):
        s.record_transitions([(1, {"state": "HELD"}, "x", "PENDING", "HELD", None, 1.0, ()),
                              (3, {"no_such_column": 1}, "x", "RUNNING", "FAILED", None, 1.0,
                               ())])
    assert s.job_row(1)["state"] == "PENDING" and len(s.events(1)) == 1
    assert s.job_page(changed_since=changed[-1]["seq"]) == []
    s.record_change(7, "PENDING", "alice", "time_limit_s", "time limit none -> 00:30:00", 1800)
    row = s.job_row(7)
    assert (row["priority"], row["time_limit_s"]) == (4, 1800)
    assert [e["reason"] for e in s.events(7)][-2:] == ["priority 5 -> 4",
                                                       "time limit none -> 00:30:00"]


def test_a_schema_7_database_gains_the_files_columns(tmp_path):
    path = tmp_path / "labq.db"
    s = st.Store(path)
    s.insert_job(job_fields(owner_uid=1000), "alice")
    for name, _ in schema.V8_COLUMNS:
        s.db.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    st.Meta.replace(key="schema_version", value="7").execute()
    s.close()
    s = st.Store(path)
    assert s.schema_version == 12
    row = s.job_row(1)
    assert row["stage"] is None and row["results"] is None and row["purged_time"] is None
    s.set_files(1, {"state": "complete", "bytes": 7}, reason="ResultsIncomplete: x")
    assert s.results_bytes(1000) == 7 and s.job_row(1)["reason"] == "ResultsIncomplete: x"
    assert s.integrity_check() == "ok"
    s.close()


def test_a_schema_9_database_gains_the_gang_columns(tmp_path):
    path = tmp_path / "labq.db"
    s = st.Store(path)
    s.insert_job(job_fields(owner_uid=1000, gpus=2), "alice")
    for name in ("nodes", "parts"):
        s.db.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{name}"')
    st.Meta.replace(key="schema_version", value="9").execute()
    s.close()
    s = st.Store(path)
    assert s.schema_version == st.SCHEMA_VERSION == 12
    row = s.job_row(1)  # a job from before runs on one node, as it did
    assert row["nodes"] == 1 and row["parts"] is None and row["gpus"] == 2
    s.insert_job(job_fields(owner_uid=1000, gpus=16, nodes=2,
                            parts=[["a", [0, 1]], ["b", [0, 1]]]), "alice")
    assert s.job_row(2)["nodes"] == 2 and s.job_row(2)["parts"] == [["a", [0, 1]], ["b", [0, 1]]]
    assert s.integrity_check() == "ok"
    s.close()


def test_a_gang_holds_its_gpus_on_every_node_and_none_twice(tmp_path):
    import peewee as pw
    s = st.Store(tmp_path / "labq.db")
    gang = s.insert_job(job_fields(owner_uid=1000, gpus=4, nodes=2), "alice")
    one = s.insert_job(job_fields(owner_uid=1000, gpus=1), "alice")
    s.record_transition(gang, {"state": "RUNNING", "node": "a", "gpu_indices": [0, 1],
                               "parts": [["a", [0, 1]], ["b", [2, 3]]]},
                        "labqd", "PENDING", "RUNNING", None, 1.0)
    held = {(r.node, r.gpu_index) for r in st.Allocation.select()}
    assert held == {("a", 0), ("a", 1), ("b", 2), ("b", 3)}
    # part 1's GPU on b cannot be handed out again: the transition is refused whole
    with pytest.raises(pw.IntegrityError):
        s.record_transition(one, {"state": "RUNNING", "node": "b", "gpu_indices": [3]},
                            "labqd", "PENDING", "RUNNING", None, 2.0)
    assert s.job_row(one)["state"] == "PENDING"
    s.record_transition(gang, {"state": "COMPLETED"}, "labqd", "RUNNING", "COMPLETED", None, 3.0)
    assert st.Allocation.select().count() == 0


def test_a_schema_10_database_gains_the_slurm_job_id(tmp_path):
    path = tmp_path / "labq.db"
    s = st.Store(path)
    s.insert_job(job_fields(owner_uid=1000), "alice")
    s.db.execute_sql('ALTER TABLE "job" DROP COLUMN "slurm_id"')
    st.Meta.replace(key="schema_version", value="10").execute()
    s.close()
    s = st.Store(path)
    assert s.schema_version == 12 and s.job_row(1)["slurm_id"] is None
    with s.write():
        s.update_job(1, slurm_id="918273")
    assert s.job_row(1)["slurm_id"] == "918273" and s.integrity_check() == "ok"
    s.close()


ENV = {"HOME": "/home/alice", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "X": "é \\ \" ☃"}


def test_each_distinct_environment_is_stored_once_per_user(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    a = [s.insert_job(job_fields(owner_uid=1000, env=dict(ENV)), "alice") for _ in range(3)]
    b = s.insert_job(job_fields(owner="bob", owner_uid=1001, env=dict(ENV)), "bob")
    # an array task's own variables ride on the shared environment, in the order given
    s.insert_jobs(lambda first: [job_fields(owner_uid=1000, env=dict(ENV, LABQ_ARRAY_ID="9"),
                                            env_base=ENV, env_add={"LABQ_ARRAY_ID": "9"})],
                  "alice")
    rows = schema.Env.select().order_by(schema.Env.id)
    assert [r.owner_uid for r in rows] == [1000, 1001]  # never shared between users
    for job in (*a, b):
        env = s.job_row(job)["env"]
        assert env == ENV and list(env) == list(ENV)
    assert list(s.job_row(5)["env"].items()) == list(ENV.items()) + [("LABQ_ARRAY_ID", "9")]
    assert s.cold_fields(1)["env"] == ENV
    assert [r["env"] for r in s.job_rows(ids=[1, 4])] == [ENV, ENV]
    assert [r["env"] for r in s.job_page(with_env=True)] == [ENV] * 4 + [s.job_row(5)["env"]]
    assert all("env_id" not in r for r in s.job_page(with_env=False))
    s.close()
    s = st.Store(tmp_path / "labq.db")  # a new labqd finds the stored ones again
    s.insert_job(job_fields(owner_uid=1000, env=dict(ENV)), "alice")
    assert schema.Env.select().count() == 2 and s.job_row(6)["env"] == ENV
    s.close()


def test_an_environment_stored_by_a_failed_write_is_not_named_later(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    with pytest.raises(RuntimeError), s.write():
        s.insert_job(job_fields(owner_uid=1000, env=dict(ENV)), "alice")
        raise RuntimeError("the rest of the submit failed")
    assert schema.Env.select().count() == 0
    job = s.insert_job(job_fields(owner_uid=1000, env=dict(ENV)), "alice")
    assert s.job_row(job)["env"] == ENV
    s.close()


def test_a_schema_11_database_keeps_each_jobs_environment_in_its_row(tmp_path):
    path = tmp_path / "labq.db"
    s = st.Store(path)
    old = {"PATH": "/opt/bin", "HOME": "/root"}
    s.db.execute_sql('ALTER TABLE "job" DROP COLUMN "env_id"')
    s.db.execute_sql('DROP TABLE "env"')
    fields = job_fields(owner_uid=1000, env=old)
    for name, f in st.Job._meta.fields.items():
        if name not in fields and name != "env_id" and f.default is not None:
            fields[name] = f.default() if callable(f.default) else f.default
    cols = list(fields)
    names = ", ".join(f'"{c}"' for c in cols)
    s.db.execute_sql(f'INSERT INTO "job" ({names}) VALUES '
                     f'({", ".join("?" * len(cols))})',
                     [st.Job._meta.fields[k].db_value(fields[k]) for k in cols])
    st.Meta.replace(key="schema_version", value="11").execute()
    s.close()
    s = st.Store(path)
    assert s.schema_version == 12 and s.job_row(1)["env"] == old
    assert s.cold_fields(1)["env"] == old
    s.insert_job(job_fields(owner_uid=1000, env=dict(ENV)), "alice")
    assert s.job_row(2)["env"] == ENV and schema.Env.select().count() == 1
    assert s.integrity_check() == "ok"
    s.close()


def test_each_row_of_a_batch_keeps_its_own_variables(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    rows = s.insert_jobs(lambda first: [
        job_fields(owner_uid=1000, env=None, env_base=ENV, env_add={"I": str(i)},
                   params={"i": str(i)}) for i in range(300)], "alice")
    for i, row in enumerate(rows):
        got = s.job_row(row["id"])
        assert got["env"] == dict(ENV, I=str(i)) and got["params"] == {"i": str(i)}
    s.close()


def test_a_batch_writes_each_rows_values_whichever_columns_the_others_leave_empty(tmp_path):
    s = st.Store(tmp_path / "labq.db")
    rows = s.insert_jobs(lambda first: [
        job_fields(owner_uid=1000, gpu_type="a100", requeue=False, reason="Held"),
        job_fields(owner_uid=1000, preemptible=True, time_limit_s=60)], "alice")
    a, b = (s.job_row(r["id"]) for r in rows)
    assert (a["gpu_type"], a["requeue"], a["preemptible"], a["time_limit_s"]) == (
        "a100", False, False, None)
    assert (b["gpu_type"], b["requeue"], b["preemptible"], b["time_limit_s"]) == (
        None, True, True, 60)
    assert [e["reason"] for e in s.events(a["id"]) + s.events(b["id"])] == ["Held", None]
    s.close()


def test_a_batch_of_prototypes_stores_what_its_rows_one_by_one_would(tmp_path):
    held = job_fields(owner_uid=1000, env=None, env_base=ENV, state="HELD", reason="Held",
                      requeue=False, experiment="e")
    pending = job_fields(owner_uid=1000, gpu_type="a100", priority=9, dependencies=["afterok:1"])
    own_fields = ("array_index", "env_add", "key", "params", "command")
    own = [(k, {"I": str(k)}, "k" if k == 0 else None, {"i": str(k)}, ["echo", str(k)])
           for k in range(5)]
    of = [0, 1, 1, 0, 0]
    a = st.Store(tmp_path / "a.db")
    batch = a.insert_batch(lambda first: JobBatch([held, pending], of, own_fields, own),
                           "alice")
    b = st.Store(tmp_path / "b.db")
    rows = b.insert_jobs(lambda first: [dict([held, pending][p], **dict(zip(own_fields, o)))
                                        for p, o in zip(of, own)], "alice")
    assert list(batch.ids) == [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert [batch.row(k) for k in range(5)] == rows
    for i in batch.ids:
        assert a.job_row(i) == b.job_row(i)
        assert [dict(e, time=0) for e in a.events(i)] == [dict(e, time=0) for e in b.events(i)]
    assert a.job_row(1)["env"] == dict(ENV, I="0") and a.job_row(2)["env"] == {"I": "1"}
    assert [a.job_row(i)["command"] for i in batch.ids] == [["echo", str(k)] for k in range(5)]
    assert [e["reason"] for i in batch.ids for e in a.events(i)] == [
        "Held", None, None, "Held", "Held"]
    assert a.job_by_key(1000, "k") == 1
    a.close()
    b.close()
