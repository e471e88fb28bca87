"""Gangs on two real SSH nodes, tried as two Unix users with the real CLI: a job of two parts
starts on both nodes with the variables torchrun reads, keeps one log per part, ends when
rank 0 ends or a part fails, is cancelled whole, and is requeued whole when a node dies."""
import json
import socket
from pathlib import Path

import pytest
from daemonproc import wait_for
from faultkit import crash_node
from nodedaemon import daemon_on_nodes, writable_dir
from sshnodes import alive
from userkit import cli_venv, show, submit
from userkit import user_on as user

from labq.daemon import gangs

GPUS = [{"type": "A100", "memory_mb": 40960}] * 2
NAMES = ["g1", "g2"]


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def gang(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("gang"), NAMES, GPUS, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s", "heartbeat": "1s",
                   "node_timeout": "3s", "requeue_grace": "3s", "local_node": False},
        "scheduler": {"interval": "1s"},
    }) as d:
        yield d


@pytest.fixture
def shared():
    return writable_dir("labq-gang-")


def pid_of(shared: Path, run: int, rank: int) -> int:
    path = shared / f"pid.{run}.{rank}"
    wait_for(lambda: path.exists() and path.read_text().strip(), what=f"{path.name}")
    return int(path.read_text())


# each part writes its pid, then rank 0 does `ZERO` and the others `REST`
def parts_script(shared: Path, zero: str, rest: str) -> str:
    return (f"echo $$ > {shared}/pid.$LABQ_RESTART_COUNT.$NODE_RANK; "
            f'echo "part $NODE_RANK of $LABQ_NUM_NODES on $LABQ_NODE as $(id -un)"; '
            f'if [ "$NODE_RANK" = 0 ]; then {zero}; else {rest}; fi')


def test_a_gang_starts_on_both_nodes_with_torchrun_variables_and_a_log_per_part(gang, venv,
                                                                                 shared):
    alice, bob = user("labqtest", venv, gang), user("labqtest2", venv, gang)
    # --gpus 4 on nodes of 2: split into two whole nodes
    jid = submit(alice, "--gpus", "4", "--wrap", parts_script(
        shared, f"while [ ! -s {shared}/pid.0.1 ]; do sleep 0.1; done; "
                "echo world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT "
                "cuda=$CUDA_VISIBLE_DEVICES pet=$PET_NNODES/$PET_NODE_RANK/$PET_NPROC_PER_NODE"
                "/$PET_MASTER_PORT; sleep 1",
        "exec sleep 600"))
    # rank 0 ends: the gang ends with it, and part 1, which would sleep on, is stopped
    assert alice.labq("wait", jid, "--timeout", "60", timeout=90).returncode == 0
    job = show(alice, jid)
    assert job["state"] == "COMPLETED" and job["nodes"] == 2 and job["gpus"] == 4
    assert sorted(n for n, _ in job["parts"]) == NAMES and job["node"] == job["parts"][0][0]
    assert all(len(g) == 2 for _, g in job["parts"])
    wait_for(lambda: not alive(pid_of(shared, 0, 1)), what="part 1 stopped")
    zero, one = alice.ok("logs", jid), alice.ok("logs", jid, "--part", "1")
    port = 20000 + int(jid) % 10000
    assert f"part 0 of 2 on {job['parts'][0][0]} as labqtest" in zero
    assert f"world=4 master=127.0.0.1:{port} cuda=0,1 pet=2/0/2/{port}" in zero
    assert f"part 1 of 2 on {job['parts'][1][0]} as labqtest" in one and "world" not in one
    text = alice.ok("show", jid)
    for rank, (node, _) in enumerate(job["parts"]):
        assert f"part {rank}" in text and node in text
    # another user reads neither part; a part the job does not have is named
    r = bob.labq("logs", jid, "--part", "1")
    assert r.returncode != 0 and "belongs to labqtest" in r.stderr
    r = alice.labq("logs", jid, "--part", "2")
    assert r.returncode != 0 and "has no part 2" in r.stderr


