"""Bad values against a real labqd: each is refused as VALIDATION_ERROR naming its field,
before anything is stored, and none reaches SQLite or Python internals (no traceback in the
daemon's log, the daemon still answers)."""
import json
import sqlite3

import pytest
import rpyc
from daemonproc import Daemon, raw_connect

from labq.spec import MAX_IDS, MAX_REQUEST_CHARS

BIG = 1 << 63  # one past SQLite's largest integer
NAN = float("nan")
INF = float("inf")
SUR = "\ud800"  # a lone surrogate: JSON carries it, UTF-8 and SQLite cannot


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("badvalues"), {"daemon": {"local_node": True}})
    with d.start(wait_nodes=1):
        with d.client() as q:
            d.held = [q.submit(["true"], hold=True, env={"K": "v"}, export_env=False).id
                      for _ in range(2)]
        yield d


@pytest.fixture(scope="module")
def conn(daemon):
    c = raw_connect(daemon.socket, service=rpyc.VoidService,
                     config={"allow_pickle": False, "sync_request_timeout": 30})
    yield c
    c.close()


def raw_call(conn, op, args) -> dict:
    """args: a dict (sent as JSON, NaN and lone surrogates included) or JSON text as is."""
    text = args if isinstance(args, str) else json.dumps(args)
    reply = conn.root.call(op, text)
    assert type(reply) is str
    out = json.loads(reply)
    assert type(out) is dict
    return out


def stored(d: Daemon) -> dict:
    """Everything a request could change, read from the database itself."""
    db = sqlite3.connect(f"file:{d.database}?mode=ro", uri=True)
    try:
        return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
                for t in ("job", "job_event", "group_setting", "dynamic_node", "node",
                          "allocation", "sqlite_sequence", "env")}
    finally:
        db.close()


def no_traceback(d: Daemon) -> None:
    text = d.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-5000:]


def spec(**fields):
    return {"spec": {"command": ["true"], "hold": True, **fields}}


def deep(n, leaf=1):
    v = leaf
    for _ in range(n):
        v = [v]
    return v


