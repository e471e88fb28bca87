"""The README's first command, run word for word by a new user of a stock Debian or Ubuntu.

The command comes from the README itself, so the test and the instructions cannot drift apart.
It runs as a fresh non-root account, with a login's environment and the distribution's
python3 (no pyenv, no XDG_RUNTIME_DIR, no LABQ_* or PIP_* variables), in a copy of the
repository's tracked files that the account owns. pip fetches the dependencies from PyPI.
Then that user submits a job with the `labq` the command put in ~/.local/bin and reads its
output back, while /run/labq is there and closed to them, as a system labqd leaves it.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sshnodes import ensure_user

ROOT = Path(__file__).resolve().parent.parent
USER = "labqnew"
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"
INSTALL_TIMEOUT_S = 600


def quickstart_command() -> str:
    """The first ```sh block of the README's "Quick start" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert block, "the Quick start section has no ```sh block"
    return block.group(1).strip()


def _login_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash",
            "PATH": LOGIN_PATH, "LANG": "C.UTF-8"}


def _as_user(argv: list[str]) -> list[str]:
    pw = pwd.getpwnam(USER)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
            *argv]


def _ensure_venv_module() -> None:
    """A newcomer's Debian may lack python3-venv; the README tells them to install it, and
    so does this test (as root) when the machine has not got it."""
    python = shutil.which("python3", path=LOGIN_PATH)
    if python is None:
        pytest.fail(f"no python3 on {LOGIN_PATH}: install the distribution's python3")
    with tempfile.TemporaryDirectory() as probe:
        def works() -> bool:
            return subprocess.run([python, "-m", "venv", f"{probe}/venv"], capture_output=True,
                                  env={"PATH": LOGIN_PATH}, timeout=300).returncode == 0
        if works():
            return
        if shutil.which("apt-get"):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "python3-venv"], env=env, capture_output=True, timeout=600)
        shutil.rmtree(f"{probe}/venv", ignore_errors=True)
        if not works():
            pytest.fail(f"{python} -m venv does not work, and installing python3-venv did "
                        "not help")


def _copy_tracked_files(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


@pytest.fixture
def system_socket_dir_closed_to_others():
    """/run/labq as a system labqd leaves it (0750, its own group): a user's `labq` must
    pass it by for their own daemon, not stop on it."""
    run_dir = Path("/run/labq")
    made = not run_dir.exists()
    if made:
        run_dir.mkdir(mode=0o750)
    try:
        yield
    finally:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)


def _user_pids(uid: int) -> dict[int, str]:
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                pids[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return pids


def _stop_everything_of(uid: int, proc: subprocess.Popen) -> None:
    """SIGTERM labqd, as a user stopping it would, then end whatever else the account runs
    (pip, a shell, a job's shepherd): nothing of the test user outlives the test."""
    for pid, cmd in _user_pids(uid).items():
        if "labqd" in cmd:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(50):
        pids = _user_pids(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_the_quick_start_works_for_a_new_user(system_socket_dir_closed_to_others):
    command = quickstart_command()
    _ensure_venv_module()
    uid, gid = ensure_user(USER)
    if _user_pids(uid):
        pytest.fail(f"{USER} already runs processes: {_user_pids(uid)}")

    base = Path(tempfile.mkdtemp(prefix="labq-quickstart-"))
    os.chmod(base, 0o755)
    home, src = base / "home", base / "labq"  # a fresh HOME: no ~/.local from an earlier run
    home.mkdir()
    # a new account's files, as useradd -m copies them: its ~/.profile adds ~/.local/bin
    shutil.copytree("/etc/skel", home, dirs_exist_ok=True)
    src.mkdir()
    _copy_tracked_files(src)
    _chown_tree(home, uid, gid)
    _chown_tree(src, uid, gid)
    env = _login_env(home)
    labq = home / ".local" / "bin" / "labq"
    out_path = base / "quickstart.out"

    def as_user(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(_as_user(list(argv)), cwd=src, env=env,
                              capture_output=True, text=True, timeout=timeout)

    with open(out_path, "wb") as out:
        proc = subprocess.Popen(_as_user(["bash", "-c", command]), cwd=src, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the quick start command exited {proc.returncode}:\n{command}\n"
                            + out_path.read_text(errors="replace")[-6000:])
            if labq.exists() and as_user(str(labq), "whoami").returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from labqd after {INSTALL_TIMEOUT_S} s:\n"
                            + out_path.read_text(errors="replace")[-6000:])
            time.sleep(1)

        who = as_user(str(labq), "whoami")
        assert who.stdout.startswith(f"{USER} "), who.stdout
        # a new login shell finds `labq` on its PATH, as the README says
        login = as_user("bash", "-lc", "command -v labq && labq whoami")
        assert login.stdout.splitlines()[:1] == [str(labq)], (login.stdout, login.stderr)
        sub = as_user(str(labq), "submit", "--", "echo", "hello-quickstart")
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        assert job_id.isdigit(), sub.stdout
        waited = as_user(str(labq), "wait", job_id, "--timeout", "120", timeout=180)
        assert waited.returncode == 0, (waited.stdout, waited.stderr)
        assert f"{job_id} COMPLETED exit=0" in waited.stdout
        logs = as_user(str(labq), "logs", job_id)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout == "hello-quickstart\n"
    finally:
        _stop_everything_of(uid, proc)
        shutil.rmtree(base, ignore_errors=True)
    assert not _user_pids(uid)
