"""Real OpenSSH ``sshd`` instances on loopback, for tests that need SSH nodes.

Each node is a separate ``/usr/sbin/sshd -D`` child process listening on
127.0.0.1 on its own free port, with its own throwaway host key, its own
authorized-keys file and its own log, all under ``base_dir/<name>/``.  The real
``~/.ssh`` and ``/etc/ssh`` are never read or written.

Typical use::

    from sshnodes import NodeSet, H100_CSV     # tests/ is on sys.path under pytest

    with NodeSet(tmp_path, 2, nvidia_smi_csv=[H100_CSV, None]) as ns:
        entries = ns.config_entries()          # dicts for labq's node config
        ns[0].kill_all()                       # simulate losing a node
        ns[0].restart()                        # ...and getting it back

Fake GPUs
---------
A node started with ``nvidia_smi_csv`` gets an executable ``nvidia-smi`` in
``base_dir/<name>/bin`` that prints that text (whatever its arguments), and that
directory is put first on ``PATH`` for every SSH session of *that node only*.

Two per-instance mechanisms in the node's ``sshd_config`` do this:

* ``SetEnv PATH=<bin>:<extra>:<standard dirs>``: sshd applies ``SetEnv`` after
  its own default ``PATH``, so it does replace it.  However the login shell
  (Debian's bash sources ``~/.bashrc`` for commands run over SSH) may prepend
  more directories afterwards; here root's ``~/.bashrc`` prepends pyenv and
  cargo directories.
* so, additionally, a one-line ``ForceCommand`` (see ``_force_command``): it
  runs in the user's shell after the rc files, prepends the node's directories
  to the resulting ``PATH`` and then runs the client's command with
  ``env SHLVL=1 $SHELL -c "$SSH_ORIGINAL_COMMAND"`` (bash reads ``~/.bashrc``
  for SSH commands only while ``SHLVL`` < 2, so the rc files are not read a
  second time), the sftp server for the sftp subsystem (an external
  ``sftp-server``, since ``internal-sftp`` cannot run under a ForceCommand), or,
  without a command, an interactive bash whose rc file sources ``~/.bashrc`` and
  then prepends the node's directories (a login shell would let
  ``/etc/profile`` reset PATH).  The final ``PATH`` is
  ``<bin>:<extra...>:<whatever the rc files produced>``, so tools the user's rc
  files provide (e.g. a pyenv ``python3``) stay reachable.  Exit status, stdout
  and stderr of the command are unchanged.

The fake ``nvidia-smi`` lives under ``base_dir``; a non-root user can run it only
if every parent directory of ``base_dir`` is traversable for them (pytest's
``tmp_path`` is not: ``/tmp/pytest-of-root`` is mode 0700).

Nodes without fake GPUs and without ``extra_path`` get no ForceCommand at all.

Node loss
---------
sshd forks one process per connection and each of those calls ``setsid()``, so
they are not in the listener's process group.  Every process of a node is
therefore tagged with the environment variable ``SSHNODES_NODE_ID`` (the
listener and its per-connection children inherit it from the listener's
environment; sessions get it from ``SetEnv``), and :meth:`SshNode.kill_all`
kills every process carrying the node's tag plus every descendant of the
listener.  That includes jobs that detached themselves (``setsid``/``nohup``)
from an SSH session, as long as they did not clear their environment.

Accounts
--------
Without PAM, sshd refuses accounts whose shadow password starts with ``!``
(``useradd`` creates them that way), so :func:`ensure_user` sets the password
field to ``*`` (no password, but not locked) so that key-based SSH logins as
that user work too.  The node's authorized keys (by default the run's user key)
apply to every account: besides ``AuthorizedKeysFile`` the config has an
``AuthorizedKeysCommand`` that cats the same file as root, because sshd reads
``AuthorizedKeysFile`` with the logging-in user's privileges and a non-root
user cannot read it inside a root-only temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "H100_CSV",
    "alive",
    "NVIDIA_SMI_QUERY",
    "NodeSet",
    "SshNode",
    "SSHD",
    "add_user_to_group",
    "ensure_group",
    "ensure_user",
    "free_port",
    "make_user_key",
    "run_as",
    "start_node",
    "write_known_hosts",
]

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
CAT = "/usr/bin/cat" if os.path.exists("/usr/bin/cat") else "/bin/cat"
PRIVSEP_DIR = Path("/run/sshd")
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_ID_VAR = "SSHNODES_NODE_ID"
USER_KEY_NAME = "user_ed25519"

#: The query the fake ``nvidia-smi`` is meant to answer (it prints its CSV for
#: any arguments).
NVIDIA_SMI_QUERY = (
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,uuid"
    " --format=csv,noheader,nounits"
)

#: Two idle H100 SXM GPUs, as ``nvidia-smi`` prints them for NVIDIA_SMI_QUERY
#: (fields separated by ", ", memory in MiB, utilization in %, no header).
H100_CSV = (
    "0, NVIDIA H100 80GB HBM3, 81559, 0, 0, GPU-1d2f6a3c-8b4e-4f71-9c0a-5e3b7d2a9f16\n"
    "1, NVIDIA H100 80GB HBM3, 81559, 0, 0, GPU-7e90c4b2-35d1-4a8f-b6e2-0c9f1a4d8b53\n"
)

_READY_TIMEOUT = 10.0
_live_nodes: set[SshNode] = set()
_live_lock = threading.Lock()


# --------------------------------------------------------------------------- keys


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def make_user_key(base_dir: Path) -> Path:
    """Return the private key path of the run's user key pair, creating it once.

    The key is ``base_dir/user_ed25519`` (OpenSSH format, no passphrase), its
    public half ``base_dir/user_ed25519.pub``.  Calling it again with the same
    ``base_dir`` returns the existing key.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    key = base_dir / USER_KEY_NAME
    if not (key.exists() and key.with_name(key.name + ".pub").exists()):
        for p in (key, key.with_name(key.name + ".pub")):
            p.unlink(missing_ok=True)
        _keygen(key, "labq-test-user")
    os.chmod(key, 0o600)
    return key


