"""labqd over TCP, each case with a real labqd of its own: the certificate from the config or
made once and kept, the TLS versions taken, a token that expired while labqd was down, the
submit rate's rows and its refunds seen over TLS, and /metrics' figures as jobs come and go."""
import datetime
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemonproc import Daemon, wait_for
from prometheus_client.parser import text_string_to_metric_families
from sshnodes import ensure_user
from userkit import User, cli_venv

import labq
from labq.errors import PermissionDenied, RateLimited, Unauthenticated, ValidationError
from labq.remote import fingerprint

# this module's own accounts: it writes their ~/.config/labq, which tests of other modules,
# run beside these by pytest's workers, would otherwise read
USER = "labqtls1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_fingerprints(d: Daemon) -> list[str]:
    return re.findall(r"fingerprint (SHA256:\S+)", d.log())


def tls_daemon(workdir, **sections) -> Daemon:
    port = free_port()
    daemon = {"local_node": False, "socket_mode": "0666", "listen": f"127.0.0.1:{port}",
              **sections.pop("daemon", {})}
    d = Daemon(workdir, {"daemon": daemon, **sections})
    d.url = f"labq://127.0.0.1:{port}"
    d.port = port
    return d


def make_cert(cert, key) -> str:
    """A certificate an admin would bring (here self-made); its fingerprint."""
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "head.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(days=1))
           .not_valid_after(now + datetime.timedelta(days=30)).sign(pkey, hashes.SHA256()))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    return fingerprint(crt.public_bytes(serialization.Encoding.DER))


def test_the_configured_certificate_is_the_one_served(tmp_path):
    ensure_user(USER)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    fp = make_cert(cert, key)
    d = tls_daemon(tmp_path / "d", daemon={"tls_cert": str(cert), "tls_key": str(key)})
    with d.start():
        assert logged_fingerprints(d) == [fp]
        assert not (tmp_path / "d" / "state" / "tls").exists()  # nothing self-made
        with d.client() as local:
            token = local.create_token(user=USER)["token"]
        with labq.connect(d.url, token=token, fingerprint=fp) as q:
            assert q.whoami()["user"] == USER


def test_a_self_signed_certificate_is_made_once_and_kept(tmp_path):
    d = tls_daemon(tmp_path)
    tls = tmp_path / "state" / "tls"
    d.start()
    [first] = logged_fingerprints(d)
    assert oct((tls / "key.pem").stat().st_mode & 0o777) == "0o600"
    assert first == fingerprint(ssl.PEM_cert_to_DER_cert((tls / "cert.pem").read_text()))
    assert d.stop() == 0
    with d.start():
        assert logged_fingerprints(d) == [first, first]  # users' pins still hold


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_before_1_2_and_plaintext_are_refused(tmp_path):
    d = tls_daemon(tmp_path)
    with d.start():
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this side would speak TLS 1.1
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw).close()
        ok = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ok.check_hostname, ok.verify_mode = False, ssl.CERT_NONE
        ok.maximum_version = ssl.TLSVersion.TLSv1_2
        with ok.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=10)) as t:
            assert t.version() == "TLSv1.2"
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        with d.client() as local:
            assert local.ping()


def test_a_token_that_expired_while_labqd_was_down_is_refused(tmp_path):
    venv = cli_venv()
    ensure_user(USER)
    d = tls_daemon(tmp_path)
    d.start()
    [fp] = logged_fingerprints(d)
    with d.client() as local:
        info = local.create_token(user=USER, days=1)
    user = User(USER, venv, None, {"LABQ_URL": d.url, "LABQ_TOKEN": info["token"],
                                   "LABQ_FINGERPRINT": fp})
    assert json.loads(user.ok("whoami", "--json"))["user"] == USER
    assert d.stop() == 0
    # a day later, as far as the token knows
    with sqlite3.connect(d.database) as db:
        db.execute("UPDATE token SET expires = ? WHERE id = ?", (time.time() - 1, info["id"]))
    db.close()
    with d.start():
        r = user.labq("ls")
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr and "expired" in r.stderr
        with pytest.raises(Unauthenticated, match="expired"):
            labq.connect(d.url, token=info["token"], fingerprint=fp)
        local_user = User(USER, venv, d.socket)
        listed = local_user.ok("token", "list")
        assert re.search(rf"^{info['id']}\s.*\sexpired\s", listed, re.M), listed


