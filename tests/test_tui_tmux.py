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


class Terminal:
    """`labq tui` in a tmux pane: keys go in as a user types them, the pane's text comes out."""

    def __init__(self, socket, size: tuple[int, int]):
        self.tmux = ["tmux", "-L", f"labq-test3-{os.getpid()}"]
        self.session = "labq-tui-keys"
        command = (f"env -u COLUMNS -u LINES LABQ_SOCKET={shlex.quote(str(socket))} "
                   f"{shutil.which('labq')} tui")
        subprocess.run(self.tmux + ["new-session", "-d", "-s", self.session,
                                    "-x", str(size[0]), "-y", str(size[1]), command], check=True)

    def screen(self) -> str:
        return subprocess.run(self.tmux + ["capture-pane", "-p", "-t", self.session],
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", self.session, *keys], check=True)
        time.sleep(0.3)  # let the UI take each batch of keys before the next

    def type(self, text: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", self.session, "-l", text], check=True)

    def wait(self, text: str, present: bool = True, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if (text in shown) == present:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} {'never appeared' if present else 'stayed'};"
                                     f" the terminal shows:\n{shown}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_marks_search_full_log_and_a_labqd_restart_in_tmux(tmp_path, size):
    d = Daemon(tmp_path / "d", CONFIG)
    d.start(wait_nodes=1)
    with d.client() as q:
        held = [q.submit(["true"], name=f"mark-{c}", hold=True, cwd=str(tmp_path)).id
                for c in "abc"]
        printer = q.submit("seq 1 300 | sed 's/^/line /'; echo the-needle; echo last-line",
                           name="printer", cwd=str(tmp_path))
        q.wait(printer.id, timeout=30)
    term = Terminal(d.socket, size)
    try:
        term.wait("mark-c")
        # the cursor starts on the first active job: mark two, cancel both with one answer
        term.keys("Space")
        term.keys("Space")
        term.keys("c")
        term.wait("Cancel 2 jobs")
        term.keys("y")
        term.wait("mark-a", present=False)
        with d.client() as q:
            assert [q.job(i).state.value for i in held] == ["CANCELLED", "CANCELLED", "HELD"]

        term.keys(":")
        term.type(f"job {printer.id}")
        term.keys("Enter")
        term.wait("last-line")
        assert "priority" in term.screen()  # the spec shows above the log
        term.keys("/")
        term.type("the-needle")
        term.keys("Enter")
        term.wait("match 1/1")
        term.keys("Escape")  # clears the matches, and stays in the job view
        term.wait("match 1/1", present=False)
        term.keys("n")  # a next match, not the new-job form
        shown = term.screen()
        assert "Submit a" not in shown and "last-line" in shown and "priority" in shown
        term.keys("f")  # the log alone, over the whole terminal
        term.wait("priority", present=False)
        assert "last-line" in term.screen()
        term.keys("f")
        term.wait("priority")
        term.keys("q")  # closes the job view, not the app
        term.wait("mark-c")

        d.stop()
        term.wait("disconnected from labqd")
        d.start(wait_nodes=1)
        with d.client() as q:
            q.submit(["true"], name="restarted", hold=True, cwd=str(tmp_path))
        term.wait("restarted")
        term.wait("disconnected from labqd", present=False)
    finally:
        term.close()
        d.close()
