"""labqd over TCP with real TLS on loopback: tokens created, listed and revoked by two real
Unix users with the real CLI; `labq login` and the commands after it; and an attacker with no
token, a wrong, expired or revoked one, plaintext, a wrong fingerprint, an oversized frame
before the token, and many failed logins. Also the submit rate, a remote `logs -f` and TUI,
and /metrics scraped and parsed by prometheus_client's own parser."""
import json
import os
import pwd
import re
import select
import socket
import ssl
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest
from daemonproc import Daemon
from prometheus_client.parser import text_string_to_metric_families
from sshnodes import add_user_to_group, ensure_group, run_as
from tuikit import drive, until
from userkit import User, cli_venv

import labq
from labq.errors import DaemonUnavailable, PermissionDenied, RateLimited, Unauthenticated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    ensure_group("labqadm")
    port, mport = free_port(), free_port()
    d = Daemon(tmp_path_factory.mktemp("remote"), {
        "daemon": {"local_node": True, "socket_mode": "0666", "admin_group": "labqadm",
                   "kill_grace": "1s", "listen": f"127.0.0.1:{port}"},
        "tokens": {"failed_logins": "4/min"},
        "limits": {"submit_rate": "5/min"},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    })
    with d.start(wait_nodes=1):
        d.url = f"labq://127.0.0.1:{port}"
        d.port, d.metrics_port = port, mport
        d.fingerprint = re.search(r"fingerprint (SHA256:\S+)", d.log()).group(1)
        yield d


# this module's own accounts: it writes their ~/.config/labq, which tests of other modules,
# run beside these by pytest's workers, would otherwise read
USERS = ("labqremote1", "labqremote2", "labqremote3", "labqadmin1")


def forget_logins():
    for name in USERS:
        try:
            home = Path(pwd.getpwnam(name).pw_dir)
        except KeyError:  # a user this run did not need
            continue
        (home / ".config" / "labq" / "remote.toml").unlink(missing_ok=True)


@pytest.fixture(scope="module", autouse=True)
def no_logins_left():
    """A saved login would send these users' later commands (in other tests) over TCP."""
    yield
    forget_logins()


def person(venv, name, socket=None, **env):
    assert name in USERS
    u = User(name, venv, socket, env)
    subprocess.run(["rm", "-f", str(u.home / ".config" / "labq" / "remote.toml")], check=True)
    return u


def new_token(user, *args) -> str:
    return user.ok("token", "create", *args).strip()


