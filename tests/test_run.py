"""`labq run` as real Unix users against a real labqd: the job's output arrives while it
runs, labq exits as the job did, Ctrl-C cancels it and a second Ctrl-C stops waiting."""
import json
import signal

import pytest
from daemonproc import Daemon
from userkit import User, cli_venv


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    d = Daemon(base, {"daemon": {"local_node": True, "socket_mode": "0666",
                                 "kill_grace": "5s"}})
    with d.start(wait_nodes=1):
        venv = cli_venv()
        yield [User(n, venv, d.socket) for n in ("labqtest", "labqtest2")]


def state(user: User, job_id: str) -> dict:
    return json.loads(user.ok("show", "--json", job_id))


def last_job(user: User) -> str:
    return str(json.loads(user.ok("ls", "--all", "--mine", "--json"))[-1]["id"])


def test_run_exits_with_the_jobs_exit_code_and_runs_as_its_user(users):
    alice, bob = users
    r = alice.labq("run", "--", "bash", "-c", "id -un; echo oops >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "labqtest\n" and r.stderr.startswith("oops\n")
    r = bob.labq("run", "--name", "mine", "--", "id", "-un")
    assert (r.returncode, r.stdout, r.stderr) == (0, "labqtest2\n", "")


def test_run_says_why_a_job_did_not_simply_exit(users):
    alice, _ = users
    r = alice.labq("run", "--", "bash", "-c", "kill -9 $$")
    assert r.returncode == 128 + 9 and "killed by signal 9" in r.stderr
    r = alice.labq("run", "--time", "1s", "--", "sleep", "30")
    assert r.returncode == 124 and "TIMEOUT" in r.stderr
    r = alice.labq("run", "--mem", "99999T", "--", "true")
    assert r.returncode == 125 and "memory" in r.stderr
    r = alice.labq("run", "--", "/no/such/program")
    assert r.returncode == 127


def test_run_streams_output_while_the_job_runs(users):
    alice, _ = users
    fifo = "/tmp/labq-run-gate-%d" % alice.uid
    alice.ok("run", "--", "bash", "-c", f"rm -f {fifo}; mkfifo {fifo}")
    p = alice.popen("run", "--", "bash", "-c", f"echo first; read go < {fifo}; echo second")
    try:
        assert p.stdout.readline() == "first\n"
        # the job waits on the fifo: what came out came while it ran
        assert state(alice, last_job(alice))["state"] == "RUNNING"
        alice.ok("run", "--", "bash", "-c", f"echo go > {fifo}")
        out, _err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out == "second\n" and p.returncode == 0


def test_ctrl_c_cancels_the_job_and_a_second_detaches(users):
    alice, bob = users
    trap = "trap 'echo stopping; sleep 3; exit 7' TERM; echo started; while :; do sleep 0.1; done"
    p = alice.popen("run", "--", "bash", "-c", trap)
    try:
        assert p.stdout.readline() == "started\n"
        job_id = last_job(alice)
        # someone else cannot cancel it, nor follow it
        for verb in ("cancel", "logs"):
            r = bob.labq(verb, job_id)
            assert r.returncode != 0 and "belongs to labqtest" in r.stderr
        assert state(alice, job_id)["state"] == "RUNNING"
        p.send_signal(signal.SIGINT)
        assert "cancelling job " + job_id in p.stderr.readline()
        # the job got SIGTERM and is ending (bash may first report its sleep terminated)
        lines = [p.stdout.readline()]
        if lines[0] != "stopping\n":
            lines.append(p.stdout.readline())
        assert lines[-1] == "stopping\n", lines
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert f"labq logs -f {job_id}" in err and "being cancelled" in err
    alice.labq("wait", job_id)  # exits 1: the job did not complete
    shown = state(alice, job_id)
    assert shown["state"] == "CANCELLED" and "Ctrl-C" in shown["reason"]


def test_one_ctrl_c_waits_for_the_cancelled_job_to_end(users):
    alice, _ = users
    p = alice.popen("run", "--", "bash", "-c", "echo started; sleep 30")
    try:
        assert p.stdout.readline() == "started\n"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and "CANCELLED" in err
    assert state(alice, last_job(alice))["state"] == "CANCELLED"
