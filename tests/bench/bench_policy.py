"""Plan time for 100,000 pending jobs on 100 nodes x 8 GPUs, and the replay simulator's wall time
on the full Philly trace.

    python tests/bench/bench_policy.py [--skip-sim]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

from labq.daemon.policy import plan
from labq.daemon.snapshot import GpuSlot, JobView, NodeView, PolicyConfig, Snapshot

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "philly")


def make_snapshot(pending: int = 100_000, nodes: int = 100, busy: float = 0.9,
                  seed: int = 1) -> Snapshot:
    rng = random.Random(seed)
    now = 1_000_000.0
    views, jobs = [], []
    jid = 0
    for n in range(nodes):
        gpus = tuple(GpuSlot(i, "A100" if n % 2 else "H100", 81920) for i in range(8))
        used = [i for i in range(8) if rng.random() < busy]
        for i in used:  # one 1-GPU job per busy GPU
            jid += 1
            jobs.append(JobView(jid, f"u{jid % 40}", f"g{jid % 8}", "RUNNING", 5, now - 5000,
                                gpus=1, cpus=4, memory_mb=16000, time_limit_s=rng.choice(
                                    [3600.0, 4 * 3600.0, 86400.0]), node=f"n{n}",
                                gpu_indices=(i,), start_time=now - rng.uniform(0, 3600)))
        views.append(NodeView(f"n{n}", "up", 128, 1_000_000, gpus,
                              frozenset(set(range(8)) - set(used)), 128 - 4 * len(used),
                              1_000_000 - 16000 * len(used)))
    # ids are handed out at submission, so a snapshot listing jobs by id is in submit order
    submits = sorted(now - rng.uniform(0, 10 * 86400) for _ in range(pending))
    for submit in submits:
        jid += 1
        jobs.append(JobView(jid, f"u{rng.randrange(40)}", f"g{rng.randrange(8)}", "PENDING",
                            rng.choice([3, 5, 5, 5, 8]), submit,
                            gpus=rng.choice([1, 1, 1, 2, 4, 8]), cpus=4, memory_mb=16000,
                            time_limit_s=rng.choice([3600.0, 4 * 3600.0, 86400.0, None])))
    cfg = PolicyConfig(group_shares={f"g{i}": 1 + i for i in range(8)})
    usage = {f"g{i}": rng.uniform(0, 1e6) for i in range(8)}
    return Snapshot(views, jobs, group_usage=usage,
                    user_usage={(f"g{i}", f"u{u}"): rng.uniform(0, 1e5)
                                for i in range(8) for u in range(40)}, config=cfg)


def time_plan(snap: Snapshot, repeat: int = 7) -> tuple[float, float, object]:
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = plan(snap, 1_000_000.0)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-sim", action="store_true")
    args = ap.parse_args()
    for busy, label in ((0.9, "cluster 90% busy"), (0.0, "cluster empty"), (1.0, "cluster full")):
        snap = make_snapshot(busy=busy)
        best, med, p = time_plan(snap)
        print(f"plan, 100,000 pending x 100 nodes x 8 GPUs, {label}: best {best * 1e3:.1f} ms, "
              f"median {med * 1e3:.1f} ms ({len(p.starts)} starts, {len(p.reasons)} reasons)")
    if not args.skip_sim:
        from labq.daemon import sim
        t = time.perf_counter()
        result = sim.run(os.path.join(DATA, "jobs.csv"), os.path.join(DATA, "vcs.csv"))
        wall = time.perf_counter() - t
        print(sim.format_table(result))
        print(f"simulator, full trace, all policies: {wall:.1f} s wall")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
