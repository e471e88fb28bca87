"""One vocabulary of requests: every operation has a request type, a handler in labqd and a
client method; requests survive the trip to wire arguments and back; the TUI and the CLI
send nothing by a bare name."""
import ast
import inspect
import json
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from labq import Client, Job, JobState, Node
from labq.errors import InternalError, ValidationError
from labq.protocol import (
    REQUESTS,
    UNSET,
    CancelRequest,
    EventsRequest,
    ExperimentsRequest,
    GroupSetRequest,
    GroupsRequest,
    HoldRequest,
    JobPriorityRequest,
    JobRequest,
    JobsRequest,
    JobTimeLimitRequest,
    NodeAddRequest,
    NodeDrainRequest,
    NodeRemoveRequest,
    NodeResumeRequest,
    NodesRequest,
    NotifySetRequest,
    NotifyShowRequest,
    Op,
    PingRequest,
    PurgeRequest,
    ReadLogRequest,
    ReleaseRequest,
    ResultsReadRequest,
    ResultsRequest,
    StageBeginRequest,
    StagePutRequest,
    SubmitArrayRequest,
    SubmitManyRequest,
    SubmitRequest,
    TokenCreateRequest,
    TokenListRequest,
    TokenRevokeRequest,
    UsageRequest,
    WaitRequest,
    WhoamiRequest,
    request_type,
)
from labq.spec import validate_submit

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    PingRequest(), WhoamiRequest(), NodesRequest(), GroupsRequest(),
    SubmitRequest(spec=validate_submit({"command": ["python", "train.py"], "gpus": 2,
                                        "env": {"A": "b"}, "dependencies": ["afterany:3", 4],
                                        "cwd": "/tmp", "hold": True})),
    SubmitRequest(spec=validate_submit({"command": "echo hi; sleep 1"})),
    SubmitRequest(spec=validate_submit({"command": ["true"], "experiment": "lr-sweep",
                                        "key": "run-42", "dependencies": ["afterany:exp:a"]})),
    SubmitArrayRequest(spec=validate_submit({"command": ["prep", "{index}"]}),
                       array="0-999%16"),
    SubmitArrayRequest(spec=validate_submit({"command": "train --lr {lr}"}),
                       params=[["lr", ["1e-3", "3e-4"]], ["seed", ["0", "1"]]], max_running=2),
    SubmitManyRequest(specs=[{"command": ["true"]}, {"command": []}],
                      defaults={"env": {"A": "1"}, "cwd": "/tmp"}),
    ExperimentsRequest(), ExperimentsRequest(user="alice"),
    JobsRequest(experiment="lr-sweep"), CancelRequest(ids=[], experiment="lr-sweep"),
    HoldRequest(ids=[], experiment="x"), WaitRequest(ids=[], experiment="x", timeout=1.0),
    JobRequest(id=7), EventsRequest(id=(1 << 63) - 1),
    JobsRequest(), JobsRequest(states=["RUNNING", "HELD"], user="alice", limit=5,
                               include_ended=False, with_env=True),
    CancelRequest(ids=[1, 2]), CancelRequest(ids=[3], reason="superseded by 4"),
    HoldRequest(ids=[5]), ReleaseRequest(ids=[5, 6]),
    WaitRequest(ids=[3]), WaitRequest(ids=[3, 9], timeout=2.5),
    JobPriorityRequest(id=4, priority=9), JobTimeLimitRequest(id=4, time_limit_s=1800),
    NodeDrainRequest(name="gpu1"), NodeResumeRequest(name="gpu1"),
    NodeRemoveRequest(name="gpu-2.lab"),
    NodeAddRequest(node={"name": "n2", "host": "n2.lab", "port": 22,
                         "gpus": [{"type": "A100", "memory_mb": 81920}]}),
    GroupSetRequest(group="vision", share=2.0),
    GroupSetRequest(group="vision", max_gpus=None, max_gpus_by_type={"A100": 2},
                    users={"alice": 1.5, "bob": 1}),
    UsageRequest(), UsageRequest(days=7.5),
    ReadLogRequest(id=3), ReadLogRequest(id=3, offset=-100, wait=1.0, max_bytes=4096),
    NotifyShowRequest(), NotifyShowRequest(user="alice"),
    NotifySetRequest(channel="webhook", value="https://hooks.slack.com/services/T/B/x"),
    NotifySetRequest(channel="mail", value="alice@lab.example.org", user="alice"),
    NotifySetRequest(channel="webhook"),
    SubmitRequest(spec=validate_submit({"command": ["true"], "notify": "fail"})),
    TokenCreateRequest(), TokenCreateRequest(user="alice", days=7, note="ci runner"),
    TokenListRequest(), TokenListRequest(user="alice"), TokenRevokeRequest(id=3),
    SubmitRequest(spec=validate_submit({"command": ["python", "train.py"],
                                        "stage": "0123456789abcdef0123456789abcdef",
                                        "results": ["out/**", "*.log"]})),
    StageBeginRequest(files=[["train.py", 120, 0o644], ["data/a.bin", 0, 0o600]]),
    StagePutRequest(token="0123456789abcdef0123456789abcdef", index=1, offset=4096,
                    data="aGVsbG8="),
    ResultsRequest(id=42), ResultsReadRequest(id=42, index=3, offset=1 << 20),
    PurgeRequest(before=1.7e9),
]


