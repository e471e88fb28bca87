"""Job ends arrive as events, not from a scan: a burst of 1,000 ends on a real SSH node while
the agent, some shepherds and labqd are killed with SIGKILL. Every job's own exit code is
recorded, once."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from daemonproc import wait_for
from faultkit import agent_pids, query, run_records
from sshnodes import NodeSet
from test_faults import FINAL, check_db, entries_for, running_daemon

N = 1000
LONG = 100  # every LONG-th job runs a few seconds, long enough to kill its shepherd
# each job exits with its id modulo 7: the code that must be recorded is known
CMD = (f"if [ $((LABQ_JOB_ID % {LONG})) = 0 ]; then sleep 3; fi; "
       "exit $((LABQ_JOB_ID % 7))")


def ended(db: Path) -> int:
    marks = ",".join("?" * len(FINAL))
    return query(db, f"SELECT count(*) FROM job WHERE state IN ({marks})", *FINAL)[0][0]


def kill_shepherds(job_root: str, want: int) -> list[int]:
    """SIGKILL the shepherds of up to `want` long runs still going; their job ids."""
    killed = []
    for key, rec in run_records(job_root).items():
        job = int(key.partition(".")[0])
        done = (Path(job_root).glob(f"*/*/{key}/exit"))
        if job % LONG or any(done) or not rec.get("shepherd"):
            continue
        try:
            os.kill(int(rec["shepherd"]), signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(job)
        if len(killed) == want:
            break
    return killed


def test_a_burst_of_ends_loses_none_under_kill_9(tmp_path):
    with NodeSet(tmp_path / "nodes", names=["n1"]) as ns:
        entries = entries_for(ns, tmp_path, cpus=16)
        job_root = entries[0]["job_root"]
        with running_daemon(tmp_path / "d", entries) as d:
            with d.client() as q:
                ids = [q.submit(["sh", "-c", CMD]).id for _ in range(N)]
            # the agent dies mid-burst: its successor finds what ended meanwhile
            wait_for(lambda: ended(d.database) >= N // 6, timeout=120, what="first ends")
            [agent] = agent_pids(job_root)
            os.kill(agent, signal.SIGKILL)
            # shepherds die with their jobs running: those runs are lost and run again
            wait_for(lambda: ended(d.database) >= 2 * N // 5, timeout=120, what="more ends")
            killed: list[int] = []
            deadline = time.monotonic() + 20
            while len(killed) < 2 and time.monotonic() < deadline:
                killed += kill_shepherds(job_root, 2 - len(killed))
                time.sleep(0.05)
            assert killed, "no long run to kill"
            # labqd dies mid-burst; the one that starts next picks up every end
            wait_for(lambda: ended(d.database) >= 3 * N // 5, timeout=120, what="ends")
            d.kill9()
            d.start(wait_nodes=1)
            with d.client() as q:
                done = {j.id: j for j in q.wait(*ids, timeout=300)}
            assert len(done) == N
            for i in ids:
                want = i % 7
                assert done[i].exit_code == want, (i, done[i])
                assert done[i].state == ("COMPLETED" if want == 0 else "FAILED"), (i, done[i])
            for i in killed:
                assert done[i].restarts >= 1, f"job {i}'s killed run was not run again"
            check_db(d, ids)
