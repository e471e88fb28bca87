"""Client and labqd say which release and protocol they speak, and a client that labqd cannot
serve is refused before anything is done, with a message that says which side to upgrade."""
import json
import shutil
import subprocess

import pytest
import rpyc
from daemonproc import Daemon, raw_connect
from userkit import User, cli_venv

import labq
import labq.client
from labq.errors import VersionMismatch
from labq.protocol import MIN_PROTOCOL, PROTOCOL

CLIENT_LINE = f"labq {labq.__version__} (protocol {PROTOCOL})"
DAEMON_LINE = f"labqd {labq.__version__} (protocol {PROTOCOL})"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("version"), {"daemon": {"socket_mode": "0666"}})
    with d.start():
        yield d


def test_labq_version_prints_both_sides_to_every_user(daemon):
    venv = cli_venv()
    for name in ("labqtest", "labqtest2"):
        u = User(name, venv, daemon.socket)
        assert u.ok("version").splitlines() == [CLIENT_LINE, DAEMON_LINE]
        assert json.loads(u.ok("version", "--json")) == {
            "client": {"version": labq.__version__, "protocol": PROTOCOL},
            "daemon": {"version": labq.__version__, "protocol": PROTOCOL}}


def test_the_clients_own_release_prints_without_a_daemon(tmp_path):
    labq_bin = shutil.which("labq")
    r = subprocess.run([labq_bin, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"labq {labq.__version__}"
    # `labq version` still says which client it is when nothing answers
    r = subprocess.run([labq_bin, "--socket", str(tmp_path / "none.sock"), "version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [CLIENT_LINE]
    assert "labq:" in r.stderr


@pytest.mark.parametrize("client, upgrade", [(PROTOCOL + 1, "upgrade labqd"),
                                             (MIN_PROTOCOL - 1, "upgrade labq to")])
def test_a_client_labqd_cannot_serve_is_refused_before_anything_is_queued(
        daemon, monkeypatch, client, upgrade):
    with daemon.client() as q:
        before = [j.id for j in q.jobs()]
        monkeypatch.setattr(labq.client, "PROTOCOL", client)
        for attempt in (lambda: q.submit(["true"], hold=True),
                        lambda: q.submit_many([{"command": ["true"], "hold": True}] * 3),
                        lambda: q.submit_array(["true"], array="0-3", hold=True)):
            with pytest.raises(VersionMismatch) as e:
                attempt()
            assert e.value.code == "VERSION_MISMATCH"
            assert upgrade in str(e.value) and labq.__version__ in str(e.value)
            assert e.value.details["daemon"] == PROTOCOL
        monkeypatch.undo()
        # the same connection still works, and nothing of the refused requests was kept
        assert [j.id for j in q.jobs()] == before
        assert q.ping()["protocol"] == PROTOCOL


def test_a_raw_call_without_a_number_is_served_and_a_bad_number_refused(daemon):
    conn = raw_connect(daemon.socket, service=rpyc.VoidService,
                       config={"allow_pickle": False, "sync_request_timeout": 30})
    try:
        ok = json.loads(conn.root.call("ping", "{}"))
        assert ok["ok"] and ok["result"]["version"] == labq.__version__
        for bad in ("1", 1.0, [1], True):
            out = json.loads(conn.root.call("ping", json.dumps({"protocol": bad})))
            assert not out["ok"]
            assert out["error"]["code"] == "VALIDATION_ERROR"
            assert out["error"]["details"]["field"] == "protocol"
        ok = json.loads(conn.root.call("ping", json.dumps({"protocol": PROTOCOL})))
        assert ok["ok"]
    finally:
        conn.close()
