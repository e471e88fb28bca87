"""Self-test of the real-sshd test nodes in tests/sshnodes.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshnodes import (  # noqa: E402
    H100_CSV,
    NVIDIA_SMI_QUERY,
    NodeSet,
    add_user_to_group,
    ensure_group,
    ensure_user,
    run_as,
    write_known_hosts,
)


def connect(node, key: Path, known_hosts: Path, user: str = "root") -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        node.host,
        port=node.port,
        username=user,
        key_filename=str(key),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )
    return client


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def run(client: paramiko.SSHClient, cmd: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(cmd, timeout=10)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


@pytest.fixture
def nodes(tmp_path):
    with NodeSet(tmp_path, names=["gpu", "plain"], nvidia_smi_csv=[H100_CSV, None]) as ns:
        yield ns
    for node in ns:
        assert not node.running


def test_fake_nvidia_smi_only_on_gpu_node(nodes):
    gpu, plain = nodes["gpu"], nodes["plain"]
    with connect(gpu, nodes.user_key, nodes.known_hosts) as c:
        rc, out, err = run(c, NVIDIA_SMI_QUERY)
        assert rc == 0, err
        assert out == H100_CSV
        rows = [line.split(", ") for line in out.splitlines()]
        assert [r[0] for r in rows] == ["0", "1"]
        assert all(len(r) == 6 and r[5].startswith("GPU-") for r in rows)

        rc, out, _ = run(c, "echo $PATH; command -v nvidia-smi; echo $SSHNODES_NODE_ID")
        path, which, node_id = out.splitlines()
        assert path.split(":")[0] == str(gpu.bin_dir)
        assert which == str(gpu.bin_dir / "nvidia-smi")
        assert node_id == gpu.node_id

        # the table can be changed while the node runs
        gpu.set_nvidia_smi_csv(H100_CSV.splitlines(True)[0])
        assert run(c, "nvidia-smi")[1] == H100_CSV.splitlines(True)[0]

        # exit codes and stderr come through the session wrapper unchanged
        assert run(c, "echo oops >&2; exit 7") == (7, "", "oops\n")

        # sftp works through the wrapper too
        with c.open_sftp() as sftp:
            with sftp.open(str(gpu.dir / "sftp-probe"), "w") as f:
                f.write("hello")
        assert (gpu.dir / "sftp-probe").read_text() == "hello"

    with connect(plain, nodes.user_key, nodes.known_hosts) as c:
        rc, out, err = run(c, NVIDIA_SMI_QUERY)
        assert rc == 127, (rc, out, err)
        assert "not found" in err
        assert str(gpu.bin_dir) not in run(c, "echo $PATH")[1]


def test_openssh_client_uses_same_files(nodes):
    ssh = shutil.which("ssh")
    assert ssh, "the OpenSSH client is needed (.ci/run installs it)"
    node = nodes["gpu"]
    r = subprocess.run(
        [ssh, "-F", "/dev/null", "-i", str(nodes.user_key), "-p", str(node.port),
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={nodes.known_hosts}", "-o", "IdentitiesOnly=yes",
         f"root@{node.host}", "which nvidia-smi"],
        capture_output=True, text=True, timeout=20,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(node.bin_dir / "nvidia-smi")


def test_unknown_host_key_is_refused(nodes, tmp_path):
    gpu, plain = nodes["gpu"], nodes["plain"]
    only_plain = write_known_hosts(tmp_path / "kh_plain", [plain])
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(gpu, nodes.user_key, only_plain)

    # a known_hosts entry for the right address but another key is refused too
    wrong = tmp_path / "kh_wrong"
    wrong.write_text(f"[{gpu.host}]:{gpu.port} " + plain.known_hosts_line.split(" ", 1)[1] + "\n")
    with pytest.raises(paramiko.SSHException):
        connect(gpu, nodes.user_key, wrong)


def test_kill_all_and_restart(nodes):
    node = nodes["gpu"]
    client = connect(node, nodes.user_key, nodes.known_hosts)
    # a session process, and one that detached itself from the session
    rc, out, _ = run(
        client,
        "sleep 300 >/dev/null 2>&1 & echo $!; "
        "setsid nohup sleep 301 >/dev/null 2>&1 & echo $!",
    )
    job_pids = [int(p) for p in out.split()]
    assert len(job_pids) == 2 and all(alive(p) for p in job_pids)
    # the detached one is found by its environment, which /proc shows only once the
    # `setsid nohup sleep` chain has finished its execs
    deadline = time.monotonic() + 10
    while not set(job_pids) <= node._node_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(job_pids) <= node._node_pids()

    node.kill_all()
    assert not node.running
    assert node._node_pids() == set()
    assert not any(alive(p) for p in job_pids)

    # the open connection is dead, and new connections fail
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        run(client, "true")
    client.close()
    with pytest.raises((paramiko.SSHException, OSError)):
        connect(node, nodes.user_key, nodes.known_hosts)
    with pytest.raises(OSError):
        socket.create_connection((node.host, node.port), timeout=1).close()

    port = node.port
    node.restart()
    assert node.running and node.port == port
    with connect(node, nodes.user_key, nodes.known_hosts) as c:  # same host key
        assert run(c, "nvidia-smi")[1] == H100_CSV

    node.kill_all()
    node.kill_all()  # idempotent
    node.stop()
    node.stop()


def test_stop_kills_open_sessions(nodes):
    node = nodes["plain"]
    client = connect(node, nodes.user_key, nodes.known_hosts)
    pid = int(run(client, "sleep 302 >/dev/null 2>&1 & echo $!")[1])
    assert alive(pid)
    node.stop()
    assert not node.running
    assert not alive(pid)
    assert node._node_pids() == set()
    client.close()


def test_config_entry(nodes):
    node = nodes["gpu"]
    entry = node.config_entry(nodes.user_key, nodes.known_hosts, gpus=[0, 1])
    assert entry == {
        "name": "gpu",
        "host": "127.0.0.1",
        "port": node.port,
        "user": "root",
        "identity_file": str(nodes.user_key),
        "known_hosts": str(nodes.known_hosts),
        "gpus": [0, 1],
    }
    assert "gpus" not in nodes["plain"].config_entry("k", "kh")
    assert nodes.known_hosts.read_text().splitlines() == [n.known_hosts_line for n in nodes]
    assert node.known_hosts_line.startswith(f"[127.0.0.1]:{node.port} ssh-ed25519 AAAA")


def test_second_user(tmp_path):
    uid, gid = ensure_user("labqtest")
    assert ensure_user("labqtest") == (uid, gid)
    assert uid != 0
    r = run_as("labqtest", ["id", "-un"], cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "labqtest"

    ensure_group("labqtestgrp")
    add_user_to_group("labqtest", "labqtestgrp")
    add_user_to_group("labqtest", "labqtestgrp")
    assert "labqtestgrp" in run_as("labqtest", ["id", "-Gn"], cwd="/").stdout.split()

    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    r = run_as("labqtest", ["cat", str(secret)], cwd="/")
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_ssh_as_second_user(nodes):
    ensure_user("labqtest")
    with connect(nodes["gpu"], nodes.user_key, nodes.known_hosts, user="labqtest") as c:
        rc, out, err = run(c, "id -un; echo $HOME; echo $PATH")
        assert rc == 0, err
        name, home, path = out.splitlines()
        assert (name, home) == ("labqtest", "/home/labqtest")
        assert path.split(":")[0] == str(nodes["gpu"].bin_dir)
