"""Arrays, sweeps, experiments, batches from files and idempotent submits, as users do them:
the real CLI run by two Unix users against a real labqd that root runs, with the local node."""
import json
import os
import tempfile
from pathlib import Path

import pytest
from daemonproc import as_user, open_daemon, wait_for
from sshnodes import ensure_group, run_as
from userkit import User, cli_venv

import labq
from labq.errors import DuplicateJob, QuotaExceeded, ValidationError


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    ensure_group("labqadm")
    d = open_daemon(tmp_path_factory.mktemp("workflows"), {"limits": {"user_max_pending": 40}},
                    admin_group="labqadm")
    with d.start(wait_nodes=1):
        yield d


@pytest.fixture(scope="module")
def alice(venv, daemon):
    return User("labqwfa", venv, daemon.socket)


@pytest.fixture(scope="module")
def bob(venv, daemon):
    return User("labqwfb", venv, daemon.socket)


@pytest.fixture
def gate():
    """A file whose creation lets gated jobs end; in a directory every user can read."""
    d = Path(tempfile.mkdtemp(prefix="labq-gate-"))
    os.chmod(d, 0o755)
    return d / "open"


def gated(gate: Path, then: str = "") -> list[str]:
    return ["--", "bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; {then}"]


def show(user: User, jid) -> dict:
    return json.loads(user.ok("show", "--json", str(jid)))


def test_an_array_runs_at_most_n_tasks_even_across_a_restart(daemon, alice, gate):
    tasks = json.loads(alice.ok("submit", "--json", "--array", "0-5%2",
                                *gated(gate, 'echo "$LABQ_ARRAY_INDEX $LABQ_ARRAY_ID"')))
    ids = [t["id"] for t in tasks]
    assert [t["array_index"] for t in tasks] == list(range(6))
    assert {t["array_id"] for t in tasks} == {ids[0]}
    assert {t["experiment"] for t in tasks} == {f"array-{ids[0]}"}

    def two_running_rest_throttled():
        jobs = [show(alice, i) for i in ids]
        running = [j for j in jobs if j["state"] == "RUNNING"]
        waiting = [j for j in jobs if j["state"] == "PENDING"]
        return (len(running) == 2 and len(waiting) == 4
                and all(j["reason"] == "ArrayThrottle" for j in waiting))
    wait_for(two_running_rest_throttled, what="two tasks running, four throttled")
    daemon.stop()
    daemon.start(wait_nodes=1)
    wait_for(two_running_rest_throttled, what="the throttle after a restart")
    gate.touch()
    r = alice.labq("wait", "-e", f"array-{ids[0]}", timeout=120)
    assert r.returncode == 0, r.stderr
    logs = sorted(alice.ok("logs", str(i)).strip() for i in ids)
    assert logs == sorted(f"{k} {ids[0]}" for k in range(6))


def test_a_sweep_fills_the_command_and_an_evaluation_waits_for_all_of_it(alice):
    tasks = json.loads(alice.ok("submit", "--json", "-e", "lr-sweep", "--param", "lr=1e-3,3e-4",
                                "--param", "seed=0..1", "--", "bash", "-c",
                                'echo {lr} {seed} {index} "$LABQ_PARAM_LR" "$LABQ_ARRAY_INDEX"'))
    assert [t["params"] for t in tasks] == [{"lr": lr, "seed": s} for lr in ("1e-3", "3e-4")
                                            for s in ("0", "1")]
    assert tasks[3]["command"][-1].startswith("echo 3e-4 1 3 ")
    evaluation = alice.ok("submit", "--after", "exp:lr-sweep", "--", "echo", "eval").strip()
    assert sorted(show(alice, evaluation)["dependencies"]) == sorted(
        f"afterok:{t['id']}" for t in tasks)
    assert alice.labq("wait", "-e", "lr-sweep", timeout=120).returncode == 0
    assert alice.labq("wait", evaluation, timeout=120).returncode == 0
    assert alice.ok("logs", str(tasks[1]["id"])).strip() == "1e-3 1 1 1e-3 1"
    exps = {e["name"]: e for e in json.loads(alice.ok("experiments", "--json", "--mine"))}
    assert exps["lr-sweep"]["counts"] == {"COMPLETED": 4}
    assert exps["lr-sweep"]["owner"] == "labqwfa" and exps["lr-sweep"]["last_end"]
    listed = json.loads(alice.ok("ls", "-e", "lr-sweep", "--json"))
    assert [j["id"] for j in listed] == [t["id"] for t in tasks]
    assert "lr-sweep" in alice.ok("experiments")


