"""Job-end notifications, end to end: a real labqd sends mail to a real SMTP server (aiosmtpd),
posts to a webhook served here, and runs the admin's command (as labqd's user, every field
filled in); two Unix users each hear of their own jobs only, may not redirect each other's, a
message pending across a restart of labqd arrives once, and a webhook that hangs holds up
no job."""
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from daemonproc import Daemon, wait_for
from userkit import User, cli_venv

# this module's own accounts: it writes their ~/.config/labq, which tests of other modules,
# run beside these by pytest's workers, would otherwise read
ALICE, BOB = "labqnotify1", "labqnotify2"


class Hook:
    """A webhook receiver: every POST's path and JSON body; `status` is what it answers, once
    `release` is set (cleared, it hangs as a stuck server would)."""

    def __init__(self):
        self.got: list[tuple[str, dict]] = []
        self.status = 200
        self.release = threading.Event()
        self.release.set()
        self.entered = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.entered += 1
                hook.release.wait(300)
                if hook.status == 200:
                    hook.got.append((self.path, json.loads(body)))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jobs(self, path: str) -> list[tuple[int, str, str]]:
        return [(b["labq"]["id"], b["labq"]["event"], b["labq"]["state"])
                for p, b in list(self.got) if p == path]


class Sink:
    """An SMTP server that keeps what it is sent."""

    def __init__(self):
        self.mails: list[tuple[list[str], str]] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                sink.mails.append((list(envelope.rcpt_tos),
                                   envelope.content.decode(errors="replace")))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def env(tmp_path_factory, venv):
    base = tmp_path_factory.mktemp("notify")
    hook, sink = Hook(), Sink()
    record = base / "command.jsonl"
    script = base / "record.py"
    script.write_text(f"import json, os, sys\nwith open({str(record)!r}, 'a') as f:\n"
                      "    f.write(json.dumps([sys.argv[1:], os.environ.get('LABQ_NAME'),"
                      " os.getuid()]) + '\\n')\n")
    d = Daemon(base / "d", {
        "daemon": {"local_node": True, "socket_mode": "0666", "kill_grace": "1s"},
        "notify": {"retry_base": "1s", "retry_max": "1s", "max_attempts": 50,
                   "mail": {"smtp_host": "127.0.0.1", "smtp_port": sink.port,
                            "domain": "lab.test", "from": "labq@lab.test"},
                   "webhook": {"allow_hosts": ["127.0.0.1"], "timeout": "300s"},
                   "command": {"argv": [sys.executable, str(script), "{id}", "{name}",
                                        "{state}", "{exit_code}", "{user}", "{node}",
                                        "{runtime}"]}},
    })
    alice, bob = User(ALICE, venv, d.socket), User(BOB, venv, d.socket)
    with d.start(wait_nodes=1):
        alice.ok("notify", "set", "webhook", f"{hook.url}/alice")
        bob.ok("notify", "set", "webhook", f"{hook.url}/bob")
        yield d, hook, sink, record, alice, bob
    sink.controller.stop()
    hook.server.shutdown()


def submit(user: User, *args: str) -> int:
    return int(user.ok("submit", *args).strip().splitlines()[-1])


def test_each_user_hears_of_their_own_jobs_on_every_channel(env):
    d, hook, sink, record, alice, bob = env
    a_ok = submit(alice, "--notify", "end", "--name", "a; $(touch /tmp/pwned) 'x'", "--", "true")
    b_fail = submit(bob, "--notify", "fail", "--", "false")
    b_ok = submit(bob, "--notify", "fail", "--", "true")  # succeeded: nothing to tell
    alice.labq("wait", str(a_ok))
    bob.labq("wait", str(b_fail), str(b_ok))
    wait_for(lambda: hook.jobs("/alice") and hook.jobs("/bob"), what="both webhooks")
    wait_for(lambda: len(sink.mails) >= 2, what="two mails")
    assert hook.jobs("/alice") == [(a_ok, "end", "COMPLETED")]
    assert hook.jobs("/bob") == [(b_fail, "end", "FAILED")]
    body = next(b for p, b in hook.got if p == "/alice")
    assert body["text"].startswith(f"labq job {a_ok} ") and body["labq"]["user"] == ALICE
    to = {tuple(rcpt): text for rcpt, text in sink.mails}
    assert set(to) == {(f"{ALICE}@lab.test",), (f"{BOB}@lab.test",)}
    assert f"Subject: labq job {b_fail} (false) FAILED" in to[(f"{BOB}@lab.test",)]
    assert str(a_ok) not in to[(f"{BOB}@lab.test",)].split("Subject")[1].split("\n")[0]
    # the admin's command got each value as one argument: the job's name went to no shell
    runs = wait_for(lambda: len(record.read_text().splitlines()) >= 2 and
                    [json.loads(x) for x in record.read_text().splitlines()],
                    what="the command's runs")
    job = json.loads(alice.ok("show", "--json", str(a_ok)))
    argv, name, uid = next(r for r in runs if r[0][0] == str(a_ok))
    assert argv[:6] == [str(a_ok), "a; $(touch /tmp/pwned) 'x'", "COMPLETED", "0", ALICE,
                        job["node"]]
    assert argv[6] == str(round(job["end_time"] - job["start_time"]))  # {runtime}, seconds
    assert name == job["name"]
    assert uid == os.getuid() != alice.uid  # as labqd's user, not the job's owner
    assert not Path("/tmp/pwned").exists()
    assert job["notify"] == "end"