def test_every_op_has_a_request_type():
    assert set(REQUESTS) == set(Op)
    for op, kind in REQUESTS.items():
        assert kind.op is op
    assert {type(r).op for r in EXAMPLES} == set(Op), "an example of every request"


def test_every_op_has_a_handler_taking_its_request():
    from labq.daemon.handlers import HANDLERS
    assert set(HANDLERS) == set(Op)
    for op, handler in HANDLERS.items():
        params = list(inspect.signature(handler).parameters.values())
        assert [p.name for p in params] == ["core", "caller", "req"], handler
        assert params[2].annotation in (REQUESTS[op].__name__, REQUESTS[op]), handler


def client_methods() -> dict[Op, str]:
    out: dict[Op, str] = {}
    members = {name: m for cls in Client.__mro__ for name, m in vars(cls).items()}
    for name, member in members.items():
        op = getattr(member, "op", None)
        if op is not None:
            assert op not in out, f"{op} is sent by {out[op]} and {name}"
            out[op] = name
    return out


def test_every_op_has_a_client_method():
    assert set(client_methods()) == set(Op)


class Recorder(Client):
    """A client that records what it would send instead of sending it."""

    def __init__(self, reply):
        self.sent = []
        self.reply = reply

    def _remote(self, method, *args):
        self.sent.append((method, args))
        if method == "read_log":
            return (b"x", 1, True, "")
        return json.dumps({"ok": True, "result": self.reply})


JOB = {"id": 1, "owner": "a", "group": "a", "name": "n", "command": ["true"],
       "state": "HELD"}