def test_a_key_is_refused_the_second_time_and_is_each_users_own(alice, bob):
    first = alice.ok("submit", "--hold", "--key", "run-42", "--", "true").strip()
    again = alice.labq("submit", "--hold", "--key", "run-42", "--", "true")
    assert again.returncode == 1
    assert "DUPLICATE_JOB" in again.stderr and first in again.stderr
    assert bob.labq("submit", "--hold", "--key", "run-42", "--", "true").returncode == 0
    # what a script that lost its reply finds in the error
    err = as_user(alice.uid, alice.gid, lambda: _submit_key(alice.socket, "run-42"))
    assert err == ["DUPLICATE_JOB", int(first)]
    # another user's key stays theirs to see
    assert show(bob, first)["key"] is None and show(alice, first)["key"] == "run-42"


def _submit_key(socket, key):
    with labq.connect(socket) as q:
        try:
            q.submit(["true"], hold=True, key=key)
        except DuplicateJob as e:
            return [e.code, e.details["id"]]
    return None


def test_experiments_are_their_owners_and_an_admins(daemon, alice, bob, gate):
    bob_ids = bob.ok("submit", "--array", "0-2%1", "-e", "bob-exp", "--env", "SECRET=s3",
                     *gated(gate)).split()
    wait_for(lambda: show(bob, bob_ids[0])["state"] == "RUNNING", what="the first task")
    # alice names bob's experiment: nothing of hers is in it, and nothing of bob's changes
    for verb in ("cancel", "hold", "release"):
        r = alice.labq(verb, "-e", "bob-exp")
        assert r.returncode == 1 and "NOT_FOUND" in r.stderr, (verb, r.stderr)
    assert alice.labq("cancel", bob_ids[0]).returncode == 1  # by id: PERMISSION_DENIED
    assert json.loads(alice.ok("ls", "-e", "bob-exp", "--json")) == []
    seen = as_user(alice.uid, alice.gid, lambda: _env_of(alice.socket, "bob-exp", "labqwfb"))
    assert seen == [None, None, None]
    assert [show(bob, i)["state"] for i in bob_ids] == ["RUNNING", "PENDING", "PENDING"]
    # bob acts on his own by name: hold takes the pending tasks, release the held ones
    held = json.loads(bob.ok("hold", "-e", "bob-exp", "--json"))
    assert [(j["id"], j["state"]) for j in held] == [(int(i), "HELD") for i in bob_ids[1:]]
    assert len(bob.ok("release", "-e", "bob-exp").splitlines()) == 2
    # the admin acts on anyone's
    with daemon.client() as q:
        cancelled = q.cancel(experiment="bob-exp")
    assert [j.id for j in cancelled] == [int(i) for i in bob_ids]
    assert {show(bob, i)["state"] for i in bob_ids} == {"CANCELLED"}


def _env_of(socket, experiment, user):
    with labq.connect(socket) as q:
        return [j.env for j in q.jobs(experiment=experiment, user=user, with_env=True)]


