"""How fast job ends reach labqd: a real labqd, its local node and loopback SSH nodes.
Prints figures beside their goals; asserts nothing.

    python3 tests/bench/bench_ends.py [--samples N] [--burst N] [--rounds N]
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


def row(figure, values, unit, goal):
    lo, hi = min(values), max(values)
    print(f"{figure:<48} {lo:8.1f}–{hi:<8.1f} {unit:<7} goal {goal}", flush=True)


def latency(q, samples):
    """submit → COMPLETED of `true`, one job at a time: the p50 in ms."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        job = q.submit(["true"])
        q.wait(job.id, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def burst(q, n):
    """n × `true` submitted at once: seconds until the last has ended."""
    t0 = time.perf_counter()
    ids = [q.submit(["true"]).id for _ in range(n)]
    q.wait(*ids, timeout=600)
    return time.perf_counter() - t0


def local(args, base):
    d = Daemon(base / "local", {"daemon": {"log_level": "warning"},
                                "node": [{"name": "local", "local": True, "cpus": 2,
                                          "job_root": str(base / "local-jobs")}]})
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            q.wait(q.submit(["true"]).id, timeout=60)  # warm
            row("submit → COMPLETED for `true`, p50", [latency(q, args.samples)
                                                       for _ in range(args.rounds)], "ms",
                "≤ 15 ms")
            row(f"{args.burst} × `true`, local node, 2 CPU slots",
                [burst(q, args.burst) for _ in range(args.rounds)], "s", "≤ 5 s")
    finally:
        d.close()


def ssh(args, base):
    names = ["n1", "n2", "n3", "n4"]
    with NodeSet(base / "nodes", names=names) as ns:
        entries = ns.config_entries({n: [] for n in names})
        for e in entries:
            e["cpus"] = 4
            e["job_root"] = str(base / "jobs" / e["name"])
        d = Daemon(base / "ssh", {"daemon": {"log_level": "warning"}, "node": entries})
        d.start(wait_nodes=len(names))
        try:
            with d.client() as q:
                rates = []
                for _ in range(args.rounds):
                    rates.append(args.burst / burst(q, args.burst))
                row("trivial jobs on 4 loopback SSH nodes", rates, "jobs/s", "≥ 200 jobs/s")
        finally:
            d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-"))
    local(args, base)
    ssh(args, base)


if __name__ == "__main__":
    main()
