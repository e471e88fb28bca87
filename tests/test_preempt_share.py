"""Preemption of what a group runs beyond its share (scheduler.preempt_over_share), in a real
labqd with a real SSH node, as two Unix users of two groups of equal share: a job of the group
over its share is stopped and requeued for the other group's job, though it was not submitted
preemptible; a group within its share is never stopped; a job that has run longer than
preempt_max_run is kept, while a younger one is taken back."""

import time

import pytest
from daemonproc import wait_for
from nodedaemon import daemon_on_nodes, writable_dir
from userkit import cli_venv, requeues, show, submit
from userkit import user_on as user

GPUS = [{"type": "A100", "memory_mb": 40960}] * 2


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("preempt-share"), ["s2"], GPUS, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s"},
        "scheduler": {"interval": "1s", "preempt_min_run": "0s", "preempt_over_share": True},
        # each group is owed one of the node's two GPUs
        "groups": {"labqtest": {"share": 1}, "labqtest2": {"share": 1}},
    }) as d:
        yield d


def test_a_group_over_its_share_has_its_latest_job_requeued_for_a_group_under_it(daemon, venv):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    shared = writable_dir("labq-share-")
    gate = shared / "gate"
    # alice takes both GPUs, neither job preemptible; the second's rerun ends at once
    first = submit(alice, "--gpus", "1", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    wait_for(lambda: show(alice, first)["state"] == "RUNNING", what="first running")
    second = submit(alice, "--gpus", "1", "--wrap",
                    '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; exit 0')
    wait_for(lambda: show(alice, second)["state"] == "RUNNING", what="second running")
    assert show(alice, second)["preemptible"] is False
    mine = submit(bob, "--gpus", "1", "--", "echo", "mine")
    assert bob.labq("wait", mine, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", second, "--timeout", "60", timeout=90).returncode == 0
    stopped = requeues(alice, second)
    assert len(stopped) == 1
    assert f"preempted by job {mine} of labqtest2 (group labqtest2)" in stopped[0]["reason"]
    assert show(alice, second)["preemptions"] == 1
    assert show(alice, first)["state"] == "RUNNING" and not requeues(alice, first)
    gate.write_text("")
    assert alice.labq("wait", first, "--timeout", "60", timeout=90).returncode == 0


def test_a_group_within_its_share_is_never_stopped(daemon, venv):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    shared = writable_dir("labq-share-")
    gate = shared / "gate"
    hers = submit(alice, "--gpus", "1", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    his = submit(bob, "--gpus", "1", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    wait_for(lambda: show(alice, hers)["state"] == "RUNNING"
             and show(bob, his)["state"] == "RUNNING", what="both running")
    # bob holds his share: his next job, even at the top priority, waits for a free GPU
    more = submit(bob, "--priority", "10", "--gpus", "1", "--", "true")
    # reserved for, with an estimated start: several scheduling passes
    wait_for(lambda: show(bob, more)["reason"] == "Resources"
             and show(bob, more)["estimated_start"], what="more waits")
    assert show(alice, hers)["state"] == "RUNNING" and not requeues(alice, hers)
    gate.write_text("")
    assert bob.labq("wait", his, more, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", hers, "--timeout", "60", timeout=90).returncode == 0
    assert show(alice, hers)["preemptions"] == 0


MAX_RUN_S = 12


@pytest.fixture(scope="module")
def long_runs_kept(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("preempt-max-run"), ["s2"], GPUS, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s"},
        "scheduler": {"interval": "1s", "preempt_min_run": "0s", "preempt_over_share": True,
                      "preempt_max_run": f"{MAX_RUN_S}s"},
        "groups": {"labqtest": {"share": 1}, "labqtest2": {"share": 1}},
    }) as d:
        yield d


def test_a_job_that_has_run_longer_than_preempt_max_run_is_not_taken_back(long_runs_kept,
                                                                          venv):
    alice, bob = user("labqtest", venv, long_runs_kept), user("labqtest2", venv, long_runs_kept)
    shared = writable_dir("labq-share-")
    gate = shared / "gate"
    wait_gate = f"while [ ! -e {gate} ]; do sleep 0.1; done"
    # alice runs beyond her share on both GPUs, with jobs that have run past the limit
    old = [submit(alice, "--gpus", "1", "--wrap", wait_gate) for _ in range(2)]
    wait_for(lambda: all(show(alice, j)["state"] == "RUNNING" for j in old),
             what="alice's jobs running")
    time.sleep(MAX_RUN_S + 1)
    his = submit(bob, "--gpus", "1", "--", "echo", "his")
    # several scheduling passes: bob's job waits for a GPU instead of taking one back
    wait_for(lambda: show(bob, his)["reason"] == "Resources"
             and show(bob, his)["estimated_start"], what="his waits")
    time.sleep(3)
    assert show(bob, his)["state"] == "PENDING"
    assert all(show(alice, j)["state"] == "RUNNING" and not requeues(alice, j) for j in old)
    # one of hers ends: bob's job takes the GPU, and her next job, young, is taken back for
    # bob's next one
    alice.labq("cancel", str(old[0]))
    assert bob.labq("wait", his, "--timeout", "60", timeout=90).returncode == 0
    young = submit(alice, "--gpus", "1", "--wrap",
                   '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; exit 0')
    wait_for(lambda: show(alice, young)["state"] == "RUNNING", what="young running")
    mine = submit(bob, "--gpus", "1", "--", "echo", "mine")
    assert bob.labq("wait", mine, "--timeout", "60", timeout=90).returncode == 0
    assert len(requeues(alice, young)) == 1
    assert alice.labq("wait", young, "--timeout", "60", timeout=90).returncode == 0
    assert not requeues(alice, old[1])
    gate.write_text("")
    assert alice.labq("wait", old[1], "--timeout", "60", timeout=90).returncode == 0


@pytest.fixture(scope="module")
def floor_daemon(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("preempt-floor"), ["s10"],
                         [{"type": "A100", "memory_mb": 40960}] * 10, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s"},
        "scheduler": {"interval": "1s", "preempt_min_run": "0s", "preempt_over_share": True,
                      "preempt_share_floor": 0.7},
        # each group is owed 5 of the node's 10 GPUs, and takes back at most up to 3.5
        "groups": {"labqtest": {"share": 1}, "labqtest2": {"share": 1}},
    }, node={"cpus": 16}) as d:  # one CPU for each job, whatever this machine has
        yield d


def test_a_group_above_preempt_share_floor_waits_and_one_below_it_takes_back(floor_daemon,
                                                                             venv):
    alice, bob = user("labqtest", venv, floor_daemon), user("labqtest2", venv, floor_daemon)
    gate = writable_dir("labq-share-") / "gate"
    wait_gate = f"while [ ! -e {gate} ]; do sleep 0.5; done"

    def running(who, ids):
        return all(show(who, j)["state"] == "RUNNING" for j in ids)

    his = [submit(bob, "--gpus", "1", "--wrap", wait_gate) for _ in range(4)]
    wait_for(lambda: running(bob, his), what="bob's four running")
    hers = [submit(alice, "--gpus", "1", "--wrap", wait_gate) for _ in range(6)]
    wait_for(lambda: running(alice, hers), what="alice's six running")
    # bob holds 4 of his 5, more than 70 %: his next job waits for one to end
    more = submit(bob, "--gpus", "1", "--wrap", wait_gate)
    wait_for(lambda: show(bob, more)["reason"] == "Resources"
             and show(bob, more)["estimated_start"], what="more waits")
    time.sleep(3)
    assert show(bob, more)["state"] == "PENDING"
    assert running(alice, hers) and not any(requeues(alice, j) for j in hers)
    # with 2 of his 5 he may take one back; alice runs 8, 3 beyond her share
    assert bob.labq("cancel", str(more), str(his[0]), str(his[1])).returncode == 0
    hers += [submit(alice, "--gpus", "1", "--wrap", wait_gate) for _ in range(2)]
    wait_for(lambda: running(alice, hers), what="alice's eight running")
    mine = submit(bob, "--gpus", "1", "--wrap", wait_gate)
    wait_for(lambda: show(bob, mine)["state"] == "RUNNING", what="bob's job taken back")
    stopped = [j for j in hers if requeues(alice, j)]
    assert stopped == [hers[-1]]
    assert f"preempted by job {mine} of labqtest2" in requeues(alice, hers[-1])[0]["reason"]
    gate.write_text("")
    assert alice.labq("wait", *hers, "--timeout", "90", timeout=120).returncode == 0
    assert bob.labq("wait", mine, his[2], his[3], "--timeout", "90", timeout=120).returncode == 0