def write_known_hosts(path: Path, nodes: Iterable[SshNode]) -> Path:
    """Write a known_hosts file holding the host key lines of ``nodes``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(n.known_hosts_line + "\n" for n in nodes))
    return path


# ------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _q(value: object) -> str:
    """Quote a value for sshd_config when needed."""
    s = str(value)
    if '"' in s:
        raise ValueError(f"cannot put a double quote in sshd_config: {s!r}")
    return f'"{s}"' if any(c.isspace() for c in s) else s


# ------------------------------------------------------------------ process tools


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself contain spaces/parens
    return int(data[data.rindex(b")") + 2 :].split()[1])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        pp = _ppid(pid)
        if pp is not None:
            children.setdefault(pp, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _tagged(var: str, value: str) -> set[int]:
    needle = f"{var}={value}".encode()
    found = set()
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.add(pid)
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


# -------------------------------------------------------------------------- nodes


class SshNode:
    """One running (or stopped) sshd on 127.0.0.1.

    Attributes: ``name``, ``host`` ("127.0.0.1"), ``port``, ``proc`` (the
    ``subprocess.Popen`` of the listener, or None before the first start),
    ``dir`` (``base_dir/name``), ``log_path`` (sshd's log, LogLevel VERBOSE),
    ``config_path``, ``host_key`` / ``host_key_pub`` (paths),
    ``authorized_keys`` (path), ``bin_dir`` (the fake-GPU bin directory, or
    None), ``path`` (the PATH value set for sessions), ``node_id`` (value of
    ``SSHNODES_NODE_ID`` in all the node's processes).
    """

    host = "127.0.0.1"

    def __init__(self, name: str, node_dir: Path, port: int) -> None:
        self.name = name
        self.dir = node_dir
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.log_path = node_dir / "sshd.log"
        self.out_path = node_dir / "sshd.out"
        self.config_path = node_dir / "sshd_config"
        self.pid_file = node_dir / "sshd.pid"
        self.host_key = node_dir / "ssh_host_ed25519_key"
        self.host_key_pub = node_dir / "ssh_host_ed25519_key.pub"
        self.authorized_keys = node_dir / "authorized_keys"
        self.force_command: str | None = None
        self.bin_dir: Path | None = None
        self.path = STANDARD_PATH
        self.node_id = f"{name}-{uuid.uuid4().hex[:12]}"
        self._config_extra: list[str] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SshNode {self.name} {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------- properties

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` (no trailing newline)."""
        keytype, blob = self.host_key_pub.read_text().split()[:2]
        return f"[{self.host}]:{self.port} {keytype} {blob}"

    def log_text(self) -> str:
        parts = []
        for p in (self.log_path, self.out_path):
            try:
                parts.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(parts)

    def config_entry(
        self, identity_file: os.PathLike | str, known_hosts: os.PathLike | str, gpus=None
    ) -> dict:
        """The node's entry for labq's node configuration."""
        entry = {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "user": "root",
            "identity_file": str(identity_file),
            "known_hosts": str(known_hosts),
        }
        if gpus is not None:
            entry["gpus"] = gpus
        return entry

    def authorize(self, public_key: os.PathLike | str) -> None:
        """Append a public key (a .pub path or the key line) to the node's keys."""
        p = Path(public_key) if not str(public_key).startswith("ssh-") else None
        line = p.read_text().strip() if p is not None else str(public_key).strip()
        with open(self.authorized_keys, "a") as f:
            f.write(line + "\n")

    def set_nvidia_smi_csv(self, text: str) -> None:
        """Change what the fake ``nvidia-smi`` prints (takes effect at once)."""
        if self.bin_dir is None:
            raise RuntimeError(f"node {self.name} has no fake nvidia-smi")
        _write_atomic(self.bin_dir / "nvidia-smi.csv", text)

    # -------------------------------------------------------------- lifecycle

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {_q(self.host_key)}",
            f"PidFile {_q(self.pid_file)}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"AuthorizedKeysFile {_q(self.authorized_keys)}",
            # sshd reads AuthorizedKeysFile as the logging-in user, who cannot
            # read it inside a root-only temp dir; the command runs as root
            f"AuthorizedKeysCommand {_q(CAT)} {_q(self.authorized_keys)}",
            "AuthorizedKeysCommandUser root",
            "StrictModes no",
            "LogLevel VERBOSE",
            "MaxSessions 50",
            "MaxStartups 100",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "Subsystem sftp /usr/lib/openssh/sftp-server"
            if os.path.exists("/usr/lib/openssh/sftp-server")
            else "Subsystem sftp internal-sftp",
            f"SetEnv {_q('PATH=' + self.path)} {_q(NODE_ID_VAR + '=' + self.node_id)}",
        ]
        if self.force_command is not None:
            # sshd takes the rest of the line verbatim
            lines.append(f"ForceCommand {self.force_command}")
        if _sshd_version() >= (9, 8):
            # newer sshd penalises sources of failed connections, which a test
            # provoking failures on purpose would trip over
            lines.append("PerSourcePenalties no")
        # sshd keeps the first value it reads for a keyword, so extra lines go first
        lines = list(self._config_extra) + lines
        self.config_path.write_text("\n".join(lines) + "\n")

    def _spawn(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(PRIVSEP_DIR, 0o755)
        env = dict(os.environ)
        env[NODE_ID_VAR] = self.node_id
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-E", str(self.log_path), "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        with _live_lock:
            _live_nodes.add(self)

    def _wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd for node {self.name} exited with {self.proc.returncode} "
                    f"on port {self.port}:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(0.5)
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError as e:
                last_err = e
            time.sleep(0.02)
        self._kill_everything(signal.SIGKILL)
        raise RuntimeError(
            f"sshd for node {self.name} not accepting on port {self.port} after "
            f"{timeout:.0f}s ({last_err}):\n{self.log_text()}"
        )

    def start(self) -> SshNode:
        """Start sshd (same port, same host key); no-op when already running."""
        if self.running:
            return self
        self._write_config()
        self._spawn()
        self._wait_ready()
        return self

    def restart(self) -> SshNode:
        """Stop (if running) and start again on the same port with the same host key."""
        self.stop()
        return self.start()

    def _node_pids(self) -> set[int]:
        pids = _tagged(NODE_ID_VAR, self.node_id)
        if self.proc is not None and self.proc.poll() is None:
            pids |= {self.proc.pid} | _descendants(self.proc.pid)
        pids.discard(os.getpid())
        return pids

    def _kill_everything(self, sig: int, grace: float = 0.0) -> None:
        # freeze the listener first so it forks nothing new, then freeze what
        # exists and kill it all at once (killing parents first would reparent
        # children out of reach of the tree walk)
        if self.proc is not None and self.proc.poll() is None:
            _signal_all([self.proc.pid], signal.SIGSTOP)
        pids = self._node_pids()
        if sig == signal.SIGKILL:
            _signal_all(pids, signal.SIGSTOP)
            pids |= self._node_pids()
            _signal_all(pids, signal.SIGKILL)
        else:
            _signal_all(pids, sig)
            _signal_all(pids, signal.SIGCONT)
        deadline = time.monotonic() + max(grace, 0.0) + 5.0
        grace_end = time.monotonic() + grace
        while True:
            if self.proc is not None:
                self.proc.poll()  # reap the listener
            left = {p for p in pids | self._node_pids() if alive(p)}
            if not left:
                break
            now = time.monotonic()
            if now >= grace_end:
                _signal_all(left, signal.SIGKILL)
            if now >= deadline:
                break
            time.sleep(0.02)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        with _live_lock:
            _live_nodes.discard(self)

    def stop(self) -> None:
        """Terminate sshd and all its session processes and wait; idempotent.

        The listener and every session process get SIGTERM, then SIGKILL after
        a short grace period, so nothing of the node is left running.
        """
        if self.proc is None:
            return
        self._kill_everything(signal.SIGTERM, grace=2.0)

    def kill_all(self) -> None:
        """SIGKILL the listener, every per-connection sshd and every session
        process of this node (simulates sudden loss of the node)."""
        self._kill_everything(signal.SIGKILL)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_FAKE_NVIDIA_SMI = """#!/bin/sh
# fake nvidia-smi: prints the node's GPU table as
#   nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,uuid \\
#              --format=csv,noheader,nounits
# would, whatever the arguments are
exec cat {csv}
"""

def _force_command(prefix: str, rcfile: Path) -> str:
    """The node's ForceCommand: one line run by the user's shell after its rc
    files (inline rather than a script file, so that users who cannot read
    base_dir can log in too)."""
    p, rc = shlex.quote(prefix), shlex.quote(str(rcfile))
    return (
        f'PATH={p}:"$PATH"; export PATH; '
        # bash sources ~/.bashrc for commands run by sshd while SHLVL < 2 (and
        # "exec" lowers SHLVL by one); the rc files have already run, so the
        # command's bash must see level 2
        'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then '
        'exec env SHLVL=1 "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"; fi; '
        f'case "$SHELL" in */bash) if [ -r {rc} ]; then exec "$SHELL" --rcfile {rc} -i; fi;; esac; '
        'exec "${SHELL:-/bin/sh}" -i'
    )


_INTERACTIVE_RC = """# interactive sessions: the user's rc file, then the node's PATH
[ -f ~/.bashrc ] && . ~/.bashrc
PATH={prefix}:$PATH
export PATH
"""


def start_node(
    base_dir: Path,
    name: str,
    *,
    nvidia_smi_csv: str | None = None,
    extra_path: Sequence[str] = (),
    authorized_keys: Iterable[os.PathLike | str] | None = None,
    port: int | None = None,
    config_extra: Sequence[str] = (),
) -> SshNode:
    """Start a real sshd node ``name`` on 127.0.0.1 with files in ``base_dir/name``.

    ``nvidia_smi_csv``: give the node a fake ``nvidia-smi`` printing this text.
    ``extra_path``: directories put on the sessions' PATH right after the fake
    bin directory (before everything else).
    ``authorized_keys``: public keys (``.pub`` paths) allowed to log in; by
    default the run's user key from :func:`make_user_key` (created if needed).
    ``port``: fixed port (default: a free one).
    ``config_extra``: further sshd_config lines.
    Returns once the port answers with an SSH banner.
    """
    base_dir = Path(base_dir)
    node_dir = base_dir / name
    node_dir.mkdir(parents=True, exist_ok=True)
    node = SshNode(name, node_dir, port or free_port())
    node._config_extra = list(config_extra)

    if not node.host_key.exists():
        node.host_key_pub.unlink(missing_ok=True)
        _keygen(node.host_key, f"{name}-host")

    if authorized_keys is None:
        key = make_user_key(base_dir)
        authorized_keys = [key.with_name(key.name + ".pub")]
    node.authorized_keys.write_text("")
    for k in authorized_keys:
        node.authorize(k)

    prefix: list[str] = []
    if nvidia_smi_csv is not None:
        node.bin_dir = node_dir / "bin"
        node.bin_dir.mkdir(exist_ok=True)
        node.bin_dir.chmod(0o755)
        node.set_nvidia_smi_csv(nvidia_smi_csv)
        smi = node.bin_dir / "nvidia-smi"
        smi.write_text(
            _FAKE_NVIDIA_SMI.format(csv=shlex.quote(str(node.bin_dir / "nvidia-smi.csv")))
        )
        smi.chmod(0o755)
        prefix.append(str(node.bin_dir))
    prefix += [str(p) for p in extra_path]
    for p in prefix:
        if ":" in p:
            raise ValueError(f"PATH entry contains ':': {p!r}")
    if prefix:
        node.path = ":".join(prefix + [STANDARD_PATH])
        rcfile = node_dir / "session.bashrc"
        rcfile.write_text(_INTERACTIVE_RC.format(prefix=shlex.quote(":".join(prefix))))
        rcfile.chmod(0o644)
        node.force_command = _force_command(":".join(prefix), rcfile)

    attempts = 1 if port else 5
    for attempt in range(attempts):
        try:
            return node.start()
        except RuntimeError:
            # most likely someone else took the port between probing and bind
            node.stop()
            if attempt == attempts - 1 or "Bind to port" not in node.log_text():
                raise
            node.port = free_port()
    raise AssertionError("unreachable")


class NodeSet:
    """Context manager starting ``n`` nodes and stopping them all on exit.

    ``names`` default to ``node0 .. node{n-1}``.  ``nvidia_smi_csv`` is either
    one value for every node or a sequence with one value (or None) per node.
    On entry it creates the user key (``.user_key``), starts the nodes
    (``.nodes``; the set is also indexable and iterable) and writes
    ``base_dir/known_hosts`` (``.known_hosts``) with all their host keys.
    """

    def __init__(
        self,
        base_dir: Path,
        n: int = 2,
        *,
        names: Sequence[str] | None = None,
        nvidia_smi_csv: str | None | Sequence[str | None] = None,
        extra_path: Sequence[str] = (),
    ) -> None:
        self.base_dir = Path(base_dir)
        self.names = list(names) if names is not None else [f"node{i}" for i in range(n)]
        if isinstance(nvidia_smi_csv, (list, tuple)):
            if len(nvidia_smi_csv) != len(self.names):
                raise ValueError("one nvidia_smi_csv entry per node expected")
            self._csvs = list(nvidia_smi_csv)
        else:
            self._csvs = [nvidia_smi_csv] * len(self.names)
        self.extra_path = list(extra_path)
        self.nodes: list[SshNode] = []
        self.user_key: Path | None = None
        self.known_hosts: Path = self.base_dir / "known_hosts"

    def __enter__(self) -> NodeSet:
        try:
            self.user_key = make_user_key(self.base_dir)
            for name, csv in zip(self.names, self._csvs):
                self.nodes.append(
                    start_node(
                        self.base_dir, name, nvidia_smi_csv=csv, extra_path=self.extra_path
                    )
                )
            write_known_hosts(self.known_hosts, self.nodes)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                node.kill_all()

    def __iter__(self) -> Iterator[SshNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, key: int | str) -> SshNode:
        if isinstance(key, str):
            for node in self.nodes:
                if node.name == key:
                    return node
            raise KeyError(key)
        return self.nodes[key]

    def config_entries(self, gpus: dict[str, object] | None = None,
                       job_roots: Path | None = None) -> list[dict]:
        """``config_entry`` of every node; ``gpus`` maps node name -> gpus value. With
        ``job_roots``, each node keeps its jobs in its own ``jobs-NAME`` there, so that two
        nodes on one machine do not share a job directory."""
        gpus = gpus or {}
        entries = [
            n.config_entry(self.user_key, self.known_hosts, gpus.get(n.name)) for n in self.nodes
        ]
        if job_roots is not None:
            for e in entries:
                e["job_root"] = str(job_roots / f"jobs-{e['name']}")
        return entries


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        nodes = list(_live_nodes)
    for node in nodes:
        try:
            node.kill_all()
        except Exception:
            pass


# ------------------------------------------------------------------------ accounts


def _run_quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def ensure_group(name: str) -> int:
    """Create group ``name`` if missing; return its gid."""
    with _accounts_lock():
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        r = _run_quiet(["groupadd", name])
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise RuntimeError(f"groupadd {name} failed: {r.stderr.strip()}") from None


def ensure_user(name: str = "labqtest") -> tuple[int, int]:
    """Create user ``name`` (with a home directory) if missing; return (uid, gid).

    The account is left without a password but not locked (shadow field
    ``*``), so that key-based SSH logins to a node work for it.
    """
    with _accounts_lock():
        return _ensure_user(name)


@contextlib.contextmanager
def _accounts_lock():
    """useradd and usermod refuse to run while another holds /etc/passwd: test workers that
    run side by side take turns."""
    with open("/var/tmp/labq-test-accounts.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _ensure_user(name: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        r = _run_quiet(["useradd", "-m", "-s", "/bin/bash", name])
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(f"useradd {name} failed: {r.stderr.strip()}") from None
    shadow = _run_quiet(["getent", "shadow", name]).stdout.split(":")
    locked = len(shadow) < 2 or shadow[1].startswith("!")
    if locked:
        _run_quiet(["usermod", "-p", "*", name])
    return pw.pw_uid, pw.pw_gid


def add_user_to_group(user: str, group: str) -> None:
    """Add ``user`` to supplementary ``group`` (idempotent)."""
    with _accounts_lock():
        if user in grp.getgrnam(group).gr_mem:
            return
        r = _run_quiet(["usermod", "-aG", group, user])
    if r.returncode != 0:
        raise RuntimeError(f"usermod -aG {group} {user} failed: {r.stderr.strip()}")


def run_as(user: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` (uid, primary gid and supplementary groups).

    Uses ``setpriv --reuid --regid --init-groups``.  Keyword arguments go to
    ``subprocess.run``; by default output is captured as text
    (``capture_output=True, text=True``) and, when no ``env`` is given, the
    current environment is used with HOME, USER and LOGNAME set to the user's.
    The working directory is the caller's unless ``cwd`` is given, so it must
    be accessible to ``user``.
    """
    pw = pwd.getpwnam(user)
    if "env" not in kwargs or kwargs["env"] is None:
        env = dict(os.environ)
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        kwargs["env"] = env
    if not any(k in kwargs for k in ("stdout", "stderr", "capture_output")):
        kwargs["capture_output"] = True
    if not any(k in kwargs for k in ("text", "universal_newlines", "encoding", "errors")):
        kwargs["text"] = True
    cmd = [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "--",
        *[str(a) for a in argv],
    ]
    return subprocess.run(cmd, **kwargs)
