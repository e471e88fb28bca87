"""Jobs through the client library against a real labqd and real sshd nodes."""
import json
import os
import time
from pathlib import Path

import pytest
from daemonproc import as_user, wait_for
from sshnodes import ensure_user

import labq
from labq.errors import PermissionDenied, ValidationError


def sh(script: str) -> list[str]:
    return ["bash", "-c", script]


def test_job_runs_to_completed(q, tmp_path):
    job = q.submit(sh("sleep 1; echo done"), cwd=str(tmp_path), name="ok")
    assert job.state.value in ("PENDING", "RUNNING")
    wait_for(lambda: q.job(job.id).state.value == "RUNNING", what="RUNNING")
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "COMPLETED" and done.exit_code == 0
    assert q.logs(job.id) == "done\n"
    states = [e.to_state for e in q.events(job.id)]
    assert states == ["PENDING", "RUNNING", "COMPLETED"]


def test_failing_command_is_failed_with_its_exit_code(q, tmp_path):
    job = q.submit(sh("echo oops >&2; exit 7"), cwd=str(tmp_path))
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "FAILED" and done.exit_code == 7
    assert "oops" in q.logs(job.id)


def test_missing_program_fails_with_127(q, tmp_path):
    job = q.submit(["no-such-program-xyz"], cwd=str(tmp_path))
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "FAILED" and done.exit_code == 127
    assert "no-such-program-xyz" in q.logs(job.id)


def test_gpu_job_sees_exactly_its_gpus(q, tmp_path):
    job = q.submit(sh('echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER|$LABQ_JOB_ID"'),
                   gpus=3, cwd=str(tmp_path))
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "COMPLETED"
    assert done.node == "a4" and len(done.gpu_indices) == 3
    visible, order, job_id = q.logs(job.id).strip().split("|")
    assert [int(i) for i in visible.split(",")] == done.gpu_indices
    assert order == "PCI_BUS_ID" and job_id == str(job.id)


def test_cpu_job_sees_no_gpus(q, tmp_path):
    job = q.submit(sh('echo "[${CUDA_VISIBLE_DEVICES-unset}]"'), cwd=str(tmp_path))
    q.wait(job.id, timeout=30)
    assert q.logs(job.id).strip() == "[]"


def test_detected_gpus_come_from_nvidia_smi(q):
    nodes = {n.name: n for n in q.nodes()}
    h2 = nodes["h2"]
    assert h2.state == "up" and h2.gpu_source == "nvidia-smi"
    assert [(g.index, g.type) for g in h2.gpus] == [(0, "NVIDIA H100 80GB HBM3"),
                                                     (1, "NVIDIA H100 80GB HBM3")]
    assert all(g.memory_mb > 80000 for g in h2.gpus)
    a4 = nodes["a4"]
    assert a4.gpu_source == "config" and [g.type for g in a4.gpus] == ["A100"] * 4


def test_gpu_type_and_memory_select_the_node(q, tmp_path):
    job = q.submit(sh("echo $CUDA_VISIBLE_DEVICES"), gpus=1, gpu_type="h100",
                   gpu_memory="40G", cwd=str(tmp_path))
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "COMPLETED" and done.node == "h2"


def test_two_2gpu_jobs_share_a_4gpu_node_and_a_third_waits(q, tmp_path):
    gate = tmp_path / "go"
    script = f"while [ ! -e {gate} ]; do sleep 0.1; done"
    jobs = [q.submit(sh(script), gpus=2, gpu_type="A100", cwd=str(tmp_path)) for _ in range(3)]
    try:
        wait_for(lambda: [q.job(j.id).state.value for j in jobs[:2]] == ["RUNNING"] * 2,
                 what="two jobs running")
        first, second = q.job(jobs[0].id), q.job(jobs[1].id)
        assert first.node == second.node == "a4"
        assert not set(first.gpu_indices) & set(second.gpu_indices)
        third = wait_for(lambda: (lambda j: j.reason and j)(q.job(jobs[2].id)), what="reason")
        assert third.state.value == "PENDING" and third.reason == "Resources"
        gate.write_text("")
        done = q.wait(*[j.id for j in jobs], timeout=60)
        assert [j.state.value for j in done] == ["COMPLETED"] * 3
        assert done[2].start_time >= min(done[0].end_time, done[1].end_time)
    finally:
        gate.write_text("")


