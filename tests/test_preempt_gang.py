"""Gangs and preemption in a real labqd with two real SSH nodes, as two Unix users of two groups
of equal share (scheduler.preempt_over_share): a gang running beyond its group's share is
stopped whole (both parts) and requeued whole for the other group's job, then runs again whole
and finishes; a gang of a group under its share takes back a GPU on each node and starts; a
job that runs within its group's share is never stopped."""
from pathlib import Path

import pytest
from daemonproc import wait_for
from nodedaemon import daemon_on_nodes, writable_dir
from sshnodes import alive
from userkit import cli_venv, requeues, show, submit
from userkit import user_on as user

GPUS = [{"type": "A100", "memory_mb": 40960}] * 2
NAMES = ["q1", "q2"]


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("preempt-gang"), NAMES, GPUS, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s", "local_node": False},
        "scheduler": {"interval": "1s", "preempt_min_run": "0s", "preempt_over_share": True},
        # each group is owed two of the four GPUs
        "groups": {"labqtest": {"share": 1}, "labqtest2": {"share": 1}},
    }) as d:
        yield d


@pytest.fixture
def shared():
    return writable_dir("labq-pgang-")


def pid_of(shared: Path, run: int, rank: int) -> int:
    path = shared / f"pid.{run}.{rank}"
    wait_for(lambda: path.exists() and path.read_text().strip(), what=path.name)
    return int(path.read_text())


def test_a_gang_beyond_its_groups_share_is_stopped_and_requeued_whole(daemon, venv, shared):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    # alice's gang takes all four GPUs, not submitted preemptible; its first run waits to be
    # stopped; in its second, rank 0 ends once part 1 has
    gang = submit(alice, "--nodes", "2", "--gpus-per-node", "2", "--wrap",
                  f"echo $$ > {shared}/pid.$LABQ_RESTART_COUNT.$NODE_RANK; "
                  'echo "part $NODE_RANK run $LABQ_RESTART_COUNT"; '
                  '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; '
                  f'if [ "$NODE_RANK" = 0 ]; then while [ ! -e {shared}/one ]; do sleep 0.1; '
                  f"done; else touch {shared}/one; fi")
    first = [pid_of(shared, 0, 0), pid_of(shared, 0, 1)]
    assert show(alice, gang)["preemptible"] is False
    mine = submit(bob, "--gpus", "2", "--", "echo", "mine")
    assert bob.labq("wait", mine, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", gang, "--timeout", "60", timeout=90).returncode == 0
    # both parts of the first run were stopped: never half a gang running
    wait_for(lambda: not any(alive(p) for p in first), what="both parts stopped")
    stopped = requeues(alice, gang)
    assert len(stopped) == 1
    assert f"preempted by job {mine} of labqtest2 (group labqtest2)" in stopped[0]["reason"]
    job = show(alice, gang)
    assert job["state"] == "COMPLETED" and job["preemptions"] == 1 and job["restarts"] == 1
    assert sorted(n for n, _ in job["parts"]) == NAMES
    for part in ("0", "1"):
        # a part's log is copied as it comes: the second run's line may follow the job's end
        wait_for(lambda p=part: f"part {p} run 1" in alice.ok("logs", gang, "--part", p),
                 what=f"part {part}'s second run in its log")
        log = alice.ok("logs", gang, "--part", part)
        assert f"part {part} run 0" in log and "preempted by job" in log
    # bob cannot read the parts of alice's gang
    r = bob.labq("logs", gang, "--part", "1")
    assert r.returncode != 0 and "belongs to labqtest" in r.stderr


def test_a_gang_of_a_group_under_its_share_takes_a_gpu_back_on_each_node(daemon, venv,
                                                                         shared):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    gate = shared / "gate"
    # alice runs four one-GPU jobs, two on each node: two GPUs beyond her share
    hers = [submit(alice, "--gpus", "1", "--wrap",
                   f'[ "$LABQ_RESTART_COUNT" = 0 ] || exit 0; '
                   f"while [ ! -e {gate} ]; do sleep 0.1; done") for _ in range(4)]
    wait_for(lambda: all(show(alice, j)["state"] == "RUNNING" for j in hers),
             what="alice's jobs running")
    gang = submit(bob, "--nodes", "2", "--gpus-per-node", "1", "--wrap",
                  'echo "part $NODE_RANK of $LABQ_NUM_NODES"')
    assert bob.labq("wait", gang, "--timeout", "60", timeout=90).returncode == 0
    done = show(bob, gang)
    assert done["state"] == "COMPLETED" and sorted(n for n, _ in done["parts"]) == NAMES
    stopped = [j for j in hers if requeues(alice, j)]
    assert len(stopped) == 2  # one on each node, and no more than she ran beyond her share
    nodes = {requeues(alice, j)[0]["reason"].rsplit(" on ", 1)[1] for j in stopped}
    assert nodes == set(NAMES)
    kept = [j for j in hers if j not in stopped]
    assert all(show(alice, j)["state"] == "RUNNING" and show(alice, j)["preemptions"] == 0
               for j in kept)
    gate.write_text("")
    assert alice.labq("wait", *hers, "--timeout", "60", timeout=90).returncode == 0
