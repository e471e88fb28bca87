"""Faults against a real labqd and real sshd nodes: daemon crash, node crash, link cuts,
agent death, time limits, concurrent clients, a full disk, node administration, changed host
keys. Every test checks that no job is lost or duplicated (one row per job, at most one final
event per job, executions counted by marker files) and that the database passes
`PRAGMA integrity_check`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from faultkit import (
    agent_pids,
    alive,
    crash_node,
    executions,
    integrity,
    kill_runs,
    mark_cmd,
    query,
    run_records,
    start_netns_node,
)
from sshnodes import NodeSet, start_node

from labq.errors import InvalidState, StorageError

TIMING = {"heartbeat": "1s", "node_timeout": "3s", "requeue_grace": "3s", "kill_grace": "2s"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


# -- helpers --------------------------------------------------------------------------------
def entries_for(ns: NodeSet, base: Path, cpus: int = 1) -> list[dict]:
    entries = ns.config_entries(job_roots=base)
    for e in entries:
        e["cpus"] = cpus  # one job fills a node: placement is predictable
    return entries


@contextmanager
def running_daemon(workdir: Path, entries: list[dict], wait_nodes: int | None = None,
                   limits: dict | None = None, **daemon_opts):
    d = Daemon(workdir, {"daemon": {**TIMING, "local_node": False, **daemon_opts},
                         "node": entries, "limits": limits or {}})
    try:
        d.start(wait_nodes=len(entries) if wait_nodes is None else wait_nodes)
        yield d
    except BaseException:
        print(d.log()[-6000:])
        raise
    finally:
        d.close()
        for e in entries:
            if e.get("job_root"):
                kill_runs(e["job_root"])


def check_db(d: Daemon, ids: list[int], ended: bool = True) -> None:
    """Nothing lost, nothing duplicated, and a sound database file (daemon stopped)."""
    d.stop()
    db = d.database
    assert integrity(db) == "ok"
    marks = ",".join("?" * len(ids))
    rows = query(db, f"SELECT id FROM job WHERE id IN ({marks})", *ids)
    assert sorted(r[0] for r in rows) == sorted(ids), "a job was lost"
    finals = dict(query(db, f"SELECT job, count(*) FROM job_event WHERE job IN ({marks}) "
                        f"AND to_state IN ({','.join('?' * len(FINAL))}) GROUP BY job",
                        *ids, *FINAL))
    assert all(n == 1 for n in finals.values()), f"a job ended twice: {finals}"
    if ended:
        assert sorted(finals) == sorted(ids), "a job did not end"


def gate_loop(gate: str) -> str:
    return f"while [ ! -e {gate} ]; do sleep 0.1; done"


def ticking(gate: str) -> str:
    """Prints `tick N` every 0.2 s until the gate exists, then `end`."""
    return (f"i=0; while [ ! -e {gate} ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; "
            "echo end")


def assert_ticks_complete(log: str) -> int:
    lines = log.split("\n")
    assert lines[-2:] == ["end", ""], log[-300:]
    ticks = [int(l.split()[1]) for l in lines if l.startswith("tick ")]
    assert ticks == list(range(1, len(ticks) + 1)), f"gap or repeat in the log: {ticks}"
    assert len([l for l in lines if l]) == len(ticks) + 1, log[-300:]
    return len(ticks)


def node_state(q, name: str) -> str | None:
    return next((n.state for n in q.nodes() if n.name == name), None)


def state_of(q, job_id: int) -> str:
    return q.job(job_id).state.value


# -- 1. labqd killed with running and pending jobs ------------------------------------------
def test_daemon_kill9_with_running_and_pending_jobs(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    mark = mark_cmd(markers)
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d:
        with d.client() as q:
            g1, g2 = tmp_path / "gate1", tmp_path / "gate2"
            # two long jobs fill both nodes; the rest waits
            ends_while_down = q.submit(f"{mark}; seq 1 5 | sed 's/^/line /'; "
                                       f"{gate_loop(g1)}; echo after-gate", name="down")
            ends_after = q.submit(f"{mark}; echo first; {gate_loop(g2)}; echo second",
                                  name="after")
            wait_for(lambda: [state_of(q, j.id) for j in (ends_while_down, ends_after)]
                     == ["RUNNING"] * 2, what="two running jobs")
            fails = q.submit(f"{mark}; echo failing >&2; exit 3", name="fails")
            oks = [q.submit(f"{mark}; echo ok {i}", name=f"ok{i}") for i in range(4)]
            held = q.submit(f"{mark}; echo held", hold=True)
            wait_for(lambda: "line 5" in q.logs(ends_while_down.id), what="first lines")
        ids = [j.id for j in (ends_while_down, ends_after, fails, *oks, held)]
        d.kill9()
        g1.write_text("")  # this job ends while no labqd runs
        exit_rec = wait_for(lambda: [p for p in tmp_path.glob(
            f"jobs-*/*/*/{ends_while_down.id}.0/exit")], what="exit record while labqd is down")
        assert json.loads(exit_rec[0].read_text())["code"] == 0
        d.start(wait_nodes=2)
        with d.client() as q:
            assert state_of(q, ends_after.id) == "RUNNING"
            g2.write_text("")
            q.release(held.id)
            done = {j.id: j for j in q.wait(*ids, timeout=60)}
            assert done[ends_while_down.id].state.value == "COMPLETED"
            assert done[ends_while_down.id].exit_code == 0
            assert q.logs(ends_while_down.id) == \
                "".join(f"line {i}\n" for i in range(1, 6)) + "after-gate\n"
            assert done[ends_after.id].state.value == "COMPLETED"
            assert q.logs(ends_after.id) == "first\nsecond\n"
            assert done[fails.id].state.value == "FAILED" and done[fails.id].exit_code == 3
            assert q.logs(fails.id) == "failing\n"
            for i, j in enumerate(oks):
                assert done[j.id].state.value == "COMPLETED" and done[j.id].exit_code == 0
                assert q.logs(j.id) == f"ok {i}\n"
            assert done[held.id].state.value == "COMPLETED"
            for i in ids:
                assert done[i].restarts == 0
                runs = executions(markers, i)
                assert len(runs) == 1 and runs[0].startswith(f"{i}.0."), (i, runs)
                assert [e.to_state for e in q.events(i)].count("RUNNING") == 1
        check_db(d, ids)


def test_launch_that_never_started_is_launched_once_after_a_restart(tmp_path):
    """labqd recorded the start and the agent made the run's directory, then died before the
    job's shepherd started (no pid record). After a restart the run is launched afresh."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with NodeSet(tmp_path / "nodes", 1) as ns:
        entries = entries_for(ns, tmp_path)
        with running_daemon(tmp_path / "daemon", entries) as d:
            with d.client() as q:
                job = q.submit(["bash", "-c", mark_cmd(markers) + "; echo ran"], hold=True,
                               cwd=str(tmp_path), export_env=False)
            d.kill9()
            con = sqlite3.connect(d.database)
            cluster = con.execute("SELECT value FROM meta WHERE key='cluster_id'").fetchone()[0]
            # the state labqd had written just before the crash: RUNNING on node0
            con.execute("UPDATE job SET state='RUNNING', node='node0', start_time=?, "
                        "reason=NULL WHERE id=?", (time.time() - 60, job.id))
            con.commit()
            con.close()
            run = Path(entries[0]["job_root"]) / cluster / "node0" / f"{job.id}.0"
            run.mkdir(parents=True)
            (run / "spec.json").write_text("{}")
            old = time.time() - 120
            os.utime(run, (old, old))
            d.start(wait_nodes=1)
            with d.client() as q:
                [done] = q.wait(job.id, timeout=30)
                assert done.state.value == "COMPLETED" and q.logs(job.id) == "ran\n"
            [once] = executions(markers, job.id)
            assert once.startswith(f"{job.id}.0.")
            assert "never started" in d.log()
            check_db(d, [job.id])


