"""A Slurm cluster as a labq node pool, end to end against a real one-node Slurm (slurmkit):
jobs go in with sbatch as their owners, wait there as PENDING with Slurm's reason, run with
the GPUs Slurm gives them, and end in labq's states; cancel, time limit, capacity and a
labqd restart while Slurm runs its jobs."""
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from slurmkit import SlurmCluster
from sshnodes import NodeSet
from userkit import User, cli_venv


@pytest.fixture(scope="module")
def slurm():
    # one cluster for the whole module: starting Slurm costs a few seconds
    base = Path(tempfile.mkdtemp(prefix="labq-slurm-"))
    base.chmod(0o755)  # the jobs' owners reach their output directories under it
    with SlurmCluster(base / "slurm") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


def pool_daemon(slurm, workdir: Path, **pool) -> Daemon:
    entry = {"name": "hpc", "kind": "slurm", "local": True, "partition": "gpu",
             "max_gpus": 4, "max_jobs": 20, "gpu_types": ["fake"], "poll": "1s",
             "job_root": str(slurm.dir.parent / "pool")}
    entry.update(pool)
    d = Daemon(workdir, {"daemon": {"socket_mode": "0666", "kill_grace": "1s",
                                    "heartbeat": "1s"}, "node": [entry]})
    d.env = lambda: dict(os.environ, LABQ_SOCKET=str(d.socket), SLURM_CONF=str(slurm.conf))
    return d


@pytest.fixture(scope="module")
def daemon(slurm, tmp_path_factory):
    d = pool_daemon(slurm, tmp_path_factory.mktemp("pool"))
    with d.start(wait_nodes=1):
        yield d


@pytest.fixture(scope="module")
def alice(venv, daemon):
    return User("labqtest", venv, daemon.socket)


@pytest.fixture(scope="module")
def bob(venv, daemon):
    return User("labqtest2", venv, daemon.socket)


@pytest.fixture(scope="module")
def over_time(alice):
    """A job past its time limit, submitted first: Slurm counts limits in whole minutes and
    checks them every half minute, so it ends while the other tests run."""
    return job_id(alice.ok("submit", "--time", "1m", "--", "bash", "-c",
                           "echo started; sleep 600"))


def job_id(out: str) -> str:
    return out.strip().splitlines()[-1]


def show(user, jid) -> dict:
    return json.loads(user.ok("show", "--json", jid))


def wait_state(user, jid, state, timeout=30):
    try:
        wait_for(lambda: show(user, jid)["state"] == state, timeout=timeout, what=state)
    except AssertionError:
        raise AssertionError(f"job {jid} not {state}:\n" + user.ok("events", jid)) from None


def slurm_id(user, jid) -> str:
    return show(user, jid)["slurm_id"]


def test_a_job_runs_in_slurm_as_its_owner_with_the_gpus_slurm_gave_it(slurm, alice, over_time):
    jid = job_id(alice.ok("submit", "--gpus", "2", "--name", "gpu-run", "--", "bash", "-c",
                          "id -un; echo CVD=$CUDA_VISIBLE_DEVICES; echo job=$LABQ_JOB_ID"))
    assert alice.labq("wait", jid, timeout=90).returncode == 0, alice.ok("events", jid)
    job = show(alice, jid)
    assert job["state"] == "COMPLETED" and job["node"] == "hpc" and job["exit_code"] == 0
    log = alice.ok("logs", jid).splitlines()
    assert log[0] == "labqtest" and log[1] == "CVD=0,1" and log[2] == f"job={jid}"
    sj = slurm.job(int(slurm_id(alice, jid)))
    assert sj["UserId"].startswith("labqtest(") and sj["JobName"] == "gpu-run"
    assert sj["TresPerNode"] == "gres:gpu:2"
    slurm_start = time.mktime(time.strptime(sj["StartTime"], "%Y-%m-%dT%H:%M:%S"))
    assert abs(job["start_time"] - slurm_start) < 1.0  # Slurm's start, not the submit's


