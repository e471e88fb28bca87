"""Listings a page at a time, tried as two real Unix users against a real root labqd: the
order, the page boundaries, the filters, what changed since a poll, and that a listing never
shows another user's command or environment."""
import json
import threading

import pytest
from daemonproc import open_daemon
from sshnodes import run_as
from userkit import User, cli_venv

import labq
from labq.cli_views import LS_PAGE
from labq.errors import ValidationError

ALICE, BOB = "labqtest", "labqtest2"


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = open_daemon(tmp_path_factory.mktemp("listing"))
    with d.start(wait_nodes=1):
        yield d


@pytest.fixture(scope="module")
def alice(venv, daemon):
    return User(ALICE, venv, daemon.socket, {"SECRET_TOKEN": "alice-s3cret"})


@pytest.fixture(scope="module")
def bob(venv, daemon):
    return User(BOB, venv, daemon.socket)


def held(user: User, *cmd: str) -> int:
    return int(user.ok("submit", "--hold", "--", *cmd).strip().splitlines()[-1])


def listed(user: User, *args: str) -> list[dict]:
    return json.loads(user.ok("ls", "--json", *args))


def as_python(user: User, code: str) -> str:
    """A short script run as the user with the client library (the API a script uses)."""
    r = run_as(user.name, [str(user.venv / "bin" / "python"), "-c", code], env=user.env(),
               cwd=str(user.home), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_listing_never_shows_another_users_command_or_environment(daemon, alice, bob):
    mine = held(alice, "train.py", "--key", "hunter2")
    theirs = held(bob, "bobs-run.sh")
    by_bob = {j["id"]: j for j in listed(bob, "--all")}
    assert by_bob[mine]["owner"] == ALICE and by_bob[mine]["state"] == "HELD"
    assert by_bob[mine]["command"] == [] and by_bob[mine]["env"] is None
    assert by_bob[theirs]["command"] == ["bobs-run.sh"]
    # asking for the environment, by user, or for what changed shows no more of alice's job
    out = as_python(bob, f"""
import json, labq
q = labq.connect()
seen = q.jobs(with_env=True) + q.jobs(user={ALICE!r}, with_env=True, after_id=0)
seen += q.jobs(changed_since=0, with_env=True)
print(json.dumps([(j.id, j.command, j.env) for j in seen if j.id == {mine}]))""")
    assert json.loads(out) and all(c == [] and e is None for _, c, e in json.loads(out))
    assert "hunter2" not in out and "alice-s3cret" not in out
    # alice sees her own command in a listing, and her environment where she asks for it
    assert [j for j in listed(alice) if j["id"] == mine][0]["command"] == [
        "train.py", "--key", "hunter2"]
    own = json.loads(alice.ok("show", "--json", str(mine)))
    assert own["env"]["SECRET_TOKEN"] == "alice-s3cret"
    assert json.loads(bob.ok("show", "--json", str(mine)))["env"] is None


def test_ls_pages_through_a_long_queue_in_order(daemon, alice, bob):
    with daemon.client() as q:
        ids = [q.submit(["true"], hold=True, export_env=False, cwd="/").id
               for _ in range(LS_PAGE + 20)]
    text = bob.ok("ls", "--state", "held").splitlines()
    assert text[0].split()[:2] == ["ID", "NAME"]
    assert sum(line.startswith("ID ") for line in text) == 1  # one header for all pages
    shown = [int(line.split()[0]) for line in text[1:]]
    assert shown == sorted(set(shown)) and set(ids) <= set(shown)
    # --limit N: the first N of the queue, whatever the page size
    first = [j["id"] for j in listed(bob, "--state", "held", "--limit", str(LS_PAGE + 3))]
    assert first == shown[:LS_PAGE + 3]
    assert [j["id"] for j in listed(bob, "-n", "2", "--state", "held")] == shown[:2]
    with daemon.client() as q:
        q.cancel(*ids)


def test_every_job_exactly_once_while_jobs_are_submitted(daemon, alice):
    with daemon.client() as q:
        before = [q.submit(["true"], hold=True, export_env=False, cwd="/").id
                  for _ in range(2 * LS_PAGE + 50)]
    stop = threading.Event()
    added: list[int] = []

    def submit_more():
        with daemon.client() as q:
            while not stop.is_set():
                added.append(q.submit(["true"], hold=True, export_env=False, cwd="/").id)

    t = threading.Thread(target=submit_more)
    t.start()
    try:
        seen = [j["id"] for j in listed(alice, "--all")]
    finally:
        stop.set()
        t.join()
    assert added, "nothing was submitted while the listing ran"
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(before) <= set(seen)
    with daemon.client() as q:
        q.cancel(*before, *added)


def test_changed_since_gives_what_changed_and_nothing_else(daemon, alice, bob):
    a = held(alice, "true")
    b = held(bob, "true")
    with daemon.client() as q:
        mark = q.ping()["seq"]
        assert q.jobs(changed_since=mark) == []
        q.set_priority(b, 9)
        q.cancel(a)
        changed = q.jobs(changed_since=mark)
        assert [(j.id, j.state.value) for j in changed] == [(b, "HELD"), (a, "CANCELLED")]
        assert q.jobs(changed_since=changed[-1].seq) == []
        assert [j.id for j in q.jobs(changed_since=mark, user=BOB)] == [b]
        q.cancel(b)


def test_bad_listing_arguments_are_refused_by_name(daemon, alice):
    with daemon.client() as q:
        for args, field in (({"after_id": -1}, "after_id"), ({"after_id": "3"}, "after_id"),
                            ({"changed_since": 1.5}, "changed_since"), ({"limit": 0}, "limit"),
                            ({"after_id": 1, "changed_since": 1}, "after_id")):
            with pytest.raises(ValidationError) as e:
                q.call(labq.protocol.Op.JOBS, **args)
            assert e.value.details["field"] == field
        assert q.ping()  # nothing broke
    r = alice.labq("ls", "--limit", "0")
    assert r.returncode != 0 and "limit" in r.stderr


def test_the_tui_reads_the_queue_once_then_only_what_changed(daemon, alice):
    from labq.tui.data import SWEEP_PAGE, QueueView
    asked: list[dict] = []

    class Counting:
        """The real client, noting what each jobs() call asked for."""

        def __init__(self, q):
            self.q = q

        def __getattr__(self, name):
            return getattr(self.q, name)

        def jobs(self, **kw):
            out = self.q.jobs(**kw)
            asked.append(dict(kw, got=len(out)))
            return out

    a, b = held(alice, "true"), held(alice, "true")
    view = QueueView()
    with daemon.client() as q:
        spy = Counting(q)
        first = {j.id: j for j in view.poll(spy)}
        assert first[a].state.value == "HELD" and first[b].state.value == "HELD"
        asked.clear()
        q.cancel(a)
        c = held(alice, "true")
        now = {j.id: j for j in view.poll(spy)}
        assert now[a].state.value == "CANCELLED" and now[c].state.value == "HELD"
        # what changed, and one page of the queue for fresh reasons; nothing else
        assert [k.get("changed_since") is not None for k in asked] == [True, False]
        assert asked[0]["got"] == 2 and asked[1]["limit"] == SWEEP_PAGE
        # between the page reads, an idle poll asks what changed and nothing more
        asked.clear()
        view.poll(spy, sweep=False)
        assert [(k.get("changed_since") is not None, k["got"]) for k in asked] == [(True, 0)]
        q.cancel(b, c)