# -- 2. a node crashes: its job is requeued and completes elsewhere --------------------------
def test_node_crash_requeues_the_job_on_another_node(tmp_path):
    """`crash_node` kills the node's sshd, sessions and agent (SshNode.kill_all) and the job's
    shepherd and process group: everything a power loss would take."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        job = q.submit(f"{mark_cmd(markers)}; echo run $LABQ_RESTART_COUNT on $LABQ_NODE; "
                       f"{gate_loop(tmp_path / 'gate.$LABQ_RESTART_COUNT')}; echo finished")
        wait_for(lambda: state_of(q, job.id) == "RUNNING", what="RUNNING")
        node_a = q.job(job.id).node
        idx_a = 0 if node_a == "node0" else 1
        node_b = ns[1 - idx_a].name
        wait_for(lambda: executions(markers, job.id), what="first execution")
        # what the first run printed has reached labqd before its node dies
        wait_for(lambda: "run 0 on" in q.logs(job.id), what="the first run's output")
        first = run_records(tmp_path / f"jobs-{node_a}")[f"{job.id}.0"]

        t0 = time.monotonic()
        crash_node(ns[idx_a], tmp_path / f"jobs-{node_a}")
        wait_for(lambda: node_state(q, node_a) in ("down", "connecting"), interval=0.02,
                 what="node down")
        t_detect = time.monotonic() - t0
        wait_for(lambda: q.job(job.id).restarts == 1, interval=0.02, what="requeue")
        t_requeue = time.monotonic() - t0
        running = wait_for(lambda: (lambda j: j.state.value == "RUNNING" and j)(q.job(job.id)),
                           what="RUNNING again")
        t_restart = time.monotonic() - t0
        print(f"\nnode crash: down after {t_detect:.2f} s, requeued after {t_requeue:.2f} s, "
              f"running on {running.node} after {t_restart:.2f} s (requeue_grace 3 s)")
        assert running.node == node_b and running.restarts == 1
        assert not alive(first["pid"])
        (tmp_path / "gate.1").write_text("")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "COMPLETED" and done.node == node_b and done.restarts == 1
        runs = executions(markers, job.id)
        assert [r.split(".")[1] for r in runs] == ["0", "1"], runs
        log = q.logs(job.id)
        assert f"run 0 on {node_a}" in log and f"run 1 on {node_b}\nfinished\n" in log
        assert "requeued" in log
        events = q.events(job.id)
        assert [(e.from_state, e.to_state) for e in events] == [
            (None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "PENDING"),
            ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
        assert f"requeued: node {node_a} was down" in events[2].reason
        assert 2.5 < t_requeue < 12
        check_db(d, [job.id])


def test_a_job_requeued_after_its_node_died_keeps_its_age(tmp_path):
    """Requeued, the job keeps the age it had: a job of the same class submitted after it
    (so younger) does not start before it once a node frees."""
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        old = q.submit(gate_loop(tmp_path / "old.$LABQ_RESTART_COUNT"))
        wait_for(lambda: state_of(q, old.id) == "RUNNING", what="old RUNNING")
        other = q.submit(gate_loop(tmp_path / "other"))
        wait_for(lambda: state_of(q, other.id) == "RUNNING", what="other RUNNING")
        young = q.submit("true")
        node_a = q.job(old.id).node
        crash_node(ns[0 if node_a == "node0" else 1], tmp_path / f"jobs-{node_a}")
        wait_for(lambda: q.job(old.id).restarts == 1, what="requeue")
        assert state_of(q, young.id) == "PENDING"
        (tmp_path / "other").write_text("")  # the node left frees: the older job takes it
        wait_for(lambda: state_of(q, old.id) == "RUNNING", what="old RUNNING again")
        assert state_of(q, young.id) == "PENDING"
        (tmp_path / "old.1").write_text("")
        q.wait(old.id, other.id, young.id, timeout=30)
        assert q.job(old.id).start_time < q.job(young.id).start_time
        check_db(d, [old.id, other.id, young.id])


def test_cancel_while_the_node_is_down_ends_the_job_instead_of_requeueing(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        job = q.submit(f"{mark_cmd(markers)}; sleep 300")
        wait_for(lambda: state_of(q, job.id) == "RUNNING" and executions(markers, job.id),
                 what="RUNNING")
        node_a = q.job(job.id).node
        crash_node(ns[node_a], tmp_path / f"jobs-{node_a}")
        wait_for(lambda: node_state(q, node_a) != "up", what="node down")
        [j] = q.cancel(job.id)  # the node cannot be told; the job ends with the grace
        assert j.state.value in ("RUNNING", "CANCELLED")
        [done] = q.wait(job.id, timeout=20)
        assert done.state.value == "CANCELLED" and done.restarts == 0
        assert "cancelled by" in done.reason
        time.sleep(1.0)
        assert len(executions(markers, job.id)) == 1  # never started again
        assert "RUNNING" not in [e.to_state for e in q.events(job.id)][2:]
        check_db(d, [job.id])


def test_killed_shepherd_is_a_lost_run_requeued_without_a_second_live_copy(tmp_path):
    """The shepherd of a running job dies alone (kill -9; the OOM killer would do the same):
    the run is lost, so the agent kills its orphaned job and labqd requeues it."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        job = q.submit(f"{mark_cmd(markers)}; echo run $LABQ_RESTART_COUNT; "
                       f"{gate_loop(tmp_path / 'gate.$LABQ_RESTART_COUNT')}")
        wait_for(lambda: state_of(q, job.id) == "RUNNING", what="RUNNING")
        node_a = q.job(job.id).node
        rec = wait_for(lambda: run_records(tmp_path / f"jobs-{node_a}").get(f"{job.id}.0"),
                       what="pid record")
        os.kill(rec["shepherd"], signal.SIGKILL)
        again = wait_for(lambda: (lambda j: j.restarts == 1 and j.state.value == "RUNNING"
                                  and j)(q.job(job.id)), timeout=15, what="requeued")
        wait_for(lambda: not alive(rec["pid"]), timeout=5, what="orphaned job killed")
        assert "vanished" in [e for e in q.events(job.id) if e.to_state == "PENDING"][-1].reason
        (tmp_path / "gate.1").write_text("")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "COMPLETED" and done.restarts == 1
        assert not (tmp_path / "gate.0").exists()
        assert [r.split(".")[1] for r in executions(markers, job.id)] == ["0", "1"]
        assert again.node in ("node0", "node1")
        check_db(d, [job.id])