NODE = {"name": "n", "host": "h", "state": "up"}
CALLS = {
    Op.PING: (lambda q: q.ping(), {}), Op.WHOAMI: (lambda q: q.whoami(), {}),
    Op.SUBMIT: (lambda q: q.submit(["true"], export_env=False), JOB),
    Op.JOB: (lambda q: q.job(1), JOB), Op.JOBS: (lambda q: q.jobs(), [JOB]),
    Op.EVENTS: (lambda q: q.events(1), []), Op.CANCEL: (lambda q: q.cancel(1), [JOB]),
    Op.HOLD: (lambda q: q.hold(1), [JOB]), Op.RELEASE: (lambda q: q.release(1), [JOB]),
    Op.WAIT: (lambda q: q.wait(1), [dict(JOB, state="COMPLETED")]),
    Op.JOB_PRIORITY: (lambda q: q.set_priority(1, 3), JOB),
    Op.JOB_TIME_LIMIT: (lambda q: q.set_time_limit(1, "30m"), JOB),
    Op.READ_LOG: (lambda q: q.read_log(1), None),
    Op.NODES: (lambda q: q.nodes(), [NODE]), Op.NODE_DRAIN: (lambda q: q.drain("n"), NODE),
    Op.NODE_RESUME: (lambda q: q.resume("n"), NODE),
    Op.NODE_ADD: (lambda q: q.add_node(name="n", host="h"), NODE),
    Op.NODE_REMOVE: (lambda q: q.remove_node("n"), {}),
    Op.GROUPS: (lambda q: q.groups(), []), Op.GROUP_SET: (lambda q: q.set_group("g", share=1), {}),
    Op.USAGE: (lambda q: q.usage(3), {}),
    Op.NOTIFY_SHOW: (lambda q: q.notify_settings(), {}),
    Op.NOTIFY_SET: (lambda q: q.set_notify("webhook", "http://127.0.0.1:9/h"), {}),
    Op.TOKEN_CREATE: (lambda q: q.create_token(days=2), {}),
    Op.TOKEN_LIST: (lambda q: q.tokens(), []),
    Op.TOKEN_REVOKE: (lambda q: q.revoke_token(4), {}),
    Op.SUBMIT_ARRAY: (lambda q: q.submit_array(["true"], array="0-3%2", export_env=False),
                      [JOB]),
    Op.SUBMIT_MANY: (lambda q: q.submit_many([{"command": ["true"]}], export_env=False),
                     {"fields": list(JOB), "results": [list(JOB.values())]}),
    Op.EXPERIMENTS: (lambda q: q.experiments(), []),
    Op.STAGE_BEGIN: (lambda q: q.stage_begin([["a", 1, 0o644]]), {"token": "0" * 32}),
    Op.STAGE_PUT: (lambda q: q.stage_put("0" * 32, 0, 0, b"x"), {"offset": 1}),
    Op.RESULTS: (lambda q: q.results(1), {"files": []}),
    Op.RESULTS_READ: (lambda q: q.results_read(1, 0), {"data": "", "size": 0}),
    Op.PURGE: (lambda q: q.purge(1.7e9), {"jobs": 0, "bytes": 0}),
}


@pytest.mark.parametrize("op", list(Op), ids=[o.value for o in Op])
def test_each_client_method_sends_its_op_as_a_plain_string(op):
    call, reply = CALLS[op]
    q = Recorder(reply)
    result = call(q)
    [(method, args)] = q.sent
    if op is Op.READ_LOG:
        assert method == "read_log" and [type(a) for a in args] == [int, int, float, int]
        return
    assert method == "call" and args[0] == op.value and type(args[0]) is str
    # what was sent reads back as the request type's own arguments
    assert request_type(args[0]).from_wire(json.loads(args[1])).op is op
    if isinstance(reply, list) and reply:  # jobs and nodes come back as models
        assert all(isinstance(r, (Job, Node)) for r in result)


def test_submit_many_answers_a_job_or_an_error_per_row_in_order():
    from labq.errors import DuplicateJob
    q = Recorder({"fields": list(JOB), "results": [
        {"error": {"code": "DUPLICATE_JOB", "message": "m", "details": {"id": 7}}},
        list(JOB.values())]})
    res = q.submit_many([{"command": ["a"]}, {"command": ["b"], "time": "nonsense"},
                         {"command": "c d", "gpus": "1"}], export_env=False)
    assert isinstance(res[0], DuplicateJob) and res[0].details == {"id": 7, "row": 0}
    assert isinstance(res[1], ValidationError) and res[1].details["row"] == 1
    assert isinstance(res[2], Job)
    [(_, (_, text))] = q.sent
    assert [s["command"] for s in json.loads(text)["specs"]] == [["a"], ["c", "d"]]


