"""Mail through the local MTA: labqd hands the message to a sendmail program (`-t -oi`, the
recipients read from the message) and reports its failure. The program here is a script
that keeps what it was given, as a local MTA's sendmail would queue it. Then the admin's
command's timeout, and the queue's retries with backoff, on a fake clock."""
import email
import json
import os
import re
import ssl
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
from daemonproc import wait_for
from fakeclock import FakeClock
from sshnodes import free_port
from test_store import job_fields

from labq.daemon import store as st
from labq.daemon.channels import ChannelError, post_webhook, run_command, send_mail
from labq.daemon.notices import Notices

PAYLOAD = {"id": 42, "name": "train $(rm -rf /)", "user": "alice", "state": "FAILED",
           "exit_code": 3, "node": "gpu1", "runtime": 90.0, "event": "end"}


def sendmail(tmp_path, body: str):
    prog = tmp_path / "sendmail"
    prog.write_text("#!/bin/sh\n" + body)
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    return prog


def test_a_mail_goes_to_sendmail_with_its_recipient_in_the_message(tmp_path):
    prog = sendmail(tmp_path, f'echo "$@" > {tmp_path}/argv; cat > {tmp_path}/msg\n')
    send_mail("alice@example.org", PAYLOAD, {"sendmail": str(prog), "from": "labq@head"}, 5)
    assert (tmp_path / "argv").read_text().split() == ["-t", "-oi"]
    msg = email.message_from_bytes((tmp_path / "msg").read_bytes())
    assert msg["To"] == "alice@example.org" and msg["From"] == "labq@head"
    assert "42" in msg["Subject"] and "FAILED" in msg["Subject"]
    assert "name: train $(rm -rf /)" in msg.get_payload()  # the text as written, no shell


def test_a_failing_sendmail_is_a_channel_error_naming_why(tmp_path):
    prog = sendmail(tmp_path, "echo 'no such user here' >&2; exit 67\n")
    with pytest.raises(ChannelError, match="sendmail exited 67: no such user here"):
        send_mail("bob@example.org", PAYLOAD, {"sendmail": str(prog)}, 5)
    with pytest.raises(ChannelError, match="sendmail failed"):
        send_mail("bob@example.org", PAYLOAD, {"sendmail": os.fspath(tmp_path / "none")}, 5)


def test_the_admins_command_is_stopped_at_its_timeout(tmp_path):
    prog = sendmail(tmp_path, f"sleep 30 & echo $! > {tmp_path}/child; wait\n")
    with pytest.raises(ChannelError, match="ran past its 0.5 s timeout"):
        run_command([str(prog), "{id}"], PAYLOAD, 0.5)
    child = (tmp_path / "child").read_text().strip()

    def gone() -> bool:  # what the command started is stopped with it
        try:
            return open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z"
        except OSError:
            return True
    wait_for(gone, what="the command's own child to end")


def test_a_failing_channel_is_retried_with_doubling_waits_then_given_up(tmp_path):
    """The queue's own thread is not started: deliver_due is what it calls, here at times a
    fake clock gives. The message is a real row of a real store, sent by a real program."""
    clock = FakeClock()
    store = st.Store(tmp_path / "labq.db")
    job = store.insert_job(job_fields(), "alice")
    payload = dict(PAYLOAD, id=job)
    store.record_transition(job, {"state": "FAILED"}, "labqd", "RUNNING", "FAILED", None,
                            clock.now, notices=[{"channel": "command", "target": None,
                                                 "payload": payload}])
    cfg = {"retry_base": 10, "retry_max": 25, "max_attempts": 4,
           "command": {"argv": ["/bin/sh", "-c", "exit 3"]}}
    notices = Notices(SimpleNamespace(notify=cfg), store, clock)
    waits = []
    for _ in range(4):
        notices.deliver_due()
        row = store.notifications(job)[0]
        if row["status"] != "pending":
            break
        waits.append(row["next_try"] - clock.now)
        clock.now = row["next_try"] - 1
        notices.deliver_due()  # not yet due: not tried
        assert store.notifications(job)[0]["attempts"] == len(waits)
        clock.now += 1
    assert waits == [10, 20, 25]  # doubling, up to retry_max
    row = store.notifications(job)[0]
    assert (row["status"], row["attempts"]) == ("failed", 4)
    reasons = [e["reason"] for e in store.events(job) if e["reason"]]
    assert reasons == ["notify command failed, trying again: the notify command exited 3",
                       "notify command failed after 4 tries, giving up: "
                       "the notify command exited 3"]
    store.close()


