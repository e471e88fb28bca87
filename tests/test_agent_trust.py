"""The node agent's trust boundary, against real agent processes: jobs run as their owners, the
job directory cannot be redirected, and a run is contained (cgroup or marker sweep) so that
nothing it starts outlives it."""
import base64
import hashlib
import json
import os
import pwd
import queue
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sshnodes import alive, ensure_user, run_as

from labq.daemon.nodes.transport import agent_program


def agent_file() -> str:
    """The program labqd sends to nodes, as a file any test account can run."""
    data = agent_program()
    path = Path(f"/var/tmp/labq-test-agent-{hashlib.sha256(data).hexdigest()[:16]}.py")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.rename(path)
    return str(path)


AGENT = agent_file()
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch accounts")


class AgentProc:
    """One agent subprocess speaking JSON lines; events are kept per job."""

    def __init__(self, root, *extra, user=None, cluster="c", node="n"):
        argv = [PY, "-u", AGENT, "--root", str(root), "--cluster", cluster, "--node", node,
                *extra]
        if user:
            pw = pwd.getpwnam(user)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                    "--", *argv]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd="/")
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.first = self.next(10)
        self.replies, self.logs, self.exits, self.next_id = {}, {}, {}, 1

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout):
        return self.lines.get(timeout=timeout)

    def _pump(self, until, timeout):
        deadline = time.time() + timeout
        while not until():
            msg = self.next(max(0.01, deadline - time.time()))
            assert msg is not None, "agent ended: %s" % self.p.stderr.read().decode()
            if msg.get("ev") == "log":
                self.logs[msg["job"]] = self.logs.get(msg["job"], b"") + \
                    base64.b64decode(msg["data"])
            elif msg.get("ev") == "exit":
                self.exits[msg["job"]] = msg
            elif msg.get("ev") == "exits":  # the ends one turn of the monitor found
                self.exits.update((ex["job"], ex) for ex in msg["exits"])
            elif "re" in msg:
                self.replies[msg["re"]] = msg

    def request(self, op, timeout=10, **kw):
        rid, self.next_id = self.next_id, self.next_id + 1
        self.p.stdin.write((json.dumps(dict(kw, op=op, id=rid)) + "\n").encode())
        self.p.stdin.flush()
        self._pump(lambda: rid in self.replies, timeout)
        return self.replies.pop(rid)

    def launch(self, job, argv, **kw):
        kw.setdefault("cwd", "/tmp")
        kw.setdefault("env", dict(ENV))
        kw.setdefault("grace_s", 1)
        return self.request("launch", job=job, argv=argv, **kw)

    def wait_exit(self, job, timeout=20):
        self._pump(lambda: job in self.exits, timeout)
        return self.exits[job]

    def log(self, job):
        return self.logs.get(job, b"").decode(errors="replace")

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture(scope="module")
def tester():
    uid, gid = ensure_user("labqtest")
    return pwd.getpwuid(uid)


