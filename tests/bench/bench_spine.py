"""Spine benchmark: a real labqd with one loopback SSH node. Prints figures; asserts nothing.

    python3 tests/bench/bench_spine.py [--submits N] [--samples N]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402
from sshnodes import NodeSet  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--submits", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-"))
    with NodeSet(base / "nodes", names=["n1"]) as ns:
        entries = ns.config_entries({"n1": [{"type": "A100", "memory_mb": 81920}] * 8})
        entries[0]["job_root"] = str(base / "jobs")
        d = Daemon(base / "daemon", {"daemon": {"log_level": "warning"}, "node": entries})
        d.start(wait_nodes=1)
        try:
            with d.client() as q:
                run(q, args, base)
        finally:
            d.close()


def run(q, args, base):
    # 1. sequential submits through the API: held jobs (no scheduling needed), then pending
    # jobs that every submit makes the scheduler look at (they ask for a GPU type no node has)
    n = args.submits
    for label, kw in (("held", {"hold": True}), ("pending", {"gpus": 1, "gpu_type": "none"})):
        t0 = time.perf_counter()
        ids = [q.submit(["true"], export_env=False, cwd=str(base), **kw).id for _ in range(n)]
        dt = time.perf_counter() - t0
        print(f"submits ({label}):{' ' * (8 - len(label))}{n / dt:8.0f} /s  "
              f"({n} sequential submits in {dt:.2f} s)")
        for i in range(0, len(ids), 500):
            q.cancel(*ids[i:i + 500])

    # 2. submit -> RUNNING on an idle node
    lat = []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        job = q.submit(["sleep", "0.05"], export_env=False, cwd=str(base))
        while q.job(job.id).state.value == "PENDING":
            pass
        lat.append((time.perf_counter() - t0) * 1000)
        q.wait(job.id, timeout=30)
    print(f"submit->RUNNING:    p50 {statistics.median(lat):6.1f} ms   p99 {pct(lat, 99):6.1f} ms"
          f"  ({len(lat)} jobs)")

    # 3. log-line latency: the job stamps each line; the follower compares on arrival
    lines = args.samples
    script = ("import time,sys\n"
              f"for i in range({lines}):\n"
              "    print(repr(time.time()), flush=True); time.sleep(0.02)\n")
    job = q.submit(["python3", "-c", script], export_env=False, cwd=str(base))
    lat, buf = [], ""
    for chunk in q.follow(job.id):
        now = time.time()
        buf += chunk
        *complete, buf = buf.split("\n")
        lat += [(now - float(x)) * 1000 for x in complete if x]
    print(f"log line latency:   p50 {statistics.median(lat):6.1f} ms   p99 {pct(lat, 99):6.1f} ms"
          f"  ({len(lat)} lines)")


if __name__ == "__main__":
    main()
