"""The real `labq` command run as other Unix users.

The test run's own Python may live where other users cannot reach it (pyenv under a 0700
/root), so the CLI they run comes from a virtual environment of the system's python3,
installed once per source tree in a world-readable directory."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from sshnodes import ensure_user, run_as

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def _tree_hash() -> str:
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "shared", "daemon", "tui"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    h = hashlib.sha256()
    for f in sorted(files):
        p = REPO / f
        if p.is_file():
            h.update(f.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def cli_venv() -> Path:
    """A venv with this tree's labq installed, readable and runnable by every user."""
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
    venv = Path(f"/var/tmp/labq-test-cli-{_tree_hash()}")
    if (venv / "ok").exists():
        return venv
    # two test runs of the same tree (two checkouts) build it once, one after the other
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ok").exists():
            _build_venv(python, venv)
    return venv


def _build_venv(python: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    build = Path(f"{venv}.build")
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    shutil.copytree(REPO, build, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info",
                                                               "__pycache__", "build"))
    env = dict(os.environ)
    env.pop("PIP_BREAK_SYSTEM_PACKAGES", None)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(build)], env=env,
                       capture_output=True, text=True)
    shutil.rmtree(build, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n{r.stdout}\n{r.stderr}")
    for d, _dirs, files in os.walk(venv):
        os.chmod(d, 0o755)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    (venv / "ok").write_text("")


class User:
    """A Unix user of the lab, who runs the real `labq` against a given socket."""

    def __init__(self, name: str, venv: Path, socket: Path | None = None,
                 extra_env: dict | None = None):
        self.name = name
        self.extra_env = dict(extra_env or {})
        self.uid, self.gid = ensure_user(name)
        self.home = Path(pwd.getpwnam(name).pw_dir)
        self.venv = venv
        self.socket = socket

    def env(self, **extra: str) -> dict:
        env = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
               "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.socket is not None:
            env["LABQ_SOCKET"] = str(self.socket)
        env.update(self.extra_env)
        env.update(extra)
        return env

    def labq(self, *args: str, cwd: str | None = None, timeout: float = 60,
             env: dict | None = None) -> subprocess.CompletedProcess:
        return run_as(self.name, [str(self.venv / "bin" / "labq"), *args],
                      env=env or self.env(), cwd=cwd or str(self.home), timeout=timeout)

    def popen(self, *args: str, cwd: str | None = None) -> subprocess.Popen:
        """The real `labq` as this user, left running: its pid is labq's own (setpriv execs
        it), so a signal sent to it reaches labq as a Ctrl-C in a terminal would."""
        pw = pwd.getpwnam(self.name)
        return subprocess.Popen(
            ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
             str(self.venv / "bin" / "labq"), *args], env=self.env(), cwd=cwd or str(self.home),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ok(self, *args: str, **kw) -> str:
        r = self.labq(*args, **kw)
        if r.returncode != 0:
            raise AssertionError(f"{self.name}: labq {' '.join(args)} -> {r.returncode}\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r.stdout


def submit(u: User, *args: str) -> str:
    """`labq submit` as the user from /tmp; the id of the job it queued."""
    return u.ok("submit", "--chdir", "/tmp", *args).strip().splitlines()[-1]


def show(u: User, jid: str) -> dict:
    """`labq show --json` as the user."""
    return json.loads(u.ok("show", "--json", jid))


def user_on(name: str, venv: Path, daemon) -> User:
    """The lab member `name`, whose `labq` talks to `daemon`."""
    return User(name, venv, daemon.socket, {})


def requeues(u: User, jid: str) -> list[dict]:
    """The times a job went from RUNNING back to PENDING, as `labq events` shows them."""
    return [e for e in json.loads(u.ok("events", "--json", jid))
            if e["from_state"] == "RUNNING" and e["to_state"] == "PENDING"]