def test_unknown_gpu_type_stays_pending_with_a_reason(q, tmp_path):
    job = q.submit(["true"], gpus=1, gpu_type="V100", cwd=str(tmp_path))
    try:
        pending = wait_for(lambda: (lambda j: j.reason and j)(q.job(job.id)), what="reason")
        assert pending.state.value == "PENDING" and pending.reason == "NoNodeFits"
        time.sleep(0.5)
        assert q.job(job.id).state.value == "PENDING"
    finally:
        q.cancel(job.id)


def test_cancel_kills_the_whole_process_group(q, tmp_path):
    pidfile = tmp_path / "child.pid"
    job = q.submit(sh(f"sleep 300 & echo $! > {pidfile}; echo started; wait"),
                   cwd=str(tmp_path))
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="child pid")
    child = int(pidfile.read_text())
    os.kill(child, 0)  # the child sleep is alive
    [cancelled] = q.cancel(job.id)
    assert cancelled.state.value == "CANCELLED"
    assert "cancelled by" in cancelled.reason

    def gone():
        try:
            os.kill(child, 0)
            return False
        except ProcessLookupError:
            return True
    wait_for(gone, timeout=10, what="the child sleep to die")


def test_cancel_pending_job(q, tmp_path):
    job = q.submit(["true"], gpus=99, cwd=str(tmp_path))
    [c] = q.cancel(job.id)
    assert c.state.value == "CANCELLED" and c.start_time is None


def test_cancelling_many_queued_jobs_ends_each_once_even_when_named_twice(q, tmp_path):
    # more than one chunk of jobs, held and pending, one of them named twice
    jobs = [q.submit(["true"], gpus=99, hold=k % 2 == 0, cwd=str(tmp_path))
            for k in range(300)]
    ids = [j.id for j in jobs]
    out = q.cancel(*ids, ids[7], reason="too many")
    assert sorted({c.id for c in out}) == ids
    assert all(c.state.value == "CANCELLED" and c.start_time is None for c in out)
    for jid in (ids[0], ids[7], ids[-1]):
        ends = [e for e in q.events(jid) if e.to_state == "CANCELLED"]
        assert len(ends) == 1 and ends[0].reason.endswith(": too many")


def test_follow_streams_lines_while_the_job_runs(q, tmp_path):
    gate = tmp_path / "gate"
    job = q.submit(sh(f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second"),
                   cwd=str(tmp_path))
    chunks = []
    stream = q.follow(job.id)
    try:
        chunks.append(next(stream))
        assert chunks[0] == "first\n"
        assert q.job(job.id).state.value == "RUNNING"  # seen before the job ended
        gate.write_text("")
        chunks.extend(stream)
    finally:
        gate.write_text("")
    assert "".join(chunks) == "first\nsecond\n"
    assert q.job(job.id).state.value == "COMPLETED"


def test_argv_env_and_cwd_arrive_intact(q, cluster, tmp_path):
    weird = ["a b", '"quoted"', "it's", "$(touch /tmp/labq-pwned)", "`id`", "ünïcödé ✓",
             "semi;colon", "back\\slash", "new\nline", "", "*", "$HOME"]
    cwd = tmp_path / "dir with spaces $(x) 'q'"
    cwd.mkdir()
    env = {"WEIRD_VALUE": "$(id) `x` 'y' \"z\" ü", "EMPTY": ""}
    script = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),"
              " 'w': os.environ['WEIRD_VALUE'], 'e': os.environ['EMPTY']}))")
    job = q.submit(["python3", "-c", script, *weird], cwd=str(cwd), env=env)
    [done] = q.wait(job.id, timeout=30)
    assert done.state.value == "COMPLETED", q.logs(job.id)
    got = json.loads(q.logs(job.id))
    assert got == {"argv": weird, "cwd": str(cwd), "w": env["WEIRD_VALUE"], "e": ""}
    assert not os.path.exists("/tmp/labq-pwned")
    # the agent's job root (with spaces, quotes and $() in its name) was used as given
    root = Path({n["name"]: n for n in cluster.config["node"]}[done.node]["job_root"])
    assert "$(touch pwned) 'q'" in root.name and root.is_dir()
    assert not (root.parent / "pwned").exists() and not Path("pwned").exists()


