"""stdout and stderr kept apart: real Unix users run the real CLI against a root labqd, on the
local node and on an SSH node. `labq run` writes the job's stdout to its stdout and its
stderr to its stderr, `labq logs` shows both, and the split holds through big interleaved
output, a labqd restart, and runs from before the node kept the streams apart."""
import json
import os
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from sshnodes import NodeSet, run_as
from userkit import User, cli_venv

A100 = [{"type": "A100", "memory_mb": 81920}]

# about a megabyte on each stream, in writes of many sizes, interleaved
BIG = """import random, sys
r = random.Random(7)
for i in range(4000):
    out = (b'o%d ' % i) * r.randint(1, 90) + b'\\n'
    err = (b'e%d ' % i) * r.randint(1, 90) + b'\\n'
    sys.stdout.buffer.write(out); sys.stdout.flush()
    sys.stderr.buffer.write(err); sys.stderr.flush()
"""


def big_expected() -> tuple[str, str]:
    import random
    r = random.Random(7)
    out, err = [], []
    for i in range(4000):
        out.append(f"o{i} " * r.randint(1, 90) + "\n")
        err.append(f"e{i} " * r.randint(1, 90) + "\n")
    return "".join(out), "".join(err)


@pytest.fixture(scope="module", params=["local", "ssh"])
def lab(request, tmp_path_factory):
    """A root labqd with one node: the local machine's, or one reached over SSH."""
    base = tmp_path_factory.mktemp(f"streams-{request.param}")
    config = {"daemon": {"socket_mode": "0666", "kill_grace": "1s", "heartbeat": "1s"}}
    if request.param == "local":
        config["node"] = [{"name": "here", "local": True, "job_root": str(base / "jobs")}]
        d = Daemon(base / "daemon", config)
        with d.start(wait_nodes=1):
            yield d
        return
    with NodeSet(base / "nodes", names=["far"]) as ns:
        [far] = ns.config_entries({"far": A100})
        far.update(job_root=str(base / "jobs"))
        config["node"] = [far]
        d = Daemon(base / "daemon", config)
        with d.start(wait_nodes=1):
            yield d


@pytest.fixture(scope="module")
def users(lab):
    venv = cli_venv()
    return [User(n, venv, lab.socket) for n in ("labqtest", "labqtest2")]


def last_job(user: User) -> str:
    return str(json.loads(user.ok("ls", "--all", "--mine", "--json"))[-1]["id"])