@pytest.fixture
def base():
    # readable by the test account (pytest's tmp_path sits in a 0700 directory)
    d = tempfile.mkdtemp(prefix="labq-trust-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agents():
    started = []

    def start(*a, **kw):
        ag = AgentProc(*a, **kw)
        started.append(ag)
        return ag
    yield start
    for ag in started:
        ag.close()


def run_dir(root, job, cluster="c", node="n"):
    return Path(root) / cluster / node / job


def run_cgroups(root, job):
    spec = json.loads((run_dir(root, job) / "spec.json").read_text())
    return (spec.get("cgroup") or {}).get("dirs", [])


def tagged(tag):
    """Live processes whose command line carries `tag`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if tag.encode() in argv and alive(int(d)):
                out.append(int(d))
    return out


def wait_for(cond, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sleep_tag():
    # a sleep length no other process uses, so the test can find exactly its own
    return "%d.%06d" % (900 + random.randrange(100), random.randrange(10 ** 6))


def assert_clean(root, job, tags):
    for t in tags:
        wait_for(lambda t=t: not tagged(t), 5, f"processes with {t} to end")
    for d in run_cgroups(root, job):
        assert not os.path.exists(d), f"run cgroup {d} left behind"


# -- hello and containment ---------------------------------------------------------------
def test_hello_reports_account_and_containment(base, agents):
    ag = agents(base / "jobs")
    hello = ag.first
    assert hello["ev"] == "hello" and hello["euid"] == 0 and hello["user"] == "root"
    assert hello["containment"] in ("cgroup2", "cgroup1", "none") and hello["containment_note"]
    unified = "/sys/fs/cgroup/unified/cgroup.controllers"
    if os.path.isdir("/sys/fs/cgroup/freezer") and os.path.exists(unified) \
            and "memory" not in Path(unified).read_text().split():
        assert hello["containment"] == "cgroup1"  # a hybrid node: v1 memory/pids/freezer
    # keyed by node, private to the agent
    d = base / "jobs" / "c" / "n"
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700
    ag2 = agents(base / "jobs", "--containment", "none")
    assert ag2.first["containment"] == "none"


# -- accounts ------------------------------------------------------------------------------
def test_root_agent_runs_a_job_as_its_owner(base, agents, tester):
    ag = agents(base / "jobs")
    assert ag.launch("1.0", ["bash", "-c", "id -u; id -G; cat /etc/shadow"],
                     uid=tester.pw_uid, user=tester.pw_name, cwd=str(base))["ok"]
    ex = ag.wait_exit("1.0")
    lines = ag.log("1.0").splitlines()
    assert lines[0] == str(tester.pw_uid)
    assert set(map(int, lines[1].split())) == set(os.getgrouplist(tester.pw_name,
                                                                  tester.pw_gid))
    assert "Permission denied" in ag.log("1.0") and ex["code"] == 1
    # the run's records stay the agent's
    d = run_dir(base / "jobs", "1.0")
    assert d.stat().st_uid == 0 and (d.stat().st_mode & 0o777) == 0o700
    for name in ("log", "pid", "exit", "spec.json"):
        st = (d / name).stat()
        assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o600, name


def test_root_agent_refuses_a_name_that_does_not_match_the_uid(base, agents, tester):
    ag = agents(base / "jobs")
    assert ag.launch("1.0", ["true"], uid=tester.pw_uid, user="alice")["ok"]
    ex = ag.wait_exit("1.0")
    assert ex["code"] == 126
    assert f"uid {tester.pw_uid} is {tester.pw_name} on this node, not alice" in ag.log("1.0")
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    assert ag.launch("2.0", ["true"], uid=uid, user="ghost")["ok"]
    assert ag.wait_exit("2.0")["code"] == 126
    assert f"uid {uid} (ghost) has no account on this node" in ag.log("2.0")


def test_no_root_jobs_refuses_uid_0(base, agents):
    ag = agents(base / "jobs", "--no-root-jobs")
    assert ag.launch("1.0", ["bash", "-c", "echo ran"], uid=0, user="root")["ok"]
    assert ag.wait_exit("1.0")["code"] == 126
    assert "no jobs as root" in ag.log("1.0") and "ran" not in ag.log("1.0")
    # nor as the agent's own account when a request names nobody
    assert ag.launch("2.0", ["bash", "-c", "echo ran"], user=None)["ok"]
    assert ag.wait_exit("2.0")["code"] == 126 and "ran" not in ag.log("2.0")


def test_non_root_agent_runs_only_its_own_account(base, agents, tester):
    root = base / "user-jobs"
    root.mkdir()
    os.chown(root, tester.pw_uid, tester.pw_gid)
    ag = agents(root, user=tester.pw_name)
    assert ag.first["euid"] == tester.pw_uid and ag.first["user"] == tester.pw_name
    r = ag.launch("1.0", ["bash", "-c", "touch %s/made" % base], uid=0, user="root")
    assert not r["ok"] and r["code"] == "account" and "uid 0" in r["error"]
    assert not run_dir(root, "1.0").exists() and not (base / "made").exists()
    assert ag.launch("2.0", ["id", "-u"], uid=tester.pw_uid, user=tester.pw_name)["ok"]
    assert ag.wait_exit("2.0")["code"] == 0 and ag.log("2.0").strip() == str(tester.pw_uid)
    assert ag.launch("3.0", ["id", "-un"], uid=0, user="root", shared=True)["ok"]
    assert ag.wait_exit("3.0")["code"] == 0 and ag.log("3.0").strip() == tester.pw_name


# -- the job directory -------------------------------------------------------------------------
def refused(root, *extra):
    p = subprocess.run([PY, "-u", AGENT, "--root", str(root), "--cluster", "c", "--node", "n",
                        *extra], stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    [line] = p.stdout.decode().splitlines()
    msg = json.loads(line)
    assert p.returncode == 3 and msg["ev"] == "refused", (p.returncode, line)
    return msg["error"]


def snapshot(d):
    return sorted((str(p), p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
                  for p in Path(d).rglob("*"))


def test_job_root_of_another_account_is_refused(base, tester):
    sticky = base / "shared"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert run_as(tester.pw_name, ["mkdir", str(sticky / "jr")]).returncode == 0
    err = refused(sticky / "jr")
    assert err == f"job_root {sticky / 'jr'} is owned by uid {tester.pw_uid}, not 0; " \
                  "refusing to use it"
    assert os.listdir(sticky / "jr") == []
    # a job_root of our own under a directory anybody may write, without the sticky bit
    open_dir = base / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    assert "not sticky" in refused(open_dir / "jr")
    assert not (open_dir / "jr").exists()


def test_symlinked_job_root_or_cluster_dir_is_refused(base):
    target = base / "target"
    target.mkdir()
    (target / "keep").write_text("root's file")
    before = snapshot(target)
    (base / "link").symlink_to(target)
    assert "symlink" in refused(base / "link")
    jr = base / "jr"
    jr.mkdir(mode=0o700)
    (jr / "c").symlink_to(target)
    assert "is a symlink" in refused(jr)
    assert snapshot(target) == before


# -- containment ---------------------------------------------------------------------------
def test_cancel_kills_what_the_job_detached(base, agents, tester):
    ag = agents(base / "jobs")
    a, b = sleep_tag(), sleep_tag()
    assert ag.launch("1.0", ["bash", "-c", f"setsid sleep {a} & sleep {b}; wait"],
                     uid=tester.pw_uid, user=tester.pw_name)["ok"]
    wait_for(lambda: tagged(a) and tagged(b), what="both sleeps")
    assert all(os.stat(f"/proc/{p}").st_uid == tester.pw_uid for p in tagged(a))
    assert ag.request("cancel", job="1.0", reason="cancel")["ok"]
    assert ag.wait_exit("1.0")["reason"] == "cancel"
    assert_clean(base / "jobs", "1.0", [a, b])


@pytest.mark.parametrize("containment", ["auto", "none"])
def test_leader_exit_kills_what_the_job_detached(base, agents, tester, containment):
    ag = agents(base / "jobs", "--containment", containment)
    a = sleep_tag()
    assert ag.launch("1.0", ["bash", "-c", f"setsid sleep {a} & sleep 0.3; echo done"],
                     uid=tester.pw_uid, user=tester.pw_name)["ok"]
    ex = ag.wait_exit("1.0")
    assert ex["code"] == 0 and ag.log("1.0") == "done\n"
    assert_clean(base / "jobs", "1.0", [a])


def test_time_limit_kills_what_the_job_detached(base, agents, tester):
    ag = agents(base / "jobs")
    a, b = sleep_tag(), sleep_tag()
    assert ag.launch("1.0", ["bash", "-c", f"setsid sleep {a} & exec sleep {b}"],
                     uid=tester.pw_uid, user=tester.pw_name, time_limit_s=1)["ok"]
    ex = ag.wait_exit("1.0")
    assert ex["reason"] == "timeout"
    assert_clean(base / "jobs", "1.0", [a, b])


def test_memory_limit(base, agents):
    ag = agents(base / "jobs")
    if ag.first["containment"] == "none":
        pytest.skip("no cgroups on this node")
    grab = "b = bytearray(%d << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    assert ag.launch("1.0", [PY, "-c", grab % 300], uid=0, user="root", memory_mb=64)["ok"]
    ex = ag.wait_exit("1.0")
    assert ex["code"] != 0 and "survived" not in ag.log("1.0")
    assert ex["reason"] == "oom"
    assert ag.launch("2.0", [PY, "-c", grab % 8], uid=0, user="root", memory_mb=64)["ok"]
    ex = ag.wait_exit("2.0")
    assert ex["code"] == 0 and ex["reason"] == "exit" and ag.log("2.0") == "survived\n"
    assert_clean(base / "jobs", "1.0", [])
    assert_clean(base / "jobs", "2.0", [])


def test_pids_limit(base, agents, tester):
    ag = agents(base / "jobs")
    if ag.first["containment"] == "none":
        pytest.skip("no cgroups on this node")
    a = sleep_tag()
    forks = ("import os\nn = 0\nfor i in range(60):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        break\n    if pid == 0:\n"
             "        os.execvp('sleep', ['sleep', %r])\n    n += 1\nprint('started', n)\n" % a)
    assert ag.launch("1.0", [PY, "-c", forks], uid=tester.pw_uid, user=tester.pw_name,
                     pids_max=20)["ok"]
    assert ag.wait_exit("1.0")["code"] == 0
    started = int(ag.log("1.0").split()[-1])
    assert 0 < started < 20
    assert_clean(base / "jobs", "1.0", [a])


def start_and_orphan(ag, root, tester):
    """A run whose shepherd was killed: its job and a detached child carry on unsupervised."""
    a = sleep_tag()
    assert ag.launch("1.0", ["bash", "-c", f"setsid sleep {a} & sleep {a}"],
                     uid=tester.pw_uid, user=tester.pw_name)["ok"]
    wait_for(lambda: len(tagged(a)) == 2, what="the sleeps")
    # the shepherd notes its pid once the job is forked: the sleeps may be seen before
    wait_for(lambda: (run_dir(root, "1.0") / "pid").exists(), what="the run's pid record")
    shepherd = json.loads((run_dir(root, "1.0") / "pid").read_text())["shepherd"]
    os.kill(shepherd, signal.SIGKILL)
    wait_for(lambda: not alive(shepherd), what="the shepherd to die")
    return a, run_cgroups(root, "1.0")


@pytest.mark.parametrize("containment", ["auto", "none"])
def test_lost_run_kills_all_of_the_job(base, agents, tester, containment):
    ag = agents(base / "jobs", "--containment", containment)
    a, dirs = start_and_orphan(ag, base / "jobs", tester)
    assert ag.wait_exit("1.0")["reason"] == "lost"
    assert_clean(base / "jobs", "1.0", [a])
    assert ag.request("forget", job="1.0")["ok"]
    assert not run_dir(base / "jobs", "1.0").exists()
    assert not any(os.path.exists(d) for d in dirs)


def test_forget_removes_a_leftover_cgroup(base, agents, tester):
    ag = agents(base / "jobs")
    a, dirs = start_and_orphan(ag, base / "jobs", tester)
    assert ag.request("forget", job="1.0")["ok"]
    assert not run_dir(base / "jobs", "1.0").exists()
    wait_for(lambda: not tagged(a), 5, "the orphaned job to end")
    assert not any(os.path.exists(d) for d in dirs)


def test_agent_start_removes_cgroups_of_forgotten_runs(base, agents):
    ag = agents(base / "jobs")
    if ag.first["containment"] == "none":
        pytest.skip("no cgroups on this node")
    assert ag.launch("1.0", ["true"])["ok"]
    ag.wait_exit("1.0")
    parents = [os.path.dirname(d) for d in run_cgroups(base / "jobs", "1.0")]
    a = sleep_tag()
    stray = subprocess.Popen(["sleep", a], start_new_session=True)
    try:
        for p in parents:  # a run whose directory is gone but whose cgroup still holds a job
            os.mkdir(os.path.join(p, "99.0"))
            Path(p, "99.0", "cgroup.procs").write_text(str(stray.pid))
        ag.close()
        agents(base / "jobs")
        assert stray.wait(5) == -signal.SIGKILL
        assert not any(os.path.exists(os.path.join(p, "99.0")) for p in parents)
    finally:
        stray.kill()


def test_a_run_half_removed_by_a_killed_agent_is_not_listed_and_goes(base, agents):
    """An agent killed while it removed a forgotten run's directory: the next one neither
    takes what is left for a run that is still starting nor keeps it."""
    root = base / "jobs"
    ag = agents(root)
    assert ag.launch("4.0", ["true"])["ok"] and ag.wait_exit("4.0")["code"] == 0
    assert ag.launch("5.0", ["true"])["ok"] and ag.wait_exit("5.0")["code"] == 0
    assert ag.request("forget", job="4.0")["ok"]
    assert not run_dir(root, "4.0").exists() and not run_dir(root, "4.0.gone").exists()
    ag.close()
    # what a removal cut short leaves: the directory out of sight, its records gone
    left = run_dir(root, "5.0")
    left.rename(run_dir(root, "5.0.gone"))
    for name in ("pid", "exit"):
        (run_dir(root, "5.0.gone") / name).unlink()
    ag = agents(root)
    assert ag.request("list")["jobs"] == []
    assert not run_dir(root, "5.0.gone").exists()


def test_requests_sent_together_are_done_in_order_and_only_those_with_an_id_answered(base,
                                                                                    agents):
    ag = agents(base / "jobs")
    for n in (1, 2, 3):
        assert ag.launch(f"{n}.0", ["bash", "-c", f"exit {n}"])["ok"]
    assert [ag.wait_exit(f"{n}.0")["code"] for n in (1, 2, 3)] == [1, 2, 3]
    # one write: two forgets labqd does not wait on, then a listing it does
    ag.p.stdin.write(b'{"op":"forget","job":"1.0"}\n{"op":"forget","job":"2.0"}\n'
                     b'{"op":"list","id":99}\n')
    ag.p.stdin.flush()
    ag._pump(lambda: 99 in ag.replies, 10)
    assert [j["job"] for j in ag.replies.pop(99)["jobs"]] == ["3.0"]
    assert ag.request("ping")["ok"] and not ag.replies  # the forgets had no answer
