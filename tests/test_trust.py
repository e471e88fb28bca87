"""Who runs jobs as whom, tried as different Unix users with the real CLI and a real labqd.

A job runs as the user who submitted it on a node whose agent is root; an agent that is not
root runs only its own account's jobs, and never everyone's as labqd's own account."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from daemonproc import Daemon, to_toml, wait_for
from sshnodes import add_user_to_group, ensure_group
from userkit import User, cli_venv


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def root_daemon(tmp_path_factory):
    ensure_group("labqadm")
    base = tmp_path_factory.mktemp("trust")
    d = Daemon(base, {"daemon": {"local_node": True, "socket_mode": "0666",
                                 "admin_group": "labqadm", "kill_grace": "1s"}})
    with d.start(wait_nodes=1):
        yield d


def users(venv, socket, *names, **env):
    return [User(n, venv, socket, env) for n in names]


def job_id(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_a_job_runs_as_its_owner_not_as_root(root_daemon, venv):
    alice, = users(venv, root_daemon.socket, "labqtest")
    jid = job_id(alice.ok("submit", "--", "bash", "-c", "id -un; id -u; head -2 /etc/shadow"))
    assert alice.labq("wait", jid).returncode == 1  # head cannot read the file
    log = alice.ok("logs", jid)
    assert log.splitlines()[:2] == ["labqtest", str(alice.uid)]
    assert "Permission denied" in log and "root:" not in log
    shown = json.loads(alice.ok("show", "--json", jid))
    assert shown["state"] == "FAILED" and shown["owner"] == "labqtest"


def test_nodes_say_whose_jobs_they_run(root_daemon, venv):
    bob, = users(venv, root_daemon.socket, "labqtest2")
    nodes = json.loads(bob.ok("nodes", "--json"))
    assert nodes[0]["runs_jobs_of"] == "every user, as themselves"
    assert nodes[0]["containment"]


def test_another_users_job_is_out_of_reach(root_daemon, venv):
    alice, bob = users(venv, root_daemon.socket, "labqtest", "labqtest2")
    jid = job_id(alice.ok("submit", "--hold", "--env", "SECRET=hunter2", "--", "true"))
    for verb in ("cancel", "release", "logs"):
        r = bob.labq(verb, jid)
        assert r.returncode != 0 and "belongs to labqtest" in r.stderr, (verb, r.stderr)
    assert "hunter2" not in bob.ok("show", "--json", jid)
    assert json.loads(alice.ok("show", "--json", jid))["state"] == "HELD"
    alice.ok("cancel", jid)


def test_only_root_or_labqd_itself_adds_the_local_node(root_daemon, venv):
    bob, = users(venv, root_daemon.socket, "labqadmin1")
    add_user_to_group("labqadmin1", "labqadm")
    assert json.loads(bob.ok("whoami", "--json"))["admin"]
    r = bob.labq("node", "add", "mine", "--local")
    assert r.returncode != 0 and "only root or labqd's own account" in r.stderr
    assert [n["name"] for n in json.loads(bob.ok("nodes", "--json"))] != ["mine"]
    assert "mine" not in {n["name"] for n in json.loads(bob.ok("nodes", "--json"))}


# -- labqd as an unprivileged account ------------------------------------------------------
class UserDaemon:
    """labqd run by a non-root account from the shared venv, its state in that account's home,
    its socket open to every local user."""

    def __init__(self, venv: Path, account: str, node_extra: dict):
        self.account = User(account, venv)
        self.dir = Path(tempfile.mkdtemp(prefix="labqd-", dir="/var/tmp"))
        os.chown(self.dir, self.account.uid, self.account.gid)
        self.socket = self.dir / "labq.sock"
        os.chmod(self.dir, 0o755)
        config = {"daemon": {"socket": str(self.socket), "socket_mode": "0666",
                             "database": str(self.dir / "state" / "labq.db")},
                  "node": [dict({"name": "box", "local": True,
                                 "job_root": str(self.dir / "jobs")}, **node_extra)]}
        cfg = self.dir / "labq.toml"
        cfg.write_text(to_toml(config))
        os.chmod(cfg, 0o644)
        self.log = open(self.dir / "labqd.log", "wb")
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={self.account.uid}", f"--regid={self.account.gid}",
             "--init-groups", "--", str(venv / "bin" / "labqd"), "--config", str(cfg)],
            env=self.account.env(), cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, 30,
                 what="labqd's socket")
        assert self.proc.poll() is None, (self.dir / "labqd.log").read_text()

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)


def _reason(user, jid):
    return json.loads(user.ok("show", "--json", jid))["reason"]


def test_an_agent_that_is_not_root_runs_its_own_accounts_jobs_only(venv):
    d = UserDaemon(venv, "labqsvc", {})
    try:
        svc = User("labqsvc", venv, d.socket)
        alice, = users(venv, d.socket, "labqtest", LABQ_DAEMON_USER="labqsvc")
        wait_for(lambda: json.loads(svc.ok("nodes", "--json"))[0]["state"] == "up", 30,
                 what="the node")
        node = json.loads(alice.ok("nodes", "--json"))[0]
        assert node["runs_jobs_of"] == "only labqsvc (the agent is not root)"
        theirs = job_id(alice.ok("submit", "--", "id", "-un"))
        wait_for(lambda: _reason(alice, theirs) == "NoNodeForUser", 20, what="the reason")
        own = job_id(svc.ok("submit", "--", "id", "-un"))
        svc.ok("wait", own)
        assert svc.ok("logs", own).strip() == "labqsvc"
        assert json.loads(alice.ok("show", "--json", theirs))["state"] == "PENDING"
    finally:
        d.close()


def test_shared_account_is_never_labqds_own_while_it_serves_others(venv):
    # the local agent of an unprivileged labqd is labqd's own account: labqd refuses to start
    svc = User("labqsvc", venv)
    d = Path(tempfile.mkdtemp(prefix="labqd-", dir="/var/tmp"))
    try:
        os.chown(d, svc.uid, svc.gid)
        cfg = d / "labq.toml"
        cfg.write_text(to_toml({
            "daemon": {"socket": str(d / "labq.sock"), "socket_mode": "0666",
                       "database": str(d / "state" / "labq.db")},
            "node": [{"name": "box", "local": True, "shared_account": True}]}))
        os.chmod(cfg, 0o644)
        r = subprocess.run(["setpriv", f"--reuid={svc.uid}", f"--regid={svc.gid}",
                            "--init-groups", "--", str(venv / "bin" / "labqd"), "--config",
                            str(cfg)], env=svc.env(), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2
        assert "shared_account" in r.stderr and "labqd's own account" in r.stderr
        assert not (d / "labq.sock").exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the client trusts only a daemon it may trust -------------------------------------------
def test_the_default_socket_of_a_user_is_in_their_own_home(venv):
    alice = User("labqtest", venv)
    r = subprocess.run(["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}",
                        "--init-groups", "--", str(venv / "bin" / "python"), "-c",
                        "from labq.paths import daemon_socket; print(daemon_socket())"],
                       env=alice.env(), capture_output=True, text=True, cwd="/")
    assert r.stdout.strip() == f"{alice.home}/.local/state/labq/labq.sock"


def test_a_squatted_socket_gets_nothing(venv, tmp_path):
    alice, mallory = users(venv, None, "labqtest", "labqtest2")
    trap = Path(tempfile.mkdtemp(prefix="labq-squat-"))
    os.chown(trap, mallory.uid, mallory.gid)
    os.chmod(trap, 0o755)
    got = trap / "got"
    listener = ("import socket,os,sys\n"
                "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])\n"
                "os.chmod(sys.argv[1], 0o777)\n"
                "s.listen(5); s.settimeout(20)\n"
                "c,_=s.accept(); c.settimeout(3)\n"
                "data=b''\n"
                "try:\n"
                "    while True:\n"
                "        b=c.recv(65536)\n"
                "        if not b: break\n"
                "        data+=b\n"
                "except Exception: pass\n"
                "open(sys.argv[2],'wb').write(data)\n")
    fake = subprocess.Popen(["setpriv", f"--reuid={mallory.uid}", f"--regid={mallory.gid}",
                             "--init-groups", "--", "/usr/bin/python3", "-c", listener,
                             str(trap / "labq.sock"), str(got)])
    try:
        wait_for(lambda: (trap / "labq.sock").exists(), 10, what="the fake socket")
        r = alice.labq("submit", "--", "true",
                       env=alice.env(LABQ_SOCKET=str(trap / "labq.sock"), API_KEY="s3cret"))
        assert r.returncode != 0 and "refusing to talk" in r.stderr
        fake.wait(15)
        assert got.read_bytes() == b""
    finally:
        fake.kill()
        shutil.rmtree(trap, ignore_errors=True)


def test_an_unreachable_system_socket_is_a_clear_message(venv):
    alice = User("labqtest", venv)
    run_dir = Path("/run/labq")
    made = not run_dir.exists()
    if made:
        run_dir.mkdir(mode=0o750)
    try:
        if os.stat(run_dir).st_mode & 0o005:
            pytest.fail("/run/labq is open to others on this machine; cannot try it here")
        r = alice.labq("ls")
        assert r.returncode != 0
        assert "permission denied" in r.stderr and "socket_group" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        if made:
            run_dir.rmdir()


def test_the_head_nodes_root_agent_behind_a_socket_runs_jobs_as_their_owners(venv):
    """The systemd deployment: labqd as an unprivileged account reaches a root agent that is
    started per connection on a socket only that account may open (labq-agent.socket),
    here by systemd's own socket activator."""
    svc = User("labqsvc", venv)
    sockdir = Path(tempfile.mkdtemp(prefix="labq-agent-"))
    agent_sock = sockdir / "agent.sock"
    jobs = Path(tempfile.mkdtemp(prefix="labq-node-"))
    activator = subprocess.Popen(
        ["systemd-socket-activate", "--accept", "--inetd", "-l", str(agent_sock),
         str(venv / "bin" / "python"), "-m", "labq.daemon.nodes.agent", "--root", str(jobs),
         "--no-root-jobs", "--from-socket"], stderr=subprocess.DEVNULL)
    d = None
    try:
        wait_for(agent_sock.exists, 10, what="the agent socket")
        os.chown(agent_sock, svc.uid, svc.gid)  # as SocketUser=labq, SocketMode=0600 do
        os.chmod(agent_sock, 0o600)
        os.chmod(sockdir, 0o755)
        d = UserDaemon(venv, "labqsvc", {"agent_socket": str(agent_sock)})
        alice, root = users(venv, d.socket, "labqtest", "root", LABQ_DAEMON_USER="labqsvc")
        wait_for(lambda: json.loads(alice.ok("nodes", "--json"))[0]["state"] == "up", 30,
                 what="the node")
        node = json.loads(alice.ok("nodes", "--json"))[0]
        assert node["runs_jobs_of"] == "every user but root, as themselves"
        jid = job_id(alice.ok("submit", "--", "bash", "-c", "id -un; id -u"))
        alice.ok("wait", jid)
        assert alice.ok("logs", jid).split() == ["labqtest", str(alice.uid)]
        # root's jobs never run through it: the labq account could submit as anyone's
        # daemon account, never become root
        rid = job_id(root.ok("submit", "--", "id", "-un"))
        wait_for(lambda: _reason(root, rid) == "NoNodeForUser", 20, what="the reason")
        # nobody else may talk to the agent directly
        bob = User("labqtest2", venv)
        r = subprocess.run(["setpriv", f"--reuid={bob.uid}", f"--regid={bob.gid}",
                            "--init-groups", "--", "/usr/bin/python3", "-c",
                            "import socket,sys; s=socket.socket(socket.AF_UNIX); "
                            "s.connect(sys.argv[1])", str(agent_sock)],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        if d is not None:
            d.close()
        activator.terminate()
        activator.wait(10)
        shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(jobs, ignore_errors=True)


def test_two_nodes_on_one_account_keep_apart(tmp_path):
    """Two [[node]] entries reaching one host and account (one box split by GPU) used to share
    a run directory: their agents evicted each other and killed each other's runs."""
    from sshnodes import NodeSet
    with NodeSet(tmp_path / "nodes", names=["box"]) as ns:
        e = ns.config_entries()[0]
        left = dict(e, name="left", job_root=str(tmp_path / "jobs"))
        right = dict(e, name="right", job_root=str(tmp_path / "jobs"))
        d = Daemon(tmp_path / "d", {"daemon": {"heartbeat": "1s", "node_timeout": "3s"},
                                    "node": [left, right]})
        with d.start(wait_nodes=2):
            with d.client() as q:
                jobs = [q.submit(["sleep", "3"], cwd="/", export_env=False) for _ in range(4)]
                wait_for(lambda: {q.job(j.id).node for j in jobs} == {"left", "right"}, 20,
                         what="runs on both nodes")
            d.stop()
            d.start(wait_nodes=2)
            with d.client() as q:
                done = q.wait(*[j.id for j in jobs], timeout=60)
                assert {j.state.value for j in done} == {"COMPLETED"}
                assert {n.state for n in q.nodes()} == {"up"}
                assert not any("stale" in (e.reason or "") for j in jobs
                               for e in q.events(j.id))
        assert "link closed" not in d.log()


def test_owners_lower_their_waiting_jobs_time_and_priority_and_no_more(root_daemon, venv):
    alice, bob = users(venv, root_daemon.socket, "labqtest", "labqtest2")
    jid = job_id(alice.ok("submit", "--hold", "--time", "2h", "--priority", "6", "--", "true"))

    def shown():
        j = json.loads(alice.ok("show", "--json", jid))
        return j["time_limit_s"], j["priority"]
    for args in (("update", jid, "--time", "30m"), ("priority", jid, "1")):
        r = bob.labq(*args)
        assert r.returncode != 0 and "belongs to labqtest" in r.stderr, (args, r.stderr)
    assert shown() == (7200, 6)
    assert alice.ok("update", jid, "--time", "45m", "--priority", "4").split() == [
        jid, "priority", "4", "time", "limit", "00:45:00"]
    for args, says in ((("update", jid, "--time", "1h"), "only an admin raises time limit"),
                       (("priority", jid, "9"), "only an admin raises priority"),
                       (("update", jid, "--time", "soon"), "cannot read 'soon'"),
                       (("update", jid), "give --time, --priority or both")):
        r = alice.labq(*args)
        assert r.returncode != 0 and says in r.stderr, (args, r.stderr)
    assert shown() == (2700, 4)
    events = json.loads(alice.ok("events", "--json", jid))
    assert [e["reason"] for e in events if e["who"] == "labqtest"][-2:] == [
        "time limit 02:00:00 -> 00:45:00", "priority 6 -> 4"]
    admin, = users(venv, root_daemon.socket, "labqadmin1")
    add_user_to_group("labqadmin1", "labqadm")
    admin.ok("update", jid, "--time", "3h", "--priority", "8")
    assert shown() == (10800, 8)
    alice.ok("release", jid)
    alice.ok("wait", jid)
    r = alice.labq("update", jid, "--time", "1m")
    assert r.returncode != 0 and "only pending or held jobs can change time limit" in r.stderr
    assert shown() == (10800, 8)


def test_usage_by_hour_shows_every_groups_gpu_hours_to_each_user(venv, tmp_path):
    d = Daemon(tmp_path / "d", {
        "daemon": {"local_node": False, "socket_mode": "0666", "kill_grace": "1s"},
        "node": [{"name": "gpu1", "local": True, "cpus": 4, "memory": "8G",
                  "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}]})
    with d.start(wait_nodes=1):
        alice, bob = users(venv, d.socket, "labqtest", "labqtest2")
        ids = [job_id(u.ok("submit", "--gpus", "1", "--", "sleep", "1")) for u in (alice, bob)]
        alice.ok("wait", *ids)
        groups = {json.loads(u.ok("whoami", "--json"))["group"] for u in (alice, bob)}
        for u in (alice, bob):  # a non-admin sees every group's usage, as `labq usage` does
            rep = json.loads(u.ok("usage", "--days", "1", "--by", "hour", "--json"))
            assert rep["bucket"] == "hour"
            hours = {}
            for p in rep["series"]:
                assert p["start"] % 3600 == 0 and p["start"] <= rep["until"]
                hours[p["group"]] = hours.get(p["group"], 0.0) + p["gpu_hours"]
            assert set(hours) == groups and all(0 < h < 0.01 for h in hours.values()), hours
            text = u.ok("usage", "--days", "1", "--by", "hour")
            assert re.search(r"\nlabqtest2? +\d{4}-\d\d-\d\d \d\d:00 +0\.00\n", text), text
        for args, says in ((("--days", "40", "--by", "hour"), "at most 31 days"),
                           (("--by", "week"), "invalid choice: 'week'")):
            r = bob.labq("usage", *args)
            assert r.returncode != 0 and says in r.stderr, (args, r.stderr)


def test_an_environment_two_users_share_stays_each_ones_own_to_the_byte(root_daemon, venv):
    import sqlite3

    import labq
    odd = 'é ☃ \\ "q" $HOME `x`\ttab\nline'
    alice, bob = users(venv, root_daemon.socket, "labqtest", "labqtest2", TEST_ODD=odd)
    script = tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False)
    # rows that are alike: sent once, queued as three jobs, each with the exported env
    script.write('{"command": ["bash", "-c", "printf %s \\"$TEST_ODD\\""]}\n' * 3)
    script.close()
    os.chmod(script.name, 0o644)
    ids = {}
    for u in (alice, bob):
        ids[u.name] = batch = u.ok("submit", "--from", script.name).split()
        assert len(batch) == 3 and len(set(batch)) == 3
        ids[u.name].append(job_id(u.ok("submit", "--", "bash", "-c", 'printf %s "$TEST_ODD"')))
    for u in (alice, bob):
        assert u.labq("wait", *ids[u.name]).returncode == 0
        for jid in ids[u.name]:
            assert u.ok("logs", jid) == odd  # delivered to the job exactly
            assert json.loads(u.ok("show", "--json", jid))["env"]["TEST_ODD"] == odd
    other = bob.labq("show", "--json", ids[alice.name][0])
    assert json.loads(other.stdout)["env"] is None and odd not in other.stdout
    with labq.connect(root_daemon.socket) as q:  # an admin sees it
        assert q.job(int(ids[bob.name][0])).env["TEST_ODD"] == odd
    # one stored environment each, not one per job, and none shared between them
    db = sqlite3.connect(f"file:{root_daemon.config['daemon']['database']}?mode=ro", uri=True)
    stored = db.execute("SELECT owner_uid, COUNT(*) FROM env WHERE body LIKE '%TEST_ODD%' "
                        "GROUP BY owner_uid").fetchall()
    db.close()
    assert sorted(stored) == sorted([(alice.uid, 1), (bob.uid, 1)])
    os.unlink(script.name)
