"""Workflow benchmark: a real labqd with loopback SSH nodes. Prints figures; asserts nothing.

    python3 tests/bench/bench_workflows.py [--jobs N] [--tasks N] [--nodes N]

- submit_many of N held jobs, and its ratio to N sequential submits in the same run;
- `labq submit --array 0-(N-1)`: from the command to every task PENDING;
- an array of `true` on loopback SSH nodes: tasks finished per second.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402
from sshnodes import NodeSet  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=1_000)
    ap.add_argument("--nodes", type=int, default=4)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-wf-"))
    names = [f"n{i}" for i in range(args.nodes)]
    with NodeSet(base / "nodes", names=names) as ns:
        entries = ns.config_entries({n: [] for n in names})
        for e in entries:
            e["job_root"] = str(base / "jobs" / e["name"])
        d = Daemon(base / "daemon", {"daemon": {"log_level": "warning"},
                                     "limits": {"user_max_pending": 100_000},
                                     "node": entries})
        d.start(wait_nodes=args.nodes)
        try:
            with d.client() as q:
                batches(q, args.jobs, base)
                array_cli(q, d, args.jobs, base)
                throughput(q, args.tasks, args.nodes, base)
        finally:
            d.close()
            shutil.rmtree(base, ignore_errors=True)


def _cancel(q, jobs):
    ids = [j.id for j in jobs]
    for i in range(0, len(ids), 10_000):
        q.cancel(*ids[i:i + 10_000])


def batches(q, n, base):
    rows = [{"command": ["true"], "hold": True} for _ in range(n)]
    t0 = time.perf_counter()
    jobs = q.submit_many(rows, export_env=False)
    many = time.perf_counter() - t0
    _cancel(q, jobs)
    t0 = time.perf_counter()
    seq = [q.submit(["true"], hold=True, export_env=False, cwd=str(base)) for _ in range(n)]
    one_by_one = time.perf_counter() - t0
    _cancel(q, seq)
    print(f"submit_many of {n} held jobs:  {many:.3f} s ({n / many:,.0f} jobs/s); "
          f"{n} sequential submits: {one_by_one:.2f} s; ratio {one_by_one / many:.1f}x")


def array_cli(q, d, n, base):
    # tasks that ask for a GPU type no node has stay PENDING, so the figure is the queueing
    t0 = time.perf_counter()
    r = subprocess.run([shutil.which("labq"), "submit", "--array", f"0-{n - 1}", "--gpus", "1",
                        "--gpu-type", "none", "--no-export", "--", "true"], env=d.env(),
                       capture_output=True, text=True, cwd=str(base))
    dt = time.perf_counter() - t0
    ids = list(map(int, r.stdout.split()))
    pending = sum(j.state.value == "PENDING" for j in q.jobs(states=["PENDING"]))
    print(f"labq submit --array 0-{n - 1}: {dt:.2f} s from the command to {pending} tasks "
          "PENDING")
    q.cancel(*ids)


def throughput(q, n, nodes, base):
    t0 = time.perf_counter()
    jobs = q.submit_array(["true"], array=f"0-{n - 1}", export_env=False, cwd=str(base),
                          experiment="bench-throughput")
    q.wait(*[j.id for j in jobs], timeout=3600)
    dt = time.perf_counter() - t0
    print(f"{n}-task array of `true` on {nodes} loopback SSH nodes: {dt:.1f} s, "
          f"{n / dt:.1f} tasks/s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
