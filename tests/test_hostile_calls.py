"""10,000 hostile calls from an ordinary user to one live labqd.

The calls come through a raw rpyc connection, so nothing of the client library stands between
them and the daemon: random requests (known and unknown), arguments of the wrong types, huge
integers, NaN and infinities, deep nesting, long strings, lone surrogates and other people's
job ids. Afterwards labqd is still running and answering, every reply was a typed error with
a stable code (never INTERNAL), root's jobs are as they were and their environments and logs
never reached the caller, the database is sound and labqd's log has no traceback.
"""
import collections
import json
import os
import socket
import sqlite3
import sys
import time
import uuid

import pytest
import rpyc
from daemonproc import Daemon, raw_connect
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from sshnodes import ensure_user

from labq.daemon.server import MAX_FRAME
from labq.errors import _BY_CODE

CALLS = 10_000
PER_EXAMPLE = 50
STABLE = set(_BY_CODE) - {"INTERNAL", "UNAVAILABLE"}
SECRET = f"secret-{uuid.uuid4().hex}"
OPS = ["ping", "whoami", "submit", "job", "jobs", "events", "cancel", "hold", "release",
       "wait", "nodes", "node_drain", "node_resume", "node_add", "node_remove",
       "job_priority", "group_set", "groups", "usage"]
BIG = 1 << 63
NAN, INF = float("nan"), float("inf")


