"""An active job as labqd keeps it in memory: the fields scheduling and the hot paths read.

The environment, the command, the working directory, the name, a sweep task's values and the
idempotency key stay in the database and are read when a job is shown or launched (`COLD`):
with the exported environment they are most of a job's bytes, and a queue of 100k held jobs
must not hold them all. Slots instead of a dict
keep each job a few hundred bytes; the mapping methods let the rest of the daemon read it as
the row it mirrors.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

HOT = ("id", "owner", "owner_uid", "group", "gpus", "gpu_type", "gpu_memory_mb", "cpus",
       "memory_mb", "time_limit_s", "priority", "dependencies", "partition", "requeue",
       "state", "exit_code", "signal", "reason", "submit_time", "eligible_time", "start_time",
       "end_time", "node", "gpu_indices", "restarts", "notify", "experiment", "array_id",
       "array_index", "array_limit", "preemptible", "preemptions", "early_signal", "nodes",
       "parts", "results")
COLD = ("name", "command", "cwd", "env", "params", "key")
# repeated in every job: one string object each, not one per job
_SHARED = ("owner", "group", "partition", "state", "node", "gpu_type", "notify", "experiment")


def _init() -> Any:
    """ActiveJob's __init__, one assignment per field: a batch of ten thousand submits
    makes ten thousand, and a loop of setattr() costs twice as much."""
    lines = ["def __init__(self, row):", "    get = row.get"]
    lines += [f"    self.{k} = get({k!r})" for k in HOT]
    for k in _SHARED:
        lines += [f"    if type(self.{k}) is str:", f"        self.{k} = intern(self.{k})"]
    scope: dict[str, Any] = {"intern": sys.intern}
    exec("\n".join(lines), scope)  # the text is built from HOT alone
    return scope["__init__"]


def _copy() -> Any:
    """ActiveJob.copy: a batch of alike submits makes ten thousand jobs from one, and
    copying the fields costs a quarter of reading them from a row."""
    lines = ["def copy(self, id):", "    new = make(type(self))", "    new.id = id"]
    lines += [f"    new.{k} = self.{k}" for k in HOT if k not in ("id", "gpu_indices")]
    lines += ["    gpus = self.gpu_indices",
              "    new.gpu_indices = gpus if gpus is None else list(gpus)", "    return new"]
    scope: dict[str, Any] = {"make": object.__new__}
    exec("\n".join(lines), scope)  # the text is built from HOT alone
    return scope["copy"]


class ActiveJob:
    __slots__ = HOT

    __init__ = _init()
    # a job like this one with id `id`: its own list of GPUs, every other value shared
    copy = _copy()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _SHARED and type(value) is str:
            value = sys.intern(value)
        setattr(self, key, value)  # AttributeError for a cold field: it is never kept here

    def __contains__(self, key: object) -> bool:
        return key in HOT

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in HOT else default

    def update(self, fields: dict[str, Any]) -> None:
        for k, v in fields.items():
            self[k] = v

    def keys(self) -> tuple[str, ...]:
        return HOT

    def __iter__(self) -> Iterator[str]:
        return iter(HOT)

    def dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HOT}