def test_a_batch_reply_sends_what_its_jobs_share_once():
    from labq.protocol import SubmitManyRequest
    full = dict(Job.from_dict(JOB).to_dict(), params={"lr": "0.1"})
    fields = list(full)
    err = {"error": {"code": "VALIDATION_ERROR", "message": "m", "details": {}}}
    jobs = SubmitManyRequest.read_reply({
        "fields": fields, "shared": [full[f] for f in fields], "vary": ["id", "seq"],
        "results": [[5, 50], err, [6, 60]]})
    assert [j.id for j in jobs[::2]] == [5, 6] and [j.seq for j in jobs[::2]] == [50, 60]
    assert isinstance(jobs[1], ValidationError) and jobs[1].details["row"] == 1
    assert jobs[0].command == jobs[2].command == ["true"] and jobs[0].state == JobState.HELD
    jobs[0].params["lr"] = "1"  # each job's values are its own
    jobs[0].command.append("x")
    assert jobs[2].params == {"lr": "0.1"} and jobs[2].command == ["true"]
    assert jobs[2] == Job.from_dict(dict(full, id=6, seq=60))
    # a newer labqd's field this client does not know is left out
    [job] = SubmitManyRequest.read_reply({
        "fields": fields + ["future"], "shared": [full[f] for f in fields] + [0],
        "vary": ["id", "future", "state"], "results": [[7, 1, "PENDING"]]})
    assert (job.id, job.state, job.command) == (7, JobState.PENDING, ["true"])


def test_a_batch_reply_reads_with_columns_this_client_lacks_or_does_not_know():
    # a newer labqd may send a column more, an older one a column fewer: the job still reads
    from labq.protocol import SubmitManyRequest
    full = dict(Job.from_dict(JOB).to_dict(), cwd="/w", gpu_indices=[0], future=1)
    for columns in (list(full), [f for f in full if f not in ("cwd", "future")]):
        [job] = SubmitManyRequest.read_reply(
            {"fields": columns, "results": [[full[f] for f in columns]]})
        assert (job.id, job.state, job.command, job.gpu_indices) == (1, JobState.HELD,
                                                                     ["true"], [0])
        assert job.cwd == ("/w" if "cwd" in columns else "")


def test_call_takes_an_op_or_a_name_and_returns_the_plain_result():
    q = Recorder([JOB])
    assert q.call(Op.JOBS, limit=1) == [JOB]
    assert q.call("jobs") == [JOB]
    assert [a[0] for _, a in q.sent] == ["jobs", "jobs"]
    assert all(type(a[0]) is str for _, a in q.sent)


def test_set_group_refuses_an_unknown_setting_before_sending():
    q = Recorder({})
    with pytest.raises(ValidationError, match="max_gpu"):
        q.set_group("g", max_gpu=3)
    assert q.sent == []