CASES = [
    # integers out of range, bools for integers, NaN and infinities
    ("job", {"id": BIG}, "id"),
    ("job", {"id": 0}, "id"),
    ("job", {"id": -(BIG + 1)}, "id"),
    ("job", {"id": True}, "id"),
    ("job", {"id": 1.0}, "id"),
    ("events", {"id": BIG}, "id"),
    ("cancel", {"ids": [BIG]}, "ids"),
    ("cancel", {"ids": [1, True]}, "ids"),
    ("cancel", {"ids": [0]}, "ids"),
    ("hold", {"ids": [BIG - 1 + 1]}, "ids"),
    ("release", {"ids": [-1]}, "ids"),
    ("wait", {"ids": [1], "timeout": NAN}, "timeout"),
    ("wait", {"ids": [1], "timeout": INF}, "timeout"),
    ("wait", {"ids": [1], "timeout": -1}, "timeout"),
    ("wait", {"ids": [1], "timeout": True}, "timeout"),
    ("wait", '{"ids": [1], "timeout": 1e400}', "timeout"),  # parses to inf
    ("job_priority", {"id": 1, "priority": BIG}, "priority"),
    ("job_priority", {"id": 1, "priority": True}, "priority"),
    ("job_priority", {"id": BIG, "priority": 3}, "id"),
    ("job_time_limit", {"id": 1, "time_limit_s": BIG}, "time_limit_s"),
    ("job_time_limit", {"id": 1, "time_limit_s": 1.5}, "time_limit_s"),
    ("job_time_limit", {"id": 1}, "time_limit_s"),
    ("jobs", {"limit": BIG}, "limit"),
    ("jobs", {"limit": 0}, "limit"),
    ("jobs", {"limit": True}, "limit"),
    ("usage", {"days": NAN}, "days"),
    ("usage", {"days": INF}, "days"),
    ("usage", {"days": 0}, "days"),
    ("usage", {"days": True}, "days"),
    ("submit", spec(gpus=BIG), "gpus"),
    ("submit", spec(gpus=True), "gpus"),
    ("submit", spec(gpus=NAN), "gpus"),
    ("submit", spec(cpus=BIG), "cpus"),
    ("submit", spec(cpus=0), "cpus"),
    ("submit", spec(memory_mb=BIG), "memory_mb"),
    ("submit", spec(gpu_memory_mb=-1), "gpu_memory_mb"),
    ("submit", spec(time_limit_s=BIG), "time_limit_s"),
    ("submit", spec(time_limit_s=1.5), "time_limit_s"),
    ("submit", spec(priority=True), "priority"),
    ("submit", spec(dependencies=[BIG]), "dependencies"),
    ("submit", spec(dependencies=["afterok:99999999999999999999"]), "dependencies"),
    ("submit", spec(dependencies=[["afterok", BIG - 1 + 1]]), "dependencies"),
    ("submit", spec(dependencies=["afterok:1_0"]), "dependencies"),
    ("node_add", {"node": {"name": "n1", "host": "h", "port": BIG}}, "node"),
    ("node_add", {"node": {"name": "n1", "host": "h", "port": 70000}}, "node.port"),
    ("node_add", {"node": {"name": "n1", "host": "h", "memory": "9" * 30 + "P"}},
     "node.memory"),
    ("group_set", {"group": "g", "share": NAN}, "share"),
    ("group_set", {"group": "g", "max_gpus": BIG}, "max_gpus"),
    ("group_set", {"group": "g", "users": {"bob": 1e300}}, "users"),
    ("group_set", {"group": "g", "max_gpus_by_type": {"A100": True}}, "max_gpus_by_type"),
    # nesting: unparseable, and parseable but deep inside a field
    ("jobs", "[" * 100_000 + "]" * 100_000, "args_json"),
    ("cancel", '{"ids": ' + "[" * 100_000, "args_json"),
    ("cancel", {"ids": deep(500)}, "ids"),
    ("submit", spec(env={"A": deep(50, "x")}), "env"),
    ("submit", spec(command=deep(30, "x")), "command"),
    ("group_set", {"group": "g", "users": {"u": deep(40)}}, "users"),
    ("node_add", {"node": {"name": "n1", "host": "h", "gpus": deep(100)}}, "node"),
    ("job", '{"id": ' + "9" * 5000 + "}", "args_json"),  # past Python's int parsing limit
    # lone surrogates in strings, keys, env, argv
    ("submit", spec(name="a" + SUR), "name"),
    ("submit", spec(command=["echo", SUR]), "command"),
    ("submit", spec(command="echo " + SUR), "command"),
    ("submit", spec(env={"A" + SUR: "x"}), "env"),
    ("submit", spec(env={"A": "x" + SUR}), "env"),
    ("submit", spec(cwd="/tmp/" + SUR), "cwd"),
    ("submit", spec(gpu_type=SUR), "gpu_type"),
    ("submit", spec(group=SUR), "group"),
    ("submit", spec(partition=SUR), "partition"),
    ("submit", spec(dependencies=["afterok:" + SUR]), "dependencies"),
    ("submit", {"spec": {"command": ["true"], SUR: 1}}, SUR),
    ("cancel", {"ids": [1], "reason": SUR}, "reason"),
    ("jobs", {"user": SUR}, "user"),
    ("jobs", {"states": [SUR]}, "states"),
    ("group_set", {"group": SUR, "share": 1}, "group"),
    ("group_set", {"group": "g", "users": {SUR: 1}}, "users"),
    ("node_drain", {"name": SUR}, "name"),
    ("node_add", {"node": {"name": SUR, "host": "h"}}, "node"),
    ("x" * 100_000, {}, "op"),  # (rpyc itself cannot carry a lone surrogate in a name)
    # caps per field
    ("submit", spec(name="n" * 257), "name"),
    ("submit", spec(name="a\nb"), "name"),
    ("submit", spec(cwd="/" + "d" * 4096), "cwd"),
    ("submit", spec(cwd="relative"), "cwd"),
    ("submit", spec(command=["echo", "a" * 70_000, "b" * 70_000]), "command"),
    ("submit", spec(command="echo " + "a" * (128 * 1024)), "command"),
    ("submit", spec(command=["x"] * 4097), "command"),
    ("submit", spec(command=["echo", "a\x00b"]), "command"),
    ("submit", spec(env={f"V{i}": "" for i in range(4097)}), "env"),
    ("submit", spec(env={"A": "a" * 600_000, "B": "b" * 600_000}), "env"),
    ("submit", spec(env={"A": "a\x00b"}), "env.A"),
    ("submit", spec(env={"A\n": "x"}), "env"),
    ("submit", spec(cwd="/tmp/a\x00b"), "cwd"),
    ("submit", spec(group="g" * 65), "group"),
    ("submit", spec(partition="p" * 65), "partition"),
    ("submit", spec(gpu_type="t" * 65), "gpu_type"),
    ("submit", spec(dependencies=[f"afterok:{i}" for i in range(1, 102)]), "dependencies"),
    ("cancel", {"ids": [1], "reason": "r" * 1025}, "reason"),
    ("cancel", {"ids": [1], "reason": "\x1b[2J"}, "reason"),
    ("jobs", {"user": "u" * 65}, "user"),
    ("group_set", {"group": "g" * 65, "share": 1}, "group"),
    ("group_set", {"group": "g", "users": {"u" * 65: 1}}, "users"),
    ("node_add", {"node": {"name": "n" * 256, "host": "h"}}, "node.name"),
    ("node_add", {"node": {"name": "n1", "host": "h", "known_hosts": "/a\x00b"}},
     "node.known_hosts"),
    # ids per request
    ("cancel", {"ids": list(range(1, MAX_IDS + 2))}, "ids"),
    ("wait", {"ids": list(range(1, MAX_IDS + 2)), "timeout": 0}, "ids"),
    ("hold", {"ids": []}, "ids"),
    # the request's text
    ("ping", "[" + " " * MAX_REQUEST_CHARS + "]", "args_json"),
    ("ping", "[1]", "args_json"),
    # wrong types for known arguments
    ("cancel", {"ids": "1,2"}, "ids"),
    ("cancel", {"ids": [1], "reason": 5}, "reason"),
    ("jobs", {"user": 5}, "user"),
    ("jobs", {"states": "RUNNING"}, "states"),
    ("jobs", {"states": ["RUNING"]}, "states"),
    ("jobs", {"include_ended": "yes"}, "include_ended"),
    ("jobs", {"with_env": 1}, "with_env"),
    ("submit", dict(spec(), echo_env="no"), "echo_env"),
    ("submit_many", {"specs": [{"command": ["true"]}], "rows": [1]}, "rows"),
    ("submit_many", {"specs": [{"command": ["true"]}], "rows": [0, True]}, "rows"),
    ("submit_many", {"specs": [{"command": ["true"]}], "rows": []}, "rows"),
    ("submit_many", {"specs": [{"command": ["true"]}], "rows": "0"}, "rows"),
    ("submit_many", {"specs": [{"command": ["true"]}], "rows": [-1]}, "rows"),
    ("wait", {"ids": [1], "timeout": "10"}, "timeout"),
    ("submit", {"spec": "true"}, "spec"),
    ("submit", spec(cwd=0), "cwd"),
    ("submit", spec(dependencies=0), "dependencies"),
    ("submit", spec(hold=1), "hold"),
    ("node_add", {"node": "n1"}, "node"),
    ("node_drain", {"name": 5}, "name"),
    ("group_set", {"group": ["g"], "share": 1}, "group"),
]