# -- 3. and 4. the link is cut while the node keeps running ----------------------------------
@contextmanager
def netns_cluster(tmp_path: Path, with_b: bool, **daemon_opts):
    """Node "a" in its own network namespace (see faultkit.NetnsNode: the host end of its
    veth pair goes down to cut the link, up to restore it; sshd, agent and jobs on the node
    keep running meanwhile), and optionally an ordinary node "b"."""
    node_a, key, kh = start_netns_node(tmp_path / "nsnodes", "a")
    try:
        entry_a = node_a.config_entry(key, kh)
        entry_a.update(job_root=str(tmp_path / "jobs-a"), cpus=1)
        with NodeSet(tmp_path / "nodes", names=["b"] if with_b else []) as ns:
            entries = [entry_a] + entries_for(ns, tmp_path)
            with running_daemon(tmp_path / "daemon", entries, **daemon_opts) as d:
                yield d, node_a
    finally:
        node_a.destroy()
        kill_runs(tmp_path / "jobs-a")


def test_link_cut_past_the_grace_requeues_and_kills_the_stale_copy(tmp_path):
    """Node a runs in its own network namespace; taking the host end of its veth pair down
    cuts the link while a's sshd, agent and job keep running. Past node_timeout a is down,
    past requeue_grace the job is requeued and runs on b; when the link is back, labqd finds
    the old run on a, kills it and records that. The job waits for gate.<restart count>, so
    the old copy can only end by being killed."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with netns_cluster(tmp_path, with_b=True) as (d, node_a), d.client() as q:
        q.drain("b")  # the job starts on a
        job = q.submit(f"{mark_cmd(markers)}; echo start $LABQ_RESTART_COUNT; "
                       f"{gate_loop(tmp_path / 'gate.$LABQ_RESTART_COUNT')}; "
                       "echo done $LABQ_RESTART_COUNT")
        wait_for(lambda: state_of(q, job.id) == "RUNNING", what="RUNNING")
        assert q.job(job.id).node == "a"
        q.resume("b")
        wait_for(lambda: f"{job.id}.0" in run_records(tmp_path / "jobs-a"), what="pid file")
        stale = run_records(tmp_path / "jobs-a")[f"{job.id}.0"]

        t0 = time.monotonic()
        node_a.cut()
        wait_for(lambda: node_state(q, "a") == "down", timeout=15, interval=0.02,
                 what="node a down")
        t_detect = time.monotonic() - t0
        again = wait_for(lambda: (lambda j: j.state.value == "RUNNING" and j.restarts == 1
                                  and j)(q.job(job.id)), timeout=20, interval=0.02,
                         what="requeued and running on b")
        t_requeue = time.monotonic() - t0
        print(f"\nlink cut: node down after {t_detect:.2f} s (heartbeat 1 s, node_timeout "
              f"3 s), running again on {again.node} after {t_requeue:.2f} s")
        assert again.node == "b"
        assert alive(stale["pid"])  # a cut link does not stop the node's job

        node_a.restore()
        t1 = time.monotonic()
        wait_for(lambda: node_state(q, "a") == "up", timeout=40, what="node a back")
        print(f"link restored: node up again after {time.monotonic() - t1:.2f} s")
        wait_for(lambda: not alive(stale["pid"]), timeout=15, what="stale copy killed")
        wait_for(lambda: not alive(stale["shepherd"]), timeout=10, what="stale shepherd gone")
        notes = [e.reason for e in q.events(job.id) if e.from_state == e.to_state]
        assert any("killed a stale copy (run 0) on a" in (r or "") for r in notes), notes
        assert state_of(q, job.id) == "RUNNING" and q.job(job.id).restarts == 1
        # the stale run's exit is collected and its directory on the node removed
        wait_for(lambda: not list(tmp_path.glob(f"jobs-a/*/*/{job.id}.0")), timeout=10,
                 what="stale run directory removed")
        (tmp_path / "gate.1").write_text("")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "COMPLETED" and done.node == "b" and done.exit_code == 0
        assert [r.split(".")[1] for r in executions(markers, job.id)] == ["0", "1"]
        log = q.logs(job.id)
        assert "start 1\ndone 1\n" in log and "done 0" not in log
        assert not (tmp_path / "gate.0").exists()
        check_db(d, [job.id])


def test_link_cut_within_the_grace_is_reconciled_not_requeued(tmp_path):
    """The same network-namespace cut (see netns_cluster), restored before requeue_grace: the
    job keeps its run (restarts 0, one execution) and the log has every line, including
    those written while the link was down."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with netns_cluster(tmp_path, with_b=False, requeue_grace="60s") as (d, node_a), \
            d.client() as q:
        gate = tmp_path / "gate"
        job = q.submit(f"{mark_cmd(markers)}; {ticking(gate)}")
        wait_for(lambda: "tick 3" in q.logs(job.id), what="ticks")
        t0 = time.monotonic()
        node_a.cut()
        wait_for(lambda: node_state(q, "a") == "down", timeout=15, interval=0.02,
                 what="node a down")
        t_detect = time.monotonic() - t0
        seen_at_cut = q.logs(job.id).count("tick")
        time.sleep(1.5)
        node_a.restore()
        t1 = time.monotonic()
        wait_for(lambda: node_state(q, "a") == "up", timeout=30, what="node a back")
        print(f"\nlink cut: node down after {t_detect:.2f} s; link restored "
              f"{t1 - t0:.2f} s after the cut, node up again {time.monotonic() - t1:.2f} s "
              "later")
        j = q.job(job.id)
        assert j.state.value == "RUNNING" and j.restarts == 0 and j.node == "a"
        # what the job wrote while the link was down arrives
        wait_for(lambda: q.logs(job.id).count("tick") > seen_at_cut + 10, what="more ticks")
        gate.write_text("")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "COMPLETED" and done.restarts == 0 and done.exit_code == 0
        assert len(executions(markers, job.id)) == 1
        n = assert_ticks_complete(q.logs(job.id))
        assert n > seen_at_cut + 10
        assert [e.to_state for e in q.events(job.id)] == ["PENDING", "RUNNING", "COMPLETED"]
        check_db(d, [job.id])