@pytest.mark.parametrize("req", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip_through_the_wire(req):
    wire = json.loads(json.dumps(req.to_wire()))  # as labqd receives it
    assert type(req).from_wire(wire) == req
    assert set(wire) <= {f.name for f in fields(req)}


def test_read_log_round_trips_as_positional_arguments():
    req = ReadLogRequest(id=3, offset=-100, wait=1.0, max_bytes=4096)
    assert ReadLogRequest.from_args(*req.to_args()) == req
    # asking for the stderr ranges is a fifth argument, sent only then: a labqd from before
    # takes four
    asks = ReadLogRequest(id=3, streams=True)
    assert len(req.to_args()) == 4 and asks.to_args()[4] is True
    assert ReadLogRequest.from_args(*asks.to_args()) == asks
    for bad in (1, "yes", b""):
        with pytest.raises(ValidationError) as e:
            ReadLogRequest.from_args(3, 0, 0.0, 10, bad)
        assert e.value.details["field"] == "streams"


def test_stderr_ranges_cross_packed_and_are_checked_on_arrival():
    from labq.protocol import pack_spans, unpack_spans
    assert unpack_spans(pack_spans([(0, 2), (5, 9)]), 9) == [(0, 2), (5, 9)]
    # past the data, overlapping, backwards, empty, or a torn record: left out
    packed = pack_spans([(0, 4), (3, 6), (8, 7), (8, 8), (8, 20)]) + b"\0\0"
    assert unpack_spans(packed, 10) == [(0, 4)]


def test_a_chunk_splits_into_its_streams():
    from labq.follow import split_streams
    assert list(split_streams(b"outERRout", [(3, 6)])) == [
        ("stdout", b"out"), ("stderr", b"ERR"), ("stdout", b"out")]
    assert list(split_streams(b"ERR", [(0, 3)])) == [("stderr", b"ERR")]
    assert list(split_streams(b"old", [])) == [("stdout", b"old")]


class OlderDaemon(Recorder):
    """A labqd from before stderr was kept apart: read_log takes four arguments."""

    def _remote(self, method, *args):
        self.sent.append((method, args))
        if len(args) > 4:
            raise InternalError("labqd refused the call: TypeError")
        return (b"outERR", 6, False, "") if args[1] == 0 else (b"", args[1], True, "")


def test_a_client_asks_an_older_labqd_as_it_knows_how():
    q = OlderDaemon(None)
    assert q.read_streams(1) == (b"outERR", 6, False, [])
    assert q.read_streams(1) == (b"outERR", 6, False, [])
    # it asked with the fifth argument once, then no more
    assert [len(args) for _m, args in q.sent] == [5, 4, 4]
    assert list(q.follow_streams(1)) == [("stdout", b"outERR")]  # all stdout, as it was


def test_defaults_are_what_an_absent_argument_means():
    for kind in REQUESTS.values():
        required = [f for f in fields(kind) if f.default is MISSING]
        if not required and kind is not ReadLogRequest:
            assert kind.from_wire({}) == kind(), kind


def test_group_set_sends_only_the_settings_given():
    assert GroupSetRequest(group="g", max_gpus=None).to_wire() == {"group": "g",
                                                                  "max_gpus": None}
    assert GroupSetRequest.from_wire({"group": "g", "share": 3}).users is UNSET


def test_unknown_arguments_are_ignored():
    assert JobRequest.from_wire({"id": 3, "junk": float("nan")}) == JobRequest(id=3)


@pytest.mark.parametrize("op,args,field", [
    (Op.JOB, {"id": True}, "id"), (Op.JOB, {}, "id"),
    (Op.CANCEL, {"ids": [1, 1 << 63]}, "ids"), (Op.CANCEL, {"ids": [1], "reason": "a\x1b"},
                                                "reason"),
    (Op.JOBS, {"states": ["RUNING"]}, "states"), (Op.WAIT, {"ids": [1], "timeout": -1},
                                                  "timeout"),
    (Op.JOB_PRIORITY, {"id": 1, "priority": 11}, "priority"),
    (Op.JOB_TIME_LIMIT, {"id": 1, "time_limit_s": 0}, "time_limit_s"),
    (Op.JOB_TIME_LIMIT, {"id": 1, "time_limit_s": "1h"}, "time_limit_s"),
    (Op.NODE_DRAIN, {"name": ""}, "name"), (Op.NODE_ADD, {"node": {"host": "a\n"}},
                                            "node.host"),
    (Op.GROUP_SET, {"group": "g"}, "share"), (Op.GROUP_SET, {"group": "g", "max_gpus": 1.5},
                                              "max_gpus"),
    (Op.GROUP_SET, {"group": "g", "users": {"": 1}}, "users"),
    (Op.USAGE, {"days": 0}, "days"), (Op.USAGE, {"bucket": "week"}, "bucket"),
    (Op.USAGE, {"days": 40, "bucket": "hour"}, "days"),
    (Op.SUBMIT, {"spec": {"command": []}}, "command"),
    (Op.SUBMIT, {"spec": {"command": ["true"], "notify": "always"}}, "notify"),
    (Op.NOTIFY_SET, {"channel": "sms", "value": "1"}, "channel"),
    (Op.NOTIFY_SET, {"channel": "webhook", "value": "file:///etc/passwd"}, "value"),
    (Op.NOTIFY_SET, {"channel": "webhook", "value": "http://u:pw@h/x"}, "value"),
    (Op.NOTIFY_SET, {"channel": "webhook", "value": "http://h:99999/x"}, "value"),
    (Op.NOTIFY_SET, {"channel": "mail", "value": "not an address"}, "value"),
    (Op.NOTIFY_SET, {"channel": "mail", "value": "a@b\r\nBcc: c@d"}, "value"),
    (Op.NOTIFY_SHOW, {"user": 3}, "user"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "key": "a\nb"}}, "key"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "experiment": "a b"}}, "experiment"),
    (Op.SUBMIT_ARRAY, {"spec": {"command": ["x"]}, "array": "5-1"}, "array"),
    (Op.SUBMIT_ARRAY, {"spec": {"command": ["x"]}, "array": "0-20000"}, "array"),
    (Op.SUBMIT_ARRAY, {"spec": {"command": ["x"]}}, "array"),
    (Op.SUBMIT_ARRAY, {"spec": {"command": ["x"]}, "params": [["a", ["1"]], ["a", ["2"]]]},
     "params"),
    (Op.SUBMIT_ARRAY, {"spec": {"command": ["x"]}, "array": "0-3", "max_running": 0},
     "max_running"),
    (Op.SUBMIT_MANY, {"specs": []}, "specs"),
    (Op.SUBMIT_MANY, {"specs": [{}], "defaults": {"gpus": 1}}, "defaults"),
    (Op.CANCEL, {"ids": [1], "experiment": "x"}, "ids"), (Op.HOLD, {}, "ids"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "results": ["../etc/*"]}}, "results"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "results": ["/etc/shadow"]}}, "results"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "results": ["out/../../x"]}}, "results"),
    (Op.SUBMIT, {"spec": {"command": ["x"], "stage": "../../etc"}}, "stage"),
    (Op.STAGE_BEGIN, {"files": [["../x", 1, 0o644]]}, "files"),
    (Op.STAGE_BEGIN, {"files": [["/etc/shadow", 1, 0o644]]}, "files"),
    (Op.STAGE_BEGIN, {"files": [["a", 1, 0o644], ["a/b", 1, 0o644]]}, "files"),
    (Op.STAGE_BEGIN, {"files": [["a", -1, 0o644]]}, "files"),
    (Op.STAGE_PUT, {"token": "0" * 32, "index": 0, "offset": 0, "data": "not base64!"},
     "data"),
    (Op.STAGE_PUT, {"token": "x", "index": 0, "offset": 0, "data": ""}, "token"),
    (Op.PURGE, {}, "before"),
])
def test_refusals_name_the_field(op, args, field):
    with pytest.raises(ValidationError) as e:
        REQUESTS[op].from_wire(args)
    assert e.value.details["field"] == field