def test_bob_cannot_redirect_or_read_alices_notifications(env):
    d, hook, sink, record, alice, bob = env
    before = json.loads(alice.ok("notify", "--json"))
    for args in (("notify", "set", "webhook", f"{hook.url}/bob", "--user", ALICE),
                 ("notify", "unset", "webhook", "--user", ALICE),
                 ("notify", "--user", ALICE)):
        r = bob.labq(*args)
        assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr, (args, r.stderr)
        assert "may not" in r.stderr and ALICE in r.stderr
    assert json.loads(alice.ok("notify", "--json")) == before
    assert before["webhook"] == f"{hook.url}/alice"


def test_a_webhook_to_a_host_the_admin_did_not_allow_is_refused(env):
    d, hook, sink, record, alice, bob = env
    r = alice.labq("notify", "set", "webhook", "https://attacker.example/x")
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
    assert "attacker.example" in r.stderr and "127.0.0.1" in r.stderr
    r = alice.labq("notify", "set", "webhook", "file:///etc/shadow")
    assert r.returncode == 1 and "VALIDATION_ERROR" in r.stderr and "http" in r.stderr
    r = alice.labq("notify", "set", "mail", "x@y\nBcc: z@w")
    assert r.returncode == 1 and "VALIDATION_ERROR" in r.stderr
    info = json.loads(alice.ok("notify", "--json"))
    assert info["webhook"] == f"{hook.url}/alice" and info["mail_to"] == f"{ALICE}@lab.test"
    r = alice.labq("submit", "--notify", "sometimes", "--", "true")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_the_users_default_applies_and_all_tells_the_start_too(env):
    d, hook, sink, record, alice, bob = env
    cfg = alice.home / ".config" / "labq" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text('[submit]\nnotify = "all"\n')
    for p in (alice.home / ".config", cfg.parent, cfg):
        os.chown(p, alice.uid, alice.gid)
    jid = submit(alice, "--", "true")
    alice.labq("wait", str(jid))
    wait_for(lambda: len([j for j in hook.jobs("/alice") if j[0] == jid]) == 2,
             what="start and end")
    assert sorted(e for j, e, _ in hook.jobs("/alice") if j == jid) == ["end", "start"]
    none = submit(alice, "--notify", "none", "--", "true")
    assert json.loads(alice.ok("show", "--json", str(none)))["notify"] is None
    cfg.write_text('[submit]\nnotify = "sometimes"\n')
    r = alice.labq("submit", "--", "true")
    cfg.unlink()
    assert r.returncode == 1 and "submit.notify must be one of" in r.stderr
    assert r.stdout == ""  # nothing was queued


def test_a_failing_channel_shows_in_events_and_a_restart_delivers_it_once(env):
    d, hook, sink, record, alice, bob = env
    hook.status = 500
    jid = submit(alice, "--notify", "end", "--", "true")
    alice.labq("wait", str(jid))
    wait_for(lambda: "notify webhook failed, trying again: webhook answered HTTP 500"
             in alice.ok("events", str(jid)), what="the failure in the job's events")
    assert hook.url not in bob.ok("events", str(jid))  # the URL stays alice's
    assert "webhook answered HTTP 500" in alice.ok("show", str(jid))  # a note in `show` too
    d.stop()
    hook.status = 200
    d.start(wait_nodes=1)
    wait_for(lambda: (jid, "end", "COMPLETED") in hook.jobs("/alice"), what="the delivery")
    # later ones are delivered in order of due time: once they are, the first had its chance
    # to be sent again, had it been left pending
    later = submit(alice, "--notify", "end", "--", "true")
    alice.labq("wait", str(later))
    wait_for(lambda: (later, "end", "COMPLETED") in hook.jobs("/alice"), what="a later one")
    threading.Event().wait(2.5)  # past retry_max: a message left pending would be resent
    assert hook.jobs("/alice").count((jid, "end", "COMPLETED")) == 1
    assert hook.jobs("/alice").count((later, "end", "COMPLETED")) == 1


