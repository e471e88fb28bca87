"""What cancel, hold and release can do to a set of jobs, said before anything is sent: the
TUI asks to confirm only what the daemon would do, and says why the rest is left alone."""
from __future__ import annotations

from dataclasses import dataclass

from labq import Job, JobState

VERBS = {"cancel": ("Cancel", "cancelled"), "hold": ("Hold", "held"),
         "release": ("Release", "released")}
# what a refused request's toast is titled: what did not happen, in words
FAILED_TITLES = {"cancel": "not cancelled", "hold": "not held", "release": "not released",
                 "job_priority": "priority not changed", "node_drain": "node not drained",
                 "node_resume": "node not resumed", "group_set": "group not changed",
                 "submit": "not submitted", "priority": "priority not changed",
                 "job_time_limit": "time limit not changed",
                 "time_limit": "time limit not changed"}


def refusal(action: str, job: Job, me: str | None, admin: bool) -> str | None:
    """Why `action` cannot apply to `job`, in words; None when it can."""
    if not admin and me is not None and job.owner != me:
        return f"job {job.id} belongs to {job.owner}"
    if job.state.final:
        return f"job {job.id} has already ended ({job.state.value})"
    if action == "hold" and job.state is not JobState.PENDING:
        return f"job {job.id} is {job.state.value}: only a pending job can be held"
    if action in ("priority", "time_limit") and job.state is JobState.RUNNING:
        what = "priority" if action == "priority" else "time limit"
        return f"job {job.id} is RUNNING: only a pending or held job's {what} can change"
    if action == "release" and job.state is not JobState.HELD:
        return f"job {job.id} is {job.state.value}: only a held job can be released"
    return None


@dataclass
class Plan:
    action: str
    jobs: list[Job]  # what the request will name
    skipped: list[str]  # why each other job is left alone

    def question(self) -> str:
        verb = VERBS[self.action][0]
        if len(self.jobs) == 1:
            j = self.jobs[0]
            text = f"{verb} job {j.id} ({j.name}, {j.state.value}, owner {j.owner})?"
        else:
            ids = ", ".join(str(j.id) for j in self.jobs[:12])
            more = f" and {len(self.jobs) - 12} more" if len(self.jobs) > 12 else ""
            text = f"{verb} {len(self.jobs)} jobs ({ids}{more})?"
        if self.skipped:
            text += f"\nLeft alone: {'; '.join(self.skipped[:3])}"
            if len(self.skipped) > 3:
                text += f" and {len(self.skipped) - 3} more"
        return text


def plan(action: str, jobs: list[Job], me: str | None, admin: bool) -> Plan:
    ok, skipped = [], []
    for job in jobs:
        why = refusal(action, job, me, admin)
        if why is None:
            ok.append(job)
        else:
            skipped.append(why)
    return Plan(action, ok, skipped)


def done_text(action: str, after: list[Job]) -> str:
    if len(after) == 1:
        return f"job {after[0].id} is {after[0].state.value}"
    return f"{len(after)} jobs {VERBS[action][1]}"
