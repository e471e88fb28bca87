"""Replay a GPU-cluster trace through the scheduling policy in simulated time.

    labq-sim --trace jobs.csv --vcs vcs.csv [--limit N] [--policy P] [--json] [--seed S]
             [--arrival-scale S] [--restart-cost S] [--worst N] [--wait-bound]

Event driven: time jumps from one submit or finish to the next, finishes are applied first, then
submits, then the policy plans once for that instant. The policy is the daemon's own code
(policy.schedule, which policy.plan wraps); the simulator keeps the cluster and the pending queue
alive across events instead of rebuilding a snapshot each time, and applies the starts the plan
returns. Durations are known to the simulator only; the policy sees time limits (trace.py
describes the trace model).

Policies compared:
- vc-fifo: each VC queues FIFO on its own nodes, as Philly ran.
- fifo: one pooled FIFO queue over all nodes, no backfill.
- labq: pooled, the default multifactor priority (fair-share between VCs with shares equal to
  their GPU counts, usage half-life 7 days) with EASY backfill, the short factor weighing as
  much as fair-share (a day's time limit counts half; limits rounded up to a power of 2 s),
  and starved_first with a maximum age of 5 days (a job that has waited 5 days goes ahead of
  all that have not): the real policy, configured as README suggests for a busy cluster. Every
  job of the trace has a time limit, so the default time limit sets only the short factor's
  scale.
- sjf-oracle: pooled, shortest true duration first, with backfill on exact limits; a bound no
  real scheduler reaches.
- labq-preempt: labq with preemption (Slurm's PreemptMode=REQUEUE) as the daemon decides it
  (policy.preempt, through `schedule(..., running=...)`). The trace has no scavenger tier, so
  the model makes one: a job whose VC holds its share of the GPUs or more when it is submitted
  is preemptible. A preempted job stops at once (no grace) and loses all the work since its
  start (no checkpoint); it is queued again with its submit time and its age, as in the
  daemon, and runs its whole duration again. Its wait counts up to the start of the run that
  finished. With --restart-cost S, jobs checkpoint instead when signalled (the daemon's
  --signal): a preempted job resumes where it stopped, less S seconds (reloading, and the
  work since its last checkpoint; never more than its run). The GPUs its victims free are
  the preemptor's (policy.holds), as in the daemon: no job ranked above it takes them first.
- labq-preempt-share: labq-preempt with the scavenger tier of preempt_over_share instead,
  which many labs run: what a VC runs beyond its share may be preempted while it is beyond,
  gangs whole, for the top job or for the first waiting job of each class of a VC under its
  share; a job up to SHARE_PREEMPT_MAX times, once it has run SHARE_PREEMPT_MIN_RUN_S, and
  not once it has run SHARE_PREEMPT_MAX_RUN_S; and only for a VC holding at most
  SHARE_PREEMPT_FLOOR of its share.

The trace as published loads the 2,816 GPUs to about 13 % on average, so queueing is rare
whatever the policy; --arrival-scale compresses submit times to replay the same jobs under a
heavier load (0.25: four times as many jobs per hour).

Figures: JCT (finish - submit) average, median and 99th percentile, wait (start - submit)
average, 99th percentile and maximum, utilisation (GPU-seconds used / GPUs x (last finish -
first submit)), Jain's index over the VCs' mean slowdowns (JCT / duration; 1 = every VC is
slowed equally), each VC's share of the GPU time used against its share of the GPUs, and what
fair-share promises (ShareMeter): per VC, over the time it had jobs waiting, the GPU time it held
against its share of the GPUs in use (or all it asked for, if less); "share" is the worst VC's.
"preempt" counts preemptions; the JSON also gives the GPU-hours of work they lost, and per VC
where it fell short of its share (simshare.py; --worst N prints the N worst VCs).
"""
from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from .policy import GpuSlot, JobView, NodeView, PolicyConfig, fairshare, schedule
from .policy.holds import Hold, hold
from .policy.placement import Cluster
from .policy.queue import PendingQueue, age_floor
from .simreport import format_table, metrics
from .simshare import ShareMeter, format_worst
from .trace import GPUS_PER_NODE, TraceJob, load_trace
from .waitbound import least_max_wait

