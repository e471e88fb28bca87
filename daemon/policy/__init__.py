"""The scheduling policy: a pure function from a snapshot of the cluster and the queue to a plan.

    plan(snapshot, now) -> Plan(starts, reasons, priorities, estimates, cancels)

No I/O, no clock reads, no database: the daemon builds the snapshot from its store and passes
`now`; the replay simulator (labq.daemon.sim, outside the package because it reads trace files
and times itself) keeps a cluster and a queue across events and calls `schedule`. The modules:

- snapshot: what the policy sees and what it answers (JobView, NodeView, Snapshot, Plan, ...)
- planner: `plan`, and `schedule` for a cluster and queue the caller keeps (the simulator)
- priority: the multifactor priority; queue: pending jobs in classes, each in priority order
- memo: the active jobs sorted out for a plan, kept between plans by a PlanMemo
- walk: the walk down the queue in priority order: placement, reservation, backfill
- placement, limits, backfill: best fit, the limits that make a job wait, EASY backfill
- reasons: the plan's pending reasons and priorities, computed on access
- fairshare, dependencies, estimates: usage and its factor, afterok/afterany/afternotok, and the
  expected start of waiting jobs
- preempt: which running jobs to requeue so that the top waiting job starts
- ready, streams: for a cluster and queue kept across plans (the simulator), when each node
  could take a job of a given size, and the classes in order when priorities are fixed
"""
from .estimates import estimate
from .memo import PlanMemo
from .placement import could_ever_fit, gpu_matches
from .planner import plan, schedule
from .snapshot import (
                       Dependency,
                       GpuSlot,
                       JobView,
                       Limits,
                       NodeView,
                       Plan,
                       PolicyConfig,
                       Snapshot,
                       Start,
)

__all__ = ["plan", "schedule", "estimate", "PlanMemo", "Snapshot", "JobView", "NodeView",
           "GpuSlot", "Start", "Plan", "PolicyConfig", "Limits", "Dependency", "gpu_matches",
           "could_ever_fit"]
