"""A real labqd process on a temp socket and database, for tests."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import labq
from labq.errors import DaemonUnavailable


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(cfg: dict) -> str:
    """Enough TOML for labq configs: tables of scalars, [[node]] arrays of tables."""
    lines = []
    for section, body in cfg.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
                lines.append("")
        else:
            lines.append(f"[{section}]")
            for k, v in body.items():
                if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()) and v:
                    continue
                lines.append(f'"{k}" = {_toml_value(v)}')
            lines.append("")
            for k, v in body.items():
                if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()) and v:
                    lines.append(f'[{section}."{k}"]')
                    lines += [f'"{kk}" = {_toml_value(x)}' for kk, x in v.items()]
                    lines.append("")
    return "\n".join(lines) + "\n"


class Daemon:
    """labqd with a config written from a dict. The socket lives in a world-traversable dir
    so that a second Unix user can reach it."""

    def __init__(self, workdir: Path, config: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockdir = Path(tempfile.mkdtemp(prefix="labq-sock-"))
        os.chmod(self.sockdir, 0o755)
        self.socket = self.sockdir / "labq.sock"
        self.config = dict(config or {})
        daemon = dict(self.config.get("daemon", {}))
        daemon.setdefault("socket", str(self.socket))
        daemon.setdefault("database", str(self.workdir / "state" / "labq.db"))
        daemon.setdefault("log_level", "debug")
        self.config["daemon"] = daemon
        self.config_path = self.workdir / "labq.toml"
        self.log_path = self.workdir / "labqd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def database(self) -> Path:
        return Path(self.config["daemon"]["database"])

    def env(self) -> dict:
        env = dict(os.environ)
        env["LABQ_SOCKET"] = str(self.socket)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def start(self, wait_nodes: int = 0, timeout: float = 30.0) -> Daemon:
        self.config_path.write_text(to_toml(self.config))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([shutil.which("labqd"), "--config", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"labqd exited {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client() as q:
                    q.ping()
                    if sum(n.state == "up" for n in q.nodes()) >= wait_nodes:
                        return self
            except DaemonUnavailable:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"labqd did not come up:\n{self.log()}")
            time.sleep(0.05)

    def client(self) -> labq.Client:
        return labq.connect(self.socket)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def cancel_all(self) -> None:
        """End the jobs still running or waiting: jobs outlive labqd by design, so a test
        whose jobs run on this machine would otherwise leave them behind."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with self.client() as q:
            ids = [j.id for j in q.jobs(states=["PENDING", "HELD", "RUNNING"])]
            if ids:
                q.cancel(*ids)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_daemon(workdir: Path, sections: dict | None = None, **daemon_opts) -> Daemon:
    """The multi-user tests' labqd: run by root, with its own machine as the node, its socket
    open to every test user."""
    daemon = {"local_node": True, "socket_mode": "0666", "kill_grace": "1s", **daemon_opts}
    return Daemon(workdir, {"daemon": daemon, **(sections or {})})


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def as_user(uid: int, gid: int, fn):
    """Run fn() in a forked child whose uid/gid are those of another user; return its JSON-able
    result. Modules are already imported in the parent, so nothing under root-only paths has
    to be read after the switch."""
    import json
    import traceback
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = {"ok": fn()}
        except BaseException:
            out = {"error": traceback.format_exc()}
        os.write(w, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    if "error" in out:
        raise AssertionError("child failed:\n" + out["error"])
    return out["ok"]


def raw_connect(path, service=None, config=None, sock=None):
    """An rpyc connection without the client library, as a script could make one. Frames go
    uncompressed: labqd refuses compressed ones (rpyc's default above 3,000 bytes)."""
    import socket as socketmod

    import rpyc
    from rpyc.core.channel import Channel
    from rpyc.core.stream import SocketStream
    from rpyc.utils.factory import connect_channel
    if sock is None:
        sock = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        sock.connect(str(path))
    return connect_channel(Channel(SocketStream(sock), compress=False),
                           service=service or rpyc.VoidService, config=config or {})