def test_a_webhook_is_json_that_slack_mattermost_and_ntfy_read(tmp_path):
    """One POST for all three: Slack and Mattermost read `text`; ntfy, posted to at a topic's
    URL, fills its title and message from the JSON through the templates the headers name."""
    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        post_webhook(f"http://127.0.0.1:{server.server_port}/lab-alerts", PAYLOAD,
                     ["127.0.0.1"], 5)
    finally:
        server.server_close()
    path, headers, body = got[0]
    assert path == "/lab-alerts" and headers["Content-Type"] == "application/json"
    assert body["text"] == body["message"] and body["text"].startswith("labq job 42 ")
    assert "FAILED" in body["title"] and body["labq"] == PAYLOAD
    assert headers["X-Template"] == "yes"

    def ntfy_fills(template: str) -> str:  # Go's {{.field}} of the JSON body
        return re.sub(r"\{\{\.(\w+)\}\}", lambda m: body[m.group(1)], template)
    assert ntfy_fills(headers["X-Title"]) == body["title"]
    assert ntfy_fills(headers["X-Message"]) == body["text"]


# -- an SMTP relay with STARTTLS and a password --------------------------------------------
class Relay:
    """A real SMTP relay (aiosmtpd) that takes mail only after STARTTLS and a login."""

    def __init__(self, tmp_path, password="s3cret"):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                        str(self.cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.got, self.logins = [], []

        relay = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                relay.got.append((session.authenticated, envelope))
                return "250 OK"

        def check(server, session, envelope, mechanism, auth_data):
            relay.logins.append((auth_data.login, session.ssl is not None))
            return AuthResult(success=auth_data.password == password.encode(), handled=False)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=True,
                                     authenticator=check, auth_require_tls=True,
                                     auth_exclude_mechanism=["LOGIN"])
        self.controller.start()

    def mail_conf(self, tmp_path, password="s3cret", **extra):
        pw = tmp_path / "smtp-password"
        pw.write_text(password + "\n")
        return dict({"smtp_host": "localhost", "smtp_port": self.port, "starttls": True,
                     "username": "labqd", "password_file": str(pw), "from": "labq@head"},
                    **extra)


@pytest.fixture
def relay(tmp_path):
    r = Relay(tmp_path)
    yield r
    r.controller.stop()


def test_mail_to_a_relay_goes_over_starttls_with_its_certificate_checked(relay, tmp_path):
    send_mail("alice@example.org", PAYLOAD,
              relay.mail_conf(tmp_path, ca_file=str(relay.cert)), 10)
    assert relay.logins == [(b"labqd", True)]  # the password went only over TLS
    (authenticated, env), = relay.got
    assert authenticated and env.rcpt_tos == ["alice@example.org"]
    assert "FAILED" in email.message_from_bytes(env.original_content)["Subject"]


def test_a_relay_whose_certificate_is_not_trusted_never_sees_the_password(relay, tmp_path):
    with pytest.raises(ChannelError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        send_mail("alice@example.org", PAYLOAD, relay.mail_conf(tmp_path), 10)
    assert relay.logins == [] and relay.got == []


def test_a_wrong_relay_password_is_a_channel_error(relay, tmp_path):
    with pytest.raises(ChannelError, match="SMTPAuthenticationError"):
        send_mail("alice@example.org", PAYLOAD,
                  relay.mail_conf(tmp_path, "wrong", ca_file=str(relay.cert)), 10)
    assert relay.got == []
