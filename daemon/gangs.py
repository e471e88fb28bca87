"""Gangs: one job of N parts, one on each of N distinct nodes, started together.

What a submit may ask for, given the cluster's nodes, and what each part's run is told: the
variables torchrun reads, so that `torchrun train.py` works as is on every node.

A row keeps the job's GPUs in all (`gpus`, as Slurm's --gpus) and its `nodes`; each part gets
gpus // nodes of them, and the job's CPUs and memory. A running gang's `parts` are
[[node, [GPU indices]], ...] in rank order; `node` and `gpu_indices` are rank 0's.
"""
from __future__ import annotations

from typing import Any

from labq.errors import ValidationError

# MASTER_PORT: one per job in a range clear of the usual ephemeral ports (32768-60999)
PORT_BASE, PORT_SPAN = 20000, 10000


def fit_to_cluster(spec: dict[str, Any], sizes: list[int | None]) -> None:
    """Settle `spec["nodes"]` against the GPU counts of the cluster's nodes (None for a node
    not seen yet, which could have any), or refuse.

    GPUs no node has, asked for without --nodes, are split into whole nodes of the largest
    size when they are a multiple of it and that many nodes have it (--gpus 16 on nodes of 8:
    two parts of 8); otherwise the job stays on one node (and waits NoNodeFits, as before).
    A gang asking for more nodes than the cluster has, or more GPUs per node than any node
    has, is refused."""
    nodes, gpus = spec.get("nodes"), spec["gpus"]
    known = [s for s in sizes if s is not None]
    unknown = len(sizes) - len(known)
    most = max(known, default=0)
    if nodes is None:
        nodes = 1
        if most and gpus > most and gpus % most == 0 and known.count(most) >= gpus // most:
            nodes = gpus // most
        spec["nodes"] = nodes
        return
    if nodes <= 1 or not sizes:
        return
    per = gpus // nodes
    if nodes > len(sizes):
        raise ValidationError(f"nodes: asks for {nodes} nodes; the cluster has {len(sizes)}",
                              {"field": "nodes", "value": nodes, "nodes": len(sizes)})
    if per > most and not unknown:
        raise ValidationError(f"gpus_per_node: asks for {per} GPUs on each node; no node has "
                              f"more than {most}", {"field": "gpus_per_node", "value": per})
    have = sum(1 for s in known if s >= per) + unknown
    if have < nodes:
        raise ValidationError(f"nodes: asks for {nodes} nodes of {per} GPUs; the cluster has "
                              f"{have}", {"field": "nodes", "value": nodes, "nodes": have})


def parts(job: dict) -> list[tuple[str, list[int]]]:
    """(node, GPU indices) of each part of a running job, in rank order: one for a job on
    one node."""
    if job.get("parts"):
        return [(n, list(g)) for n, g in job["parts"]]
    return [(job["node"], list(job["gpu_indices"] or []))]


def ranks_on(job: dict, node: str) -> list[int]:
    """The ranks of a running job's parts on `node`."""
    return [r for r, (n, _) in enumerate(parts(job)) if n == node]


def master_port(job_id: int, restarts: int = 0) -> int:
    """A gang's MASTER_PORT; another each time it is queued again (a run whose port was in
    use on rank 0's node is queued again at once)."""
    return PORT_BASE + (job_id + 7919 * restarts) % PORT_SPAN


def part_env(job: dict, rank: int, master_addr: str) -> dict[str, str]:
    """What part `rank` of a gang is told. WORLD_SIZE is the number of processes torchrun
    starts in all, one per GPU (nodes x GPUs per node; nodes for a gang without GPUs), which
    is also what it gives each of its workers; PET_* are torchrun's own defaults for its
    --nnodes, --node-rank, --nproc-per-node, --master-addr and --master-port."""
    n = job["nodes"]
    per = job["gpus"] // n
    port = str(master_port(job["id"], job["restarts"]))
    env = {"LABQ_NODE_RANK": str(rank), "LABQ_NUM_NODES": str(n), "NODE_RANK": str(rank),
           "MASTER_ADDR": master_addr, "MASTER_PORT": port,
           "WORLD_SIZE": str(n * per if per else n),
           "PET_NNODES": str(n), "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": master_addr,
           "PET_MASTER_PORT": port}
    if per:
        env["PET_NPROC_PER_NODE"] = str(per)
    return env


def log_key(job_id: int, rank: int) -> int | str:
    """The key of a part's log copy: rank 0's is the job's own log."""
    return f"{job_id}.{rank}" if rank else job_id


def part_failed(rank: int, node: str, code: int | None, sig: int | None,
                why: str | None) -> str | None:
    """Why a gang fails with the end of its part `rank`, or None: a part that exits 0 is done,
    and rank 0's end or a time limit is the gang's own (judged as a job on one node's)."""
    if rank == 0 or code == 0 or why == "timeout":
        return None
    detail = f"killed by signal {sig}" if sig else f"exit code {code}"
    if why == "oom":
        detail = f"out of memory ({detail})"
    return f"part {rank} on {node} failed: {detail}"
