"""A real labqd over real loopback SSH nodes, each with its own job root: what the gang,
preemption and reservation tests each start."""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from daemonproc import Daemon
from faultkit import kill_runs
from sshnodes import NodeSet


@contextlib.contextmanager
def daemon_on_nodes(base: Path, names: list[str], gpus: list[dict],
                    config: dict, node: dict | None = None) -> Iterator[Daemon]:
    """labqd (its `config`, with the nodes added, each with the keys of `node` too) once
    every node is up; `d.nodes` and `d.entries` are the NodeSet and the nodes' entries. Runs
    left on the nodes are killed at the end, so a failed test leaves no job behind."""
    with NodeSet(base / "nodes", names=names) as ns:
        entries = [{**e, **(node or {})}
                   for e in ns.config_entries({n: gpus for n in names}, job_roots=base)]
        d = Daemon(base / "daemon", {**config, "node": entries})
        d.nodes, d.entries = ns, entries
        try:
            with d.start(wait_nodes=len(names)):
                yield d
        finally:
            for e in entries:
                kill_runs(e["job_root"])


def writable_dir(prefix: str) -> Path:
    """A directory every test user's job may write to."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o777)
    return path
