"""Reading the Philly trace (jobs.csv, vcs.csv) into jobs the replay simulator can run.

Modelling choices, each forced by what the trace lacks:
- Groups are the virtual clusters (VCs); each VC's share is its GPU count. The trace has no
  users, so each VC is one user.
- Time limits: users ask for more time than they use. A job's limit is its true duration times
  a factor 1 + LogNormal(0, 1) (median 2), capped at 10, rounded up to a whole minute; the
  factor is drawn from a generator seeded with --seed, one draw per job in submit order. The
  policy never sees true durations (the sjf-oracle comparison does, by design).
- A node has 8 GPUs. A job asking for more than 8 GPUs (0.4 % of jobs) is a gang, as it ran:
  one part on each of ceil(GPUs / 8) nodes, the GPUs split evenly (12: two parts of 6), for
  its true duration. A job is never given more nodes or GPUs than its VC has, so that FIFO per
  VC can always run it; one cut down so runs for proportionally longer (its GPU time is kept).
- The few jobs whose VC is missing from vcs.csv get one 8-GPU node per missing VC.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import datetime

GPUS_PER_NODE = 8
MAX_LIMIT_FACTOR = 10.0


@dataclass(frozen=True)
class TraceJob:
    id: int
    vc: str
    submit: float  # seconds since the first submit
    duration: float  # true run time on `gpus` GPUs
    gpus: int  # in all, over its nodes
    time_limit: float
    asked_gpus: int
    nodes: int = 1  # more than 1: a gang, gpus // nodes on each


def limit_factor(rng: random.Random) -> float:
    return min(MAX_LIMIT_FACTOR, 1.0 + rng.lognormvariate(0.0, 1.0))


def load_vcs(path: str) -> dict[str, int]:
    """VC name -> GPU count."""
    with open(path, newline="") as f:
        return {row["vc"]: int(row["node num"]) * GPUS_PER_NODE for row in csv.DictReader(f)}


def load_trace(jobs_path: str, vcs_path: str, limit: int | None = None,
               seed: int = 0) -> tuple[list[TraceJob], dict[str, int]]:
    """The first `limit` jobs by submit time, and the VC sizes (GPUs) including added VCs."""
    vcs = load_vcs(vcs_path)
    with open(jobs_path, newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in rows]
    order = sorted(range(len(rows)), key=stamps.__getitem__)
    if limit is not None:
        order = order[:limit]
    t0 = stamps[order[0]] if order else 0.0
    rng = random.Random(seed)
    jobs = []
    for n, i in enumerate(order, start=1):
        r = rows[i]
        vc = r["cluster"]
        if vc not in vcs:
            vcs[vc] = GPUS_PER_NODE
        asked = max(1, int(float(r["num_gpus"])))
        nodes = min(-(-asked // GPUS_PER_NODE), max(1, vcs[vc] // GPUS_PER_NODE))
        gpus = nodes * min(-(-asked // nodes), GPUS_PER_NODE, vcs[vc])
        duration = max(1.0, float(r["duration"])) * max(1.0, asked / gpus)
        tl = math.ceil(duration * limit_factor(rng) / 60.0) * 60.0
        jobs.append(TraceJob(n, vc, stamps[i] - t0, duration, gpus, tl, asked, nodes))
    return jobs, vcs
