"""Plan time for 100,000 (and 10,000) pending jobs on 100 nodes x 8 GPUs, and the replay
simulator's table and wall time on the full Philly trace, at the trace's load and at 10x.

Two figures per cluster state:
- cold: `plan` on a snapshot it has not seen (no memo; the same work as the first pass of the
  daemon, or any pass after a config change);
- warm: the daemon's steady state: `plan` with the PlanMemo of the previous pass, after the
  previous plan's starts were applied, 5 running jobs ended and 10 jobs were submitted.
The garbage collector is run before each timed call so that a collection owed by earlier work
is not charged to the plan.

    python tests/bench/bench_policy.py [--skip-sim] [--pending N ...] [--arrival-scale S ...]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from dataclasses import replace

from labq.daemon.policy import GpuSlot, JobView, NodeView, PlanMemo, PolicyConfig, Snapshot, plan

NOW = 1_000_000.0

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
        gc.collect()
        t = time.perf_counter()
        result = plan(snap, NOW)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def next_pass(snap: Snapshot, p, now: float, rng: random.Random, submitted: int = 10,
              ended: int = 5) -> Snapshot:
    """The snapshot of the daemon's next pass: the plan's starts running, `ended` running jobs
    gone, `submitted` new jobs. Unchanged jobs are the same JobView objects (as the daemon keeps
    them); a changed job is a new object."""
    starts = {s.job: s for s in p.starts}
    nodes = {n.name: n for n in snap.nodes}
    free = {n.name: [set(n.free_gpus), n.free_cpus, n.free_memory_mb] for n in snap.nodes}
    running = [j for j in snap.jobs if j.state == "RUNNING"]
    gone = {j.id for j in rng.sample(running, min(ended, len(running)))}
    jobs = []
    for j in snap.jobs:
        if j.id in gone:
            f = free[j.node]
            f[0].update(j.gpu_indices)
            f[1] += j.cpus
            f[2] += j.memory_mb
            continue
        s = starts.get(j.id)
        if s is not None:
            f = free[s.node]
            f[0].difference_update(s.gpus)
            f[1] -= j.cpus
            f[2] -= j.memory_mb
            j = replace(j, state="RUNNING", node=s.node, gpu_indices=s.gpus, start_time=now)
        jobs.append(j)
    jid = max(j.id for j in snap.jobs)
    for k in range(submitted):
        jobs.append(JobView(jid + 1 + k, f"u{rng.randrange(40)}", f"g{rng.randrange(8)}",
                            "PENDING", 5, now, gpus=rng.choice([1, 2, 4, 8]), cpus=4,
                            memory_mb=16000, time_limit_s=3600.0, eligible_time=now))
    views = [replace(nodes[name], free_gpus=frozenset(f[0]), free_cpus=f[1],
                     free_memory_mb=f[2]) for name, f in free.items()]
    return replace(snap, nodes=views, jobs=jobs)


def time_warm(snap: Snapshot, repeat: int = 7) -> tuple[float, float, object]:
    """Plan with the memo of a previous pass over `snap`, one pass (1 s) later."""
    times = []
    result = None
    for r in range(repeat):
        memo = PlanMemo()
        first = plan(replace(snap, memo=memo), NOW)
        nxt = next_pass(snap, first, NOW + 1.0, random.Random(r))
        nxt.memo = memo
        gc.collect()
        t = time.perf_counter()
        result = plan(nxt, NOW + 1.0)
        times.append(time.perf_counter() - t)
        assert memo.fresh_builds == 1
    return min(times), statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--pending", type=int, nargs="*", default=[100_000, 10_000])
    ap.add_argument("--arrival-scale", type=float, nargs="*", default=[1.0, 0.1],
                    help="replay the trace at these arrival scales (0.1: 10x the load)")
    args = ap.parse_args()
    for pending in args.pending:
        for busy, label in ((0.9, "cluster 90% busy"), (0.0, "cluster empty"),
                            (1.0, "cluster full")):
            snap = make_snapshot(pending=pending, busy=busy)
            best, med, p = time_plan(snap)
            wbest, wmed, w = time_warm(snap)
            print(f"plan, {pending:,} pending x 100 nodes x 8 GPUs, {label}:\n"
                  f"  cold  best {best * 1e3:6.1f} ms, median {med * 1e3:6.1f} ms "
                  f"({len(p.starts)} starts, {len(p.reasons)} reasons)\n"
                  f"  warm  best {wbest * 1e3:6.1f} ms, median {wmed * 1e3:6.1f} ms "
                  f"({len(w.starts)} starts, {len(w.reasons)} reasons)")
            sys.stdout.flush()
    if not args.skip_sim:
        from labq.daemon import sim
        for scale in args.arrival_scale:
            t = time.perf_counter()
            result = sim.run(os.path.join(DATA, "jobs.csv"), os.path.join(DATA, "vcs.csv"),
                             arrival_scale=scale)
            wall = time.perf_counter() - t
            print(f"replay, full trace, arrival scale {scale}:")
            print(sim.format_table(result))
            print(f"simulator, full trace, all policies: {wall:.1f} s wall")
            sys.stdout.flush()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