# -- 5. the agent is killed ----------------------------------------------------------------
def test_agent_killed_is_restarted_and_the_job_carries_on(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    root = tmp_path / "jobs-node0"
    with NodeSet(tmp_path / "nodes", 1) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        gate = tmp_path / "gate"
        job = q.submit(f"{mark_cmd(markers)}; {ticking(gate)}")
        wait_for(lambda: "tick 3" in q.logs(job.id), what="ticks")
        [old] = agent_pids(root)
        assert f"agent pid {old}" in d.log()
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: [p for p in agent_pids(root) if p != old], timeout=15,
                       what="a new agent")
        wait_for(lambda: node_state(q, "node0") == "up" and f"agent pid {new[0]}" in d.log(),
                 what="node up with the new agent")
        assert "node node0 down" in d.log()
        j = q.job(job.id)
        assert j.state.value == "RUNNING" and j.restarts == 0
        before = q.logs(job.id).count("tick")
        wait_for(lambda: q.logs(job.id).count("tick") > before + 3, what="log continues")
        gate.write_text("")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "COMPLETED" and done.restarts == 0
        assert len(executions(markers, job.id)) == 1
        assert_ticks_complete(q.logs(job.id))
        assert [e.to_state for e in q.events(job.id)] == ["PENDING", "RUNNING", "COMPLETED"]
        check_db(d, [job.id])


