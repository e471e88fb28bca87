"""labqd's side of a Slurm pool (a [[node]] with kind = "slurm"): its capacity as the
policy sees it, what a launch tells the pool's agent, and Slurm's word on a job turned into
labq's states. The agent on the login host does the talking to Slurm (agent/slurm.py).

A job the policy places in a pool stays PENDING, with the pool as its node and the reason
`Slurm:<squeue's reason>`, until Slurm starts it; then it is RUNNING from Slurm's start time.
"""
from __future__ import annotations

from collections.abc import Callable

from labq.states import JobState

from ..clock import Clock
from ..config import NodeConfig
from ..jobtable import JobTable
from ..store import Store
from ..views import sent_to_pool

S = JobState
SUBMITTED = "Slurm:Submitted"
RUNNING_STATES = ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED")
# without a cpus or memory line in its entry, a pool is bounded by max_gpus and max_jobs only
UNBOUNDED_CPUS = 1 << 20
UNBOUNDED_MB = 1 << 40


def sent_here(job, node: str) -> bool:
    return sent_to_pool(job) and job["node"] == node


def pool_gpus(cfg: NodeConfig) -> list[dict]:
    """max_gpus slots that stand for the pool's GPUs: what labq may have there at once. Their
    type names every type the partition offers, so `--gpu-type A100` matches as on a node."""
    kind = ",".join(cfg.gpu_types) or "slurm"
    return [{"index": i, "type": kind, "memory_mb": 0, "uuid": None}
            for i in range(cfg.max_gpus)]


def pool_node_size(cfg: NodeConfig) -> tuple[int, int]:
    return cfg.cpus or UNBOUNDED_CPUS, cfg.memory_mb or UNBOUNDED_MB


def launch_extras(job) -> dict:
    """What sbatch needs beyond a node launch; GPUs are Slurm's to pick."""
    return {"slurm": {"gpus": len(job["gpu_indices"]) or job["gpus"],
                      "gpu_type": job["gpu_type"], "cpus": job["cpus"], "name": job["name"],
                      "requeue": bool(job["requeue"])}}


def record_slurm_id(store: Store, job, slurm_id: str) -> None:
    if job is not None:
        with store.write():
            store.update_job(job["id"], slurm_id=str(slurm_id))


def pool_event(jobs: JobTable, job, msg: dict, clock: Clock) -> None:
    """Slurm's state of a job labq sent (called with the job lock held)."""
    state, sid = msg.get("state") or "", msg.get("id")
    if job["state"] == S.RUNNING.value and state == "PENDING":
        # Slurm requeued it (scontrol requeue, a node failure, preemption): it waits there
        # again under the same Slurm job id
        jobs.transition(job, S.PENDING, "labqd", f"requeued by Slurm (job {sid})",
                        start_time=None)
    if not sent_to_pool(job):
        return
    if state in RUNNING_STATES:
        jobs.transition(job, S.RUNNING, "labqd", f"Slurm job {sid}",
                        start_time=msg.get("start") or clock.time())
        return
    if msg.get("estimate"):
        jobs.pool_estimates[job["id"]] = msg["estimate"]
    reason = f"Slurm:{msg.get('reason') or 'None'}"
    if job["reason"] != reason:
        with jobs.store.write():
            jobs.store.update_job(job["id"], reason=reason)
        job["reason"] = reason
        jobs.changed.notify_all()


def slurm_exit(jobs: JobTable, job, msg: dict,
               lost: Callable[[object, str], None]) -> bool:
    """An ended Slurm job; True when handled here, False to go on as for any node's run (a
    job Slurm ran between two polls first becomes RUNNING from Slurm's start)."""
    sid, why = msg.get("slurm_id"), msg.get("reason")
    if job["id"] in jobs.cancel_requests:
        return False
    if why == "lost":
        lost(job, f"Slurm job {sid} ended {msg.get('slurm_state')}")
        return True
    if why == "cancelled":
        if sent_to_pool(job):
            jobs.transition(job, S.CANCELLED, "labqd", f"Slurm job {sid} was cancelled in Slurm",
                            end_time=msg.get("end"))
        else:
            jobs.transition(job, S.CANCELLED, "labqd", f"Slurm job {sid} was cancelled in Slurm",
                            exit_code=msg.get("code"), signal=msg.get("signal"),
                            end_time=msg.get("end"))
        return True
    if sent_to_pool(job):
        jobs.transition(job, S.RUNNING, "labqd", f"Slurm job {sid}",
                        start_time=msg.get("start") or msg.get("end"))
    return False
