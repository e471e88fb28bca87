"""Helpers for the fault-injection tests: crashing nodes, cutting links, finding processes.

Link cuts use a network namespace per node: the node's sshd runs inside its own namespace,
reachable from the host through a veth pair; taking the host end down cuts the link while
everything on the node (sshd, agent, jobs) keeps running, and bringing it up restores it.
An `unreachable` route for the pair's subnet (with a higher metric than the link's own route)
makes connection attempts during the cut fail at once instead of leaking to the default route.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import sshnodes
from sshnodes import SSHD, SshNode, _keygen, _signal_all, alive, make_user_key, write_known_hosts

AGENT_MARK = b"labq-agent"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


# -- processes ----------------------------------------------------------------------------
def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def agent_pids(job_root: str | Path) -> list[int]:
    """Live labq agents started with `--root job_root`."""
    root = str(job_root).encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        argv = _cmdline(int(d))
        # a job's shepherd is forked from the agent and shares its command line; the agent
        # is the one whose parent is the SSH session
        if any(AGENT_MARK in a for a in argv) and root in argv and alive(int(d)) \
                and _comm(_ppid(int(d))).startswith("sshd"):
            out.append(int(d))
    return out


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2:].split()[1])


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def run_records(job_root: str | Path) -> dict[str, dict]:
    """run key -> its pid record ({"pid", "pgid", "shepherd", ...}) under a node's job root."""
    import json
    out = {}
    for pidfile in Path(job_root).glob("*/*/*/pid"):
        try:
            out[pidfile.parent.name] = json.loads(pidfile.read_text())
        except (OSError, ValueError):
            pass
    return out


def crash_node(node: SshNode, job_root: str | Path) -> None:
    """A node's sudden death: its sshd, sessions, agent and shepherds (SshNode.kill_all: they
    carry the node's tag) and every job it ran (jobs run with the job's own environment, so
    they carry no tag; their process groups are read from the node's job directories)."""
    node.kill_all()
    kill_runs(job_root)


def kill_runs(job_root: str | Path) -> None:
    """Clean up: SIGKILL every shepherd and job process group found under a job root."""
    for rec in run_records(job_root).values():
        if rec.get("shepherd"):
            _signal_all([int(rec["shepherd"])], signal.SIGKILL)
        if rec.get("pgid"):
            try:
                os.killpg(int(rec["pgid"]), signal.SIGKILL)
            except OSError:
                pass


# -- the database -------------------------------------------------------------------------
def integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def query(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# -- markers: one line per execution of a job ---------------------------------------------
def mark_cmd(markers: Path) -> str:
    return f'echo "$LABQ_JOB_ID.$LABQ_RESTART_COUNT.$$" >> {markers}/$LABQ_JOB_ID'


def executions(markers: Path, job_id: int) -> list[str]:
    p = Path(markers) / str(job_id)
    return p.read_text().split() if p.exists() else []


# -- a node in its own network namespace --------------------------------------------------
class NetnsNode(SshNode):
    """An sshd node inside its own network namespace; `cut()` / `restore()` its link."""

    def __init__(self, base_dir: Path, name: str):
        tag = f"{os.getpid() % 10000:04d}{random.randrange(16 ** 3):03x}"
        self.ns = f"labqt{tag}"
        self.host_if, self.node_if = f"lqh{tag}", f"lqn{tag}"
        used = ip("-4", "route", "show").stdout
        for _ in range(200):
            octet = random.randrange(1, 250)
            self.subnet = f"10.231.{octet}.0/30"
            if f"10.231.{octet}." not in used:
                break
        self.host_addr, addr = f"10.231.{octet}.1", f"10.231.{octet}.2"
        node_dir = Path(base_dir) / name
        node_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(name, node_dir, 2222)
        self.host = addr
        self._setup_net()

    def _setup_net(self) -> None:
        ip("netns", "add", self.ns)
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        ip("link", "set", self.node_if, "netns", self.ns)
        ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("route", "add", "unreachable", self.subnet, "metric", "4000")
        ip("-n", self.ns, "addr", "add", f"{self.host}/30", "dev", self.node_if)
        ip("-n", self.ns, "link", "set", self.node_if, "up")
        ip("-n", self.ns, "link", "set", "lo", "up")

    def _spawn(self) -> None:
        # as SshNode._spawn, inside the namespace; `ip netns exec` execs sshd in place, so
        # proc.pid is sshd's own pid
        sshnodes.PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        env = dict(os.environ, **{sshnodes.NODE_ID_VAR: self.node_id})
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, SSHD, "-D", "-e", "-E", str(self.log_path),
                 "-f", str(self.config_path)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, env=env, start_new_session=True)
        with sshnodes._live_lock:
            sshnodes._live_nodes.add(self)

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_if, "up")
        # the connected route comes back with the link; wait until it is usable
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.host_addr in ip("-4", "addr", "show", "dev", self.host_if).stdout and \
                    "linkdown" not in ip("-4", "route", "show", "dev", self.host_if).stdout:
                return
            time.sleep(0.05)

    def destroy(self) -> None:
        try:
            self.kill_all()
        finally:
            ip("link", "del", self.host_if, check=False)
            ip("route", "del", "unreachable", self.subnet, "metric", "4000", check=False)
            ip("netns", "del", self.ns, check=False)


def start_netns_node(base_dir: Path, name: str) -> tuple[NetnsNode, Path, Path]:
    """Start a NetnsNode; return it, the user key and a known_hosts file for it."""
    base_dir = Path(base_dir)
    node = NetnsNode(base_dir, name)
    try:
        if not node.host_key.exists():
            _keygen(node.host_key, f"{name}-host")
        key = make_user_key(base_dir)
        node.authorized_keys.write_text("")
        node.authorize(key.with_name(key.name + ".pub"))
        node.start()
        kh = write_known_hosts(base_dir / f"known_hosts.{name}", [node])
    except BaseException:
        node.destroy()
        raise
    return node, key, kh
