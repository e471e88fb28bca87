"""An idle `labq tui` in a real terminal (tmux) with 1,000 jobs in the queue: the CPU it uses
while nobody touches it. Prints the figure beside its goal (under 2%); asserts nothing.

    python3 tests/bench/bench_tui_idle.py [--jobs N] [--seconds S]
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402

CONFIG = {"daemon": {"local_node": False, "heartbeat": "1s"},
          "node": [{"name": "gpu1", "local": True, "cpus": 8, "memory": "16G",
                    "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}]}


def cpu_seconds(pid: int) -> float:
    """User and system time of a process and its children that have been waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(Path(tmp) / "d", CONFIG)
        d.start(wait_nodes=1)
        tmux = ["tmux", "-L", f"labq-bench-{os.getpid()}"]
        try:
            with d.client() as q:
                q.submit_many([{"command": ["sleep", "60"], "name": f"idle-{i}", "hold": True,
                                "cwd": "/tmp"} for i in range(a.jobs)])
            command = (f"env -u COLUMNS -u LINES LABQ_SOCKET={shlex.quote(str(d.socket))} "
                       f"{shutil.which('labq')} tui")
            subprocess.run(tmux + ["new-session", "-d", "-s", "b", "-x", "160", "-y", "48",
                                   command], check=True)
            pid = int(subprocess.run(tmux + ["list-panes", "-t", "b", "-F", "#{pane_pid}"],
                                     capture_output=True, text=True).stdout.split()[0])
            time.sleep(8)  # the first polls and the first full render
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(a.seconds)
            c1, t1 = cpu_seconds(pid), time.monotonic()
            print(f"idle labq tui, {a.jobs} jobs, {a.seconds:.0f} s: "
                  f"{100 * (c1 - c0) / (t1 - t0):.2f}% of one CPU (goal: under 2%)")
        finally:
            subprocess.run(tmux + ["kill-server"], capture_output=True)
            d.close()


if __name__ == "__main__":
    main()
