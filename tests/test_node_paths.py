"""The files a node names (ssh_config, identity_file, known_hosts).

labqd reads them with its own rights, so a node added through the API by an admin who is not
root (nor labqd's user) may name only files inside labqd's config directory; the config file
may name any. Whatever goes wrong with such a file, what users see (the API's errors,
`labq nodes`) names the file and the problem, never a line of it.
"""
import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from daemonproc import Daemon, as_user, wait_for
from sshnodes import (
    SSH_KEYGEN,
    add_user_to_group,
    ensure_group,
    ensure_user,
    make_user_key,
    start_node,
    write_known_hosts,
)

import labq
from labq.cli import main as labq_main  # imported here: the forked users cannot read /root
from labq.errors import LabqError

ADMIN, ADMINS, OTHER = "labqadmin", "labqadmins", "labqtest"
SECRET = "root:$y$j9T$S3CRETsalt$S3CREThash0123456789:19700:0:99999:7:::"


def shadow_lines() -> list[str]:
    return [ln for ln in Path("/etc/shadow").read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    key = make_user_key(base / "nodes")
    node = start_node(base / "nodes", "n1")
    kh = write_known_hosts(base / "nodes" / "known_hosts", [node])
    ensure_group(ADMINS)
    admin = ensure_user(ADMIN)
    add_user_to_group(ADMIN, ADMINS)
    other = ensure_user(OTHER)
    confdir = base / "daemon"  # the Daemon's config file lives here
    confdir.mkdir()
    secret = base / "secret"  # outside the config directory, like /etc/shadow
    secret.write_text(f"{SECRET}\ndaemon:*:19700:0:99999:7:::\n")
    d = Daemon(confdir, {
        "daemon": {"socket_mode": "0666", "admin_group": ADMINS, "heartbeat": "1s"},
        "node": [
            # the config file may name files anywhere
            dict(node.config_entry(key, kh), name="fromcfg", job_root=str(base / "jobs")),
            {"name": "cfgsecret", "host": "127.0.0.1", "port": node.port,
             "ssh_config": str(secret)},
        ]})
    d.start(wait_nodes=1)
    d.node, d.key, d.kh, d.confdir, d.base = node, key, kh, confdir, base
    d.admin, d.other, d.secret = admin, other, secret
    try:
        yield d
    finally:
        d.close()
        node.stop()


def add_as(d, who, entry) -> dict:
    """node_add as another user; the error's code and message, or the node."""
    sock = str(d.socket)

    def call():
        try:
            with labq.connect(sock) as q:
                return {"node": q.add_node(**entry)}
        except LabqError as e:
            return {"code": e.code, "message": e.message, "details": e.details}
    return as_user(*who, call)


def nodes_as(d, who) -> str:
    """`labq nodes` as another user: what it prints."""
    sock = str(d.socket)

    def run():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = labq_main(["--socket", sock, "nodes"])
        return [rc, out.getvalue()]
    rc, text = as_user(*who, run)
    assert rc == 0
    return text


def reason(d, name) -> str:
    with d.client() as q:
        return next(n for n in q.nodes() if n.name == name).reason or ""


def assert_no_content(text, lines):
    for ln in lines:
        assert ln not in text, f"a line of the file shows: {text!r}"
    assert "S3CRET" not in text


def test_config_file_nodes_may_name_files_anywhere(setup):
    with setup.client() as q:
        assert {n.name: n.state for n in q.nodes()}["fromcfg"] == "up"


@pytest.mark.parametrize("key,value", [
    ("ssh_config", "/etc/shadow"),
    ("identity_file", "{base}/nodes/user_ed25519"),
    ("known_hosts", "{confdir}/../nodes/known_hosts"),
    ("ssh_config", "{confdir}/shadow-link"),
    ("identity_file", "{confdir}"),
])
def test_api_node_files_must_lie_in_the_config_dir(setup, key, value):
    link = setup.confdir / "shadow-link"
    if not link.is_symlink():
        link.symlink_to("/etc/shadow")
    value = value.format(base=setup.base, confdir=setup.confdir)
    r = add_as(setup, setup.admin, {"name": "outside", "host": "127.0.0.1",
                                    "port": setup.node.port, key: value})
    assert r.get("code") == "VALIDATION_ERROR", r
    assert r["details"] == {"field": f"node.{key}"}
    assert r["message"].startswith(f"node.{key}: ")
    assert f"config directory {os.path.realpath(setup.confdir)}" in r["message"]
    assert_no_content(r["message"], shadow_lines())


def test_api_node_files_inside_the_config_dir_work(setup):
    inside = setup.confdir / "keys"
    inside.mkdir(exist_ok=True)
    shutil.copy(setup.key, inside / "id")
    shutil.copy(setup.kh, inside / "known_hosts")
    r = add_as(setup, setup.admin, {
        "name": "inside", "host": "127.0.0.1", "port": setup.node.port, "user": "root",
        "identity_file": str(inside / "id"), "known_hosts": str(inside / "known_hosts"),
        "job_root": str(setup.base / "jobs-inside")})
    assert "node" in r, r
    with setup.client() as q:
        wait_for(lambda: {n.name: n.state for n in q.nodes()}.get("inside") == "up",
                 what="inside up")


def test_root_may_name_files_anywhere(setup):
    with setup.client() as q:
        q.add_node(name="byroot", host="127.0.0.1", port=setup.node.port, user="root",
                   identity_file=str(setup.key), known_hosts=str(setup.kh),
                   job_root=str(setup.base / "jobs-root"))
        wait_for(lambda: {n.name: n.state for n in q.nodes()}.get("byroot") == "up",
                 what="byroot up")
        q.remove_node("byroot")


def _bad_files(d):
    c = Path(os.path.realpath(d.confdir))
    (c / "bad_ssh_config").write_text(f"Host somewhere\n{SECRET}\n")
    (c / "not_a_key").write_text(d.secret.read_text())
    (c / "bad_known_hosts").write_text("# comment\n[127.0.0.1]:22 ssh-ed25519 S3CRETx\n")
    (c / "a_dir").mkdir(exist_ok=True)
    locked = c / "locked_key"
    if not locked.exists():
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "S3CRETpass", "-C", SECRET,
                        "-f", str(locked)], check=True, capture_output=True)
    shutil.copy(d.key, c / "good_key")
    return c


