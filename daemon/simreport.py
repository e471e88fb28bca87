"""The replay's figures, from each job's start and finish, and the table that prints them."""
from __future__ import annotations


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def metrics(jobs, vcs, start, finish, total_gpus) -> dict:
    """The figures of one replay (sim.py's docstring says what each is)."""
    done = [j for j in jobs if j.id in finish]
    jct = sorted(finish[j.id] - j.submit for j in done)
    waits = [start[j.id] - j.submit for j in done]
    sorted_waits = sorted(waits)
    used = sum(j.gpus * j.duration for j in done)
    span = (max(finish.values()) - min(j.submit for j in jobs)) if done else 0.0
    per_vc: dict[str, list[float]] = {}
    gpu_time: dict[str, float] = {}
    for j in done:
        per_vc.setdefault(j.vc, []).append((finish[j.id] - j.submit) / j.duration)
        gpu_time[j.vc] = gpu_time.get(j.vc, 0.0) + j.gpus * j.duration
    means = [sum(v) / len(v) for v in per_vc.values()]
    jain = (sum(means) ** 2 / (len(means) * sum(m * m for m in means))) if means else 1.0
    return {
        "jobs": len(done),
        "avg_jct_s": sum(jct) / len(jct) if jct else 0.0,
        "p50_jct_s": _pct(jct, 0.5),
        "p99_jct_s": _pct(jct, 0.99),
        "avg_wait_s": sum(waits) / len(waits) if waits else 0.0,
        "p99_wait_s": _pct(sorted_waits, 0.99),
        "max_wait_s": max(waits) if waits else 0.0,
        "utilization": used / (total_gpus * span) if span > 0 else 0.0,
        "jain": jain,
        "vc_share": {vc: {"gpu_time_share": gpu_time.get(vc, 0.0) / used if used else 0.0,
                          "entitlement": g / total_gpus}
                     for vc, g in sorted(vcs.items())},
    }


def format_table(result: dict) -> str:
    w = max([11] + [len(name) for name in result["policies"]])
    head = (f"{'policy':<{w}} {'jobs':>6} {'avg JCT':>10} {'p50 JCT':>9} {'p99 JCT':>10} "
            f"{'avg wait':>9} {'p99 wait':>10} {'max wait':>10} {'util':>6} {'Jain':>5} "
            f"{'share':>6} {'preempt':>7} {'wall':>6}")
    lines = [head, "-" * len(head)]
    for name, m in result["policies"].items():
        lines.append(f"{name:<{w}} {m['jobs']:>6} {m['avg_jct_s']:>9.0f}s {m['p50_jct_s']:>8.0f}s "
                     f"{m['p99_jct_s']:>9.0f}s {m['avg_wait_s']:>8.0f}s {m['p99_wait_s']:>9.0f}s "
                     f"{m['max_wait_s']:>9.0f}s {m['utilization']:>6.3f} {m['jain']:>5.2f} "
                     f"{m['worst_share']:>6.2f} {m['preemptions']:>7} {m['wall_s']:>5.1f}s")
    lines.append(f"total wall time {result['wall_s']:.1f} s (seconds are simulated time, "
                 "wall is real time)")
    if result.get("restart_cost_s") is not None:
        lines.append(f"preempted jobs resume from a checkpoint, losing "
                     f"{result['restart_cost_s']:.0f} s of their run")
    return "\n".join(lines)