def test_read_log_is_not_a_json_request():
    for name in ("read_log", "drop_tables", "o" * 100):
        with pytest.raises(ValidationError, match="unknown request") as e:
            request_type(name)
        assert len(e.value.details["op"]) <= 67


def test_protocol_is_standard_library_only():
    code = "import sys, labq.protocol; print(' '.join(sorted(sys.modules)))"
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())
    assert not {m.split(".")[0] for m in mods} & {"textual", "peewee", "paramiko", "rpyc"}


def calls_by_name(path: Path) -> list[str]:
    """`x.call("name", ...)` in a source file: a request sent by a bare string."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "call" and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


def test_tui_and_cli_send_requests_through_client_methods():
    sources = sorted((ROOT / "tui").glob("*.py")) + [ROOT / "shared" / "cli.py"]
    assert len(sources) > 5
    found = [hit for path in sources for hit in calls_by_name(path)]
    assert found == []
    # the scan finds what it looks for: this file sends by name on purpose
    assert calls_by_name(ROOT / "tests" / "test_protocol.py")



def test_the_clients_wire_encodes_values_as_rpyc_does():
    from rpyc.core import brine

    from labq import wire
    values = [None, True, False, 0, -48, 159, 160, -49, 1 << 70, -(1 << 63), 1.5, "", "é" * 300,
              b"", b"ab", b"x" * 70000, (), (1, "a", b"b", None), tuple(range(300)),
              ("call", '{"ids": [1]}'), (5, 0, 5.0, 1 << 20)]
    for v in values:
        assert wire.dump(v) == brine.dump(v), v
        assert wire.load(brine.dump(v)) == v
    with pytest.raises(wire.WireError):
        wire.load(brine.dump(frozenset({1})))  # never sent by labqd, so never read
    with pytest.raises(TypeError):
        wire.dump([1])
