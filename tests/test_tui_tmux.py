"""The installed `labq tui` in a real terminal (tmux), against a real labqd."""
import os
import shlex
import shutil
import subprocess
import time

import pytest
from daemonproc import Daemon

CONFIG = {"daemon": {"local_node": False, "heartbeat": "1s"},
          "node": [{"name": "gpu1", "local": True, "cpus": 8, "memory": "16G",
                    "gpus": [{"type": "A100", "memory_mb": 81920}]}]}


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "d", CONFIG)
    d.start(wait_nodes=1)
    try:
        yield d
    finally:
        d.close()


def test_labq_tui_in_tmux_shows_the_queue_and_quits_on_q(daemon, tmp_path):
    with daemon.client() as q:
        job = q.submit(["sleep", "60"], name="tmux-visible-job", hold=True, cwd=str(tmp_path))
    tmux = ["tmux", "-L", f"labq-test-{os.getpid()}"]
    session = "labq-tui"
    # the terminal, not a COLUMNS/LINES inherited from the test process, sets the size
    command = (f"env -u COLUMNS -u LINES LABQ_SOCKET={shlex.quote(str(daemon.socket))} "
               f"{shutil.which('labq')} tui")

    def screen() -> str:
        return subprocess.run(tmux + ["capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    def wait_screen(text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = screen()
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{shown}")
            time.sleep(0.1)

    subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "160", "-y", "48",
                           command], check=True)
    try:
        shown = wait_screen("tmux-visible-job")
        row = next(line for line in shown.splitlines() if "tmux-visible-job" in line)
        assert row.split()[:2] == [str(job.id), "tmux-visible-job"] and "HELD" in row
        assert "q Quit" in wait_screen("? Help")  # the footer lists the keys

        subprocess.run(tmux + ["send-keys", "-t", session, "2"], check=True)
        wait_screen("GPU0 A100")
        subprocess.run(tmux + ["send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 10
        while subprocess.run(tmux + ["has-session", "-t", session],
                             capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "labq tui did not exit on q:\n" + screen()
            time.sleep(0.1)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)


def test_labq_tui_starts_while_labqd_is_down_and_connects_when_it_comes(tmp_path):
    d = Daemon(tmp_path / "d", CONFIG)
    tmux = ["tmux", "-L", f"labq-test2-{os.getpid()}"]
    session = "labq-tui-down"
    command = (f"env -u COLUMNS -u LINES LABQ_SOCKET={shlex.quote(str(d.socket))} "
               f"{shutil.which('labq')} tui")

    def wait_screen(text: str, present: bool = True, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = subprocess.run(tmux + ["capture-pane", "-p", "-t", session],
                                   capture_output=True, text=True).stdout
            if (text in shown) == present:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} {'never appeared' if present else 'stayed'}:"
                                     f"\n{shown}")
            time.sleep(0.1)

    subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "160", "-y", "48",
                           command], check=True)
    try:
        wait_screen("disconnected from labqd")
        d.start(wait_nodes=1)
        with d.client() as q:
            q.submit(["true"], name="arrived-later", hold=True, cwd=str(tmp_path))
        wait_screen("arrived-later")
        wait_screen("disconnected from labqd", present=False)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        d.close()