def test_a_gang_whose_master_port_is_taken_is_queued_again_on_another(gang, venv, shared):
    alice = user("labqtest", venv, gang)
    jid = submit(alice, "--hold", "--nodes", "2", "--wrap",
                 parts_script(shared, "echo port=$MASTER_PORT", "true"))
    taken = gangs.master_port(int(jid))
    with socket.socket() as s:  # something else listens on the port rank 0 would get
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", taken))
        s.listen()
        alice.ok("release", jid)
        assert alice.labq("wait", jid, "--timeout", "60", timeout=90).returncode == 0
    job = show(alice, jid)
    assert job["state"] == "COMPLETED" and job["restarts"] == 1
    assert f"port={gangs.master_port(int(jid), 1)}" in alice.ok("logs", jid)
    assert f"MASTER_PORT {taken} is in use" in alice.ok("events", jid)
    # the first run's parts never started: none ran beside a rank 0 that could not
    assert not (shared / "pid.0.0").exists() and not (shared / "pid.0.1").exists()


def test_a_part_still_stopping_keeps_its_gpus_from_the_next_job(gang, venv, shared):
    alice, bob = user("labqtest", venv, gang), user("labqtest2", venv, gang)
    # rank 0 ends at once; part 1 shrugs off SIGTERM and beats until its SIGKILL
    jid = submit(alice, "--nodes", "2", "--gpus-per-node", "2", "--wrap", parts_script(
        shared, f"while [ ! -s {shared}/beat ]; do sleep 0.05; done",
        f'trap "" TERM; while :; do date +%s.%N > {shared}/beat.tmp; '
        f"mv {shared}/beat.tmp {shared}/beat; sleep 0.05; done"))
    assert alice.labq("wait", jid, "--timeout", "60", timeout=90).returncode == 0
    # a gang on both nodes' GPUs needs those part 1 still holds
    after = submit(bob, "--nodes", "2", "--gpus-per-node", "2", "--", "true")
    assert bob.labq("wait", after, "--timeout", "60", timeout=90).returncode == 0
    last_beat = float((shared / "beat").read_text())
    assert show(bob, after)["start_time"] > last_beat


def test_a_gang_the_cluster_cannot_hold_is_refused_and_nothing_is_queued(gang, venv):
    bob = user("labqtest2", venv, gang)
    before = len(json.loads(bob.ok("ls", "--all", "--json")))
    for args, words in ((["--nodes", "3"], "the cluster has 2"),
                        (["--nodes", "2", "--gpus-per-node", "4"], "no node has more than 2"),
                        (["--nodes", "2", "--gpus", "3"], "split evenly")):
        r = bob.labq("submit", *args, "--", "true")
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
    assert len(json.loads(bob.ok("ls", "--all", "--json"))) == before


def test_a_gang_is_cancelled_whole(gang, venv, shared):
    alice, bob = user("labqtest", venv, gang), user("labqtest2", venv, gang)
    jid = submit(bob, "--nodes", "2", "--gpus-per-node", "1", "--wrap",
                 parts_script(shared, "exec sleep 600", "exec sleep 600"))
    pids = [pid_of(shared, 0, 0), pid_of(shared, 0, 1)]
    job = show(bob, jid)
    assert f"{job['parts'][0][0]}+1" in bob.ok("ls")  # rank 0's node and one more
    r = alice.labq("cancel", jid)
    assert r.returncode != 0 and "belongs to labqtest2" in r.stderr
    assert show(bob, jid)["state"] == "RUNNING"
    bob.ok("cancel", jid)
    bob.labq("wait", jid, "--timeout", "30", timeout=60)
    assert show(bob, jid)["state"] == "CANCELLED"
    wait_for(lambda: not any(alive(p) for p in pids), what="both parts stopped")


def test_a_failing_part_ends_the_gang(gang, venv, shared):
    alice = user("labqtest", venv, gang)
    jid = submit(alice, "--nodes", "2", "--wrap",
                 parts_script(shared, "exec sleep 600", "sleep 1; exit 3"))
    zero = pid_of(shared, 0, 0)
    alice.labq("wait", jid, "--timeout", "60", timeout=90)
    job = show(alice, jid)
    assert job["state"] == "FAILED" and job["nodes"] == 2 and job["gpus"] == 0
    assert job["reason"] == f"part 1 on {job['parts'][1][0]} failed: exit code 3"
    wait_for(lambda: not alive(zero), what="rank 0 stopped")


