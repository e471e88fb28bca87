"""Preemption in a real labqd with a real SSH node, tried as two Unix users: a preemptible job
is stopped and requeued for another user's job, then finishes; a job that is not preemptible
is never stopped."""
import json
import tempfile
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from sshnodes import NodeSet, alive
from userkit import User, cli_venv, show, submit
from userkit import user_on as user

GPUS = [{"type": "A100", "memory_mb": 40960}] * 2


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


def _labqd(tmp_path_factory, name: str, node: str, grace: str):
    """A labqd with one two-GPU SSH node, whose jobs rank by --priority alone."""
    base = tmp_path_factory.mktemp(name)
    with NodeSet(base / "nodes", names=[node]) as ns:
        entries = ns.config_entries({node: GPUS})
        entries[0]["job_root"] = str(base / "jobs")
        d = Daemon(base / "daemon", {
            "daemon": {"socket_mode": "0666", "kill_grace": grace},
            "scheduler": {"interval": "1s", "preempt_min_run": "0s", "preempt_max": 2,
                          "weight_fairshare": 0},
            "node": entries,
        })
        with d.start(wait_nodes=1):
            yield d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    yield from _labqd(tmp_path_factory, "preempt", "p2", "1s")


def events(u: User, jid: str) -> list[dict]:
    return json.loads(u.ok("events", "--json", jid))


def test_a_preemptible_job_is_requeued_for_another_users_job_and_finishes(daemon, venv):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    # the first run waits to be stopped; the run after the requeue ends at once
    victim = submit(alice, "--preemptible", "--gpus", "2", "--wrap",
                    'echo "run $LABQ_RESTART_COUNT"; '
                    '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; exit 0')
    wait_for(lambda: show(alice, victim)["state"] == "RUNNING", what="victim running")
    assert show(alice, victim)["preemptible"] is True
    urgent = submit(bob, "--priority", "9", "--gpus", "2", "--", "echo", "urgent")
    assert bob.labq("wait", urgent, "--timeout", "60").returncode == 0
    assert alice.labq("wait", victim, "--timeout", "60").returncode == 0
    done = show(alice, victim)
    assert done["state"] == "COMPLETED" and done["restarts"] == 1 and done["preemptions"] == 1
    requeued = [e for e in events(alice, victim)
                if e["from_state"] == "RUNNING" and e["to_state"] == "PENDING"]
    assert len(requeued) == 1
    assert f"preempted by job {urgent} of labqtest2" in requeued[0]["reason"]
    log = alice.ok("logs", victim)
    assert "run 0" in log and "run 1" in log and "preempted by job" in log