# -- 6. time limit ---------------------------------------------------------------------------
def test_time_limit_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    with NodeSet(tmp_path / "nodes", 1) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d, \
            d.client() as q:
        job = q.submit(f"sleep 300 & echo $! > {pidfile}; echo started; wait",
                       time_limit="2s")
        assert job.time_limit_s == 2
        child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(),
                             what="child pid"))
        rec = wait_for(lambda: run_records(tmp_path / "jobs-node0").get(f"{job.id}.0"),
                       what="pid record")
        [done] = q.wait(job.id, timeout=30)
        assert done.state.value == "TIMEOUT", done
        assert "time limit" in done.reason
        assert 1.5 <= done.end_time - done.start_time < 2 + 2 + 3
        assert not alive(child) and not alive(rec["pid"])
        assert not any(alive(int(p)) for p in os.listdir("/proc") if p.isdigit()
                       and _pgid(int(p)) == rec["pgid"])
        assert q.logs(job.id).startswith("started\n")
        check_db(d, [job.id])


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


# -- 7. many clients at once -----------------------------------------------------------------
SUBMITTER = """
import json, sys, labq
with labq.connect(sys.argv[1]) as q:
    ids = [q.submit(["true"], hold=True, export_env=False, cwd="/", name=f"c{sys.argv[2]}-{i}").id
           for i in range(int(sys.argv[3]))]
print(json.dumps(ids))
"""