def test_jobs_from_a_file_are_queued_row_by_row(alice):
    tmp_path = Path(tempfile.mkdtemp(prefix="labq-from-"))  # where alice can read
    rows = [{"command": ["true"], "hold": True, "experiment": "from-file", "gpus": 0},
            {"wrap": "echo hi", "hold": True, "experiment": "from-file", "env": "A=1;B=2"},
            {"command": ["true"], "gpus": -1},
            {"command": ["true"], "hold": True, "colour": "blue"}]
    path = tmp_path / "jobs.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    r = alice.labq("submit", "--from", str(path))
    assert r.returncode == 1, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 2
    errors = r.stderr.strip().splitlines()
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 4", "line 5"]
    assert "VALIDATION_ERROR" in errors[0] and "gpus" in errors[0]
    assert show(alice, ids[1])["env"]["B"] == "2"
    # a CSV file, as --json
    csv_path = tmp_path / "jobs.csv"
    csv_path.write_text("command,gpus,hold,experiment\ntrue,0,true,csv-exp\n"
                        "\"echo a b\",0,1,csv-exp\n")
    os.chmod(csv_path, 0o644)
    out = json.loads(alice.ok("submit", "--json", "--from", str(csv_path)))
    assert [(o["line"], o["ok"]) for o in out] == [(2, True), (3, True)]
    assert out[1]["job"]["command"] == ["echo", "a", "b"]
    # not UTF-8, or a format labq does not read: nothing queued
    before = len(json.loads(alice.ok("ls", "--mine", "--json")))
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b'{"command": ["true"], "hold": true}\n{"name": "\xff"}\n')
    os.chmod(bad, 0o644)
    r = alice.labq("submit", "--from", str(bad))
    assert r.returncode == 1 and "BAD_ENCODING" in r.stderr
    r = alice.labq("submit", "--from", str(bad), "--format", "yaml")
    assert r.returncode == 2  # argparse refuses the choice
    odd = tmp_path / "jobs.yaml"
    odd.write_text("command: true\n")
    os.chmod(odd, 0o644)
    r = alice.labq("submit", "--from", str(odd))
    assert r.returncode == 1 and "BAD_FORMAT" in r.stderr
    assert len(json.loads(alice.ok("ls", "--mine", "--json"))) == before


def test_stdin_takes_ndjson(alice):
    r = run_as(alice.name, [alice.venv / "bin" / "labq", "submit", "--from", "-"],
               input='{"command": ["true"], "hold": true}\n', env=alice.env(), cwd="/",
               timeout=60)
    assert r.returncode == 0, r.stderr
    assert show(alice, r.stdout.strip())["state"] == "HELD"


def test_rows_alike_are_sent_once_and_each_queued_as_its_own_job(daemon, bob):
    def many():
        with labq.connect(daemon.socket) as q:
            row = {"command": ["true"], "hold": True, "experiment": "alike"}
            keyed = dict(row, key="alike-k")
            res = q.submit_many([dict(row), dict(keyed), dict(row), dict(keyed),
                                 {"command": []}, dict(row)])
            jobs = [r for r in res if isinstance(r, labq.Job)]
            jobs[0].command.append("x")  # each job's values are its own
            try:  # a row naming a spec that is not there queues nothing
                q.call("submit_many", specs=[dict(row, command=["true"])], rows=[0, 1])
            except ValidationError as e:
                bad = e.details["field"]
            queued = q.jobs(experiment="alike", user="labqwfb")
            q.cancel(experiment="alike")
            return ([type(r).__name__ for r in res], [j.command for j in jobs],
                    sorted(j.id for j in jobs) == sorted(j.id for j in queued),
                    res[3].details, bad)
    kinds, commands, same, dup, bad = as_user(bob.uid, bob.gid, many)
    assert kinds == ["Job", "Job", "Job", "DuplicateJob", "ValidationError", "Job"]
    assert commands == [["true", "x"], ["true"], ["true"], ["true"]] and same
    assert dup["key"] == "alike-k" and dup["row"] == 3 and bad == "rows"


def test_a_batch_rows_own_variables_go_over_the_exported_environment(daemon, bob):
    from labq.connection import exported_env

    def many():
        with labq.connect(daemon.socket) as q:
            res = q.submit_many([{"command": ["true"], "hold": True, "env": {"ROW": "1"}},
                                 {"command": ["true"], "hold": True, "env": {"PATH": "/own"}},
                                 {"command": ["true"], "hold": True}])
            envs = [q.job(j.id).env for j in res]
            # a row whose env is no mapping is refused alone, with what is wrong with it
            raw = q.call("submit_many", specs=[{"command": ["true"], "env": ["X=1"]}])
            tasks = q.submit_array(["true"], array="0-1", hold=True, env={"OWN": "x"})
            one = q.submit(["true"], hold=True, env={"OWN": "y"})
            res.append(one)
            envs.append(q.job(one.id).env)
            assert list(one.env.items()) == list(envs[-1].items())  # the reply's is labqd's
            envs.append(q.job(tasks[1].id).env)
            q.cancel(*[j.id for j in res + tasks])
            return envs, exported_env(), raw["results"][0]["error"], tasks[0].id
    envs, exported, err, first = as_user(bob.uid, bob.gid, many)
    # an array task's: the spec's, then the task's own
    assert list(envs.pop().items()) == list(dict(
        exported, OWN="x", LABQ_ARRAY_ID=str(first), LABQ_ARRAY_INDEX="1").items())
    assert [list(e.items()) for e in envs] == [
        list(dict(exported, ROW="1").items()), list(dict(exported, PATH="/own").items()),
        list(exported.items()), list(dict(exported, OWN="y").items())]
    assert err["code"] == "VALIDATION_ERROR" and err["details"]["field"] == "env"


