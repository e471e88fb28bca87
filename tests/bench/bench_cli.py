"""CLI start-up: the time one `labq` process takes, against a real labqd with the local node.
Prints figures beside their goals; asserts nothing.

    python3 tests/bench/bench_cli.py [--runs N]

The commands come from the venv the multi-user tests install (the system's python3 and a
plain `pip install`), which is how users run labq; `python -c pass` from the same venv is the
floor any Python command pays.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402
from userkit import cli_venv  # noqa: E402


def times_ms(argv: list[str], env: dict, runs: int) -> tuple[float, float, int]:
    out = []
    rc = 0
    for _ in range(runs):
        t = time.perf_counter()
        rc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL).returncode
        out.append((time.perf_counter() - t) * 1000)
    return min(out), max(out), rc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    venv = cli_venv()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-cli-"))
    d = Daemon(base / "daemon", {"daemon": {"local_node": True, "log_level": "warning"}})
    d.start(wait_nodes=1)
    try:
        env = dict(os.environ, LABQ_SOCKET=str(d.socket))
        labq = str(venv / "bin" / "labq")
        rows = [
            ("python -c pass", [str(venv / "bin" / "python"), "-c", "pass"], None),
            ("labq submit --hold -- true", [labq, "submit", "--hold", "--", "true"], 40),
            ("labq run -- true", [labq, "run", "--", "true"], 60),
        ]
        print(f"{'per process':34s} {'min-max over ' + str(args.runs):>22s}   goal")
        for name, argv, goal in rows:
            lo, hi, rc = times_ms(argv, env, args.runs)
            goal_text = f"<= {goal} ms" if goal else "-"
            print(f"{name:34s} {lo:9.1f} - {hi:7.1f} ms   {goal_text}"
                  + (f"   (exit {rc})" if rc else ""))
        with d.client() as q:
            ids = [j.id for j in q.jobs(states=["HELD"])]
            q.cancel(*ids)
    finally:
        d.close()


if __name__ == "__main__":
    main()
