"""What the scheduling policy sees: plain values, built by the daemon from its store or by the
replay simulator from a trace. Nothing here reads a clock, a file or a database."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .waiting import Reserved


@dataclass(frozen=True)
class GpuSlot:
    index: int
    type: str
    memory_mb: int


@dataclass
class NodeView:
    name: str
    state: str  # "up", "down", "drain"
    cpus: int
    memory_mb: int
    gpus: tuple[GpuSlot, ...]
    free_gpus: frozenset[int]
    free_cpus: int
    free_memory_mb: int
    # whose jobs the node's agent may run: None = anyone's (a root agent, or a shared account);
    # else only this uid's (an agent that is not root runs its own account's jobs alone)
    only_uid: int | None = None
    root_ok: bool = True  # False where the agent refuses root's jobs (the head node's agent)
    # False for a Slurm pool: Slurm places what labq sends it, so no gang's part goes there
    gang_ok: bool = True


@dataclass(frozen=True)
class Dependency:
    kind: str  # "afterok", "afterany", "afternotok"
    job: int


@dataclass(slots=True)  # one per active job: 100k of them must stay small
class JobView:
    id: int
    owner: str
    group: str
    state: str  # "PENDING", "HELD" or "RUNNING"
    priority: int  # the user's 1-10
    submit_time: float
    gpus: int = 0
    gpu_type: str | None = None
    gpu_memory_mb: int | None = None
    cpus: int = 1
    memory_mb: int = 0
    time_limit_s: float | None = None
    dependencies: tuple[Dependency, ...] = ()
    partition: str = "default"
    # when the last dependency was satisfied or the job was released; age counts from here
    eligible_time: float | None = None
    owner_uid: int = -1  # the owner's Unix uid; -1 in the replay, where no node cares
    # a task of an array or sweep: at most `array_limit` tasks of `array_id` run at once
    # (Slurm's %N); no limit when None
    array_id: int | None = None
    array_limit: int | None = None
    # may be stopped and requeued for a job that is not (preempt.py); times it was so far
    preemptible: bool = False
    preemptions: int = 0
    # a gang: one part on each of `nodes` distinct nodes, all started together; gpus, cpus
    # and memory_mb are per part
    nodes: int = 1
    # RUNNING jobs only; a running gang's node and gpu_indices are its rank 0's, and `parts`
    # every part's (node, GPUs) in rank order
    node: str | None = None
    gpu_indices: tuple[int, ...] = ()
    start_time: float | None = None
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass
class Limits:
    """Limits that make a job wait; None means unlimited."""
    group_gpus: dict[str, int] = field(default_factory=dict)  # group -> max GPUs in use
    group_gpu_type: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, type)
    user_jobs: int | None = None  # max running jobs per user
    user_gpus: int | None = None  # max GPUs in use per user
    partition_user_jobs: dict[str, int] = field(default_factory=dict)


@dataclass
class PolicyConfig:
    weight_age: float = 1000.0
    weight_fairshare: float = 10000.0
    weight_priority: float = 1000.0
    weight_size: float = 0.0
    max_age_s: float = 7 * 86400.0
    default_time_limit_s: float = 7 * 86400.0
    group_shares: dict[str, float] = field(default_factory=dict)  # missing group -> 1
    user_shares: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, user)
    limits: Limits = field(default_factory=Limits)
    backfill: bool = True
    cancel_unsatisfiable: bool = True
    # fair-share usage halves every this many seconds (the daemon and the simulator decay with it)
    usage_half_life_s: float = 7 * 86400.0
    # a CPU-second counts as this many GPU-seconds of usage
    cpu_weight: float = 0.0
    # optional factor favouring short time limits (0 = off, as in Slurm)
    weight_short: float = 0.0
    # above 1: the short factor counts time limits rounded up to a power of this ratio
    short_step: float = 0.0
    # a job that has waited max_age_s goes ahead of every job that has not, first come first
    # served among them (needs weight_age > 0): a bound on waits that fair-share cannot undo
    starved_first: bool = False
    # how many starved jobs hold a backfill reservation each (the top job's is the first;
    # 1: the top job's alone, EASY backfill)
    starved_reservations: int = 1
    # preemption budget: a job is preempted at most this many times, and only after it has
    # run this long (0 preemptions: never preempt)
    preempt_max: int = 3
    preempt_min_run_s: float = 300.0
    # a job that has run longer than this is no longer preempted: its run would be lost
    # (0: no such limit)
    preempt_max_run_s: float = 0.0
    # the scavenger tier is what a group runs beyond its share: its jobs may be preempted
    # while it holds more GPUs than its share, for a group under its share (preempt.py)
    preempt_over_share: bool = False
    # the tier takes back only for a group that holds at most this fraction of its share
    preempt_share_floor: float = 1.0


@dataclass
class Snapshot:
    nodes: list[NodeView]
    jobs: list[JobView]  # every PENDING, HELD and RUNNING job
    # final state of every ended job that an active job depends on: id -> state name
    ended: dict[int, str] = field(default_factory=dict)
    # decayed usage (GPU-seconds, CPU time weighted in) as of `now`
    group_usage: dict[str, float] = field(default_factory=dict)
    user_usage: dict[tuple[str, str], float] = field(default_factory=dict)
    config: PolicyConfig = field(default_factory=PolicyConfig)
    # a policy.PlanMemo the daemon passes on every pass (the same object each time) so that a
    # plan costs in proportion to what changed; None plans from scratch. Either way the plan is
    # the same. With a memo, an unchanged job must be the same JobView object as in the
    # previous snapshot and a changed job a new object: JobViews are never modified.
    memo: object | None = field(default=None, compare=False, repr=False)
    # pending job id -> the policy.holds.Hold of the GPUs its preemption freed
    holds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    job: int
    node: str
    gpus: tuple[int, ...]
    # a gang's parts, (node, GPUs) in rank order; node and gpus above are rank 0's
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass
class Plan:
    starts: list[Start] = field(default_factory=list)
    # a reason for every PENDING or HELD job not started; plan() returns a read-only mapping
    # computed on access (reasons.py): look jobs up, iterate only to see them all
    reasons: Mapping[int, str] = field(default_factory=dict)
    # expected start time for pending jobs the plan could place in time
    estimates: dict[int, float] = field(default_factory=dict)
    # jobs to cancel with a reason (a dependency that can never be met)
    cancels: list[tuple[int, str]] = field(default_factory=list)
    # the computed priority of every PENDING job (a read-only mapping, as reasons)
    priorities: Mapping[int, float] = field(default_factory=dict)
    # (running job to stop and requeue, the pending job it makes room for)
    preempts: list[tuple[int, int]] = field(default_factory=list)
    # the pending job a preemption makes room for -> (node, the GPUs it may have there): the
    # caller keeps them as a policy.holds.Hold for it until it starts (holds.py)
    holds: dict[int, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    # the backfill reservation, and job id -> the longest time limit with
    # which a job that backfill keeps waiting would start now (a mapping computed on access)
    reservation: Reserved | None = None
    backfill_limits: Mapping[int, float] = field(default_factory=dict)