def test_twenty_clients_submitting_concurrently(tmp_path):
    clients, per_client = 20, 1000
    # one user submits them all: lift the default cap on a user's pending jobs
    with running_daemon(tmp_path / "daemon", [], wait_nodes=0, log_level="info",
                        limits={"user_max_pending": 100_000}) as d:
        t0 = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(d.socket), str(c),
                                   str(per_client)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in range(clients)]
        outs = [p.communicate(timeout=300) for p in procs]
        elapsed = time.monotonic() - t0
        for p, (_out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
        ids = [i for out, _ in outs for i in json.loads(out)]
        total = clients * per_client
        print(f"\n{clients} client processes x {per_client} submits: {elapsed:.1f} s, "
              f"{total / elapsed:.0f} submits/s")
        assert len(ids) == total and len(set(ids)) == total
        assert query(d.database, "SELECT count(*) FROM job")[0][0] == total
        with d.client() as q:
            assert len(q.jobs(states=["HELD"])) == total
        d.stop()
        assert integrity(d.database) == "ok"
        assert query(d.database, "SELECT count(DISTINCT id), count(*) FROM job WHERE "
                     "state = 'HELD'")[0] == (total, total)
        assert query(d.database, "SELECT count(*) FROM job_event")[0][0] == total
        assert elapsed < 90, f"{total} concurrent submits took {elapsed:.1f} s"


# -- 8. a full disk --------------------------------------------------------------------------
def test_full_disk_gives_a_clear_error_and_the_daemon_survives(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)
    try:
        with NodeSet(tmp_path / "nodes", 1) as ns, \
                running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path),
                               database=str(state / "labq.db"), log_level="info") as d, \
                d.client() as q:
            before = [q.submit(["true"], hold=True, export_env=False).id for _ in range(3)]
            gate = tmp_path / "gate"
            running = q.submit(["bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                               cwd=str(tmp_path), export_env=False)
            wait_for(lambda: q.job(running.id).state.value == "RUNNING", what="job running")
            filler = state / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            # the WAL may still have room for a few commits; a full disk must surface
            # as StorageError within a bounded number of submits, never as anything else
            accepted = []
            with pytest.raises(StorageError) as err:
                for _ in range(2000):
                    accepted.append(q.submit(["true"], hold=True, export_env=False,
                                             env={"PAD": "x" * 2000}).id)
            print(f"\nfull disk: {len(accepted)} submits fit in before StorageError: "
                  f"{err.value}")
            assert err.value.code == "STORAGE_ERROR"
            assert "database" in err.value.message and ("full" in err.value.message
                                                       or "disk" in err.value.message)
            assert q.ping()["pid"] == d.proc.pid
            # a node link that reconnects meanwhile comes up (and stays up)
            root = tmp_path / "jobs-node0"
            [old] = agent_pids(root)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: [p for p in agent_pids(root) if p != old]
                     and node_state(q, "node0") == "up", timeout=15, what="node0 back up")
            [agent] = agent_pids(root)
            time.sleep(1.5)
            assert node_state(q, "node0") == "up" and agent_pids(root) == [agent]
            listed = {j.id for j in q.jobs()}
            assert set(before + accepted) <= listed
            # a job that ends while its end cannot be stored stays RUNNING, the link stays
            # up, and the end is recorded once there is room again
            gate.write_text("")
            time.sleep(2)
            assert q.job(running.id).state.value == "RUNNING"
            assert node_state(q, "node0") == "up" and agent_pids(root) == [agent]
            filler.unlink()
            # generous: SQLite may first wait out its busy timeout (10 s) on the full disk
            wait_for(lambda: q.job(running.id).state.value == "COMPLETED", timeout=45,
                     what="the end recorded after space came back")
            after = q.submit(["true"], hold=True, export_env=False)
            assert q.job(after.id).state.value == "HELD"
            ids = before + accepted + [after.id]
            assert {j.id for j in q.jobs()} >= set(ids)
            ids.append(running.id)
            q.cancel(*ids)
            check_db(d, ids)
    finally:
        if subprocess.run(["umount", str(state)]).returncode != 0:
            subprocess.run(["umount", "-l", str(state)])


# -- 10. node administration while labqd runs ------------------------------------------------
def labq_cli(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("labq"), *args], capture_output=True, text=True,
                          env=d.env(), timeout=60)


