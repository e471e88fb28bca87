"""A node's live view in the registry, what its hello says it has and whose jobs it runs, and
how `labq nodes` shows it."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from labq.states import JobState

from ..config import NodeConfig

log = logging.getLogger("labqd")

S = JobState


@dataclass
class NodeInfo:
    name: str
    host: str
    state: str = "connecting"  # connecting, up, down, refused
    reason: str | None = None
    drained: bool = False
    cpus: int = 0
    memory_mb: int = 0
    gpus: list[dict] = field(default_factory=list)  # index, type, memory_mb, uuid
    gpu_source: str | None = None
    stats: dict = field(default_factory=dict)
    last_seen: float | None = None
    down_since: float | None = None  # monotonic time the link was lost
    job_root: str = ""
    dynamic: bool = False
    # the agent's account, and whose jobs it may run (see accounts())
    agent_uid: int | None = None
    agent_user: str | None = None
    only_uid: int | None = None
    root_ok: bool = True
    accounts: str = ""  # in words, for `labq nodes`
    containment: str | None = None
    kind: str = "host"  # or "slurm": a Slurm cluster behind its login host
    max_jobs: int | None = None  # a Slurm pool's: labq's jobs there at once
    pool: dict = field(default_factory=dict)  # a Slurm pool's partition, from sinfo
    partition: str | None = None


def run_key(job: dict, rank: int = 0) -> str:
    """A run's key: "<id>.<restarts>", and "<id>.<restarts>.<rank>" for a gang's part
    `rank` > 0 (rank 0 is keyed as a job on one node)."""
    key = f"{job['id']}.{job['restarts']}"
    return f"{key}.{rank}" if rank else key


def parse_key(key: str) -> tuple[int, int]:
    """(job id, restarts) of a run key."""
    job, run, _ = parse_part_key(key)
    return job, run


def parse_part_key(key: str) -> tuple[int, int, int]:
    """(job id, restarts, rank) of a run key."""
    job, _, rest = str(key).partition(".")
    run, _, rank = rest.partition(".")
    return int(job), int(run or 0), int(rank or 0)


def node_rows(nodes: Iterable[NodeInfo], active: Iterable[dict]) -> list[dict]:
    """What `labq nodes` shows: each node with its free resources and who holds its GPUs."""
    holders: dict[tuple[str, int], int] = {}
    running: dict[str, list[int]] = {}
    waiting: dict[str, int] = {}  # jobs waiting in a Slurm pool
    used: dict[str, list[int]] = {}
    for j in active:
        if j["state"] == S.PENDING.value and j["node"] is not None:
            waiting[j["node"]] = waiting.get(j["node"], 0) + 1
            for g in j["gpu_indices"]:
                holders[(j["node"], g)] = j["id"]
        if j["state"] != S.RUNNING.value:
            continue
        for node, gpu_indices in j["parts"] or ((j["node"], j["gpu_indices"]),):
            running.setdefault(node, []).append(j["id"])
            u = used.setdefault(node, [0, 0])
            u[0] += j["cpus"]
            u[1] += j["memory_mb"] or 0
            for g in gpu_indices:
                holders[(node, g)] = j["id"]
    out = []
    for n in nodes:
        stats_gpus = {g["index"]: g for g in n.stats.get("gpus", [])}
        gpus = []
        for g in n.gpus:
            s = stats_gpus.get(g["index"], {})
            gpus.append(dict(g, utilization=s.get("utilization"),
                             memory_used_mb=s.get("memory_used_mb"),
                             job=holders.get((n.name, g["index"]))))
        u = used.get(n.name, [0, 0])
        state = "drain" if n.drained and n.state == "up" else n.state
        out.append({"name": n.name, "host": n.host, "state": state,
                    "reason": n.reason, "cpus": n.cpus, "memory_mb": n.memory_mb,
                    "free_cpus": n.cpus - u[0], "free_memory_mb": n.memory_mb - u[1],
                    "cpu_percent": n.stats.get("cpu_percent"),
                    "memory_used_mb": n.stats.get("memory_used_mb"),
                    "gpu_source": n.gpu_source, "gpus": gpus,
                    "runs_jobs_of": n.accounts or None,
                    "containment": n.containment,
                    "running_jobs": sorted(running.get(n.name, [])),
                    "last_seen": n.last_seen, "kind": n.kind,
                    "pool": pool_row(n, len(running.get(n.name, [])),
                                     waiting.get(n.name, 0),
                                     sum(g["job"] is not None for g in gpus))})
    return out


def pool_row(n: NodeInfo, running: int, waiting: int, gpus_held: int) -> dict | None:
    """A Slurm pool's partition as sinfo last showed it, and labq's own share of it."""
    if n.kind != "slurm":
        return None
    return dict(n.pool, partition=n.partition, max_gpus=len(n.gpus), max_jobs=n.max_jobs,
                labq_running=running, labq_waiting=waiting, labq_gpus=gpus_held)


def node_gpus(name: str, cfg: NodeConfig, hello: dict) -> tuple[list[dict], str]:
    """A node's GPUs: declared in its config, else what its agent detected (restricted to
    gpu_indices), and where the list came from."""
    if cfg.gpus is not None:
        return ([{"index": g.get("index", i), "type": g["type"],
                  "memory_mb": g.get("memory_mb", 0), "uuid": None}
                 for i, g in enumerate(cfg.gpus)], "config")
    detected = [{"index": g["index"], "type": g["type"], "memory_mb": g["memory_mb"],
                 "uuid": g.get("uuid")} for g in hello.get("gpus", [])]
    if cfg.gpu_indices is not None:
        detected = [g for g in detected if g["index"] in set(cfg.gpu_indices)]
    if not detected:
        log.info("node %s: no GPUs detected (%s); it takes CPU jobs only", name,
                 "; ".join(hello.get("gpu_notes", [])) or "none found")
    return detected, hello.get("gpu_source", "none")


def accounts(cfg: NodeConfig, hello: dict, serves_others: bool) -> tuple[int | None, bool, str]:
    """(only_uid, root_ok, words): whose jobs the node's agent runs, as in Slurm: a root
    agent runs each job as its owner; an agent that is not root runs only its own account's
    jobs, or everyone's as that account where the node says shared_account = true, but
    never as labqd's own account while labqd serves other users (a job would then own
    labqd's database, keys and processes)."""
    uid = hello.get("euid")
    user = hello.get("user") or str(uid)
    if uid is None:
        return -2, False, "nobody (the agent did not say which account it runs as)"
    if uid == 0:
        root_ok = bool(hello.get("root_jobs"))
        return None, root_ok, ("every user, as themselves" if root_ok else
                               "every user but root, as themselves")
    if cfg.shared_account:
        if uid == os.geteuid() and serves_others:
            return uid, False, (f"only {user}: shared_account is refused for labqd's own "
                                "account while labqd serves other users")
        return None, False, f"every user, all as {user} (shared_account)"
    return uid, False, f"only {user} (the agent is not root)"
