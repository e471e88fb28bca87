"""The queue's `/` filter: free words plus `state:`, `user:`, `group:`, `node:`, `name:` and
`exp:` terms.

Every term must match. A field term takes comma-separated alternatives (`state:run,pend`) and
matches by prefix, case-insensitively; a free word matches anywhere in the id, name, owner,
group, node, state or command.
"""
from __future__ import annotations

from collections.abc import Callable

from labq import Job

from .format import command_text

FIELDS: dict[str, Callable[[Job], str]] = {
    "state": lambda j: j.state.value,
    "user": lambda j: j.owner,
    "owner": lambda j: j.owner,
    "group": lambda j: j.group,
    "node": lambda j: j.node or "",
    "name": lambda j: j.name,
    "id": lambda j: str(j.id),
    "exp": lambda j: j.experiment or "",
    "experiment": lambda j: j.experiment or "",
}


def parse(query: str) -> Callable[[Job], bool]:
    tests: list[Callable[[Job], bool]] = []
    for term in query.split():
        key, sep, value = term.partition(":")
        getter = FIELDS.get(key.lower()) if sep else None
        if getter is not None:
            wanted = [v.lower() for v in value.split(",") if v]
            if wanted:
                tests.append(lambda j, g=getter, w=wanted:
                             any(g(j).lower().startswith(x) for x in w))
        else:
            word = term.lower()
            tests.append(lambda j, w=word: w in _haystack(j))
    return lambda job: all(t(job) for t in tests)


def _haystack(job: Job) -> str:
    return " ".join((str(job.id), job.name, job.owner, job.group, job.node or "",
                     job.state.value, command_text(job))).lower()
