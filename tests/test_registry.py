"""The node registry's fault logic in milliseconds: a fake clock instead of real waiting, a
real store on a temp file, node links that are never started."""
import threading

import pytest
from fakeclock import FakeClock

from labq.daemon.config import load
from labq.daemon.core import Core
from labq.daemon.identity import Caller
from labq.daemon.store import Store
from labq.errors import StorageError

HELLO = {"ev": "hello", "euid": 0, "user": "root", "cpus": 4, "memory_mb": 4096, "gpus": [],
         "gpu_source": "none", "containment": "cgroup1"}


@pytest.fixture
def parts(tmp_path):
    (tmp_path / "labq.toml").write_text(
        f'[daemon]\ndatabase = "{tmp_path}/labq.db"\nrequeue_grace = "60s"\n'
        f'socket = "{tmp_path}/s"\n'
        '[[node]]\nname = "n1"\nhost = "gpu1.example.org"\n')
    cfg = load(tmp_path / "labq.toml")
    store = Store(cfg.database)
    clock = FakeClock()
    core = Core(cfg, store, clock)
    yield core, clock
    store.close()


ROOT = Caller(uid=0, user="root", group="root", groups=frozenset({"root"}), admin=True)


def running_job(core, requeue=True):
    row = core.jobs.admission.submit(ROOT, {"command": ["true"], "cwd": "/", "env": {},
                                  "requeue": requeue})
    link = core.nodes.links["n1"]
    core.nodes.node_up(link, HELLO, [])
    with core.jobs.lock:
        core.nodes.launcher.start_job(core.jobs.active[row["id"]], "n1", ())
    return row["id"], link


def test_a_node_down_past_the_grace_period_requeues_its_runs(parts):
    core, clock = parts
    job_id, link = running_job(core)
    core.nodes.node_down(link, "link cut")
    assert core.nodes.check_nodes() == pytest.approx(60)  # seconds until the deadline
    clock.now += 59
    core.nodes.check_nodes()
    assert core.jobs.active[job_id]["state"] == "RUNNING"
    clock.now += 2
    core.nodes.check_nodes()
    job = core.jobs.active[job_id]
    assert (job["state"], job["restarts"], job["node"]) == ("PENDING", 1, None)
    assert "was down for 60 s" in core.store.events(job_id)[-1]["reason"]


def test_a_node_back_within_the_grace_period_keeps_its_runs(parts):
    core, clock = parts
    job_id, link = running_job(core)
    core.nodes.node_down(link, "link cut")
    clock.now += 30
    core.nodes.node_up(link, HELLO, [{"job": f"{job_id}.0", "started": True, "age": 30}])
    clock.now += 600
    assert core.nodes.check_nodes() is None
    assert core.jobs.active[job_id]["state"] == "RUNNING"


def test_a_run_that_may_not_be_requeued_ends_node_fail(parts):
    core, clock = parts
    job_id, link = running_job(core, requeue=False)
    core.nodes.node_down(link, "link cut")
    clock.now += 61
    core.nodes.check_nodes()
    assert job_id not in core.jobs.active
    assert core.store.job_row(job_id)["state"] == "NODE_FAIL"
    assert core.store.job_row(job_id)["end_time"] == clock.now


def test_times_recorded_come_from_the_clock(parts):
    core, clock = parts
    job_id, _link = running_job(core)
    row = core.store.job_row(job_id)
    assert row["submit_time"] == row["start_time"] == clock.now
    assert isinstance(core.wake, threading.Event) and core.wake.is_set()


def ended_rows(core, ids):
    return {i: (core.store.job_row(i)["state"], core.store.job_row(i)["exit_code"],
                [e["to_state"] for e in core.store.events(i)].count(core.store.job_row(i)["state"]))
            for i in ids}


def test_ends_reported_together_each_get_their_own_exit_code_once(parts):
    core, clock = parts
    ids = [running_job(core)[0] for _ in range(4)]
    link = core.nodes.links["n1"]
    exits = [{"ev": "exit", "job": f"{i}.0", "code": code, "signal": None, "reason": "exit",
              "end": clock.now} for i, code in zip(ids, (0, 3, 0, 7), strict=True)]
    # a second report of the same end, and an end of a run labqd does not know, change nothing
    exits += [dict(exits[1]), dict(exits[0], job="999.0")]
    core.nodes.node_event(link, {"ev": "exits", "exits": exits})
    assert ended_rows(core, ids) == {ids[0]: ("COMPLETED", 0, 1), ids[1]: ("FAILED", 3, 1),
                                     ids[2]: ("COMPLETED", 0, 1), ids[3]: ("FAILED", 7, 1)}
    assert not core.jobs.active


def test_ends_that_cannot_be_stored_together_are_stored_one_by_one(parts, monkeypatch):
    core, clock = parts
    ids = [running_job(core)[0] for _ in range(3)]
    link = core.nodes.links["n1"]
    write = core.store.record_transitions

    def one_at_a_time(rows):
        if len(rows) > 1:
            raise StorageError("database or disk is full")
        write(rows)
    monkeypatch.setattr(core.store, "record_transitions", one_at_a_time)
    core.nodes.node_event(link, {"ev": "exits", "exits": [
        {"ev": "exit", "job": f"{i}.0", "code": i % 5, "signal": None, "reason": "exit",
         "end": clock.now - 1} for i in ids]})
    rows = ended_rows(core, ids)
    assert rows == {i: ("COMPLETED" if i % 5 == 0 else "FAILED", i % 5, 1) for i in ids}
    assert all(core.store.job_row(i)["end_time"] == clock.now - 1 for i in ids)


def test_a_wait_returns_once_all_its_jobs_ended_in_whatever_order(parts):
    core, clock = parts
    first, second, third = (running_job(core)[0] for _ in range(3))
    link = core.nodes.links["n1"]
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        core.jobs.wait(ROOT, [first, second, third], 30)))
    waiter.start()

    def end(job_id):
        core.nodes.node_event(link, {"ev": "exit", "job": f"{job_id}.0", "code": 0,
                                     "signal": None, "reason": "exit", "end": clock.now})
    for job_id in (third, first):  # the newest first: the one the wait looks at
        end(job_id)
        waiter.join(0.2)
        assert waiter.is_alive()
    end(second)
    waiter.join(10)
    assert not waiter.is_alive()
    assert [v["state"] for v in got[0]] == ["COMPLETED"] * 3
    assert not core.jobs.enders  # nothing left behind for jobs that ended
