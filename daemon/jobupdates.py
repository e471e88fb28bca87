"""Part of the job table: changing a waiting job's priority or time limit, which its owner may
only lower, as with Slurm's `scontrol update`."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labq.errors import InvalidState, PermissionDenied, ValidationError
from labq.states import JobState
from labq.units import format_duration

from .identity import Caller
from .policy import PolicyConfig

if TYPE_CHECKING:
    from . import store as st
    from .activejob import ActiveJob
    from .admission import Admission
    from .config import Config

WORDS = {"priority": "priority", "time_limit_s": "time limit"}  # a job's fields, in words


class Updates:
    """Mixed into JobTable, which holds the jobs and the lock."""

    if TYPE_CHECKING:
        cfg: Config
        store: st.Store
        lock: threading.RLock
        active: dict[int, ActiveJob]
        admission: Admission
        wake: threading.Event

        def _owned(self, caller: Caller, job_id: Any) -> dict: ...

        def set_view(self, job: ActiveJob) -> None: ...

        def view(self, caller: Caller, row: dict) -> dict: ...

        def job_row(self, job_id: Any) -> dict: ...

    def set_priority(self, caller: Caller, job_id: Any, priority: Any) -> dict:
        if type(priority) is not int or not 1 <= priority <= 10:
            raise ValidationError("priority: must be an integer from 1 to 10",
                                  {"field": "priority"})
        return self._lower(caller, job_id, "priority", priority, str)

    def set_time_limit(self, caller: Caller, job_id: Any, seconds: Any) -> dict:
        if type(seconds) is not int or seconds < 1:
            raise ValidationError("time_limit_s: must be a positive number of seconds",
                                  {"field": "time_limit_s"})
        self.admission.check_submit_limits(caller, {"gpus": 0, "time_limit_s": seconds})
        return self._lower(caller, job_id, "time_limit_s", seconds, format_duration)

    def _lower(self, caller: Caller, job_id: Any, field: str, new: int,
               show: Callable[[int], str]) -> dict:
        """Change a waiting job's `field`. Its owner may only lower it, as with Slurm's
        `scontrol update`: a job cannot jump ahead of others or hold GPUs longer than it
        asked when it queued; admins change it either way."""
        row = self._owned(caller, job_id)
        with self.lock:
            job = self.active.get(row["id"])
            if job is None or job["state"] == JobState.RUNNING.value:
                raise InvalidState(f"job {row['id']} is {row['state']}; only pending or held "
                                   f"jobs can change {WORDS[field]}",
                                   {"id": row["id"], "state": row["state"]})
            old = job[field]
            # no limit given means the scheduler's default, which is what it may go below
            now = old if old is not None else self.cfg.scheduler.get(
                "default_time_limit", PolicyConfig.default_time_limit_s)
            if new > now and not caller.admin:
                raise PermissionDenied(
                    f"job {row['id']}: only an admin raises {WORDS[field]} "
                    f"(now {show(now)}; you may set {show(now)} or less)",
                    {"id": row["id"], "field": field, "value": now})
            self.store.record_change(job["id"], job["state"], caller.user, field,
                                     f"{WORDS[field]} {'none' if old is None else show(old)}"
                                     f" -> {show(new)}", new)
            job[field] = new
            self.set_view(job)
        self.wake.set()
        return self.view(caller, self.job_row(row["id"]))
