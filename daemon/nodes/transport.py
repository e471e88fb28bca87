"""How a link reaches its node's agent: a local pipe, the systemd socket, or an SSH channel.

The agent's source travels on stdin before the first request: nothing is installed on a node,
and the agent always matches the daemon's version. It is a package, so it travels as a bundle
of its modules' sources that a small loader on the node imports from memory.
"""
from __future__ import annotations

import io
import json
import logging
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

from . import ssh

log = logging.getLogger("labqd.nodes")

AGENT_DIR = Path(__file__).resolve().parent / "agent"
# stage one, on the command line: read a length-prefixed program and run it
BOOTSTRAP = ("import sys;n=int(sys.stdin.buffer.readline());"
             "src=sys.stdin.buffer.read(n).decode();"
             "exec(compile(src,'labq-agent','exec'))")
# stage two, the program: the agent's modules, importable under the name labq_agent
LOADER = """
import importlib.abc, importlib.util, sys
class _Bundle(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in SOURCES:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name == "labq_agent")
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        name = module.__name__
        exec(compile(SOURCES[name], "labq-agent/" + name, "exec"), module.__dict__)
sys.meta_path.insert(0, _Bundle())
from labq_agent.main import main
main()
"""


def agent_program() -> bytes:
    """The agent as one self-contained python3 program (also runnable from a file)."""
    sources = {}
    for f in sorted(AGENT_DIR.glob("*.py")):
        if f.name == "__main__.py":
            continue
        name = "labq_agent" if f.name == "__init__.py" else "labq_agent." + f.stem
        sources[name] = f.read_text()
    return (f"SOURCES = {sources!r}\n" + LOADER).encode()


_program = agent_program()
AGENT_BUNDLE = b"%d\n" % len(_program) + _program


def local_agent_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-u", "-c", BOOTSTRAP, *args]


def agent_command(python: str, args: list[str]) -> str:
    """The remote shell command that starts the agent with the node's own python3."""
    py = " ".join(shlex.quote(p) for p in shlex.split(python))
    return f"exec {py} -u -c {shlex.quote(BOOTSTRAP)} " + " ".join(shlex.quote(a) for a in args)


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def readline(self) -> bytes: ...

    def close(self) -> None: ...

    def kill(self) -> None: ...


class AgentRefused(Exception):
    """The agent would not start on this node as set up: an admin has to look."""


class PipeTransport:
    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            log.warning("agent: %s", line.decode(errors="replace").rstrip())

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self) -> bytes:
        return self.proc.stdout.readline()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def kill(self) -> None:
        self.proc.kill()


class SocketTransport:
    """The head node's root agent, started by systemd per connection on a socket that only
    labqd's account may open (systemd/labq-agent.socket): labqd itself stays unprivileged."""

    def __init__(self, path: Path, args: dict):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(10)
            self.sock.connect(str(path))
            self.sock.settimeout(None)
        except OSError as e:
            self.sock.close()
            raise ssh.SshFailed(f"cannot reach the node agent's socket {path}: "
                                f"{e.strerror or e}") from None
        self.rfile = self.sock.makefile("rb")
        # what the systemd unit cannot know: which cluster and node this agent serves
        self.write((json.dumps(args) + "\n").encode())

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        return self.rfile.readline()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    kill = close


class _ChannelReader(io.RawIOBase):
    """A channel as a raw stream, so that io.BufferedReader finds line ends: paramiko's own
    file object does it slowly for the long lines that carry file chunks."""

    def __init__(self, chan):
        self.chan = chan

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.chan.recv(len(b))
        b[:len(data)] = data
        return len(data)


class SshTransport:
    def __init__(self, client, command: str):
        self.client = client
        # a wider window than paramiko's 2 MiB: file chunks keep several MiB in flight
        self.chan = client.get_transport().open_session(window_size=16 << 20)
        self.chan.exec_command(command)
        self.rfile = io.BufferedReader(_ChannelReader(self.chan), 1 << 20)
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self):
        for line in self.chan.makefile_stderr("rb"):
            log.warning("agent: %s", line.decode(errors="replace").rstrip())

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def readline(self) -> bytes:
        return self.rfile.readline()

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
            self.chan.close()
        finally:
            self.client.close()

    kill = close
