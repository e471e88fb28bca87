"""Starting runs, for the registry: a start's fields and state, the environment a run gets,
and the launch request to its node's agent."""
from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from labq.states import JobState

from ..gangs import part_env, parts
from .info import run_key
from .slurmpool import SUBMITTED, launch_extras, record_slurm_id

if TYPE_CHECKING:
    from .link import NodeLink
    from .registry import NodeRegistry

S = JobState


def early_signal(job: dict) -> list[int] | None:
    """[signal number, seconds] of the job's --signal SIG@SECS, for its node's agent."""
    spec = job.get("early_signal")
    if not spec:
        return None
    name, secs = spec.split("@")
    return [int(getattr(signal, "SIG" + name)), int(secs)]


class Launcher:
    """Starts runs for the node registry, through its public surface: its nodes and links,
    the job table, the store and the clock it was made with."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.reg = registry

    def start_job(self, job: dict, node: str, gpus: tuple[int, ...]) -> None:
        self.reg.jobs.transition(job, S.RUNNING, "labqd", None, **self.start_fields(node, gpus))
        self.launch(job)

    def start_state(self, node: str) -> tuple[S, str | None]:
        """A start runs the job, except in a Slurm pool: there it waits until Slurm starts it."""
        if self.reg.nodes[node].kind == "slurm":
            return S.PENDING, SUBMITTED
        return S.RUNNING, None

    def start_fields(self, node: str, gpus: tuple[int, ...], gang: tuple = ()) -> dict:
        """What a start sets; the scheduler records a pass's starts together, then launches.
        `gang`: a gang's parts, ((node, GPUs), ...) in rank order."""
        started = None if self.reg.nodes[node].kind == "slurm" else self.reg.clock.time()
        return dict(node=node, gpu_indices=list(gpus), start_time=started,
                    exit_code=None, signal=None, end_time=None,
                    parts=[[n, list(g)] for n, g in gang] or None)

    def launch(self, job: dict) -> None:
        """A gang's rank 0 goes first, with its MASTER_PORT checked free on its node; the
        other parts go once it has started, so that none runs beside a rank 0 that could
        not."""
        ranks = parts(job)

        def the_others() -> None:
            for rank, (node, _) in enumerate(ranks[1:], 1):
                self.launch_run(self.reg.links[node], job, rank=rank)

        self.launch_run(self.reg.links[ranks[0][0]], job, then=the_others if job["parts"]
                        else None)

    def launch_env(self, job: dict, rank: int = 0) -> dict[str, str]:
        node, gpus = parts(job)[rank]
        env = dict(job["env"] or {})
        env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)),
                   CUDA_DEVICE_ORDER="PCI_BUS_ID", LABQ_JOB_ID=str(job["id"]),
                   LABQ_JOB_NAME=job["name"], LABQ_NODE=node,
                   LABQ_RESTART_COUNT=str(job["restarts"]))
        if job["parts"]:
            env.update(part_env(job, rank, self._address(job["node"])))
        return env

    def _address(self, node: str) -> str:
        """Where the other nodes reach `node` (a gang's MASTER_ADDR)."""
        cfg = self.reg.links[node].cfg
        return socket.getfqdn() if cfg.local else cfg.host

    def launch_run(self, link: NodeLink, job: dict, workdir: str | None = None,
                   rank: int = 0, then: Callable[[], None] | None = None) -> None:
        if "command" not in job:
            # labqd keeps a job's command and environment on disk only (labq.daemon.activejob)
            job = dict(job, **self.reg.store.cold_fields(job["id"]))
        if workdir is None and job.get("stage") and self.reg.files is not None:
            # into a scratch directory, once its files are there
            self.reg.files.stage(link, job,
                                 lambda path: self.launch_run(link, job, path, rank, then))
            return
        cmd = job["command"]
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        remaining = None
        if job["time_limit_s"] and link.cfg.kind == "slurm":
            remaining = job["time_limit_s"]  # Slurm counts it from its own start
        elif job["time_limit_s"]:
            # a launch delayed by a restart keeps the original deadline
            # (in seconds with a fraction: truncating to whole seconds cut up to a second
            # off every limit, half of a 2 s one)
            remaining = max(1.0, round(job["time_limit_s"]
                                       - (self.reg.clock.time() - job["start_time"]), 3))
        key = run_key(job, rank)

        def reply(r: dict) -> None:
            if r.get("slurm_id"):
                with self.reg.lock:
                    record_slurm_id(self.reg.store, self.reg.current(link, key), r["slurm_id"])
            if r.get("ok") or r.get("code") == "exists":
                if then is not None:
                    with self.reg.lock:
                        still = self.reg.current(link, key) is not None
                    if still:
                        then()
                return  # started, or already there
            if r.get("code") == "down":
                return  # the node went away: reconciled, or requeued with it, later
            with self.reg.lock:
                j = self.reg.current(link, key)
                if j is not None and r.get("code") == "port":
                    self.reg.requeue(j, f"{r.get('error')} on {link.name}")
                elif j is not None:
                    why = (f"{link.name} runs no job of {j['owner']}: {r.get('error')}"
                           if r.get("code") == "account" else
                           f"launch on {link.name} failed: {r.get('error')}")
                    if j["parts"]:
                        self.reg.cancel_run(j, but=rank)
                    self.reg.jobs.transition(j, S.FAILED, "labqd", why,
                                             end_time=self.reg.clock.time())
        env = dict(self.launch_env(job, rank), LABQ_WORKDIR=workdir or job["cwd"])
        extra = launch_extras(job) if link.cfg.kind == "slurm" else {}
        if then is not None:  # a gang's rank 0: its node checks MASTER_PORT is free
            extra["master_port"] = int(env["MASTER_PORT"])
        link.request("launch", reply, job=key, argv=argv, env=env, **extra,
                     cwd=workdir or job["cwd"], time_limit_s=remaining,
                     grace_s=self.reg.cfg.kill_grace_s,
                     user=job["owner"], uid=job["owner_uid"], memory_mb=job["memory_mb"],
                     pids_max=self.reg.cfg.limits.get("job_max_pids"),
                     shared=link.cfg.shared_account, early_signal=early_signal(job))