POLICIES = ("vc-fifo", "fifo", "labq", "sjf-oracle", "labq-preempt", "labq-preempt-share")
NODE_CPUS = 64
NODE_MEM_MB = 512 * 1024
# the labq policy replays with starved_first at this age (README: "Scheduling")
STARVED_AFTER_S = 5 * 86400.0
# and with the short factor weighing as much as fair-share, a day's time limit counting half
# of it, time limits rounded up to a power of 2 seconds (README: "Trace replay")
SHORT_WEIGHT = 10000.0
SHORT_SCALE_S = 86400.0
SHORT_STEP = 2.0
# the over-share tier's budget in the replay: a job may be taken back up to 6 times, after a
# minute of running. With the daemon's defaults (3 times, after 5 minutes) at 10 times the
# arrivals, a fifth of the GPUs ran jobs that could no longer be stopped, and the worst VC got
# 0.85 of its share; with these it gets its share, and loses less work to restarts
SHARE_PREEMPT_MAX = 6
SHARE_PREEMPT_MIN_RUN_S = 60.0
# and never after a day and a half of running: without this limit, runs longer than that were
# 59 of 12,478 preemptions and half the work lost to restarts (README: "Taking shares back")
SHARE_PREEMPT_MAX_RUN_S = 1.5 * 86400.0
# and only for a VC holding at most 80 % of its share: the last fifth of it comes from jobs
# that end, without restarts (README: "Taking shares back")
SHARE_PREEMPT_FLOOR = 0.8
# how long the GPUs a preemption freed are kept for the preemptor: its victims stop at once
# here, so it starts in the same instant unless the walk started it elsewhere
HOLD_S = 60.0


def _share_tier(name: str) -> dict[str, Any]:
    if name != "labq-preempt-share":
        return {}
    return {"preempt_over_share": True, "preempt_max": SHARE_PREEMPT_MAX,
            "preempt_min_run_s": SHARE_PREEMPT_MIN_RUN_S,
            "preempt_max_run_s": SHARE_PREEMPT_MAX_RUN_S,
            "preempt_share_floor": SHARE_PREEMPT_FLOOR}


def policy_config(name: str, vcs: dict[str, int]) -> PolicyConfig:
    if name in ("vc-fifo", "fifo"):
        return PolicyConfig(weight_age=1.0, weight_fairshare=0.0, weight_priority=0.0,
                            backfill=False)
    if name in ("labq", "labq-preempt", "labq-preempt-share"):
        return PolicyConfig(group_shares={vc: float(g) for vc, g in vcs.items()},
                            starved_first=True, max_age_s=STARVED_AFTER_S,
                            weight_short=SHORT_WEIGHT, default_time_limit_s=SHORT_SCALE_S,
                            short_step=SHORT_STEP, **_share_tier(name))
    if name == "sjf-oracle":
        return PolicyConfig(weight_age=0.0, weight_fairshare=0.0, weight_priority=0.0,
                            weight_short=1.0)
    raise ValueError(f"unknown policy {name!r}")