def test_labq_nodes_shows_the_pool_its_partition_and_labqs_share(slurm, alice, bob):
    mine = job_id(bob.ok("submit", "--gpus", "1", "--", "bash", "-c", "id -un; sleep 30"))
    wait_state(bob, mine, "RUNNING")
    assert slurm.job(int(slurm_id(bob, mine)))["UserId"].startswith("labqtest2(")
    assert f"hpc  (Slurm job {slurm_id(bob, mine)})" in bob.ok("show", mine)

    def pool():
        return next(n for n in json.loads(alice.ok("nodes", "--json")) if n["name"] == "hpc")
    # sinfo is read every few heartbeats
    wait_for(lambda: (pool()["pool"] or {}).get("gpus_alloc", 0) >= 1, timeout=20,
             what="sinfo's GPUs")
    p = pool()
    assert p["kind"] == "slurm" and p["pool"]["gpus"] == 4 and p["pool"]["nodes_up"] == 1
    assert p["pool"]["labq_gpus"] == 1 and p["pool"]["labq_running"] >= 1
    line = next(line for line in alice.ok("nodes").splitlines() if line.startswith("hpc"))
    assert "partition gpu: 1/1 nodes up" in line and "waiting in Slurm (max 20)" in line
    bob.ok("cancel", mine)


def test_a_job_that_swaps_its_output_for_a_link_or_a_fifo_gets_nothing_of_roots(alice):
    # the output file is the owner's: a link to root's secrets or a FIFO in its place must
    # neither be read by the root agent nor stall it
    swap = ('f=$(readlink /proc/$$/fd/1); rm -f "$f"; ln -s /etc/shadow "$f"; exec >/dev/null')
    fifo = ('f=$(readlink /proc/$$/fd/1); rm -f "$f"; mkfifo "$f"; exec >/dev/null')
    ids = [job_id(alice.ok("submit", "--", "bash", "-c", cmd)) for cmd in (swap, fifo)]
    for jid in ids:
        assert alice.labq("wait", jid, timeout=90).returncode == 0
        assert "root:" not in alice.ok("logs", jid)
    after = job_id(alice.ok("submit", "--", "echo", "still served"))
    assert alice.labq("wait", after, timeout=90).returncode == 0
    assert alice.ok("logs", after).strip() == "still served"


def test_a_failing_job_ends_failed_with_its_exit_code(alice):
    jid = job_id(alice.ok("submit", "--", "bash", "-c", "echo bad; exit 3"))
    assert alice.labq("wait", jid, timeout=90).returncode == 1
    job = show(alice, jid)
    assert job["state"] == "FAILED" and job["exit_code"] == 3
    assert alice.ok("logs", jid).strip() == "bad"


def test_a_job_waits_in_slurm_as_pending_with_slurms_reason_then_cancels(slurm, alice, bob):
    # someone else on the cluster holds every GPU, outside labq
    other = slurm.sbatch("--gres=gpu:4", "--time=10", "--wrap", "sleep 600")
    try:
        wait_for(lambda: slurm.job(other)["JobState"] == "RUNNING", what="the other job")
        jid = job_id(alice.ok("submit", "--gpus", "1", "--", "true"))
        wait_for(lambda: show(alice, jid)["reason"] == "Slurm:Resources", timeout=30,
                 what="Slurm's reason")
        job = show(alice, jid)
        assert job["state"] == "PENDING" and job["node"] == "hpc"
        # Slurm's backfill expects it to start when the other job's 10 minutes are up
        wait_for(lambda: show(alice, jid)["estimated_start"], timeout=30, what="an estimate")
        assert 8 * 60 < show(alice, jid)["estimated_start"] - time.time() < 11 * 60
        assert "est. start" in alice.ok("show", jid)
        # bob may neither cancel nor hold alice's job; alice may not hold it (it is in Slurm)
        assert bob.labq("cancel", jid).returncode != 0
        held = alice.labq("hold", jid)
        assert held.returncode != 0 and "cancel it instead" in held.stderr
        alice.ok("cancel", jid)
        wait_for(lambda: show(alice, jid)["state"] == "CANCELLED", timeout=30, what="cancel")
        assert "labqtest" in show(alice, jid)["reason"]
        comment = slurm.cmd("squeue", "-h", "-t", "all", "-o", "%k|%T")
        assert f"/hpc/{jid}.0|CANCELLED" in comment
    finally:
        slurm.cmd("scancel", str(other))