def _id(case):
    op, args, field = case
    text = args if isinstance(args, str) else json.dumps(args)
    return f"{ascii(op)[1:-1][:12]}-{field.encode('ascii', 'backslashreplace').decode()}-" \
           f"{ascii(text)[1:40]}"


@pytest.mark.parametrize("op,args,field", CASES, ids=[_id(c) for c in CASES])
def test_refused_naming_the_field(daemon, conn, op, args, field):
    before = stored(daemon)
    out = raw_call(conn, op, args)
    assert out["ok"] is False, out
    err = out["error"]
    assert err["code"] == "VALIDATION_ERROR", err
    assert err["details"].get("field") == field, err
    # the message can be printed on any terminal: no raw lone surrogate
    err["message"].encode("utf-8")
    assert len(err["message"]) < 2000
    assert raw_call(conn, "ping", {})["ok"]
    assert stored(daemon) == before
    no_traceback(daemon)


@pytest.mark.parametrize("args", [
    (BIG, 0, 0.0, 1024, "id"), (0, 0, 0.0, 1024, "id"), (True, 0, 0.0, 1024, "id"),
    (1, BIG, 0.0, 1024, "offset"), (1, -(BIG + 1), 0.0, 1024, "offset"),
    (1, (1 << 40) + 1, 0.0, 1024, "offset"), (1, BIG - 1, 0.0, 1024, "offset"),
    (1, 0, NAN, 1024, "wait"), (1, 0, INF, 1024, "wait"), (1, 0, -1.0, 1024, "wait"),
    (1, 0, False, 1024, "wait"), (1, 0, 0.0, 0, "max_bytes"), (1, 0, 0.0, BIG, "max_bytes"),
    (1, 0, 0.0, 1.5, "max_bytes"), ("1", 0, 0.0, 1024, "id"),
    (1, 0, 0.0, 1024, "yes", "streams"), (1, 0, 0.0, 1024, 1, "streams"),
    (1, 0, 0.0, 1024, False, -1, "part"), (1, 0, 0.0, 1024, False, True, "part"),
    (1, 0, 0.0, 1024, False, 1 << 20, "part"), (1, 0, 0.0, 1024, False, "0", "part"),
])
def test_read_log_refuses_bad_numbers(daemon, conn, args):
    *call, field = args
    data, offset, done, err = conn.root.read_log(*call)
    assert data == b"" and type(offset) is int and done is False
    err = json.loads(err)
    assert err["code"] == "VALIDATION_ERROR" and err["details"]["field"] == field, err
    no_traceback(daemon)


