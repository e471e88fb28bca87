"""The fair policy inside a real labqd with a real SSH node: quotas, fair-share, dependencies,
submission limits and the admin controls."""
import itertools
import os
import subprocess

import pytest
from daemonproc import Daemon, as_user, wait_for
from sshnodes import NodeSet, ensure_user

import labq
from labq.errors import InvalidState, PermissionDenied, QuotaExceeded, ValidationError

GPUS = [{"type": "A100", "memory_mb": 40960}] * 4


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    base = tmp_path_factory.mktemp("fair")
    with NodeSet(base / "nodes", names=["n4"]) as ns:
        entries = ns.config_entries({"n4": GPUS})
        entries[0]["job_root"] = str(base / "jobs")
        d = Daemon(base / "daemon", {
            "daemon": {"socket_mode": "0666", "kill_grace": "2s"},
            "scheduler": {"weight_age": 0, "weight_priority": 100, "weight_fairshare": 10000,
                          "interval": "1s"},
            "limits": {"user_max_pending": 50, "job_max_gpus": 4},
            "groups": {"capped": {"max_gpus": 2}},
            "node": entries,
        })
        with d.start(wait_nodes=1):
            yield d


@pytest.fixture
def q(fair):
    with fair.client() as c:
        yield c


def gate_job(q, tmp_path, name, gate, **kw):
    return q.submit(["bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                    cwd=str(tmp_path), name=name, **kw)


def test_group_over_its_gpu_quota_waits_while_another_group_starts(q, tmp_path):
    gate = tmp_path / "gate"
    try:
        a = gate_job(q, tmp_path, "a", gate, gpus=2, group="capped")
        wait_for(lambda: q.job(a.id).state.value == "RUNNING", what="a running")
        b = gate_job(q, tmp_path, "b", gate, gpus=1, group="capped")
        c = gate_job(q, tmp_path, "c", gate, gpus=1, group="free")
        wait_for(lambda: q.job(c.id).state.value == "RUNNING", what="other group starts")
        waiting = wait_for(lambda: (lambda j: j.reason and j)(q.job(b.id)), what="reason")
        assert waiting.state.value == "PENDING" and waiting.reason == "QuotaGroupGPU"
        groups = {g["group"]: g for g in q.groups()}
        assert groups["capped"]["max_gpus"] == 2 and groups["capped"]["gpus_in_use"] == 2
    finally:
        gate.write_text("")
    done = q.wait(a.id, b.id, c.id, timeout=60)
    assert [j.state.value for j in done] == ["COMPLETED"] * 3
    assert done[1].start_time >= done[0].end_time - 0.5


def test_groups_interleave_fairly_after_usage_accrues(q, tmp_path):
    # group "heavy" has used the cluster; "light" has not
    warm = q.submit(["sleep", "1.5"], gpus=4, group="heavy", cwd=str(tmp_path))
    q.wait(warm.id, timeout=30)
    gate = tmp_path / "gate2"
    blocker = gate_job(q, tmp_path, "blocker", gate, gpus=4, group="other")
    wait_for(lambda: q.job(blocker.id).state.value == "RUNNING", what="blocker")
    heavy = [q.submit(["sleep", "1"], gpus=4, group="heavy", cwd=str(tmp_path),
                      name=f"heavy{i}") for i in range(3)]
    light = [q.submit(["sleep", "1"], gpus=4, group="light", cwd=str(tmp_path),
                      name=f"light{i}") for i in range(3)]
    pending = wait_for(lambda: (lambda p: all(p[j.id].priority_score is not None
                                              for j in heavy + light) and p)(
        {j.id: j for j in q.jobs(states=["PENDING"])}), what="priority scores")
    assert pending[light[0].id].priority_score > pending[heavy[0].id].priority_score
    gate.write_text("")
    done = q.wait(*[j.id for j in heavy + light], timeout=120)
    order = [j.name[:5] for j in sorted(done, key=lambda j: j.start_time)]
    assert order[0] == "light"  # submitted later, but its group used less
    assert order != ["heavy"] * 3 + ["light"] * 3  # not FIFO
    # interleaved: no group starts more than twice in a row, both within the first three
    runs = [len(list(g)) for _, g in itertools.groupby(order)]
    assert max(runs) <= 2 and set(order[:3]) == {"heavy", "light"}, order
    usage = q.usage(days=1)
    hours = {g["group"]: g["gpu_hours"] for g in usage["groups"]}
    assert hours["heavy"] > 0 and hours["light"] > 0
    fs = {g["group"]: g["fairshare"] for g in usage["groups"]}
    assert 0 < fs["heavy"] < 1


def test_afterok_chain_runs_in_order_and_a_failed_parent_cancels(q, tmp_path):
    log = tmp_path / "order"
    a = q.submit(["bash", "-c", f"sleep 0.5; echo a >> {log}"], cwd=str(tmp_path))
    b = q.submit(["bash", "-c", f"echo b >> {log}"], after=[a.id], cwd=str(tmp_path))
    c = q.submit(["bash", "-c", f"echo c >> {log}"], after=[b.id], cwd=str(tmp_path))
    assert q.job(c.id).state.value == "PENDING"
    done = q.wait(a.id, b.id, c.id, timeout=60)
    assert [j.state.value for j in done] == ["COMPLETED"] * 3
    assert log.read_text() == "a\nb\nc\n"
    bad = q.submit(["bash", "-c", "exit 3"], cwd=str(tmp_path))
    child = q.submit(["true"], after=[bad.id], cwd=str(tmp_path))
    on_fail = q.submit(["true"], after=[f"afternotok:{bad.id}"], cwd=str(tmp_path))
    anyway = q.submit(["true"], after=[f"afterany:{bad.id}"], cwd=str(tmp_path))
    done = q.wait(bad.id, child.id, on_fail.id, anyway.id, timeout=60)
    assert [j.state.value for j in done] == ["FAILED", "CANCELLED", "COMPLETED", "COMPLETED"]
    assert done[1].reason == "DependencyNeverSatisfied" and done[1].start_time is None
    ok = q.submit(["true"], cwd=str(tmp_path))
    q.wait(ok.id, timeout=30)
    never = q.submit(["true"], after=[f"afternotok:{ok.id}"], cwd=str(tmp_path))
    assert q.wait(never.id, timeout=30)[0].state.value == "CANCELLED"


def test_submission_limits_refuse_with_quota_exceeded(q, tmp_path):
    with pytest.raises(QuotaExceeded, match="job_max_gpus"):
        q.submit(["true"], gpus=5, gpu_type="none", cwd=str(tmp_path))
    uid, gid = ensure_user("labqtest")

    def flood():
        with labq.connect(q.socket_path) as qb:
            ids = []
            try:
                for _ in range(60):
                    ids.append(qb.submit(["true"], hold=True, cwd="/tmp",
                                         export_env=False).id)
            except QuotaExceeded as e:
                qb.cancel(*ids)
                return {"accepted": len(ids), "code": e.code, "message": e.message}
            qb.cancel(*ids)
            return {"accepted": len(ids)}
    out = as_user(uid, gid, flood)
    assert out["accepted"] == 50 and out["code"] == "QUOTA_EXCEEDED"
    assert "user_max_pending" in out["message"]


def test_admin_controls_and_who_may_use_them(q, tmp_path, fair):
    job = q.submit(["true"], hold=True, cwd=str(tmp_path))
    changed = q.set_priority(job.id, 9)
    assert changed.priority == 9
    assert any("priority 5 -> 9" in (e.reason or "") for e in q.events(job.id))
    q.release(job.id)
    q.wait(job.id, timeout=30)
    with pytest.raises(InvalidState):
        q.set_priority(job.id, 3)
    with pytest.raises(ValidationError):
        q.set_group("vision", share=-1)
    g = q.set_group("vision", share=4, max_gpus=3, max_gpus_by_type={"A100": 2},
                    users={"alice": 2})
    assert (g["share"], g["max_gpus"], g["max_gpus_by_type"], g["users"]) == (
        4, 3, {"A100": 2}, {"alice": 2})
    uid, gid = ensure_user("labqtest")

    def try_admin():
        with labq.connect(fair.socket) as qb:
            out = {}
            for name, fn in [("group", lambda: qb.set_group("vision", share=100)),
                             ("drain", lambda: qb.drain("n4"))]:
                try:
                    fn()
                    out[name] = "allowed"
                except PermissionDenied as e:
                    out[name] = e.code
            return out
    assert as_user(uid, gid, try_admin) == {"group": "PERMISSION_DENIED",
                                             "drain": "PERMISSION_DENIED"}


def test_group_settings_survive_a_restart(fair):
    with fair.client() as q:
        q.set_group("persist", share=7)
    fair.stop()
    fair.start(wait_nodes=1)
    with fair.client() as q:
        assert {g["group"]: g for g in q.groups()}["persist"]["share"] == 7
        assert {g["group"] for g in q.usage(days=1)["groups"]} >= {"heavy", "light"}


def test_pending_job_shows_an_estimated_start(q, tmp_path):
    gate = tmp_path / "gate3"
    try:
        blocker = q.submit(["bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                           gpus=4, time_limit="10m", cwd=str(tmp_path))
        wait_for(lambda: q.job(blocker.id).state.value == "RUNNING", what="blocker")
        waiting = q.submit(["true"], gpus=4, time_limit="5m", cwd=str(tmp_path))
        after = q.submit(["true"], gpus=2, priority=1, cwd=str(tmp_path))
        job = wait_for(lambda: (lambda j: j.estimated_start and j)(q.job(waiting.id)),
                       what="estimate")
        started = q.job(blocker.id).start_time
        assert abs(job.estimated_start - (started + 600)) < 5
        assert job.reason == "Resources"
        # the job behind the reservation gets a time too: after the reserved one's limit
        later = wait_for(lambda: (lambda j: j.estimated_start and j)(q.job(after.id)),
                         what="second estimate")
        assert abs(later.estimated_start - (started + 900)) < 5
        assert later.reason == "Priority"
        assert "est. start" in subprocess.run(
            ["labq", "show", str(after.id)], capture_output=True, text=True,
            env=dict(os.environ, LABQ_SOCKET=str(q.socket_path))).stdout
    finally:
        gate.write_text("")
    q.wait(waiting.id, after.id, timeout=30)