def test_run_writes_stdout_and_stderr_apart_and_logs_shows_both(users):
    alice, bob = users
    r = alice.labq("run", "--", "bash", "-c", "echo out; echo err >&2; echo out2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "out\nout2\n", "err\n")
    jid = last_job(alice)
    # the log keeps both; the order between the two streams is only as close as the node saw
    assert sorted(alice.ok("logs", jid).splitlines()) == ["err", "out", "out2"]
    assert alice.ok("logs", "--stdout", jid) == "out\nout2\n"
    assert alice.ok("logs", "--stderr", jid) == "err\n"
    chunks = [json.loads(line) for line in alice.ok("logs", "--json", "--stderr", jid)
              .splitlines()]
    assert "".join(c["data"] for c in chunks) == "err\n"
    # neither stream is anyone else's to read
    for args in ([jid], ["--stdout", jid], ["--stderr", jid], ["-f", "--stderr", jid]):
        r = bob.labq("logs", *args)
        assert r.returncode != 0 and "belongs to labqtest" in r.stderr and r.stdout == ""
    r = bob.labq("run", "--", "bash", "-c", "echo mine >&2; id -un")
    assert (r.returncode, r.stdout, r.stderr) == (0, "labqtest2\n", "mine\n")


def test_a_megabyte_on_each_stream_comes_out_exact(users):
    alice, _ = users
    r = alice.labq("run", "--", "python3", "-c", BIG, timeout=120)
    out, err = big_expected()
    assert len(out) > 900_000 and len(err) > 900_000
    assert r.returncode == 0
    assert r.stdout == out  # not a byte of one stream in the other
    assert r.stderr == err
    jid = last_job(alice)
    assert alice.ok("logs", "--stderr", jid) == err
    assert alice.ok("logs", "--stdout", jid) == out
    assert len(alice.ok("logs", jid)) == len(out) + len(err)


def test_the_job_gets_its_streams_and_nothing_more(users):
    alice, _ = users
    # fd 2 is the node's pipe, not the log, and no descriptor of the shepherd's comes along:
    # 3 is the listing's own
    script = ("import os, stat\n"
              "print(sorted(os.listdir('/proc/self/fd')))\n"
              "print(stat.S_ISFIFO(os.fstat(2).st_mode), os.getpgid(0) == os.getpid())\n")
    r = alice.labq("run", "--", "python3", "-c", script)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == "['0', '1', '2', '3']\nTrue True\n"
    # a job that closes its stderr ends as it would anywhere
    r = alice.labq("run", "--", "bash", "-c", "exec 2>&-; echo still here; exit 4")
    assert (r.returncode, r.stdout) == (4, "still here\n")


def test_the_python_api_takes_a_file_for_each_stream(users):
    alice, _ = users
    script = ("import io, json, labq\n"
              "out, err = io.BytesIO(), io.StringIO()\n"
              "with labq.connect() as q:\n"
              "    job = q.run(['bash', '-c', 'echo to-out; echo to-err >&2; exit 2'],\n"
              "                stdout=out, stderr=err)\n"
              "print(json.dumps([out.getvalue().decode(), err.getvalue(), job.exit_code]))\n")
    r = run_as(alice.name, [str(alice.venv / "bin" / "python"), "-c", script],
               env=alice.env(), cwd=str(alice.home), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["to-out\n", "to-err\n", 2]


def test_a_labqd_restart_mid_run_keeps_the_split(lab, users, tmp_path):
    alice, _ = users
    gate = Path(f"/tmp/labq-streams-gate-{os.getpid()}")
    gate.unlink(missing_ok=True)
    p = alice.popen("run", "--", "bash", "-c",
                    f"echo before; echo before-err >&2; while [ ! -e {gate} ]; do sleep 0.05;"
                    " done; echo after-err >&2; echo after")
    try:
        assert p.stdout.readline() == "before\n"
        jid = last_job(alice)
        lab.stop()
        lab.start(wait_nodes=1)
        gate.write_text("")
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        gate.unlink(missing_ok=True)
    assert p.returncode == 0
    assert out == "after\n" and err == "before-err\nafter-err\n"
    assert alice.ok("logs", "--stderr", jid) == "before-err\nafter-err\n"


def run_dir(lab: Daemon, jid: str) -> Path:
    [d] = Path(lab.config["node"][0]["job_root"]).glob(f"*/*/{jid}.0")
    return d


def test_a_run_from_before_the_split_reads_as_stdout(lab, users):
    alice, _ = users
    gate = Path(f"/tmp/labq-streams-gate-{os.getpid()}")
    gate.unlink(missing_ok=True)
    jid = alice.ok("submit", "--", "bash", "-c",
                   f"echo early >&2; while [ ! -e {gate} ]; do sleep 0.05; done; "
                   "echo late >&2").split()[0]
    try:
        wait_for(lambda: alice.ok("logs", jid) == "early\n", what="the first line")
        # as after an upgrade: the run's directory has no stderr file when the agent that
        # streams it starts
        lab.stop()
        (run_dir(lab, jid) / "stderr").unlink()
        lab.start(wait_nodes=1)
        gate.write_text("")
        assert alice.labq("wait", jid).returncode == 0
    finally:
        gate.unlink(missing_ok=True)
    assert alice.ok("logs", jid) == "early\nlate\n"
    assert alice.ok("logs", "--stderr", jid) == "early\n"
    assert alice.ok("logs", "--stdout", jid) == "late\n"
    # and a copy kept by a labqd from before: all of it stdout
    copy = lab.database.parent / "logs" / f"{jid}.err"
    copy.unlink()
    assert alice.ok("logs", "--stdout", jid) == "early\nlate\n"
    assert alice.ok("logs", "--stderr", jid) == ""


def test_an_older_client_reads_the_log_as_before(lab, users):
    alice, _ = users
    jid = alice.ok("submit", "--", "bash", "-c", "echo a; echo b >&2").split()[0]
    assert alice.labq("wait", jid).returncode == 0
    # read_log called as clients before the split call it: four arguments, four answers
    script = ("import json, labq\n"
              "with labq.connect() as q:\n"
              f"    reply = q._remote('read_log', {jid}, 0, 0.0, 100)\n"
              "print(json.dumps([len(reply), sorted(bytes(reply[0]).decode().split())]))\n")
    r = run_as(alice.name, [str(alice.venv / "bin" / "python"), "-c", script],
               env=alice.env(), cwd=str(alice.home), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [4, ["a", "b"]]


def test_bad_streams_argument_is_a_typed_error(users):
    alice, _ = users
    script = ("import json, labq\n"
              "with labq.connect() as q:\n"
              "    reply = q._remote('read_log', 1, 0, 0.0, 100, 'yes')\n"
              "print(json.dumps([len(reply), json.loads(reply[3])['code']]))\n")
    r = run_as(alice.name, [str(alice.venv / "bin" / "python"), "-c", script],
               env=alice.env(), cwd=str(alice.home), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [4, "VALIDATION_ERROR"]



def test_purge_removes_both_streams_copies(lab, users):
    alice, bob = users
    jid = alice.ok("submit", "--", "bash", "-c", "echo a; echo b >&2").split()[0]
    assert alice.labq("wait", jid).returncode == 0
    logs = lab.database.parent / "logs"
    assert (logs / f"{jid}.log").exists() and (logs / f"{jid}.err").exists()
    r = bob.labq("purge", "--before", "2999-01-01")
    assert r.returncode != 0 and (logs / f"{jid}.err").exists()
    with lab.client() as q:  # root: an admin
        q.purge(4e9)
    assert not (logs / f"{jid}.log").exists() and not (logs / f"{jid}.err").exists()
    assert alice.ok("logs", "--stderr", jid) == "" and alice.ok("logs", jid) == ""
