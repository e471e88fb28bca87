"""Fair-share usage in the daemon: decayed GPU-seconds per group and user, from real start and
end times, so it survives restarts (it is rebuilt from the job table at start)."""
from __future__ import annotations

import time
from collections import defaultdict

from labq.states import JobState

from . import store as st
from .policy import fairshare
from .policy.fairshare import Run


class Accounting:
    def __init__(self, half_life_s: float, cpu_weight: float):
        self.half_life_s = half_life_s
        self.cpu_weight = cpu_weight
        self.group_usage: dict[str, float] = {}
        self.user_usage: dict[tuple[str, str], float] = {}
        self.t = time.time()

    def load(self, store: st.Store, now: float) -> None:
        """Every run that ended within ~20 half-lives, or still runs, charged up to now."""
        horizon = now - 20 * self.half_life_s
        runs = [Run(j["group"], j["owner"], len(j["gpu_indices"] or []) * (j.get("nodes") or 1),
                    j["cpus"] * (j.get("nodes") or 1),
                    j["start_time"],
                    j["end_time"] if j["state"] != JobState.RUNNING.value else None)
                for j in store.runs_since(horizon)]
        # requeued runs are not in the table (the row moved on); they are a rounding error
        self.group_usage, self.user_usage = fairshare.accrue_runs(
            {}, {}, runs, horizon, now, self.half_life_s, self.cpu_weight)
        self.t = now

    def advance(self, running: list[Run], ended: list[Run], now: float) -> None:
        if now <= self.t:
            return
        self.group_usage, self.user_usage = fairshare.accrue_runs(
            self.group_usage, self.user_usage, running + ended, self.t, now, self.half_life_s,
            self.cpu_weight)
        self.t = now


def usage_report(store: st.Store, since: float, now: float, hourly: bool = False
                 ) -> tuple[list[dict], list[dict], list[dict]]:
    """GPU-hours per group, per user, and per group and local day (or hour) over [since, now].
    Each bucket of the series says its local day and, as `start`, when it begins."""
    groups: dict[str, float] = defaultdict(float)
    users: dict[tuple[str, str], float] = defaultdict(float)
    series: dict[tuple[str, float], float] = defaultdict(float)
    next_bucket = _next_hour if hourly else _next_midnight
    for j in store.runs_since(since):
        gpus = len(j["gpu_indices"] or [])
        a, b = max(since, j["start_time"]), min(now, j["end_time"] or now)
        if b <= a or not gpus:
            continue
        groups[j["group"]] += gpus * (b - a) / 3600
        users[(j["group"], j["owner"])] += gpus * (b - a) / 3600
        t = a
        while t < b:  # split across buckets
            end = next_bucket(t)
            start = _bucket_start(t, hourly)
            series[(j["group"], start)] += gpus * (min(b, end) - t) / 3600
            t = end
    return ([{"group": g, "gpu_hours": round(h, 4)} for g, h in sorted(groups.items())],
            [{"group": g, "user": u, "gpu_hours": round(h, 4)}
             for (g, u), h in sorted(users.items())],
            [{"group": g, "day": time.strftime("%Y-%m-%d", time.localtime(s)), "start": s,
              "gpu_hours": round(h, 4)}
             for (g, s), h in sorted(series.items(), key=lambda x: (x[0][1], x[0][0]))])


def _next_hour(t: float) -> float:
    return (t // 3600 + 1) * 3600


def _bucket_start(t: float, hourly: bool) -> float:
    if hourly:
        return t // 3600 * 3600
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


def _next_midnight(t: float) -> float:
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday + 1, 0, 0, 0, 0, 0, -1))
