"""The node registry's fault logic in milliseconds: a fake clock instead of real waiting, a
real store on a temp file, node links that are never started."""
import threading

import pytest
from fakeclock import FakeClock

from labq.daemon.config import load
from labq.daemon.core import Core
from labq.daemon.identity import Caller
from labq.daemon.store import Store

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
