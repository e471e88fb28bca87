"""Nodes named by ~/.ssh/config aliases: HostName, User, Port, IdentityFile, ProxyJump; host
keys refused with the fingerprint `ssh-keygen -l` prints."""
import base64
import subprocess

import paramiko
import pytest
from daemonproc import Daemon, wait_for
from sshnodes import SSH_KEYGEN, make_user_key, start_node, write_known_hosts

from labq.daemon.nodes.ssh import fingerprint


@pytest.fixture(scope="module")
def aliased(tmp_path_factory):
    base = tmp_path_factory.mktemp("sshcfg")
    key = make_user_key(base)
    target = start_node(base, "behind")
    jump_ok = start_node(base, "jump-ok")
    jump_no = start_node(base, "jump-no", config_extra=["AllowTcpForwarding no"])
    nodes = [target, jump_ok, jump_no]
    kh = write_known_hosts(base / "known_hosts", nodes)
    ssh_config = base / "ssh_config"

    def host(alias, node, jump=None):
        lines = [f"Host {alias}", "  HostName 127.0.0.1", f"  Port {node.port}", "  User root",
                 f"  IdentityFile {key}", f"  UserKnownHostsFile {kh}"]
        if jump:
            lines.append(f"  ProxyJump {jump}")
        return "\n".join(lines) + "\n"
    ssh_config.write_text(host("direct", target) + host("hop-ok", jump_ok)
                          + host("hop-no", jump_no) + host("via-ok", target, "hop-ok")
                          + host("via-no", target, "hop-no"))
    empty_kh = base / "empty_known_hosts"
    empty_kh.write_text("")
    # the target's address with another node's key: as if the target's key had changed
    wrong_kh = base / "wrong_known_hosts"
    wrong_kh.write_text(f"[127.0.0.1]:{target.port} " + " ".join(
        jump_ok.known_hosts_line.split()[1:]) + "\n")
    d = Daemon(base / "daemon", {"daemon": {"heartbeat": "1s"}, "node": [
        {"name": n, "host": alias, "ssh_config": str(ssh_config), "job_root": str(base / n),
         "gpus": [{"type": "T4", "memory_mb": 16384}]}
        for n, alias in (("alias", "direct"), ("jumped", "via-ok"), ("blocked", "via-no"))] + [
        {"name": n, "host": "direct", "ssh_config": str(ssh_config), "known_hosts": str(kh_)}
        for n, kh_ in (("unknown", empty_kh), ("changed", wrong_kh))]})
    d.target = target
    d.start(wait_nodes=2)
    try:
        yield d
    finally:
        d.close()
        for n in nodes:
            n.stop()


def test_alias_and_proxyjump_reach_the_node(aliased):
    with aliased.client() as q:
        nodes = {n.name: n for n in q.nodes()}
        assert nodes["alias"].state == "up" and nodes["jumped"].state == "up"
        blocked = wait_for(lambda: (lambda n: n.state == "down" and n.reason and n)(
            {n.name: n for n in q.nodes()}["blocked"]), what="blocked node down")
        assert "through" in blocked.reason  # the hop refused to forward


def test_jobs_run_through_the_jump_host(aliased, tmp_path):
    with aliased.client() as q:
        q.drain("alias")
        try:
            job = q.submit(["bash", "-c", "echo via $LABQ_NODE"], gpus=1, cwd=str(tmp_path))
            [done] = q.wait(job.id, timeout=30)
        finally:
            q.resume("alias")
        assert done.state.value == "COMPLETED" and done.node == "jumped"
        assert q.logs(job.id) == "via jumped\n"


def keygen_fingerprint(pub) -> str:
    out = subprocess.run([SSH_KEYGEN, "-lf", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


def test_refused_host_keys_show_the_ssh_keygen_fingerprint(aliased):
    fp = keygen_fingerprint(aliased.target.host_key_pub)
    assert fp.startswith("SHA256:") and not fp.endswith("=")
    with aliased.client() as q:
        def refused(name):
            n = {n.name: n for n in q.nodes()}[name]
            return n.state == "refused" and n.reason
        unknown = wait_for(lambda: refused("unknown"), what="unknown refused")
        changed = wait_for(lambda: refused("changed"), what="changed refused")
    assert f"(ssh-ed25519 {fp}) is not in " in unknown
    assert f"has CHANGED (got ssh-ed25519 {fp})" in changed


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_fingerprint_matches_ssh_keygen_for_each_key_type(tmp_path, kind):
    key = tmp_path / kind
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    keytype, blob = (tmp_path / f"{kind}.pub").read_text().split()[:2]
    pub = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))
    assert fingerprint(pub) == keygen_fingerprint(tmp_path / f"{kind}.pub")
