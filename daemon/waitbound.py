"""A lower bound on the longest wait any policy can reach on a trace (labq-sim --wait-bound).

If no job waits more than W, job j (submitted at a, running d seconds on g GPUs) starts at some
s in [a, a + W] and runs on until s + d, without a break: a preempted job's wait counts up to
the start of the run that finished, so that run too starts by a + W. Over any window [L, T] it
then runs at least min over s of |[s, s + d] ∩ [L, T]|, which is reached at s = a or at
s = a + W (the overlap is concave in s), and all the jobs together cannot run more than the
cluster's G GPUs for T - L. If for some window

    sum over jobs of g * min(overlap at a, overlap at a + W)  >  G * (T - L)

then no policy keeps every wait within W, however it orders, packs or preempts; the bound is
the least W for which no window on a grid (ending by the last submit plus W and a day) says
so. It treats GPUs as one pool (a job's GPUs need not share a node), so the true least wait
may be longer.

The sum over jobs is, for one T and all L on the grid at once, a sum of functions of L that are
flat (at the overlap v of the later start) and then fall by 1 per second to 0 at
e = min(a + d, T): min(v, max(0, e - L)). Differences over the grid add them up in one pass.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .trace import TraceJob

# GPU-seconds of excess that count: sums of many floats are a little off
SLACK = 1.0


@dataclass(frozen=True)
class Violation:
    """At wait W, the window [start, end] needs `excess` GPU-seconds more than it has."""
    start: float
    end: float
    excess: float


def worst_window(jobs: Sequence[TraceJob], gpus: int, wait: float, step: float,
                 stop_at_first: bool = False, horizon: float = 86400.0) -> Violation:
    """The window on the grid (multiples of `step`) where the jobs need the most GPU time
    beyond what `gpus` GPUs give, if every job starts within `wait` of its submit."""
    if not jobs:
        return Violation(0.0, 0.0, -math.inf)
    order = sorted((j.submit, j.duration, j.gpus) for j in jobs)
    # windows that end much later hardly bind (no job arrives any more), and leaving some out
    # only weakens the bound
    last = order[-1][0] + wait + min(horizon, max(d for _, d, _ in order)) + step
    n_grid = int(last // step) + 2
    worst = Violation(0.0, 0.0, -math.inf)
    for m in range(1, n_grid):
        t = m * step
        flat = [0.0] * (n_grid + 1)  # differences: g * v for every L at or before p
        lin0 = [0.0] * (n_grid + 1)  # differences: g * e, then less g * L (lin1) after p
        lin1 = [0.0] * (n_grid + 1)
        for a, d, g in order:
            late = a + wait
            if late >= t:
                break  # submitted in order: no later job need run before t
            e = a + d if a + d < t else t
            v = (late + d if late + d < t else t) - late
            if e - a < v:
                v = e - a
            p = e - v
            k1 = min(m, int(p // step))
            flat[0] += g * v
            flat[k1 + 1] -= g * v
            k2 = min(m, math.ceil(e / step) - 1)  # last grid L below e
            if k2 > k1:
                lin0[k1 + 1] += g * e
                lin0[k2 + 1] -= g * e
                lin1[k1 + 1] += g
                lin1[k2 + 1] -= g
        c = l0 = l1 = 0.0
        for k in range(m):  # windows of some length: L below T
            c += flat[k]
            l0 += lin0[k]
            l1 += lin1[k]
            low = k * step
            excess = c + l0 - l1 * low - gpus * (t - low)
            if excess > worst.excess:
                worst = Violation(low, t, excess)
        if stop_at_first and worst.excess > SLACK:
            break
    return worst


def least_max_wait(jobs: Sequence[TraceJob], gpus: int, step: float = 3 * 3600.0,
                   tolerance: float = 3600.0) -> tuple[float, Violation | None]:
    """(W, the window that rules out waits just under W): no policy keeps every wait under W
    (to `tolerance`). The window is None when nothing needs to wait at all."""
    low, high = 0.0, step
    while worst_window(jobs, gpus, high, step, stop_at_first=True).excess > SLACK:
        low, high = high, high * 2
    proof = worst_window(jobs, gpus, low, step, stop_at_first=True) if low > 0 else None
    while high - low > tolerance:
        mid = (low + high) / 2
        v = worst_window(jobs, gpus, mid, step, stop_at_first=True)
        if v.excess > SLACK:
            low, proof = mid, v
        else:
            high = mid
    return low, proof
