"""Fair-share: usage that decays with a half-life, and the factor F = 2^(-U/S) derived from it.

Usage is GPU-seconds plus CPU-seconds times a weight. It is kept already decayed to "now", so
both the daemon (between scheduler passes) and the replay simulator (between events) advance it
with `accrue`, which integrates a constant usage rate over an interval exactly; advancing in one
step or in many gives the same result.

The factor of a user is the product of the group's factor among groups and the user's factor
among the users of that group: 2^(-Ug/Sg) * 2^(-Uu/Su). A group that used less than its share
lifts all its users; within a group the lighter user goes first. Both parts are in (0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import NamedTuple

_LN2 = math.log(2.0)


def decay(usage: float, elapsed_s: float, half_life_s: float) -> float:
    """Usage `elapsed_s` seconds later with nothing added."""
    if half_life_s <= 0 or elapsed_s <= 0:
        return usage
    return usage * 0.5 ** (elapsed_s / half_life_s)


def usage_rate(gpus: int, cpus: int, cpu_weight: float) -> float:
    """Usage accrued per second by a job holding these resources."""
    return gpus + cpu_weight * cpus


def _window_gain(a: float, b: float, t1: float, half_life_s: float) -> float:
    """Seconds of constant rate over [a, b], each decayed to t1."""
    if b <= a:
        return 0.0
    if half_life_s <= 0:
        return b - a
    h = half_life_s
    return h / _LN2 * (0.5 ** ((t1 - b) / h) - 0.5 ** ((t1 - a) / h))


def accrue(usage: Mapping[Hashable, float], rates: Mapping[Hashable, float],
           elapsed_s: float, half_life_s: float) -> dict:
    """Usage after `elapsed_s` seconds during which each key accrued at a constant rate."""
    if elapsed_s <= 0:
        out = dict(usage)
        return out
    d = 0.5 ** (elapsed_s / half_life_s) if half_life_s > 0 else 1.0
    gain = _window_gain(0.0, elapsed_s, elapsed_s, half_life_s)
    out = {k: v * d for k, v in usage.items()}
    for k, r in rates.items():
        if r:
            out[k] = out.get(k, 0.0) + r * gain
    return out


class Run(NamedTuple):
    """A job's use of resources: `end` is None while it runs."""
    group: str
    user: str
    gpus: int
    cpus: int
    start: float
    end: float | None = None


def accrue_runs(group_usage: Mapping[str, float], user_usage: Mapping[tuple[str, str], float],
                runs: Iterable[Run], t0: float, t1: float, half_life_s: float,
                cpu_weight: float) -> tuple[dict, dict]:
    """Advance usage from t0 to t1, charging each run for the part of [t0, t1] it overlapped.

    Returns new (group_usage, user_usage); the inputs are not modified."""
    elapsed = max(0.0, t1 - t0)
    g = {k: decay(v, elapsed, half_life_s) for k, v in group_usage.items()}
    u = {k: decay(v, elapsed, half_life_s) for k, v in user_usage.items()}
    for r in runs:
        a = max(t0, r.start)
        b = t1 if r.end is None else min(t1, r.end)
        amount = usage_rate(r.gpus, r.cpus, cpu_weight) * _window_gain(a, b, t1, half_life_s)
        if amount:
            g[r.group] = g.get(r.group, 0.0) + amount
            u[(r.group, r.user)] = u.get((r.group, r.user), 0.0) + amount
    return g, u


def _factor(usage: float, total_usage: float, share: float, total_share: float) -> float:
    if total_usage <= 0 or usage <= 0:
        return 1.0
    if share <= 0:
        return 0.0
    return 2.0 ** (-(usage / total_usage) / (share / total_share))


def factors(group_usage: Mapping[str, float], user_usage: Mapping[tuple[str, str], float],
            group_shares: Mapping[str, float], user_shares: Mapping[tuple[str, str], float],
            pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Fair-share factor in [0, 1] of each (group, user) in `pairs`.

    The groups competing are those with a share, a usage or a pair; likewise users within a
    group. A missing share counts as 1."""
    pairs = set(pairs)
    groups = set(group_shares) | set(group_usage) | {g for g, _ in pairs}
    total_share = sum(group_shares.get(g, 1.0) for g in groups) or 1.0
    total_usage = sum(group_usage.get(g, 0.0) for g in groups)
    users: dict[str, set[str]] = {}
    for g, u in list(user_shares) + list(user_usage) + list(pairs):
        users.setdefault(g, set()).add(u)
    out = {}
    per_group: dict[str, tuple[float, float, float]] = {}  # factor, users' shares, usage
    for g, u in pairs:
        known = per_group.get(g)
        if known is None:
            members = users.get(g, ())
            known = per_group[g] = (
                _factor(group_usage.get(g, 0.0), total_usage, group_shares.get(g, 1.0),
                        total_share),
                sum(user_shares.get((g, m), 1.0) for m in members) or 1.0,
                sum(user_usage.get((g, m), 0.0) for m in members))
        fg, u_share, u_usage = known
        fu = _factor(user_usage.get((g, u), 0.0), u_usage, user_shares.get((g, u), 1.0), u_share)
        out[(g, u)] = fg * fu
    return out
