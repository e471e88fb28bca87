"""labqd keeps an active job's command and environment on disk, not in memory: tried as two
real Unix users against a real root labqd, across a restart, they still reach the job when it
starts and its owner when they ask, and nobody else."""
import json

import pytest
from daemonproc import open_daemon, wait_for
from userkit import User, cli_venv

ALICE, BOB = "labqtest", "labqtest2"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = open_daemon(tmp_path_factory.mktemp("cold"))
    with d.start(wait_nodes=1):
        yield d


@pytest.fixture(scope="module")
def users(daemon):
    venv = cli_venv()
    return (User(ALICE, venv, daemon.socket, {"MODEL_DIR": "/data/alice"}),
            User(BOB, venv, daemon.socket))


def last_id(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_a_held_job_starts_with_its_command_and_env_after_a_restart(daemon, users):
    alice, bob = users
    jid = last_id(alice.ok("submit", "--hold", "--name", "cold-1", "--env", "SEED=7", "--",
                           "bash", "-c", 'echo "$MODEL_DIR $SEED $LABQ_JOB_NAME"'))
    daemon.stop()
    daemon.start(wait_nodes=1)
    # bob may not release it, and learns nothing of it by trying
    r = bob.labq("release", jid)
    assert r.returncode != 0 and "/data/alice" not in r.stdout + r.stderr
    assert json.loads(bob.ok("show", "--json", jid))["env"] is None
    alice.ok("release", jid)
    assert alice.labq("wait", jid).returncode == 0
    assert alice.ok("logs", jid).strip() == "/data/alice 7 cold-1"
    shown = json.loads(alice.ok("show", "--json", jid))
    assert shown["env"]["SEED"] == "7" and shown["command"][0] == "bash"


def test_a_job_waiting_on_a_held_job_waits_for_it(daemon, users):
    """Held jobs are left out of a scheduler pass unless a dependency ties them in."""
    alice, _ = users
    first = last_id(alice.ok("submit", "--hold", "--", "true"))
    then = last_id(alice.ok("submit", "--after", first, "--", "true"))
    with daemon.client() as q:
        wait_for(lambda: q.job(int(then)).reason == "Dependency", what="Dependency")
        assert q.job(int(first)).reason == "Held"
        assert q.job(int(then)).state.value == "PENDING"
        q.release(int(first))
        done = q.wait(int(then), timeout=30)
    assert [j.state.value for j in done] == ["COMPLETED"]