def test_a_gang_is_requeued_whole_when_one_of_its_nodes_dies(gang, venv, shared):
    bob = user("labqtest2", venv, gang)
    # the first run waits to be cut short; in the second, rank 0 ends once part 1 has
    jid = submit(bob, "--nodes", "2", "--gpus-per-node", "2", "--wrap", parts_script(
        shared, '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; '
                f'while [ ! -e {shared}/done ]; do sleep 0.1; done; echo again',
        f'[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; echo again; touch {shared}/done'))
    first = [pid_of(shared, 0, 0), pid_of(shared, 0, 1)]
    job = show(bob, jid)
    dead = job["parts"][1][0]
    k = NAMES.index(dead)
    crash_node(gang.nodes[k], gang.entries[k]["job_root"])
    wait_for(lambda: show(bob, jid)["restarts"] == 1, timeout=30, what="requeue")
    # the part on the node that lives is stopped too: never half a gang running
    wait_for(lambda: not alive(first[0]), what="rank 0 of the first run stopped")
    assert show(bob, jid)["state"] == "PENDING" and show(bob, jid)["parts"] is None
    gang.nodes[k].start()
    assert bob.labq("wait", jid, "--timeout", "90", timeout=120).returncode == 0
    job = show(bob, jid)
    assert job["state"] == "COMPLETED" and job["restarts"] == 1
    assert sorted(n for n, _ in job["parts"]) == NAMES
    for part in ("0", "1"):
        log = bob.ok("logs", jid, "--part", part)
        assert "again" in log and "requeued" in log
    events = json.loads(bob.ok("events", "--json", jid))
    assert [e["to_state"] for e in events] == ["PENDING", "RUNNING", "PENDING", "RUNNING",
                                               "COMPLETED"]
    assert f"node {dead}" in events[2]["reason"]


def test_a_running_gang_outlives_a_labqd_restart_whole(gang, venv, shared):
    alice = user("labqtest", venv, gang)
    gate = shared / "gate"
    jid = submit(alice, "--nodes", "2", "--wrap", parts_script(
        shared, f"while [ ! -e {shared}/one ]; do sleep 0.1; done; echo rank 0 done",
        f"while [ ! -e {gate} ]; do sleep 0.1; done; echo part 1 done; touch {shared}/one"))
    pids = [pid_of(shared, 0, 0), pid_of(shared, 0, 1)]
    wait_for(lambda: "part 1 of 2" in alice.ok("logs", jid, "--part", "1"), what="part 1 log")
    gang.stop()
    gang.start(wait_nodes=2)
    # both parts are found again where they run, and watched: nothing started twice
    assert show(alice, jid)["state"] == "RUNNING" and all(alive(p) for p in pids)
    gate.write_text("")
    assert alice.labq("wait", jid, "--timeout", "60", timeout=90).returncode == 0
    assert show(alice, jid)["restarts"] == 0
    assert "rank 0 done" in alice.ok("logs", jid)
    wait_for(lambda: "part 1 done" in alice.ok("logs", jid, "--part", "1"), what="part 1 end")
    assert not (shared / "pid.1.0").exists()


def test_a_batch_script_with_two_nodes_runs_as_a_gang(gang, venv, shared):
    bob = user("labqtest2", venv, gang)
    path = shared / "two.sh"  # per node, as sbatch counts --gres: 2 nodes of 1 GPU
    path.write_text("#!/bin/bash\n#SBATCH -N 2\n#SBATCH --gres=gpu:1\n#SBATCH -t 5\n"
                    'echo "rank $NODE_RANK of $LABQ_NUM_NODES cuda=$CUDA_VISIBLE_DEVICES"\n'
                    f'if [ "$NODE_RANK" = 0 ]; then\n'
                    f"  while [ ! -e {shared}/done.$LABQ_JOB_ID ]; do sleep 0.1; done\n"
                    f"else touch {shared}/done.$LABQ_JOB_ID; fi\n")
    path.chmod(0o755)
    jid = submit(bob, str(path))
    assert bob.labq("wait", jid, "--timeout", "60", timeout=90).returncode == 0
    job = show(bob, jid)
    assert (job["state"], job["nodes"], job["gpus"], job["time_limit_s"]) == (
        "COMPLETED", 2, 2, 300)
    assert sorted(n for n, _ in job["parts"]) == NAMES
    assert "rank 0 of 2 cuda=" in bob.ok("logs", jid)
    assert "rank 1 of 2 cuda=" in bob.ok("logs", jid, "--part", "1")
