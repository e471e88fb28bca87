"""Mail through the local MTA: labqd hands the message to a sendmail program (`-t -oi`, the
recipients read from the message) and reports its failure. The program here is a script
that keeps what it was given, as a local MTA's sendmail would queue it."""
import email
import os
import stat

import pytest

from labq.daemon.channels import ChannelError, send_mail

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