def cli_nodes(d: Daemon) -> dict[str, dict]:
    r = labq_cli(d, "nodes", "--json")
    assert r.returncode == 0, r.stderr
    return {n["name"]: n for n in json.loads(r.stdout)}


def test_drain_resume_add_remove_nodes(tmp_path):
    with NodeSet(tmp_path / "nodes", 3) as ns:
        entries = entries_for(ns, tmp_path)
        extra = entries.pop()  # node2 is added later, with `labq node add`
        with running_daemon(tmp_path / "daemon", entries) as d, d.client() as q:
            gate = tmp_path / "gate"
            long = q.submit(gate_loop(gate))
            wait_for(lambda: state_of(q, long.id) == "RUNNING", what="RUNNING")
            x = q.job(long.id).node
            y = "node1" if x == "node0" else "node0"
            r = labq_cli(d, "node", "drain", x)
            assert r.returncode == 0 and r.stdout.strip() == f"{x} drain", r
            assert cli_nodes(d)[x]["state"] == "drain"
            assert "drain" in labq_cli(d, "nodes").stdout
            shorts = [q.submit(["true"]) for _ in range(4)]
            done = q.wait(*[j.id for j in shorts], timeout=30)
            assert {j.node for j in done} == {y}
            assert all(j.state.value == "COMPLETED" for j in done)
            assert state_of(q, long.id) == "RUNNING"
            # remove refuses while a job runs there
            r = labq_cli(d, "node", "remove", x)
            assert r.returncode == 1 and "INVALID_STATE" in r.stderr, r
            with pytest.raises(InvalidState):
                q.remove_node(x)
            gate.write_text("")
            [ended] = q.wait(long.id, timeout=30)
            assert ended.state.value == "COMPLETED" and ended.node == x
            r = labq_cli(d, "node", "remove", x)
            assert r.returncode == 0, r.stderr
            assert x not in cli_nodes(d)
            # drain and resume on the other node
            assert q.drain(y)["state"] == "drain"
            held_back = q.submit(["true"])
            time.sleep(1.0)
            assert state_of(q, held_back.id) == "PENDING"
            assert q.resume(y)["state"] == "up"
            assert q.wait(held_back.id, timeout=30)[0].node == y
            # add a node with one declared GPU
            r = labq_cli(d, "node", "add", "node2", "--host", "127.0.0.1",
                         "--port", str(extra["port"]), "--user", "root",
                         "--identity-file", extra["identity_file"],
                         "--known-hosts", extra["known_hosts"], "--gpu", "A100:40G",
                         "--job-root", extra["job_root"])
            assert r.returncode == 0, r.stderr
            wait_for(lambda: node_state(q, "node2") == "up", what="node2 up")
            assert [(g.type, g.memory_mb) for g in
                    next(n for n in q.nodes() if n.name == "node2").gpus] == [("A100", 40960)]
            gpu_job = q.submit(["true"], gpus=1)
            [g1] = q.wait(gpu_job.id, timeout=30)
            assert g1.state.value == "COMPLETED" and g1.node == "node2"
            ids = [long.id, held_back.id, gpu_job.id] + [j.id for j in shorts]
            d.stop()
            d.start(wait_nodes=2)
            with d.client() as q2:
                wait_for(lambda: node_state(q2, "node2") == "up", what="node2 up after restart")
                gpu_job2 = q2.submit(["true"], gpus=1)
                [g2] = q2.wait(gpu_job2.id, timeout=30)
                assert g2.state.value == "COMPLETED" and g2.node == "node2"
                ids.append(gpu_job2.id)
            check_db(d, ids)