def _nodes(vc: str, gpus: int) -> list[NodeView]:
    slots = tuple(GpuSlot(i, "P100", 16384) for i in range(GPUS_PER_NODE))
    return [NodeView(f"{vc}-{k}", "up", NODE_CPUS, NODE_MEM_MB, slots,
                     frozenset(range(GPUS_PER_NODE)), NODE_CPUS, NODE_MEM_MB)
            for k in range(gpus // GPUS_PER_NODE)]


class _Partition:
    """A cluster with its own queue: the whole cluster, or one VC under vc-fifo."""

    def __init__(self, nodes: list[NodeView], config: PolicyConfig):
        self.cluster = Cluster(nodes, config.limits, kept=True)
        self.queue = PendingQueue(config, 0.0)
        self.busy = {n.name: set() for n in nodes}  # independent check on double allocation
        self.asks: Counter[int] = Counter()  # queued jobs by GPUs asked for

    def add(self, view: JobView) -> None:
        self.queue.add(view)
        self.asks[view.gpus] += 1

    def remove(self, view: JobView) -> None:
        self.queue.remove(view)
        self.asks[view.gpus] -= 1
        if not self.asks[view.gpus]:
            del self.asks[view.gpus]

    def nothing_fits(self) -> bool:
        """No queued job asks for as few GPUs as some node has free: a plan would start
        nothing."""
        buckets = self.cluster.buckets
        most = next((k for k in range(len(buckets) - 1, -1, -1) if buckets[k]), 0)
        return not self.asks or most < min(self.asks)


class _Replay:
    """One policy's replay: the event loop's state, so each step is a small method."""

    def __init__(self, jobs: list[TraceJob], vcs: dict[str, int], policy: str,
                 restart_cost: float | None = None):
        self.jobs, self.vcs = jobs, vcs
        # None: a preempted job's run is lost; else it resumes, losing this much of its run
        self.restart_cost = restart_cost
        self.left: dict[int, float] = {}  # a job that resumes: its run time still to go
        self.cfg = cfg = policy_config(policy, vcs)
        oracle = policy == "sjf-oracle"
        self.views = [JobView(j.id, j.vc, j.vc, "PENDING", 5, j.submit, gpus=j.gpus // j.nodes,
                              nodes=j.nodes,
                              time_limit_s=j.duration if oracle else j.time_limit)
                      for j in jobs]
        if policy == "vc-fifo":
            self.parts = {vc: _Partition(_nodes(vc, g), cfg) for vc, g in vcs.items()}
            self.part_of = {j.id: self.parts[j.vc] for j in jobs}
        else:
            whole = _Partition([n for vc, g in vcs.items() for n in _nodes(vc, g)], cfg)
            self.parts = {"": whole}
            self.part_of = {j.id: whole for j in jobs}
        self.total_gpus = sum(vcs.values())
        self.by_id = {j.id: j for j in jobs}
        self.use_fs = cfg.weight_fairshare != 0
        self.usage: dict[str, float] = {}
        self.rates: dict[str, float] = {}
        self.last_t = 0.0
        self.start: dict[int, float] = {}
        self.finish: dict[int, float] = {}
        self.ends: list[tuple[float, int]] = []
        self.busy_total = 0
        self.timeline: list[tuple[float, int]] = []
        self.violations = 0
        self.share = ShareMeter(vcs)
        # labq-preempt: the running jobs that may be victims as the policy sees them (the
        # preemptible ones; with the over-share tier, all), and each running
        # job's end (a preempted job's entry in `ends` is then stale)
        self.preempt = policy in ("labq-preempt", "labq-preempt-share")
        self.by_submit = policy == "labq-preempt"  # the tier is fixed at submit
        self.running: dict[int, JobView] = {}
        self.ends_at: dict[int, float] = {}
        self.preemptions = 0
        self.lost_gpu_s = 0.0
        self.all_pairs = {(vc, vc) for vc in vcs}
        # pending job id -> the GPUs its preemption freed (policy.holds), as the daemon keeps
        self.holds: dict[int, Hold] = {}

    def run(self, record: bool) -> None:
        jobs, i, n = self.jobs, 0, len(self.jobs)
        while i < n or self.ends:
            t = self.ends[0][0] if self.ends else jobs[i].submit
            if i < n and jobs[i].submit < t:
                t = jobs[i].submit
            if self.use_fs and t > self.last_t:
                self.usage = fairshare.accrue(self.usage, self.rates, t - self.last_t,
                                              self.cfg.usage_half_life_s)
                self.last_t = t
            self.share.advance(t, self.busy_total)
            dirty = self._finish_due(t)
            while i < n and jobs[i].submit <= t:
                p = self.part_of[jobs[i].id]
                if self.by_submit:
                    # a VC holding its share or more submits into the scavenger tier
                    vc = jobs[i].vc
                    self.views[i].preemptible = self.share.running[vc] >= self.vcs[vc]
                p.add(self.views[i])
                self.share.waiting(jobs[i].vc, jobs[i].gpus, jobs[i].nodes > 1)
                if p not in dirty:
                    dirty.append(p)
                i += 1
            for p in dirty:
                self._schedule(p, t)
            if self.busy_total > self.total_gpus:
                self.violations += 1
            if record:
                self.timeline.append((t, self.busy_total))
            parts = self.parts.values()
            if not self.ends and i < n and not any(len(p.cluster.jobs) for p in parts) and \
                    any(p.queue.classes for p in parts):
                # nothing runs and nothing can start: a job no node can hold would wait forever
                break

    def _finish_due(self, t: float) -> list[_Partition]:
        dirty: list[_Partition] = []
        while self.ends and self.ends[0][0] <= t:
            end, jid = heapq.heappop(self.ends)
            if self.preempt:
                if self.ends_at.get(jid) != end:
                    continue  # preempted: it ends at its new run's end
                del self.ends_at[jid]
                self.running.pop(jid, None)
            p = self.part_of[jid]
            c = p.cluster
            held = c.gang_parts.get(jid) or ((c.jobs[jid][1], c.jobs[jid][2]),)
            c.finish(jid)
            for i, gpus in held:
                p.busy[c.nodes[i].name].difference_update(gpus)
            n = sum(len(gpus) for _, gpus in held)
            self.busy_total -= n
            self.share.ended(self.by_id[jid].vc, n)
            self.finish[jid] = t
            if self.use_fs:
                self.rates[self.by_id[jid].vc] -= n
            if p.asks and p not in dirty:
                dirty.append(p)
        return dirty

    def _schedule(self, p: _Partition, t: float) -> None:
        preempting = self.preempt and len(self.running) > 0 and len(p.queue) > 0
        if p.nothing_fits() and not preempting:
            return  # the plan would start nothing, and planning leaves nothing behind
        cfg = self.cfg
        p.queue.advance(age_floor(cfg, t))
        fs = {}
        if self.use_fs and (len(p.queue.classes) > 1 or preempting):
            # over every VC when preempting, so that the running jobs are ranked too (a
            # factor does not depend on which pairs are asked for: every VC has a share)
            fs = fairshare.factors(self.usage, {}, cfg.group_shares, {},
                                   self.all_pairs if preempting else
                                   {(c.head.group, c.head.owner)
                                    for c in p.queue.classes.values()})
        while True:
            held = {i: h for i, h in self.holds.items()
                    if h.until >= t and self.part_of[i] is p} if self.holds else None
            plan = schedule(p.cluster, p.queue, t, cfg, fs, full=False,
                            running=self.running if preempting else None, held=held,
                            lookup=self._held_view)
            self._apply_starts(p, plan, t)
            for jid, named in plan.holds.items():
                self.holds[jid] = hold(named, t + HOLD_S)
            if not plan.preempts:
                break
            # the freed GPUs go to the job the victims made way for, in the same instant:
            # the model stops a job at once (no grace) and it loses the work since its start
            for victim, _ in plan.preempts:
                self._requeue(p, victim, t)

    def _held_view(self, jid: int) -> JobView | None:
        return self.views[jid - 1] if jid in self.holds else None

    def _apply_starts(self, p: _Partition, plan, t: float) -> None:
        for s in plan.starts:
            self.holds.pop(s.job, None)
            view = self.views[s.job - 1]
            p.remove(view)
            parts = s.parts or ((s.node, s.gpus),)
            if len({node for node, _ in parts}) != view.nodes:
                self.violations += 1
            for node, gpus in parts:
                held = p.busy[node]
                if held.intersection(gpus) or len(gpus) != view.gpus:
                    self.violations += 1
                held.update(gpus)
            n = view.gpus * view.nodes
            self.busy_total += n
            self.share.started(view.group, n, view.nodes > 1)
            self.start[s.job] = t
            end = t + self.left.get(s.job, self.by_id[s.job].duration)
            heapq.heappush(self.ends, (end, s.job))
            if self.use_fs:
                self.rates[view.group] = self.rates.get(view.group, 0.0) + n
            if self.preempt:
                self.ends_at[s.job] = end
                if view.preemptible or not self.by_submit:
                    self.running[s.job] = replace(view, state="RUNNING", start_time=t,
                                                  node=s.node, gpu_indices=s.gpus,
                                                  parts=s.parts)

    def _requeue(self, p: _Partition, jid: int, t: float) -> None:
        """Stop a preempted job and queue it again, as the daemon does: it keeps its submit
        time and its age, and its run so far is lost."""
        c = p.cluster
        held = c.gang_parts.get(jid) or ((c.jobs[jid][1], c.jobs[jid][2]),)
        c.finish(jid)
        for i, gpus in held:
            p.busy[c.nodes[i].name].difference_update(gpus)
        run = self.running.pop(jid)
        end = self.ends_at.pop(jid)
        n = run.gpus * run.nodes
        self.busy_total -= n
        self.share.ended(run.group, n)
        self.share.waiting(run.group, n, run.nodes > 1)
        if self.use_fs:
            self.rates[run.group] -= n
        self.preemptions += 1
        # a run that started at 0, the replay's first instant, lost its time since 0
        ran = t - (t if run.start_time is None else run.start_time)
        if self.restart_cost is not None:
            ran = min(ran, self.restart_cost)
            self.left[jid] = end - t + ran
        self.lost_gpu_s += n * ran
        view = replace(self.views[jid - 1], preemptions=run.preemptions + 1)
        self.views[jid - 1] = view
        p.add(view)


def simulate(jobs: list[TraceJob], vcs: dict[str, int], policy: str,
             record: bool = False, restart_cost: float | None = None) -> dict:
    """Replay `jobs` under one policy; figures as in the module docstring.

    With `record`, also returns per job (submit, start, finish, gpus) and the number of busy
    GPUs after every instant, for checking invariants. `restart_cost`: as --restart-cost (None:
    a preempted job loses its run)."""
    r = _Replay(jobs, vcs, policy, restart_cost)
    r.run(record)
    result = metrics(jobs, vcs, r.start, r.finish, r.total_gpus)
    result["violations"] = r.violations
    result["preemptions"] = r.preemptions
    result["lost_gpu_hours"] = r.lost_gpu_s / 3600.0
    result["share_ratio"] = r.share.ratios()
    result["worst_share"] = min(result["share_ratio"].values(), default=1.0)
    result["share_detail"] = r.share.detail()
    if record:
        result["timeline"] = r.timeline
        result["records"] = {j.id: (j.submit, r.start.get(j.id), r.finish.get(j.id), j.gpus)
                             for j in jobs}
    return result


def run(trace: str, vcs_path: str, limit: int | None = None, seed: int = 0,
        policies=POLICIES, arrival_scale: float = 1.0,
        restart_cost: float | None = None) -> dict:
    t0 = time.perf_counter()
    jobs, vcs = load_trace(trace, vcs_path, limit, seed)
    if arrival_scale != 1.0:
        jobs = [replace(j, submit=j.submit * arrival_scale) for j in jobs]
    out = {}
    for name in policies:
        t = time.perf_counter()
        out[name] = simulate(jobs, vcs, name, restart_cost=restart_cost)
        out[name]["wall_s"] = time.perf_counter() - t
    return {"wall_s": time.perf_counter() - t0, "restart_cost_s": restart_cost,
            "policies": out}


def wait_bound(trace: str, vcs_path: str, limit: int | None, seed: int,
               arrival_scale: float) -> str:
    jobs, vcs = load_trace(trace, vcs_path, limit, seed)
    jobs = [replace(j, submit=j.submit * arrival_scale) for j in jobs]
    gpus = sum(vcs.values())
    w, why = least_max_wait(jobs, gpus)
    if why is None:
        return f"no wait is forced: all {gpus} GPUs as one pool could start every job at once"
    return (f"no policy keeps every wait within {w:.0f} s ({w / 86400:.2f} days): with waits "
            f"within that, the jobs need {why.excess / gpus / 86400:.2f} days of all {gpus} "
            f"GPUs more than there are from day {why.start / 86400:.2f} to day "
            f"{why.end / 86400:.2f}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labq-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True, help="jobs.csv of the Philly trace")
    ap.add_argument("--vcs", required=True, help="vcs.csv: VC name and node count")
    ap.add_argument("--limit", type=int, default=None, help="replay the first N jobs by submit")
    ap.add_argument("--seed", type=int, default=0, help="seed of the time-limit model")
    ap.add_argument("--arrival-scale", type=float, default=1.0,
                    help="multiply submit times by this (0.25 = arrivals 4x denser, 4x the load)")
    ap.add_argument("--policy", action="append", choices=POLICIES,
                    default=None, help="replay this policy only (repeat for several; default: "
                    + ", ".join(POLICIES) + ")")
    ap.add_argument("--restart-cost", type=_seconds, default=None, metavar="S",
                    help="jobs checkpoint when signalled: a preempted job resumes, losing S "
                    "seconds of its run (default: no checkpoint, the whole run is lost)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--worst", type=int, default=0, metavar="N",
                    help="after the table, each policy's N worst backlogged VCs: share, time "
                    "backlogged, and the shortfall by what waited")
    ap.add_argument("--wait-bound", action="store_true",
                    help="print the least max wait any policy could reach (waitbound.py)")
    args = ap.parse_args(argv)
    if args.wait_bound:
        print(wait_bound(args.trace, args.vcs, args.limit, args.seed, args.arrival_scale))
        return 0
    result = run(args.trace, args.vcs, args.limit, args.seed, policies=args.policy or POLICIES,
                 arrival_scale=args.arrival_scale, restart_cost=args.restart_cost)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
        for name, m in result["policies"].items():
            if args.worst > 0:
                print(format_worst(name, m["share_detail"], args.worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
