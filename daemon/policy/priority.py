"""Multifactor priority (Slurm's): a weighted sum of factors in [0, 1].

- age: (now - eligible) / max_age_s, capped at 1; eligible is `eligible_time`, else the submit
  time. It stays 0 while a job is held or waits on a dependency (the daemon sets
  `eligible_time` when that ends).
- fair-share: see fairshare.py.
- user priority: 1..10 mapped to 0..1.
- size: GPUs asked for relative to the largest node (weight 0 unless configured).
- short: 1 / (1 + time limit / default time limit), favouring short limits (weight 0 unless
  configured). With short_step, the time limit counts rounded up to a power of that ratio, so
  that jobs differing only a little in their limits stay in one class.
With starved_first, a job that has waited max_age_s instead gets the highest priority any job
can have (starved_priority): starved jobs go first, among themselves by submit time.
Ties go to the earlier submit, then the lower id.

Pending jobs are kept in classes of jobs that differ only in age (`class_key`): every member
shares the rest of the priority (`class_constant`), so the queue (queue.py) keeps each class in
age order and the walk merges the heads of the classes.
"""
from __future__ import annotations

import math

from .snapshot import JobView, PolicyConfig


def user_factor(priority: int) -> float:
    return (min(10, max(1, priority)) - 1) / 9.0


def size_factor(gpus: int, largest_node_gpus: int) -> float:
    return min(1.0, gpus / largest_node_gpus) if largest_node_gpus > 0 else 0.0


def stepped(time_limit_s: float, step: float) -> float:
    """The time limit rounded up to a power of `step` (in seconds)."""
    if time_limit_s <= 1.0:
        return 1.0
    return step ** math.ceil(math.log(time_limit_s) / math.log(step) - 1e-9)


def short_factor(time_limit_s: float | None, config: PolicyConfig) -> float:
    tl = config.default_time_limit_s if time_limit_s is None else time_limit_s
    if config.short_step > 1.0:
        tl = stepped(tl, config.short_step)
    return 1.0 / (1.0 + max(0.0, tl) / config.default_time_limit_s)


def time_limit(job: JobView, config: PolicyConfig) -> float:
    return config.default_time_limit_s if job.time_limit_s is None else job.time_limit_s


def _request(j: JobView) -> tuple:
    return (j.group, j.owner, j.owner_uid, j.priority, j.partition, j.gpus, j.gpu_type,
            j.gpu_memory_mb, j.cpus, j.memory_mb, j.array_limit and j.array_id, j.nodes)


def _request_and_limit(j: JobView) -> tuple:
    return (j.group, j.owner, j.owner_uid, j.priority, j.partition, j.gpus, j.gpu_type,
            j.gpu_memory_mb, j.cpus, j.memory_mb, j.array_limit and j.array_id, j.nodes,
            j.time_limit_s)


def _request_and_step(step: float):
    def key(j: JobView) -> tuple:
        tl = j.time_limit_s
        return (j.group, j.owner, j.owner_uid, j.priority, j.partition, j.gpus, j.gpu_type,
                j.gpu_memory_mb, j.cpus, j.memory_mb, j.array_limit and j.array_id, j.nodes,
                None if tl is None else stepped(tl, step))
    return key


def class_key(config: PolicyConfig):
    """job -> its class under this config: the fields every member shares, all that placement,
    limits and priority look at. The uid counts apart from the user name: rows older than the
    uid column have none (-1), and nodes that run one account's jobs only go by uid. A gang and
    a job of one node differ in placement though they ask as much per node. The short
    factor splits classes by time limit (by its step, with short_step); a throttled array is
    a class of its own, so that its throttle settles the whole class. Plain functions rather
    than attrgetter: CPython 3.11 specialises their attribute loads, which counts over a queue
    of 100,000."""
    if not config.weight_short:
        return _request
    return _request_and_step(config.short_step) if config.short_step > 1.0 else \
        _request_and_limit


def starved_priority(config: PolicyConfig) -> float | None:
    """The priority of a job that has waited max_age_s when starved_first is on (the most any
    other job can reach, so ties go by submit time), else None."""
    if not (config.starved_first and config.weight_age > 0 and config.max_age_s > 0):
        return None
    return (config.weight_fairshare + config.weight_priority + config.weight_size
            + config.weight_short + config.weight_age)


def static_rank(config: PolicyConfig, largest_node_gpus: int):
    """With no weight on age or fair-share a class's priority is fixed by its key: class ->
    (-priority, first member's submit time, its id), the order in which the walk takes the
    classes. The priority is summed as the walk sums it, to the last bit."""
    wf, wp, ws, wsh = (config.weight_fairshare, config.weight_priority, config.weight_size,
                       config.weight_short)

    def rank(c) -> tuple:
        h = c.head
        const = wf * 1.0 + wp * user_factor(h.priority)
        if ws:
            const += ws * size_factor(h.gpus, largest_node_gpus)
        if wsh:
            const += wsh * short_factor(h.time_limit_s, config)
        first = c.ordered()[0]
        return (-const, first.submit_time, first.id)
    return rank


def class_constant(head: JobView, config: PolicyConfig, fairshare: float,
                   largest_node_gpus: int) -> float:
    """The part of the priority that every member of `head`'s class shares."""
    p = config.weight_fairshare * fairshare + config.weight_priority * user_factor(head.priority)
    if config.weight_size:
        p += config.weight_size * size_factor(head.gpus, largest_node_gpus)
    if config.weight_short:
        p += config.weight_short * short_factor(head.time_limit_s, config)
    return p