def test_a_preempted_job_keeps_its_age_and_runs_again_before_a_later_job(daemon, venv):
    """Queued again, the stopped job keeps the age it had: a job of the same priority
    submitted after it neither preempts it nor starts before it."""
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    victim = submit(alice, "--preemptible", "--gpus", "2", "--wrap",
                    '[ "$LABQ_RESTART_COUNT" = 0 ] && exec sleep 600; exit 0')
    wait_for(lambda: show(alice, victim)["state"] == "RUNNING", what="victim running")
    later = submit(alice, "--gpus", "2", "--", "true")
    wait_for(lambda: show(alice, later)["reason"] == "Resources", what="later's reason")
    urgent = submit(bob, "--priority", "9", "--gpus", "2", "--", "true")
    assert bob.labq("wait", urgent, later, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", victim, "--timeout", "60", timeout=90).returncode == 0
    requeued = [e for e in events(alice, victim)
                if e["from_state"] == "RUNNING" and e["to_state"] == "PENDING"]
    assert len(requeued) == 1 and f"preempted by job {urgent} " in requeued[0]["reason"]
    assert show(alice, victim)["start_time"] < show(alice, later)["start_time"]


def test_a_job_that_is_not_preemptible_is_never_stopped(daemon, venv):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    shared = Path(tempfile.mkdtemp(prefix="labq-preempt-"))  # where bob's job can look
    shared.chmod(0o777)
    gate = shared / "gate"
    steady = submit(bob, "--gpus", "2", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    wait_for(lambda: show(bob, steady)["state"] == "RUNNING", what="steady running")
    waiting = submit(alice, "--priority", "9", "--gpus", "2", "--", "true")
    # the waiting job is the top job, reserved for, with an estimated start: several passes
    wait_for(lambda: show(alice, waiting)["reason"] == "Resources"
             and show(alice, waiting)["estimated_start"], what="reservation")
    scavenger = submit(alice, "--preemptible", "--gpus", "2", "--", "true")
    wait_for(lambda: show(alice, scavenger)["reason"], what="scavenger's reason")
    assert show(bob, steady)["state"] == "RUNNING"
    assert [e["to_state"] for e in events(bob, steady)] == ["PENDING", "RUNNING"]
    gate.write_text("")
    assert bob.labq("wait", steady, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", waiting, scavenger, "--timeout", "60", timeout=90).returncode == 0
    assert show(bob, steady)["preemptions"] == 0


def test_preemptible_must_be_true_or_false(daemon, venv):
    from labq.errors import ValidationError
    from labq.spec import validate_submit
    with pytest.raises(ValidationError, match="preemptible: must be true or false"):
        validate_submit({"command": ["true"], "preemptible": "yes"})
    bob = user("labqtest2", venv, daemon)
    r = bob.labq("submit", "--preemptible=yes", "--", "true")
    assert r.returncode != 0


def test_the_early_signal_reaches_the_job_before_its_time_limit(daemon, venv):
    alice = user("labqtest", venv, daemon)
    jid = submit(alice, "--time", "1m", "--signal", "USR1@57", "--wrap",
                 "trap 'echo saved on USR1; exit 0' USR1; while :; do sleep 0.1; done")
    assert alice.labq("wait", jid, "--timeout", "50", timeout=80).returncode == 0
    assert "saved on USR1" in alice.ok("logs", jid)
    assert show(alice, jid)["early_signal"] == "USR1@57"


def test_the_early_signal_comes_before_a_preemption(daemon, venv):
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    # the output of a stopped run after its requeue is not kept: the job writes a file
    shared = Path(tempfile.mkdtemp(prefix="labq-signal-"))
    shared.chmod(0o777)
    saved = shared / "saved"
    victim = submit(alice, "--preemptible", "--gpus", "2", "--signal", "USR2@60", "--wrap",
                    '[ "$LABQ_RESTART_COUNT" = 0 ] || exit 0; '
                    f"echo $$ > {shared}/pid; "
                    f"trap 'echo checkpoint on USR2 > {saved}' USR2; "
                    "while :; do sleep 0.1; done")
    wait_for(lambda: show(alice, victim)["state"] == "RUNNING", what="victim running")
    urgent = submit(bob, "--priority", "9", "--gpus", "2", "--", "true")
    assert bob.labq("wait", urgent, "--timeout", "60", timeout=80).returncode == 0
    assert alice.labq("wait", victim, "--timeout", "60", timeout=80).returncode == 0
    assert saved.read_text() == "checkpoint on USR2\n"
    # the stopped run is gone, not left running beside its requeued one
    pid = int((shared / "pid").read_text())
    wait_for(lambda: not alive(pid), timeout=10, what="the preempted run gone")


def test_the_preempting_job_starts_only_once_the_stopped_run_has_let_go(daemon, venv):
    """The stopped run keeps its GPUs through its grace time: the preemptor starts after it
    is gone, never beside it on the same GPUs."""
    alice, bob = user("labqtest", venv, daemon), user("labqtest2", venv, daemon)
    shared = Path(tempfile.mkdtemp(prefix="labq-grace-"))
    shared.chmod(0o777)
    # the first run shrugs off SIGTERM and beats until the SIGKILL a grace later
    victim = submit(alice, "--preemptible", "--gpus", "2", "--wrap",
                    '[ "$LABQ_RESTART_COUNT" = 0 ] || exit 0; trap "" TERM; '
                    f"while :; do date +%s.%N > {shared}/beat.tmp; "
                    f"mv {shared}/beat.tmp {shared}/beat; sleep 0.05; done")
    wait_for(lambda: (shared / "beat").exists(), what="the victim beating")
    urgent = submit(bob, "--priority", "9", "--gpus", "2", "--", "true")
    assert bob.labq("wait", urgent, "--timeout", "60", timeout=80).returncode == 0
    last_beat = float((shared / "beat").read_text())
    assert show(bob, urgent)["start_time"] > last_beat
    assert alice.labq("wait", victim, "--timeout", "60", timeout=80).returncode == 0


def test_a_bad_signal_is_refused_and_queues_nothing(daemon, venv):
    bob = user("labqtest2", venv, daemon)
    before = bob.ok("ls", "--all", "--json")
    for bad in ("KILL@10", "USR1", "USR1@0", "USR1@x"):
        r = bob.labq("submit", "--signal", bad, "--", "true")
        assert r.returncode != 0 and "early_signal: must be SIG@SECONDS" in r.stderr, r.stderr
    assert bob.ok("ls", "--all", "--json") == before


@pytest.fixture(scope="module")
def slow_stop(tmp_path_factory):
    """A labqd whose preempted runs take their time to stop (a grace of 4 s)."""
    yield from _labqd(tmp_path_factory, "preempt-hold", "h2", "4s")


def test_the_gpus_a_preemption_frees_go_to_the_job_that_preempted(slow_stop, venv):
    """While its victim stops, a job ranked above the preemptor is submitted: the freed GPUs
    still go to the preemptor first."""
    alice, bob = user("labqtest", venv, slow_stop), user("labqtest2", venv, slow_stop)
    # the first run ignores SIGTERM, so it stops only at the grace's SIGKILL
    victim = submit(alice, "--preemptible", "--priority", "1", "--gpus", "2", "--wrap",
                    '[ "$LABQ_RESTART_COUNT" = 0 ] && trap "" TERM && exec sleep 600; exit 0')
    wait_for(lambda: show(alice, victim)["state"] == "RUNNING", what="victim running")
    urgent = submit(bob, "--priority", "5", "--gpus", "2", "--", "sleep", "1")
    wait_for(lambda: show(alice, victim)["state"] == "PENDING", interval=0.05,
             what="victim preempted")
    higher = submit(alice, "--priority", "9", "--gpus", "2", "--", "true")
    assert show(alice, higher)["state"] == "PENDING"
    assert bob.labq("wait", urgent, "--timeout", "60", timeout=90).returncode == 0
    assert alice.labq("wait", higher, victim, "--timeout", "60", timeout=90).returncode == 0
    assert show(bob, urgent)["start_time"] < show(alice, higher)["start_time"]
    assert f"preempted by job {urgent} " in next(
        e["reason"] for e in events(alice, victim) if e["to_state"] == "PENDING"
        and e["from_state"] == "RUNNING")
    # bob's job was the only preemptor: the victim was stopped once
    assert show(alice, victim)["preemptions"] == 1