def test_extreme_but_valid_offsets_are_answered(daemon, conn):
    """Far past the end of a real log (where a file system refuses to seek) and far before
    its start."""
    with daemon.client() as q:
        job = q.submit(["echo", "hello"]).id
        q.wait(job, timeout=30)
        assert q.read_log(job)[0] == b"hello\n"
    for offset, want in ((1 << 40, b""), (-(1 << 40), b"hello\n")):
        data, new_offset, done, err = conn.root.read_log(job, offset, 0.0, BIG - 1)
        assert err == "" and data == want and type(new_offset) is int
    no_traceback(daemon)


def test_unknown_arguments_are_ignored_unread(daemon, conn):
    junk = {"junk": SUR, "deep": deep(500), "big": BIG * BIG, "nan": NAN}
    assert raw_call(conn, "ping", junk)["ok"]
    out = raw_call(conn, "job", dict(junk, id=daemon.held[0]))
    assert out["ok"] and out["result"]["id"] == daemon.held[0]
    no_traceback(daemon)


def test_duplicate_ids_count_once(daemon, conn):
    with daemon.client() as q:
        job = q.submit(["true"], hold=True, after=[daemon.held[0]]).id  # never runnable
    try:
        out = raw_call(conn, "hold", {"ids": [job, job]})
        assert out["error"]["code"] == "INVALID_STATE", out  # held already: nothing changed
        out = raw_call(conn, "release", {"ids": [job] * MAX_IDS})
        assert out["ok"] and [j["id"] for j in out["result"]] == [job]
        out = raw_call(conn, "hold", {"ids": [job, job, job]})
        assert out["ok"] and [j["id"] for j in out["result"]] == [job]
    finally:
        assert raw_call(conn, "cancel", {"ids": [job, job]})["ok"]
    no_traceback(daemon)


def test_limits_at_their_edge_are_accepted(daemon, conn):
    """The caps are where they say: the largest allowed values go through."""
    out = raw_call(conn, "submit", spec(
        name="n" * 256, cwd="/" + "d" * 4095, command=["echo", "a" * (128 * 1024 - 10)],
        env={f"V{i}": "x" for i in range(4096)}, group=None, partition="p" * 64,
        dependencies=[f"afterany:{daemon.held[0]}"] * 100))
    assert out["ok"], out
    job = out["result"]["id"]
    assert raw_call(conn, "cancel", {"ids": [job], "reason": "r" * 1024})["ok"]
    assert raw_call(conn, "wait", {"ids": [job] * MAX_IDS, "timeout": 0})["ok"]
    assert raw_call(conn, "jobs", {"limit": BIG - 1, "user": "u" * 64})["ok"]
    no_traceback(daemon)


def test_a_slip_past_validation_is_still_the_callers_error():
    """The last net: an overflow or bad text deep in a handler is VALIDATION_ERROR, and an
    unexpected failure is INTERNAL without a traceback on the wire."""
    from labq.daemon.service import LabqService

    class Jobs:  # a job table whose lookups fail deep inside
        def view(self, caller, row):
            return row

        def job_row(self, job_id):
            raise {1: OverflowError("int too big"), 2: RecursionError("deep"),
                   3: UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates"),
                   4: KeyError("bug")}[job_id]

    class Core:
        jobs = Jobs()
        metrics = None

    service = LabqService(Core())
    for job_id, code in ((1, "VALIDATION_ERROR"), (2, "VALIDATION_ERROR"),
                         (3, "VALIDATION_ERROR"), (4, "INTERNAL")):
        reply = service.exposed_call("job", json.dumps({"id": job_id}))
        assert json.loads(reply)["error"]["code"] == code
        assert "Traceback" not in reply and "File " not in reply


def test_daemon_is_whole_after_all(daemon):
    with daemon.client() as q:
        assert q.ping()["pid"] == daemon.proc.pid
        jobs = {j.id: j for j in q.jobs(with_env=True)}
        assert [(jobs[i].state, jobs[i].env) for i in daemon.held] == [("HELD", {"K": "v"})] * 2
    db = sqlite3.connect(f"file:{daemon.database}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    no_traceback(daemon)
