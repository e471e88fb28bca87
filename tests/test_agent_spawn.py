"""How a shepherd starts its job, against real agent processes: the job is born inside its
run's cgroup (never moved there once running), the shepherd goes back to the agent's own, and
a job that cannot start says why in its log, with the exit code a shell would give."""
import json
import os
from pathlib import Path

import pytest
import test_agent_trust as trust
from sshnodes import alive

agents, base, tester = trust.agents, trust.base, trust.tester
run_dir, run_cgroups, sleep_tag = trust.run_dir, trust.run_cgroups, trust.sleep_tag
wait_for, tagged = trust.wait_for, trust.tagged


@pytest.fixture(params=["root", "tester"])
def account(request, tester):
    """The job's account: the agent's own (root), or another one."""
    if request.param == "root":
        return {"uid": 0, "user": "root"}
    return {"uid": tester.pw_uid, "user": tester.pw_name}


def cgroup_members(dirs):
    pids = set()
    for d in dirs:
        pids |= {int(p) for p in Path(d, "cgroup.procs").read_text().split()}
    return pids


def test_job_is_born_in_its_cgroup_and_the_shepherd_leaves_it(base, agents, account):
    ag = agents(base / "jobs")
    kind = ag.first["containment"]
    assert kind in ("cgroup1", "cgroup2"), ag.first["containment_note"]
    a = sleep_tag()
    # the job's first process reads where it is before it does anything else: nothing
    # could have moved it there after it started
    script = f"cat /proc/self/cgroup; exec sleep {a}"
    assert ag.launch("1.0", ["bash", "-c", script], **account)["ok"]
    wait_for(lambda: tagged(a), what="the job")
    dirs = run_cgroups(base / "jobs", "1.0")
    rec = json.loads((run_dir(base / "jobs", "1.0") / "pid").read_text())
    # the run's cgroup holds the job alone; its shepherd is back beside the agent
    assert cgroup_members(dirs) == {rec["pid"]} == set(tagged(a))
    assert alive(rec["shepherd"])
    own = Path(f"/proc/{ag.p.pid}/cgroup").read_text()
    assert Path(f"/proc/{rec['shepherd']}/cgroup").read_text() == own
    assert ag.request("cancel", job="1.0", reason="cancel")["ok"]
    assert ag.wait_exit("1.0")["reason"] == "cancel"
    want = {"memory", "pids", "freezer"} if kind == "cgroup1" else {""}
    where = {}
    for line in ag.log("1.0").splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in set(ctrls.split(",")) & want:
            where[c] = path
    assert set(where) == want and all(p.endswith("/1.0") for p in where.values()), where
    trust.assert_clean(base / "jobs", "1.0", [a])


def test_a_job_that_cannot_start_says_why(base, agents, account):
    ag = agents(base / "jobs")
    script = base / "script"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)  # not executable
    cases = [("1.0", ["no-such-program-here"], "/tmp", 127, "cannot run 'no-such-program-here'"),
             ("2.0", [str(script)], "/tmp", 126, "Permission denied"),
             ("3.0", ["true"], str(base / "missing"), 1, "cannot enter working directory")]
    for key, argv, cwd, code, why in cases:
        assert ag.launch(key, argv, cwd=cwd, **account)["ok"]
        ex = ag.wait_exit(key)
        assert (ex["code"], ex["reason"]) == (code, "exit"), (key, ex, ag.log(key))
        assert why in ag.log(key) and "ran" not in ag.log(key)
        # the reason is the job's stderr, as its own complaints would be
        assert (run_dir(base / "jobs", key) / "stderr").read_text().strip()
    # what the C library cannot take is refused as well, not left to kill the shepherd
    assert ag.launch("4.0", ["true"], env=dict(trust.ENV, **{"A=B": "1"}), **account)["ok"]
    ex = ag.wait_exit("4.0")
    assert (ex["code"], ex["reason"]) == (126, "exit") and "environment" in ag.log("4.0")
    for key, *_ in cases:
        assert not run_cgroups(base / "jobs", key) or not any(
            os.path.exists(d) for d in run_cgroups(base / "jobs", key))


def test_working_directory_is_entered_with_the_owners_rights(base, agents, tester):
    """A directory root may enter but the owner may not is refused, as a home on NFS closed
    to root is entered: with the owner's rights, not the agent's."""
    ag = agents(base / "jobs")
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    mine = base / "mine"
    mine.mkdir(mode=0o700)
    os.chown(mine, tester.pw_uid, tester.pw_gid)
    assert ag.launch("1.0", ["pwd"], cwd=str(closed), uid=tester.pw_uid,
                     user=tester.pw_name)["ok"]
    ex = ag.wait_exit("1.0")
    assert ex["code"] == 1 and "cannot enter working directory" in ag.log("1.0")
    assert ag.launch("2.0", ["pwd"], cwd=str(mine), uid=tester.pw_uid,
                     user=tester.pw_name)["ok"]
    assert ag.wait_exit("2.0")["code"] == 0 and ag.log("2.0") == f"{mine}\n"
    assert ag.launch("3.0", ["pwd"], cwd=str(closed), uid=0, user="root")["ok"]
    assert ag.wait_exit("3.0")["code"] == 0 and ag.log("3.0") == f"{closed}\n"


def test_a_job_starts_with_default_signals_whatever_the_agent_ignores(base, agents, account,
                                                                       monkeypatch):
    wrapper = base / "python"
    wrapper.write_text(f"#!/bin/sh\ntrap '' HUP INT TERM PIPE XFSZ\nexec {trust.PY} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(trust, "PY", str(wrapper))  # as under nohup, and more
    ag = agents(base / "jobs")
    agent_ignores = Path(f"/proc/{ag.p.pid}/status").read_text().split("SigIgn:")[1].split()[0]
    assert int(agent_ignores, 16) & (1 << (1 - 1)), agent_ignores  # SIGHUP
    assert ag.launch("1.0", ["grep", "SigIgn", "/proc/self/status"], **account)["ok"]
    assert ag.wait_exit("1.0")["code"] == 0
    # 32 and 33 are the C library's own, which glibc's posix_spawn leaves ignored and
    # installs its handlers for when they are first needed
    libc = (1 << 31) | (1 << 32)
    assert int(ag.log("1.0").split()[1], 16) & ~libc == 0, ag.log("1.0")