def connect_as(uid: int, gid: int, path) -> rpyc.Connection:
    """An rpyc connection whose socket another user opened: SO_PEERCRED names whoever called
    connect(), so a child switches user, connects and hands the socket back."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            socket.send_fds(theirs, [b"s"], [s.fileno()])
        finally:
            os._exit(0)
    theirs.close()
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    assert fds, "the other user could not connect"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fds[0])
    return raw_connect(None, sock=sock, service=rpyc.VoidService,
                          config={"allow_pickle": False, "sync_request_timeout": 120})


# -- values ----------------------------------------------------------------------------------
def deep(n, leaf=0):
    v = leaf
    for _ in range(n):
        v = [v] if n % 2 else {"k": v}
    return v


surrogates = st.sampled_from(["\ud800", "a\udfff", "\udc80x", "\ud83d"])
text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=8),
    st.builds(lambda a, b: a + b, st.text(max_size=4), surrogates),
    st.sampled_from(["", " ", "a\x00b", "\x1b[2J", "../../etc/passwd", "RUNNING", "held",
                     "afterok:1", "afterok:" + "9" * 30, "1", "-1", "NaN", "root",
                     "labqtest", "default", "A100"]),
    st.integers(0, 23).map(lambda n: "x" * (1 << n)),  # up to 8 MiB
)
ints = st.one_of(
    st.integers(-3, 12),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([BIG - 1, BIG, -BIG, -BIG - 1, 1 << 64, 10 ** 30, 1 << 40, (1 << 40) + 1]),
)
floats = st.one_of(st.floats(), st.sampled_from([NAN, INF, -INF, 1e308, -0.0, 0.5, 1e-300]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, text)
# what rpyc itself can carry as an argument (it cannot encode a lone surrogate)
wire_scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=10),
                         st.binary(max_size=8))
values = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(text, inner, max_size=4), max_leaves=6),
    st.integers(1, 900).map(deep),  # deeper ones go as raw JSON text
    st.integers(0, 10_001).map(lambda n: [1] * n),
)
# numbers a daemon would wait on: only those that return at once, or are refused
short_wait = st.one_of(
    st.sampled_from([0, 0.001]),
    st.sampled_from([0.0, -0.0, -1, NAN, INF, -INF, BIG, 86401, 1e300, True, None, "0", [0]]),
    st.floats(max_value=-1e-9), st.floats(min_value=86400.5),
)


# -- the test --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    uid, gid = ensure_user("labqtest")
    base = tmp_path_factory.mktemp("hostile")
    d = Daemon(base, {"daemon": {"socket_mode": "0666", "local_node": True}})
    with d.start(wait_nodes=1):
        with d.client() as q:
            # root's jobs: held ones (never runnable), and one that ended with the secret in
            # its log; the secret is in every one's environment, never in a command
            held = [q.submit(["sh", "-c", "echo $K"], hold=True, env={"K": SECRET},
                             export_env=False, name=f"root-{i}").id for i in range(3)]
            done = q.submit(["sh", "-c", "echo $K"], env={"K": SECRET}, export_env=False).id
            q.wait(done, timeout=30)
            assert SECRET.encode() in q.read_log(done)[0]
        yield d, uid, gid, held, done


def root_view(d: Daemon, ids) -> list:
    with d.client() as q:
        return [(j.state, j.priority, j.reason, j.env, [(e.to_state, e.who, e.reason)
                                                        for e in q.events(j.id)])
                for j in (q.job(i) for i in ids)]


def test_hostile_calls(setup):
    d, uid, gid, held, done = setup
    root_jobs = held + [done]
    before = root_view(d, root_jobs)
    conn = connect_as(uid, gid, d.socket)
    assert json.loads(conn.root.call("whoami", "{}"))["result"]["user"] == "labqtest"
    mine: list[int] = []  # jobs the hostile user got queued
    codes: collections.Counter = collections.Counter()
    accepted: collections.Counter = collections.Counter()  # op -> calls answered ok
    sent = [0]
    start = time.monotonic()

    # the user's own jobs by index: the strategy keeps one shape as the list grows
    own = st.integers(0, 1 << 16).map(lambda i: mine[i % len(mine)] if mine else 10 ** 6)

    def job_ids(other=scalars):
        return st.one_of(st.sampled_from(root_jobs), own,
                         st.sampled_from([10 ** 6, 1, 2]), ints, other)

    def id_lists():
        return st.one_of(st.lists(job_ids(), max_size=5),
                         st.tuples(job_ids(ints), st.sampled_from([2, 1000, 10_000, 10_001]))
                         .map(lambda t: [t[0]] * t[1]),
                         values)

    def spec():
        # a plausible request, often with one field made hostile; whatever it holds, a valid
        # one is held and waits on a held root job, so nothing the hostile user queues ever
        # runs, even once released
        waits = [f"afterok:{held[0]}"]
        plausible = {
            "name": st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
            "cwd": st.sampled_from(["/tmp", "/"]),
            "env": st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,4}", fullmatch=True),
                                   st.text(max_size=6).filter(lambda v: "\x00" not in v),
                                   max_size=3),
            "gpus": st.integers(0, 1), "gpu_type": st.just("A100"),
            "gpu_memory_mb": st.integers(1, 1 << 14), "cpus": st.integers(1, 2),
            "memory_mb": st.integers(0, 1 << 10), "time_limit_s": st.integers(1, 3600),
            "priority": st.integers(1, 10), "group": st.sampled_from(["labqtest", "root"]),
            "partition": st.sampled_from(["default", "gpu"]), "requeue": st.booleans(),
        }
        hostile_fields = dict.fromkeys(list(plausible) + ["command", "bogus"], values)
        hostile_fields["hold"] = st.sampled_from(["yes", 1, 0, [], {}, NAN, BIG, "\ud800"])
        hostile_fields["dependencies"] = st.sampled_from(
            ["x", 5, [BIG], ["afterok:0"], [["afterok", -1]], ["after:1"], waits * 101,
             [f"afterok:{held[0]}\ud800"], [waits], [f"afterok:{10 ** 6}"]])
        base = st.fixed_dictionaries(
            {"command": st.sampled_from([["true"], "true"]), "hold": st.just(True),
             "dependencies": st.just(waits)}, optional=plausible)
        spoil = st.one_of(st.just({}), st.fixed_dictionaries(
            {}, optional=hostile_fields).filter(bool))
        return st.tuples(base, spoil).map(lambda t: {**t[0], **t[1]})

    def args_for(op):
        known = {
            "submit": {"spec": st.one_of(spec(), spec(), values)},
            "job": {"id": job_ids()}, "events": {"id": job_ids()},
            "jobs": {"states": values, "user": text, "limit": values,
                     "include_ended": values, "with_env": st.just(True) | values},
            "cancel": {"ids": id_lists(), "reason": text | values},
            "hold": {"ids": id_lists()}, "release": {"ids": id_lists()},
            "wait": {"ids": id_lists(), "timeout": short_wait},
            "node_drain": {"name": text}, "node_resume": {"name": text},
            "node_remove": {"name": text}, "node_add": {"node": values},
            "job_priority": {"id": job_ids(), "priority": values},
            "group_set": {"group": text, "share": values, "users": values},
            "usage": {"days": values},
        }.get(op, {})
        # the argument that names what a request acts on is nearly always there, and a wait
        # always says how long, so that no call blocks for the default ten seconds
        main = {"submit": "spec", "job": "id", "events": "id", "cancel": "ids", "hold": "ids",
                "release": "ids", "wait": "ids", "job_priority": "id"}.get(op)
        required = {k: v for k, v in known.items() if k in (main, "timeout")}
        optional = {k: v for k, v in known.items() if k not in required}
        optional["junk"] = values
        return st.fixed_dictionaries(required, optional=optional)

    raw_texts = st.one_of(
        st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 200_000).map(lambda n: '{"ids": ' + "[" * n),
        st.sampled_from(['{"id": ' + "9" * 5000 + "}", '{"ids": [1e999]}', '{"days": NaN}',
                         '{"timeout": Infinity, "ids": [1]}', "{", "", "null", "[]",
                         '{"spec": {"command": ["\\ud800"]}}', "{" + " " * (5 << 20) + "}",
                         '{"id": 1, "id": "x"}']),
        st.text(max_size=20))

    def check_call(op, args_json):
        nonlocal conn
        try:
            reply = conn.root.call(op, args_json)
        except EOFError:
            # a frame over labqd's 8 MiB cap is not read: the connection is dropped instead
            if len(str(args_json).encode("utf-8", "surrogatepass")) < MAX_FRAME - 4096:
                raise
            sent[0] += 1
            codes["dropped: frame over 8 MiB"] += 1
            conn = connect_as(uid, gid, d.socket)
            return
        sent[0] += 1
        where = f"call({ascii(op)[:80]}, {ascii(args_json)[:300]})"
        assert type(reply) is str, where
        assert SECRET not in reply, f"{where} revealed root's secret"
        out = json.loads(reply)
        assert type(out) is dict and type(out.get("ok")) is bool, (where, reply[:300])
        if out["ok"]:
            codes["ok"] += 1
            accepted[op] += 1
            result = out["result"]
            if op == "submit":
                mine.append(result["id"])
                assert result["state"] == "HELD", (where, result)
        else:
            code = out["error"]["code"]
            codes[code] += 1
            assert code in STABLE, (where, out["error"])

    def check_read_log(args):
        reply = conn.root.read_log(*args)
        sent[0] += 1
        where = f"read_log{ascii(args)[:300]}"
        assert type(reply) is tuple and len(reply) == 4, where
        data, offset, done_, err = reply
        assert SECRET.encode() not in bytes(data), f"{where} revealed root's log"
        if err:
            code = json.loads(err)["code"]
            codes[f"read_log {code}"] += 1
            assert code in STABLE, (where, err)
        else:
            codes["read_log ok"] += 1
            accepted["read_log"] += 1

    def hostile(data):
        for _ in range(PER_EXAMPLE):
            kind = data.draw(st.sampled_from(["known"] * 14 + ["unknown", "raw", "types",
                                                               "read_log"]))
            if kind == "known":
                op = data.draw(st.sampled_from(OPS))
                check_call(op, json.dumps(data.draw(args_for(op))))
            elif kind == "unknown":
                op = data.draw(st.text(max_size=30)
                               | st.integers(0, 20).map(lambda n: "o" * (1 << n)))
                check_call(op, json.dumps(data.draw(values)))
            elif kind == "raw":
                check_call(data.draw(st.sampled_from(OPS) | st.text(max_size=10)),
                           data.draw(raw_texts))
            elif kind == "types":
                check_call(data.draw(st.one_of(st.sampled_from(OPS), ints, floats, st.none(),
                                               st.binary(max_size=8), st.tuples(ints))),
                           data.draw(st.one_of(ints, floats, st.none(), st.binary(max_size=8),
                                               st.tuples(st.text(max_size=5)))))
            else:
                # each argument is plausible as often as hostile, so some reach the log
                check_read_log(data.draw(st.tuples(
                    st.one_of(own, job_ids(wire_scalars)),
                    st.one_of(st.sampled_from([0, -10, 1 << 40]), ints, wire_scalars),
                    st.one_of(st.sampled_from([0, 0.001]), short_wait),
                    st.one_of(st.sampled_from([1, 1 << 20]), ints, wire_scalars))))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))  # json.dumps of the deepest values we send
    try:
        # each round is seeded, so a failure is reproducible; rounds go on until enough
        # calls were sent, as hypothesis stops an example whose draws grow too large
        for round_no in range(100):
            if sent[0] >= CALLS:
                break
            seed(round_no)(settings(
                max_examples=(CALLS - sent[0]) // PER_EXAMPLE + 1, deadline=None,
                database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))(given(st.data())(hostile)))()
    finally:
        sys.setrecursionlimit(limit)
        elapsed = time.monotonic() - start
        conn.close()
        print(f"\nhostile calls: {sent[0]} in {elapsed:.0f} s; labqd alive: "
              f"{d.proc.poll() is None}; replies: {dict(sorted(codes.items()))}; "
              f"accepted by request: {dict(sorted(accepted.items()))}")

    assert d.proc.poll() is None, "labqd died"
    assert sent[0] >= CALLS
    with d.client() as q:
        assert q.ping()["pid"] == d.proc.pid
    assert root_view(d, root_jobs) == before  # not cancelled, held, released or reprioritised
    db = sqlite3.connect(f"file:{d.database}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    log_text = d.log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-5000:]
    with d.client() as q:  # what the hostile user got queued goes
        active = [j.id for j in q.jobs(user="labqtest", include_ended=False)]
        for i in range(0, len(active), 1000):
            q.cancel(*active[i:i + 1000])
        assert not q.jobs(user="labqtest", include_ended=False)