def test_shell_string_runs_with_bash(q, tmp_path):
    job = q.submit("for i in 1 2 3; do echo -n $i; done; echo", cwd=str(tmp_path))
    q.wait(job.id, timeout=30)
    assert q.logs(job.id) == "123\n"
    assert q.job(job.id).command == "for i in 1 2 3; do echo -n $i; done; echo"


def test_unknown_host_key_is_refused(q):
    node = wait_for(lambda: (lambda n: n.state == "refused" and n)(
        {n.name: n for n in q.nodes()}["nokey"]), what="nokey refused")
    assert "not in" in node.reason and "known_hosts" in node.reason
    assert node.gpus == []


def test_invalid_submissions_are_refused_and_store_nothing(q, tmp_path):
    before = [j.id for j in q.jobs()]
    bad_specs = [
        {"command": ["true"], "gpus": -1},
        {"command": ["true"], "gpus": 10 ** 9},
        {"command": ["true"], "memory_mb": 10 ** 15},
        {"command": ["true"], "time_limit_s": 10 ** 10},
        {"command": ["true"], "bogus": 1},
        {"command": ["true"], "gpus": "2"},
        {"command": ["true"], "gpus": 1.5},
        {"command": ["true"], "priority": 11},
        {"command": ["true"], "priority": True},
        {"command": []},
        {"command": 42},
        {"command": ["true", 3]},
        {"command": ["tr\x00ue"]},
        {"command": ["true"], "env": {"BAD NAME": "x"}},
        {"command": ["true"], "env": {"A": 1}},
        {"command": ["true"], "cwd": "relative/path"},
        {"command": ["true"], "dependencies": ["afterok:999999"]},
        {"command": ["true"], "dependencies": ["sometimes:1"]},
        {"name": "no command"},
        "not a mapping",
    ]
    for spec in bad_specs:
        with pytest.raises(ValidationError) as e:
            q.call("submit", spec=spec)
        assert e.value.code == "VALIDATION_ERROR" and e.value.message
    assert [j.id for j in q.jobs()] == before
    # ids are not consumed by refused requests
    job = q.submit(["true"], cwd=str(tmp_path))
    assert job.id == max([0] + [j.id for j in q.jobs(include_ended=True) if j.id != job.id]) + 1


def test_other_user_cannot_cancel_or_read_logs(q, cluster, tmp_path):
    uid, gid = ensure_user("labqtest")
    job = q.submit(sh("sleep 30"), cwd=str(tmp_path), env={"SECRET": "hunter2"})

    def as_b():
        with labq.connect(cluster.socket) as qb:
            out = {"whoami": qb.whoami()["user"]}
            for name, fn in [("cancel", lambda: qb.cancel(job.id)),
                             ("logs", lambda: qb.logs(job.id)),
                             ("hold", lambda: qb.hold(job.id))]:
                try:
                    fn()
                    out[name] = "allowed"
                except PermissionDenied as e:
                    out[name] = e.code
            out["env"] = qb.job(job.id).env
            out["listed"] = job.id in [x.id for x in qb.jobs()]
            return out
    try:
        assert as_user(uid, gid, as_b) == {
            "whoami": "labqtest", "cancel": "PERMISSION_DENIED", "logs": "PERMISSION_DENIED",
            "hold": "PERMISSION_DENIED", "env": None, "listed": True}
        assert q.job(job.id).state.value == "RUNNING"
        assert q.job(job.id).env["SECRET"] == "hunter2"  # the owner sees it
    finally:
        q.cancel(job.id)


def test_owner_comes_from_the_socket_not_the_request(q, tmp_path):
    with pytest.raises(ValidationError):
        q.call("submit", spec={"command": ["true"], "owner": "someone-else"})
    job = q.submit(["true"], cwd=str(tmp_path))
    assert job.owner == "root"