def test_a_token_of_an_account_that_was_removed_is_refused(tmp_path):
    ensure_user("labqgone")
    d = tls_daemon(tmp_path)
    with d.start():
        [fp] = logged_fingerprints(d)
        with d.client() as local:
            token = local.create_token(user="labqgone")["token"]
        with labq.connect(d.url, token=token, fingerprint=fp) as q:
            assert q.whoami()["user"] == "labqgone"
        subprocess.run(["userdel", "-r", "labqgone"], check=True, capture_output=True)
        # its uid may go to the next account made: the token must not act as that one
        with pytest.raises(Unauthenticated, match="no longer has an account"):
            labq.connect(d.url, token=token, fingerprint=fp)


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def value(fams: dict, family: str, sample: str, **labels) -> float:
    found = [s.value for s in fams[family].samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, sample, labels, fams[family].samples)
    return found[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """labqd with a 5/min submit rate, metrics, and the local machine as a node with two
    declared GPUs."""
    ensure_user(USER)
    mport = free_port()
    d = tls_daemon(tmp_path_factory.mktemp("lab"), daemon={"kill_grace": "1s"},
                   limits={"submit_rate": "5/min"},
                   metrics={"listen": f"127.0.0.1:{mport}"},
                   node=[{"name": "head", "local": True,
                          "gpus": [{"type": "TestGPU"}, {"type": "TestGPU"}]}])
    with d.start(wait_nodes=1):
        [d.fingerprint] = logged_fingerprints(d)
        d.metrics_port = mport
        yield d


def test_refused_rows_cost_no_submit_rate_and_are_not_counted(lab):
    with lab.client() as local:
        token = local.create_token(user=USER)["token"]
    hold = {"hold": True, "export_env": False, "cwd": "/tmp"}
    with labq.connect(lab.url, token=token, fingerprint=lab.fingerprint) as q:
        with pytest.raises(ValidationError, match="no job 999999"):
            q.submit(["true"], after=[999999], **hold)  # refused: gives its submit back
        rows = q.submit_many([{"command": ["true"], "hold": True},
                              {"command": ["true"], "hold": True, "after": [999999]},
                              {"command": ["true"], "hold": True},
                              {"command": ["true"], "hold": True}], export_env=False)
        assert [type(r).__name__ for r in rows] == ["Job", "ValidationError", "Job", "Job"]
        q.submit(["true"], **hold)
        q.submit(["true"], **hold)  # the fifth queued of 5/min
        with pytest.raises(RateLimited) as e:
            q.submit(["true"], **hold)
        assert 1 <= e.value.details["retry_after"] <= 12
        assert e.value.details["limit"] == "limits.submit_rate"
        mine = q.jobs(user=USER)
        assert len(mine) == 5
        fams = scrape(lab.metrics_port)
        assert value(fams, "labq_submits", "labq_submits_total") == 5
        # every answered request is timed, the refused ones too
        assert value(fams, "labq_request_seconds", "labq_request_seconds_count",
                     op="submit") == 4
        assert value(fams, "labq_request_seconds", "labq_request_seconds_count",
                     op="submit_many") == 1
        q.cancel(*[j.id for j in mine])


def test_metrics_follow_a_gpu_job_from_submit_to_end(lab):
    with lab.client() as local, lab.client():
        job = local.submit(["sleep", "60"], gpus=1, export_env=False, cwd="/tmp")
        wait_for(lambda: local.job(job.id).state == labq.JobState.RUNNING, 30,
                 what="the GPU job to start")
        fams = scrape(lab.metrics_port)
        assert value(fams, "labq_gpus", "labq_gpus", node="head", type="TestGPU",
                     kind="total") == 2
        assert value(fams, "labq_gpus", "labq_gpus", node="head", type="TestGPU",
                     kind="allocated") == 1
        assert value(fams, "labq_node_up", "labq_node_up", node="head") == 1
        assert value(fams, "labq_jobs", "labq_jobs", state="RUNNING", group="root") == 1
        wait_for(lambda: value(scrape(lab.metrics_port), "labq_connections",
                               "labq_connections", transport="unix") >= 2, 10,
                 what="both unix connections to be counted")
        assert value(fams, "labq_queue_wait_seconds", "labq_queue_wait_seconds_count") >= 1
        assert value(fams, "labq_scheduler_pass_seconds",
                     "labq_scheduler_pass_seconds_count") >= 1
        assert value(fams, "labq_request_seconds", "labq_request_seconds_count",
                     op="submit") >= 1
        local.cancel(job.id)
        wait_for(lambda: local.job(job.id).state == labq.JobState.CANCELLED, 30,
                 what="the GPU job to end")
    fams = scrape(lab.metrics_port)
    assert value(fams, "labq_job_ends", "labq_job_ends_total", state="CANCELLED") >= 1
    assert value(fams, "labq_gpus", "labq_gpus", node="head", type="TestGPU",
                 kind="allocated") == 0
    with labq.connect(lab.url, token=lab_token(lab), fingerprint=lab.fingerprint):
        # counted once labqd serves it, a moment after the client has its answer
        wait_for(lambda: value(scrape(lab.metrics_port), "labq_connections",
                               "labq_connections", transport="tls") == 1, 10,
                 what="the TLS connection to be counted")


def lab_token(lab) -> str:
    with lab.client() as local:
        return local.create_token(user=USER)["token"]


def test_a_users_token_cannot_make_tokens_but_the_user_can_on_the_head_node(tmp_path):
    """A stolen token must end when it is revoked: it cannot mint its successor."""
    venv = cli_venv()
    ensure_user(USER)
    d = tls_daemon(tmp_path)
    with d.start():
        [fp] = logged_fingerprints(d)
        with d.client() as local:
            info = local.create_token(user=USER)
        with labq.connect(d.url, token=info["token"], fingerprint=fp) as q:
            with pytest.raises(PermissionDenied, match="cannot make tokens"):
                q.create_token()
            assert [t["id"] for t in q.tokens()] == [info["id"]]
        remote = User(USER, venv, None, {"LABQ_URL": d.url, "LABQ_TOKEN": info["token"],
                                         "LABQ_FINGERPRINT": fp})
        r = remote.labq("token", "create")
        assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr and r.stdout == ""
        on_head = User(USER, venv, d.socket)
        assert on_head.ok("token", "create").strip()  # a login on labqd's machine may