@pytest.mark.parametrize("name,files,why", [
    ("badcfg", {"ssh_config": "bad_ssh_config"}, "cannot parse ssh_config {c}/bad_ssh_config "
     "(line 2)"),
    ("notkey", {"identity_file": "not_a_key"}, "identity file {c}/not_a_key is not a private "
     "key labqd can use"),
    ("locked", {"identity_file": "locked_key"}, "identity file {c}/locked_key is protected by "
     "a passphrase"),
    ("dirkey", {"identity_file": "a_dir"}, "cannot read identity file {c}/a_dir: not a "
     "regular file"),
    ("badkh", {"identity_file": "good_key", "known_hosts": "bad_known_hosts"},
     "cannot parse known_hosts {c}/bad_known_hosts (line 2)"),
])
def test_file_errors_name_the_file_not_its_content(setup, name, files, why):
    c = _bad_files(setup)
    entry = {"name": name, "host": "127.0.0.1", "port": setup.node.port, "user": "root",
             **{k: str(c / v) for k, v in files.items()}}
    r = add_as(setup, setup.admin, entry)
    assert "node" in r, r
    why = why.format(c=c)
    got = wait_for(lambda: (lambda t: why in t and t)(reason(setup, name)), what=why)
    contents = [ln for f in files.values() if (c / f).is_file()
                for ln in (c / f).read_text().splitlines() if len(ln.strip()) > 8]
    assert_no_content(got, contents + [SECRET])
    shown = nodes_as(setup, setup.other)
    assert why in shown
    assert_no_content(shown, contents + [SECRET])


def test_a_config_file_node_on_a_secret_file_shows_no_line(setup):
    why = f"cannot parse ssh_config {setup.secret} (line 1)"
    got = wait_for(lambda: (lambda t: why in t and t)(reason(setup, "cfgsecret")), what=why)
    assert_no_content(got, setup.secret.read_text().splitlines())
    shown = nodes_as(setup, setup.other)
    assert why in shown
    assert_no_content(shown, setup.secret.read_text().splitlines())