def test_a_running_job_is_cancelled_through_scancel(slurm, alice):
    jid = job_id(alice.ok("submit", "--", "bash", "-c", "echo up; sleep 600"))
    wait_state(alice, jid, "RUNNING")
    wait_for(lambda: "up" in alice.ok("logs", jid), timeout=20, what="the log")
    alice.ok("cancel", jid)
    wait_for(lambda: show(alice, jid)["state"] == "CANCELLED", timeout=30, what="cancel")
    assert slurm.job(int(slurm_id(alice, jid)))["JobState"] == "CANCELLED"


def test_labqd_restarts_while_slurm_runs_its_jobs_and_never_submits_twice(slurm, daemon,
                                                                            alice):
    jid = job_id(alice.ok("submit", "--", "bash", "-c", "echo one; sleep 6; echo two"))
    wait_state(alice, jid, "RUNNING")
    daemon.stop()
    time.sleep(2)
    daemon.start(wait_nodes=1)
    assert alice.labq("wait", jid, timeout=90).returncode == 0
    assert alice.ok("logs", jid).split() == ["one", "two"]
    ours = [line for line in slurm.cmd("squeue", "-h", "-t", "all", "-o", "%k").split()
            if line.endswith(f"/hpc/{jid}.0")]
    assert len(ours) == 1


def test_the_pool_takes_no_more_than_max_jobs(slurm, alice, tmp_path):
    d = pool_daemon(slurm, tmp_path / "small", name="small", max_jobs=2,
                    job_root=str(slurm.dir.parent / "small"))
    with d.start(wait_nodes=1):
        carol = User("labqtest", alice.venv, d.socket)
        ids = [job_id(carol.ok("submit", "--", "sleep", "30")) for _ in range(3)]
        wait_for(lambda: sum(show(carol, i)["node"] == "small" for i in ids) == 2,
                 timeout=30, what="two jobs sent")
        time.sleep(2)
        third = [show(carol, i) for i in ids][2]
        assert third["state"] == "PENDING" and third["node"] is None
        assert not (third["reason"] or "").startswith("Slurm:")
        carol.ok("cancel", *ids)
        wait_for(lambda: all(show(carol, i)["state"] == "CANCELLED" for i in ids), timeout=30,
                 what="all cancelled")


def test_a_job_past_its_time_limit_ends_timeout(alice, over_time):
    wait_for(lambda: show(alice, over_time)["state"] == "TIMEOUT", timeout=150,
             interval=1, what="the time limit")
    assert alice.ok("logs", over_time).startswith("started")


def test_a_slurm_requeue_sends_the_job_back_to_pending_and_it_runs_again(slurm, alice):
    jid = job_id(alice.ok("submit", "--", "bash", "-c",
                          "echo run $SLURM_RESTART_COUNT; sleep 4"))
    wait_state(alice, jid, "RUNNING")
    sid = slurm_id(alice, jid)
    slurm.cmd("scontrol", "requeue", sid, check=True)
    wait_for(lambda: show(alice, jid)["reason"] == "Slurm:BeginTime", timeout=30,
             what="waiting again in Slurm")
    job = show(alice, jid)
    assert job["state"] == "PENDING" and job["node"] == "hpc" and job["slurm_id"] == sid
    # Slurm holds a requeued job back for two minutes; let it go now
    slurm.cmd("scontrol", "update", f"JobId={sid}", "StartTime=now", check=True)
    assert alice.labq("wait", jid, timeout=90).returncode == 0
    log = alice.ok("logs", jid).splitlines()  # both runs' output, and Slurm's word between
    assert log[0] == "run" and "JOB REQUEUE" in log[1] and log[-1] == "run 1"
    events = alice.ok("events", jid)
    assert f"requeued by Slurm (job {sid})" in events
    assert show(alice, jid)["restarts"] == 0  # one labq run, the same Slurm job