def test_two_users_log_in_and_work_over_tls_as_themselves(remote, venv):
    alice_local = person(venv, "labqremote1", remote.socket)
    bob_local = person(venv, "labqremote2", remote.socket)
    ta, tb = new_token(alice_local), new_token(bob_local, "--days", "2")
    alice, bob = person(venv, "labqremote1"), person(venv, "labqremote2")
    out = alice.ok("login", remote.url, "--token", ta, "--fingerprint", remote.fingerprint)
    assert "as labqremote1" in out
    saved = alice.home / ".config" / "labq" / "remote.toml"
    assert oct(saved.stat().st_mode & 0o777) == "0o600" and saved.stat().st_uid == alice.uid
    bob.ok("login", remote.url, "--token", tb, "--yes")
    # every command now goes over TLS, as the token's user
    assert json.loads(alice.ok("whoami", "--json"))["user"] == "labqremote1"
    jid = alice.ok("submit", "--", "bash", "-c", "for i in 1 2 3; do echo line$i; "
                   "sleep 0.2; done").strip()
    assert alice.ok("logs", "-f", jid).split() == ["line1", "line2", "line3"]
    r = alice.labq("run", "--", "bash", "-c", "echo o; echo e >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "o\n", "e\n")  # apart over TLS too
    assert json.loads(alice.ok("show", "--json", jid))["owner"] == "labqremote1"
    held = alice.ok("submit", "--hold", "--", "true").strip()
    r = bob.labq("cancel", held)
    assert r.returncode == 1 and "belongs to labqremote1" in r.stderr
    assert json.loads(alice.ok("show", "--json", held))["state"] == "HELD"
    alice.ok("cancel", held)
    # tokens are each user's own
    listed = json.loads(bob.ok("token", "list", "--json"))
    assert {t["user"] for t in listed} == {"labqremote2"}
    r = bob.labq("token", "create", "--user", "labqremote1")
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
    r = bob.labq("token", "revoke", str(json.loads(alice.ok("token", "list", "--json"))[0]["id"]))
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    assert json.loads(alice.ok("whoami", "--json"))["user"] == "labqremote1"


def test_an_admin_over_tls_creates_tokens_for_others(remote, venv):
    add_user_to_group("labqadmin1", "labqadm")
    admin_local = person(venv, "labqadmin1", remote.socket)
    tok = new_token(admin_local)
    admin = person(venv, "labqadmin1", None, LABQ_URL=remote.url, LABQ_TOKEN=tok,
                   LABQ_FINGERPRINT=remote.fingerprint)
    assert json.loads(admin.ok("whoami", "--json"))["admin"]
    for_alice = json.loads(admin.ok("token", "create", "--user", "labqremote1", "--json"))
    assert for_alice["user"] == "labqremote1" and for_alice["token"]
    everyone = {t["user"] for t in json.loads(admin.ok("token", "list", "--json"))}
    assert {"labqremote1", "labqadmin1"} <= everyone
    with labq.connect(remote.url, token=for_alice["token"],
                      fingerprint=remote.fingerprint) as q:
        assert q.whoami()["user"] == "labqremote1" and not q.whoami()["admin"]


def test_one_token_per_user_and_revocation_reach_open_connections(remote):
    with remote.client() as local:
        with pytest.raises(PermissionDenied, match="root"):
            local.create_token()  # root stays local
        first = local.create_token(user="labqremote1")["token"]
        with labq.connect(remote.url, token=first, fingerprint=remote.fingerprint) as q:
            assert q.whoami()["user"] == "labqremote1"
            second = local.create_token(user="labqremote1")  # max_per_user = 1: the first goes
            with pytest.raises(Unauthenticated, match="revoked"):
                q.jobs()
            with pytest.raises(Unauthenticated, match="revoked"):
                q.read_log(1)
        with labq.connect(remote.url, token=second["token"],
                          fingerprint=remote.fingerprint) as q:
            q.ping()
            local.revoke_token(second["id"])
            with pytest.raises(Unauthenticated, match="revoked"):
                q.ping()
        with pytest.raises(Unauthenticated):
            labq.connect(remote.url, token=second["token"], fingerprint=remote.fingerprint)


def test_an_attacker_gets_nothing_and_loses_nothing(remote, venv):
    with remote.client() as local:
        before = len(local.jobs())
    # no token, a made-up one, a wrong secret for a real id
    mallory = person(venv, "labqremote2", None, LABQ_URL=remote.url,
                     LABQ_FINGERPRINT=remote.fingerprint)
    r = mallory.labq("submit", "--", "true")
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr and "no token" in r.stderr
    for bad in ("labq_1_guessed", "nonsense"):
        r = mallory.labq("ls", env=mallory.env(LABQ_TOKEN=bad))
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    # plaintext: refused, no answer
    with socket.create_connection(("127.0.0.1", remote.port), timeout=5) as s:
        s.sendall(b"LABQ1 labq_1_x\n")
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    # an oversized RPyC frame before the token: one refusal line, nothing parsed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", remote.port), timeout=5)) as t:
        try:
            t.sendall(struct.pack("!LB", 1 << 30, 0) + b"\0" * (1 << 20))
        except OSError:
            pass
        answer = t.recv(4096)
        assert b"UNAUTHENTICATED" in answer or answer == b""
    with remote.client() as local:
        assert len(local.jobs()) == before and local.ping()


def test_a_wrong_fingerprint_is_refused_before_the_token_leaves(remote, venv, tmp_path):
    alice = person(venv, "labqremote1")
    with remote.client() as local:
        tok = local.create_token(user="labqremote1")["token"]
    wrong = "SHA256:" + "A" * 43
    r = alice.labq("login", remote.url, "--token", tok, "--fingerprint", wrong)
    assert r.returncode == 1 and "has changed" in r.stderr and remote.fingerprint in r.stderr
    # no terminal and neither --yes nor --fingerprint: refused, nothing saved
    r = alice.labq("login", remote.url, "--token", tok)
    assert r.returncode == 1 and remote.fingerprint in r.stderr and "--yes" in r.stderr
    assert not (alice.home / ".config" / "labq" / "remote.toml").exists()
    alice.ok("login", remote.url, "--token", tok, "--fingerprint", remote.fingerprint)
    with pytest.raises(DaemonUnavailable, match="has changed"):
        labq.connect(remote.url, token=tok, fingerprint=wrong)


def login_in_a_terminal(user, url, token, answer: str) -> tuple[int, str]:
    """`labq login` as `user` on a terminal of its own, answering the trust question."""
    pw = pwd.getpwnam(user.name)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
         str(user.venv / "bin" / "labq"), "login", url, "--token", token],
        env=user.env(), cwd=str(user.home), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while b"(yes/no)?" not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no question from labq login: {seen!r}"
            seen += os.read(master, 4096)
        os.write(master, answer.encode() + b"\n")
        rc = proc.wait(timeout=30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed with labq
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return rc, seen.decode(errors="replace")


def test_login_in_a_terminal_asks_and_then_every_call_uses_the_pin(remote, venv):
    with remote.client() as local:
        tok = local.create_token(user="labqremote2")["token"]
    bob = person(venv, "labqremote2")
    saved = bob.home / ".config" / "labq" / "remote.toml"
    rc, out = login_in_a_terminal(bob, remote.url, tok, "no")
    assert rc == 1 and remote.fingerprint in out and "not trusted" in out
    assert not saved.exists()
    rc, out = login_in_a_terminal(bob, remote.url, tok, "yes")
    assert rc == 0 and f"certificate {remote.fingerprint} pinned" in out, out
    assert remote.fingerprint in saved.read_text() and tok in saved.read_text()
    # a script of the user's: labq.connect(url, token=...) finds the pinned fingerprint
    script = ("import labq, sys\n"
              "with labq.connect(sys.argv[1], token=sys.argv[2]) as q:\n"
              "    print(q.whoami()['user'])\n")
    r = run_as(bob.name, [str(venv / "bin" / "python"), "-c", script, remote.url, tok],
               env=bob.env(), cwd=str(bob.home))
    assert (r.returncode, r.stdout) == (0, "labqremote2\n"), r.stderr
    # another user's script with the same token but no pin of its own is refused
    alice = person(venv, "labqremote1")
    r = run_as(alice.name, [str(venv / "bin" / "python"), "-c", script, remote.url, tok],
               env=alice.env(), cwd=str(alice.home))
    assert r.returncode == 1 and "not trusted yet" in r.stderr


def test_url_on_the_command_line_and_the_days_a_token_may_last(remote, venv):
    carol_local = person(venv, "labqremote3", remote.socket)
    r = carol_local.labq("token", "create", "--days", "31")
    assert r.returncode == 1 and "VALIDATION_ERROR" in r.stderr and "at most 30 days" in r.stderr
    r = carol_local.labq("token", "create", "--days", "0")
    assert r.returncode == 1 and "VALIDATION_ERROR" in r.stderr
    assert json.loads(carol_local.ok("token", "list", "--json")) == []  # nothing made
    tok = new_token(carol_local, "--days", "30")
    # --url wins over the socket in the environment; the token and pin come from there too
    carol = person(venv, "labqremote3", remote.socket, LABQ_TOKEN=tok,
                   LABQ_FINGERPRINT=remote.fingerprint)
    me = json.loads(carol.ok("--url", remote.url, "whoami", "--json"))
    assert me["user"] == "labqremote3"
    assert carol.ok("ls") is not None  # without --url: the unix socket, no token needed
    carol_local.ok("token", "revoke", str(json.loads(carol_local.ok("token", "list",
                                                                    "--json"))[0]["id"]))


def test_the_submit_rate_counts_array_rows_on_every_transport(remote, venv):
    bob_local = person(venv, "labqremote3", remote.socket)
    out = bob_local.ok("submit", "--hold", "--array", "0-3", "--", "true")
    assert len(out.split()) == 4
    bob = person(venv, "labqremote3", None, LABQ_URL=remote.url,
                 LABQ_TOKEN=new_token(bob_local), LABQ_FINGERPRINT=remote.fingerprint)
    bob.ok("submit", "--hold", "--", "true")  # the fifth of 5/min
    r = bob.labq("submit", "--hold", "--json", "--", "true")
    assert r.returncode == 1 and "RATE_LIMITED" in r.stderr and "try again in" in r.stderr
    r = bob_local.labq("submit", "--hold", "--", "true")
    assert r.returncode == 1 and "RATE_LIMITED" in r.stderr
    mine = json.loads(bob_local.ok("ls", "--mine", "--json"))
    assert len(mine) == 5  # nothing of the refused submits was queued
    bob_local.ok("cancel", *[str(j["id"]) for j in mine])


def test_metrics_are_prometheus_text(remote):
    with remote.client() as local:
        local.submit(["true"], hold=True, export_env=False, cwd="/tmp")
    with urllib.request.urlopen(f"http://127.0.0.1:{remote.metrics_port}/metrics") as r:
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("labq_jobs", "labq_submits", "labq_job_ends", "labq_queue_wait_seconds",
                 "labq_gpus", "labq_node_up", "labq_scheduler_pass_seconds",
                 "labq_request_seconds", "labq_connections"):
        assert name in fams, name
    held = [s for s in fams["labq_jobs"].samples if s.labels["state"] == "HELD"]
    assert sum(s.value for s in held) >= 1
    assert [s.value for s in fams["labq_node_up"].samples] == [1.0]
    ops = {s.labels.get("op") for s in fams["labq_request_seconds"].samples}
    assert "submit" in ops
    transports = {s.labels["transport"] for s in fams["labq_connections"].samples}
    assert transports == {"unix", "tls"}


def test_the_tui_works_over_tls(remote, monkeypatch):
    with remote.client() as local:
        tok = local.create_token(user="labqremote1")["token"]
    # the TUI shows its user's own jobs first: the job is labqremote1's, submitted over TLS
    with labq.connect(remote.url, token=tok, fingerprint=remote.fingerprint) as q:
        jid = q.submit(["true"], name="seen-remotely", hold=True, export_env=False,
                       cwd="/tmp").id
    monkeypatch.setenv("LABQ_TOKEN", tok)
    monkeypatch.setenv("LABQ_FINGERPRINT", remote.fingerprint)
    from labq.tui.app import LabqApp
    from labq.tui.queue import QueueTable
    app = LabqApp(socket=remote.url, interval=0.3)

    def names():
        table = app.query_one("#queue-table", QueueTable)
        return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]

    async def scenario(pilot):
        await until(pilot, lambda: "seen-remotely" in names(), "the job over TLS")

    drive(app, scenario, (160, 48))
    with remote.client() as local:
        local.cancel(jid)


# last: it leaves loopback waiting out its failed logins
def test_many_failed_logins_from_one_address_are_rate_limited(remote):
    with remote.client() as local:
        good = local.create_token(user="labqremote1")["token"]
    seen = []
    for _ in range(8):
        try:
            labq.connect(remote.url, token="labq_1_wrong", fingerprint=remote.fingerprint)
        except (Unauthenticated, RateLimited) as e:
            seen.append(e)
    assert isinstance(seen[0], Unauthenticated) and isinstance(seen[-1], RateLimited)
    assert seen[-1].details["retry_after"] >= 1
    with pytest.raises(RateLimited):  # the right token waits too, from this address
        labq.connect(remote.url, token=good, fingerprint=remote.fingerprint)
    with remote.client() as local:
        local.ping()  # the unix socket is not affected