def end_message_hangs(hook, alice) -> tuple[int, int]:
    """A job of alice's whose end message labqd is now posting to a webhook that does not
    answer (until hook.release is set): the job's id, and the webhook's count before."""
    hook.release.clear()
    before = hook.entered
    jid = submit(alice, "--notify", "end", "--", "true")
    wait_for(lambda: hook.entered > before, what="labqd's POST to the hung webhook")
    return jid, before


def test_a_hung_webhook_holds_up_neither_the_scheduler_nor_requests(env):
    d, hook, sink, record, alice, bob = env
    try:
        jid, before = end_message_hangs(hook, alice)
        # while labqd waits on it (up to the webhook's timeout, 300 s, far past this wait's),
        # bob's job is placed, runs and ends, and labqd answers
        other = submit(bob, "--", "true")
        r = bob.labq("wait", str(other), "--timeout", "60")
        assert r.returncode == 0 and f"{other} COMPLETED" in r.stdout, (r.stdout, r.stderr)
        assert hook.entered == before + 1
        assert (jid, "end", "COMPLETED") not in hook.jobs("/alice")
    finally:
        hook.release.set()
    wait_for(lambda: (jid, "end", "COMPLETED") in hook.jobs("/alice"),
             what="the delivery once the webhook answers")


def test_a_mail_address_of_ones_own_choice_and_back_to_the_default(env):
    d, hook, sink, record, alice, bob = env
    info = json.loads(bob.ok("notify", "set", "mail", "bob.home@elsewhere.test", "--json"))
    assert info["mail_to"] == "bob.home@elsewhere.test"
    assert json.loads(alice.ok("notify", "--json"))["mail_to"] == f"{ALICE}@lab.test"
    try:
        jid = submit(bob, "--notify", "fail", "--", "false")
        bob.labq("wait", str(jid))
        wait_for(lambda: any(f"labq job {jid} " in text for _, text in sink.mails),
                 what="the mail of the failed job")
        assert [rcpt for rcpt, text in sink.mails if f"labq job {jid} " in text] == \
            [["bob.home@elsewhere.test"]]
    finally:
        info = json.loads(bob.ok("notify", "unset", "mail", "--json"))
    assert info["mail"] is None and info["mail_to"] == f"{BOB}@lab.test"


def test_labqd_killed_while_sending_never_sends_that_message_again(env):
    d, hook, sink, record, alice, bob = env
    try:
        jid, before = end_message_hangs(hook, alice)
        d.kill9()  # whether the webhook took the message, labqd cannot know
        d.start(wait_nodes=1)
        wait_for(lambda: "not sent again, as labqd stopped while sending it"
                 in alice.ok("events", str(jid)), what="the unknown send in the job's events")
    finally:
        hook.release.set()
    later = submit(alice, "--notify", "end", "--", "true")
    alice.labq("wait", str(later))
    wait_for(lambda: (later, "end", "COMPLETED") in hook.jobs("/alice"), what="a later one")
    assert hook.entered == before + 2  # the first once (it had arrived), the later once


def test_a_notify_that_can_reach_no_one_is_queued_with_a_note(env, tmp_path, venv):
    d, hook, sink, record, alice, bob = env
    r = alice.labq("submit", "--notify", "end", "--", "true")  # mail, webhook, command: heard
    assert r.returncode == 0 and r.stderr == ""
    bare = Daemon(tmp_path / "bare", {"daemon": {"local_node": True, "socket_mode": "0666"}})
    with bare.start(wait_nodes=1):
        carol = User(ALICE, venv, bare.socket)
        r = carol.labq("submit", "--notify", "end", "--", "true")
        assert r.returncode == 0 and r.stdout.strip().isdigit()  # queued all the same
        assert "no notification will reach you" in r.stderr and "admin" in r.stderr
        r = carol.labq("submit", "--notify", "none", "--", "true")
        assert r.returncode == 0 and r.stderr == ""
    only_hooks = Daemon(tmp_path / "hooks", {
        "daemon": {"local_node": True, "socket_mode": "0666"},
        "notify": {"webhook": {"allow_hosts": ["127.0.0.1"]}}})
    with only_hooks.start(wait_nodes=1):
        dave = User(BOB, venv, only_hooks.socket)
        r = dave.labq("submit", "--notify", "fail", "--", "true")
        assert r.returncode == 0 and "labq notify set webhook URL" in r.stderr