@pytest.fixture(scope="module")
def login(slurm, tmp_path_factory):
    """A login host over loopback SSH: Slurm's commands there find the cluster's config, as
    on a real login host."""
    base = tmp_path_factory.mktemp("login")
    tools = slurm.dir.parent / "login-bin"
    tools.mkdir(exist_ok=True)
    for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct"):
        wrapper = tools / name
        # a test makes sbatch slow, as on a busy cluster, by creating the file `slow`
        slow = f"[ -e {tools}/slow ] && sleep 3\n" if name == "sbatch" else ""
        wrapper.write_text(f"#!/bin/sh\n{slow}SLURM_CONF={slurm.conf} exec /usr/bin/{name} "
                           "\"$@\"\n")
        wrapper.chmod(0o755)
    tools.chmod(0o755)
    with NodeSet(base / "nodes", names=["login"], extra_path=[str(tools)]) as ns:
        entry = dict(ns.config_entries()[0], name="hpcssh", kind="slurm", partition="gpu",
                     max_gpus=2, max_jobs=10, poll="1s",
                     job_root=str(slurm.dir.parent / "ssh-pool"))
        d = Daemon(base / "daemon", {"daemon": {"socket_mode": "0666", "heartbeat": "1s",
                                                "node_timeout": "3s", "requeue_grace": "2s"},
                                     "node": [entry]})
        d.nodes = ns
        with d.start(wait_nodes=1):
            yield d


def test_a_pool_behind_ssh_keeps_its_jobs_while_the_login_host_is_away(slurm, login, venv):
    alice = User("labqtest", venv, login.socket)
    jid = job_id(alice.ok("submit", "--gpus", "1", "--", "bash", "-c",
                          "echo before; sleep 8; echo after"))
    other = job_id(alice.ok("submit", "--", "sleep", "300"))
    wait_state(alice, jid, "RUNNING")
    wait_state(alice, other, "RUNNING")
    sid, other_sid = int(slurm_id(alice, jid)), int(slurm_id(alice, other))
    assert slurm.job(sid)["UserId"].startswith("labqtest(")
    login.nodes[0].kill_all()  # the login host is gone: sshd, the link and the agent
    alice.ok("cancel", other)  # ends in labq after requeue_grace; scancel once it is back
    wait_state(alice, other, "CANCELLED")
    wait_for(lambda: slurm.job(sid)["JobState"] == "COMPLETED", timeout=60,
             what="Slurm to finish it meanwhile")
    time.sleep(3)  # past requeue_grace: a Slurm pool's jobs are not requeued for it
    nodes = json.loads(alice.ok("nodes", "--json"))
    assert nodes[0]["state"] == "down"
    job = show(alice, jid)
    assert job["state"] == "RUNNING" and job["restarts"] == 0
    login.nodes[0].restart()
    assert alice.labq("wait", jid, timeout=120).returncode == 0
    assert alice.ok("logs", jid).split() == ["before", "after"]
    assert show(alice, jid)["exit_code"] == 0
    wait_for(lambda: slurm.job(other_sid)["JobState"] == "CANCELLED", timeout=30,
             what="the cancelled job's Slurm job cancelled on return")


def test_a_login_host_without_slurm_is_refused_with_the_reason(slurm, tmp_path):
    d = pool_daemon(slurm, tmp_path / "noslurm", job_root=str(slurm.dir.parent / "noslurm"))
    d.env = lambda: {k: v for k, v in dict(os.environ, LABQ_SOCKET=str(d.socket)).items()
                     if k != "SLURM_CONF"}  # this host finds no slurm.conf
    with d.start():
        with d.client() as q:
            wait_for(lambda: q.nodes()[0].state == "refused", timeout=20, what="refused")
            assert "sinfo --version failed" in q.nodes()[0].reason