def test_submit_many_queues_every_valid_row_and_limits_count_tasks(daemon, bob):
    def many():
        with labq.connect(daemon.socket) as q:
            res = q.submit_many([{"command": ["true"], "hold": True, "experiment": "many"},
                                 {"command": []},
                                 {"command": ["true"], "hold": True, "time": "soon"},
                                 {"command": ["true"], "hold": True, "experiment": "many"}])
            out = [r.id if isinstance(r, labq.Job) else [r.code, r.details["row"]]
                   for r in res]
            mine = len(q.jobs(user="labqwfb", include_ended=False))
            try:
                q.submit_array(["true"], array="0-99", hold=True)
            except QuotaExceeded as e:
                out.append(e.code)
            assert len(q.jobs(user="labqwfb", include_ended=False)) == mine  # none of it
            try:
                q.submit_array(["true"], array="0-5%x", hold=True)
            except ValidationError as e:
                out.append(e.details["field"])
            out.append(len(q.jobs(experiment="many", user="labqwfb")))
            q.cancel(experiment="many")
            out.append(len(q.jobs(experiment="many", user="labqwfb",
                                  states=["CANCELLED"])))
            return out
    out = as_user(bob.uid, bob.gid, many)
    assert isinstance(out[0], int) and isinstance(out[3], int)
    assert out[1] == ["VALIDATION_ERROR", 1] and out[2] == ["VALIDATION_ERROR", 2]
    assert out[4:] == ["QUOTA_EXCEEDED", "array", 2, 2]


def test_each_job_of_a_batch_or_an_array_has_its_own_record_and_history(alice, bob):
    tmp_path = Path(tempfile.mkdtemp(prefix="labq-hist-"))  # where both can read
    a = {"command": ["echo", "a"], "hold": True, "experiment": "hist"}
    b = {"command": ["echo", "b"], "hold": True, "experiment": "hist", "priority": 7}
    path = tmp_path / "jobs.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in (a, b, a, b)) + "\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    batch = alice.ok("submit", "--from", str(path)).split()
    tasks = [t["id"] for t in json.loads(alice.ok(
        "submit", "--json", "--array", "0-2", "--hold", "--key", "hist-k", "-e", "hist",
        "--", "echo", "{index}"))]
    theirs = bob.ok("submit", "--from", str(path)).split()
    assert len(set(batch + theirs)) == 8
    for jid, want in zip(batch, (a, b, a, b)):
        job = show(alice, jid)
        assert (job["command"], job["priority"], job["state"], job["owner"]) == (
            want["command"], want.get("priority", 5), "HELD", "labqwfa")
    for k, jid in enumerate(tasks):
        job = show(alice, jid)
        assert (job["command"], job["array_index"], job["array_id"]) == (
            ["echo", str(k)], k, tasks[0])
        assert job["key"] == ("hist-k" if k == 0 else None)
    # every job's history starts with its own submit, by its owner
    for user, ids in ((alice, batch + [str(t) for t in tasks]), (bob, theirs)):
        for jid in ids:
            [event] = json.loads(user.ok("events", "--json", jid))
            assert (event["who"], event["from_state"], event["to_state"], event["reason"]) == (
                user.name, None, "HELD", "Held")
    # the other user sees neither the key nor may end the jobs
    assert show(bob, tasks[0])["key"] is None
    r = bob.labq("cancel", batch[0], str(tasks[1]))
    assert r.returncode != 0 and "PERMISSION_DENIED" in r.stderr
    assert {show(alice, j)["state"] for j in (batch[0], str(tasks[1]))} == {"HELD"}
    assert [show(bob, j)["owner"] for j in theirs] == ["labqwfb"] * 4
    alice.ok("cancel", *batch, *map(str, tasks))
    bob.ok("cancel", *theirs)