# -- reconnecting: a changed host key is refused and not retried blindly -------------------
def test_changed_host_key_is_refused_not_retried_and_its_job_requeued(tmp_path):
    """labqd restarts while node0's sshd is replaced by one with a new host key on the same
    port: node0 is refused at the first connect and not retried; the job it ran is requeued
    on node1 after the grace; once the admin trusts the new key, resume reconnects and the
    orphaned copy (its shepherd went with the old sshd) is killed."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with NodeSet(tmp_path / "nodes", 2) as ns, \
            running_daemon(tmp_path / "daemon", entries_for(ns, tmp_path)) as d:
        with d.client() as q:
            q.drain("node1")
            job = q.submit(f"{mark_cmd(markers)}; "
                           f"{gate_loop(tmp_path / 'gate.$LABQ_RESTART_COUNT')}")
            wait_for(lambda: state_of(q, job.id) == "RUNNING", what="RUNNING")
            assert q.job(job.id).node == "node0"
            q.resume("node1")
            rec = wait_for(lambda: run_records(tmp_path / "jobs-node0").get(f"{job.id}.0"),
                           what="pid record")
        d.stop()
        port = ns[0].port
        ns[0].stop()
        impostor = start_node(tmp_path / "impostor", "node0", port=port,
                              authorized_keys=[ns.user_key.with_name(ns.user_key.name + ".pub")])

        def attempts() -> int:
            return impostor.log_text().count("Connection from")
        try:
            probes = attempts()  # start_node's own readiness check
            d.start(wait_nodes=1)
            with d.client() as q:
                node = wait_for(lambda: (lambda n: n.state == "refused" and n)(
                    next(n for n in q.nodes() if n.name == "node0")), timeout=20,
                    what="node refused")
                t_refused = time.monotonic()
                assert "CHANGED" in node.reason and "host key" in node.reason
                seen = attempts()
                assert seen - probes == 1
                # the run on the refused node is requeued after the grace, on node1
                again = wait_for(lambda: (lambda j: j.restarts == 1 and j.state.value ==
                                          "RUNNING" and j)(q.job(job.id)), timeout=15,
                                 what="requeued")
                assert again.node == "node1"
                time.sleep(max(0.0, 4 - (time.monotonic() - t_refused)))
                assert attempts() == seen  # backoff would have retried 3-4 times by now
                assert node_state(q, "node0") == "refused"
                assert d.log().count("node node0 refused") == 1
                assert alive(rec["pid"])  # the copy the refused node still runs
                # once the admin trusts the new key, resume reconnects
                ns.known_hosts.write_text(impostor.known_hosts_line + "\n"
                                          + ns[1].known_hosts_line + "\n")
                q.resume("node0")
                wait_for(lambda: node_state(q, "node0") == "up", what="node0 up, new key")
                wait_for(lambda: not alive(rec["pid"]), timeout=10, what="orphan killed")
                (tmp_path / "gate.1").write_text("")
                [done] = q.wait(job.id, timeout=30)
                assert done.state.value == "COMPLETED" and done.node == "node1"
                assert [r.split(".")[1] for r in executions(markers, job.id)] == ["0", "1"]
                job2 = q.submit(["true"])
                assert q.wait(job2.id, timeout=30)[0].state.value == "COMPLETED"
            check_db(d, [job.id, job2.id])
        finally:
            impostor.stop()