def test_a_cancel_while_sbatch_is_slow_is_kept_and_the_pool_stays_up(slurm, login, venv):
    alice = User("labqtest", venv, login.socket)
    flag = slurm.dir.parent / "login-bin" / "slow"
    flag.write_text("")
    try:
        first = job_id(alice.ok("submit", "--", "sleep", "300"))
        wait_for(lambda: show(alice, first)["node"] == "hpcssh", timeout=20, what="sent")
        second = job_id(alice.ok("submit", "--", "sleep", "300"))
        wait_for(lambda: show(alice, second)["node"] == "hpcssh", timeout=20, what="sent")
        # the first one's sbatch is on its way, the second one's waits behind it
        alice.ok("cancel", first, second)
        for jid in (first, second):
            wait_state(alice, jid, "CANCELLED", timeout=40)
        assert json.loads(alice.ok("nodes", "--json"))[0]["state"] == "up"
    finally:
        flag.unlink()
    seen = slurm.cmd("squeue", "-h", "-t", "all", "-o", "%k|%T").split()
    assert f"labq:{login_cluster(login)}/hpcssh/{first}.0|CANCELLED" in seen
    assert not any(f"/hpcssh/{second}.0|" in line for line in seen)  # never sent


def login_cluster(d) -> str:
    with d.client() as q:
        return q.ping()["cluster"]


def test_an_sbatch_script_runs_in_the_pool_with_its_directives(slurm, alice):
    script = alice.home / "pool-train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -J from-script\n#SBATCH --gres=gpu:1\n"
                      "#SBATCH -t 5\necho CVD=$CUDA_VISIBLE_DEVICES args=$*\n")
    os.chown(script, alice.uid, alice.gid)
    jid = job_id(alice.ok("submit", str(script), "a", "b"))
    assert alice.labq("wait", jid, timeout=90).returncode == 0
    assert alice.ok("logs", jid).strip() == "CVD=0 args=a b"
    sj = slurm.job(int(slurm_id(alice, jid)))
    assert sj["JobName"] == "from-script" and sj["TimeLimit"] == "00:05:00"
    assert sj["TresPerNode"] == "gres:gpu:1"


def pool_agent(slurm, root: Path, cluster: str):
    from labq.daemon.nodes.agent.files import prepare_dir
    from labq.daemon.nodes.agent.slurm import SlurmAgent
    return SlurmAgent(prepare_dir(str(root), cluster, "hpc"), cluster, "hpc",
                      {"partition": "gpu", "poll_s": 1})


def test_an_agent_that_died_between_sbatch_and_its_record_finds_the_job_by_its_comment(
        slurm, monkeypatch):
    """The agent's own side of "never submit twice": a run whose sbatch went through but
    whose Slurm id was never written counts as started, with its id, so labqd does not
    launch it again."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    agent = pool_agent(slurm, slurm.dir.parent / "died", "c1")
    os.mkdir(agent.jobdir("7.0"))
    sid = slurm.sbatch("--comment=labq:c1/hpc/7.0", "--wrap", "sleep 30")
    os.mkdir(agent.jobdir("8.0"))  # made, but its sbatch never ran
    try:
        runs = {j["job"]: j for j in agent.op_list({})["jobs"]}
        assert runs["7.0"]["started"] and runs["7.0"]["slurm_id"] == str(sid)
        assert not runs["8.0"]["started"] and runs["8.0"]["slurm_id"] is None
        # and the record is written now, for the next agent
        assert json.loads(Path(agent.jobdir("7.0"), "slurm.json").read_text())["id"] == str(sid)
    finally:
        slurm.cmd("scancel", str(sid))


def test_a_job_slurm_no_longer_knows_is_reported_lost_after_a_few_polls(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    agent = pool_agent(slurm, slurm.dir.parent / "forgot", "c2")
    os.mkdir(agent.jobdir("9.0"))
    agent.known["9.0"] = {"id": "999999", "misses": 0}  # purged past MinJobAge meanwhile
    exit_file = Path(agent.jobdir("9.0"), "exit")
    for _ in range(2):
        agent.poll_once()
        assert not exit_file.exists()  # one silent answer is not yet a loss
    agent.poll_once()
    rec = json.loads(exit_file.read_text())
    assert rec["reason"] == "lost" and rec["slurm_id"] == "999999"
