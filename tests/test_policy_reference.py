"""plan() against a plain reference planner (policy_reference.py) on random small snapshots,
planned from scratch and with a memo over several passes: the same starts, reasons,
priorities, reservation and cancels."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_reference import reference_plan

from labq.daemon.policy import (
    Dependency,
    GpuSlot,
    JobView,
    Limits,
    NodeView,
    PlanMemo,
    PolicyConfig,
    Snapshot,
    fairshare,
    plan,
    schedule,
)
from labq.daemon.policy.placement import Cluster
from labq.daemon.policy.queue import PendingQueue, age_floor

NOW = 1_000_000.0


def assert_same(p, ref):
    assert p.starts == ref.starts
    assert dict(p.reasons) == ref.reasons
    assert dict(p.priorities) == pytest.approx(ref.priorities, rel=1e-12, abs=1e-9)
    assert p.estimates == ref.estimates
    assert p.cancels == ref.cancels


@st.composite
def configs(draw):
    limits = Limits(
        group_gpus=draw(st.sampled_from([{}, {"g1": 4}, {"g0": 2, "g1": 8}])),
        group_gpu_type=draw(st.sampled_from([{}, {}, {("g0", "A100"): 3}])),
        user_jobs=draw(st.sampled_from([None, None, 2, 4])),
        user_gpus=draw(st.sampled_from([None, None, 6])),
        partition_user_jobs=draw(st.sampled_from([{}, {"debug": 1}])))
    # powers of two keep ages exact, so that ties stay ties in both planners
    return PolicyConfig(
        weight_age=draw(st.sampled_from([0.0, 1000.0])),
        weight_fairshare=draw(st.sampled_from([0.0, 10000.0])),
        weight_priority=draw(st.sampled_from([0.0, 1000.0])),
        weight_size=draw(st.sampled_from([0.0, 0.0, 500.0])),
        weight_short=draw(st.sampled_from([0.0, 0.0, 300.0])),
        starved_first=draw(st.booleans()),
        starved_reservations=draw(st.sampled_from([1, 2, 3])),
        max_age_s=draw(st.sampled_from([4096.0, 65536.0])),
        default_time_limit_s=draw(st.sampled_from([3600.0, 86400.0])),
        limits=limits, backfill=draw(st.booleans()) or draw(st.booleans()),
        cancel_unsatisfiable=draw(st.booleans()))


@st.composite
def nodes(draw):
    out = []
    for i in range(draw(st.integers(1, 4))):
        gpus = draw(st.sampled_from([0, 2, 4, 4, 8, 8]))
        gtype = draw(st.sampled_from(["A100", "V100", "NVIDIA H100"]))
        slots = tuple(GpuSlot(k, gtype, draw(st.sampled_from([16000, 80000])))
                      for k in range(gpus))
        cpus = draw(st.sampled_from([8, 32]))
        out.append(NodeView(f"n{i}", draw(st.sampled_from(["up"] * 8 + ["down", "drain"])),
                            cpus, 64000, slots, frozenset(range(gpus)), cpus, 64000,
                            only_uid=draw(st.sampled_from([None] * 5 + [1000])),
                            root_ok=draw(st.sampled_from([True, True, True, False]))))
    return out


def draw_job(data, jid, now, ids, jobs=()):
    """A random job; often a twin of an earlier one (the same but for its times and id)."""
    d = data.draw
    if jobs and d(st.booleans()):
        twin = d(st.sampled_from(list(jobs)))
        submit = now - d(st.sampled_from([1.0, 100.0, 3000.0, 50000.0, 200000.0]))
        # an owner's uid may differ between jobs: -1 on rows older than the uid column
        uid = twin.owner_uid if d(st.integers(0, 3)) else d(st.sampled_from([-1, 0, 1000]))
        return replace(twin, id=jid, state=d(st.sampled_from(["PENDING"] * 6 + ["HELD"])),
                       submit_time=submit, dependencies=(), node=None, gpu_indices=(),
                       start_time=None, owner_uid=uid,
                       eligible_time=d(st.sampled_from([None, None, submit + 1, now - 10])))
    deps = ()
    if ids and d(st.integers(0, 6)) == 0:
        deps = tuple(Dependency(d(st.sampled_from(["afterok", "afterany", "afternotok"])),
                                d(st.sampled_from(ids + [9001, 9002, 9003])))
                     for _ in range(d(st.integers(1, 2))))
    submit = now - d(st.sampled_from([1.0, 100.0, 3000.0, 50000.0, 200000.0]))
    # a task of an array: 500 runs one task at a time, 501 two, 502 any number
    array_id = d(st.sampled_from([None, None, None, 500, 501, 502]))
    return JobView(
        jid, d(st.sampled_from(["a", "b", "c"])), d(st.sampled_from(["g0", "g1"])),
        d(st.sampled_from(["PENDING"] * 6 + ["HELD"])), d(st.sampled_from([1, 5, 9])), submit,
        gpus=d(st.sampled_from([0, 1, 1, 1, 2, 2, 4, 8, 9])),
        gpu_type=d(st.sampled_from([None] * 6 + ["a100", "v100"])),
        gpu_memory_mb=d(st.sampled_from([None] * 6 + [40000])),
        cpus=d(st.sampled_from([1, 1, 4, 16])),
        memory_mb=d(st.sampled_from([0, 1000, 16000, 70000])),
        time_limit_s=d(st.sampled_from([None, 600.0, 3600.0, 7200.0, 86400.0])),
        dependencies=deps, partition=d(st.sampled_from(["default", "default", "debug"])),
        eligible_time=d(st.sampled_from([None, None, submit + 1, now - 10])),
        owner_uid=d(st.sampled_from([1000, 1001, 0])), array_id=array_id,
        array_limit={500: 1, 501: 2}.get(array_id or 0))


def snapshot_of(node_list, jobs, ended, config, memo) -> Snapshot:
    """Nodes' free resources as the running jobs leave them."""
    used = {n.name: [set(), 0, 0] for n in node_list}
    for j in jobs:
        if j.state == "RUNNING" and j.node in used:
            u = used[j.node]
            u[0].update(j.gpu_indices)
            u[1] += j.cpus
            u[2] += j.memory_mb
    views = [replace(n, free_gpus=frozenset(range(len(n.gpus))) - used[n.name][0],
                     free_cpus=n.cpus - used[n.name][1],
                     free_memory_mb=n.memory_mb - used[n.name][2]) for n in node_list]
    return Snapshot(views, list(jobs), ended=dict(ended),
                    group_usage={"g0": 100.0, "g1": 300.0}, user_usage={("g0", "a"): 50.0},
                    config=config, memo=memo)


def next_jobs(data, jobs, p, now, ended, next_id):
    """The next pass: starts applied, some running jobs end, held jobs released, new jobs."""
    starts = {s.job: s for s in p.starts}
    cancelled = {jid for jid, _ in p.cancels}
    out = []
    for j in jobs:
        op = data.draw(st.integers(0, 9))
        if j.id in starts:
            s = starts[j.id]
            j = replace(j, state="RUNNING", node=s.node, gpu_indices=s.gpus, start_time=now)
        elif j.id in cancelled:
            ended[j.id] = "CANCELLED"
            continue
        elif j.state == "RUNNING" and op < 3:
            ended[j.id] = data.draw(st.sampled_from(["COMPLETED", "FAILED"]))
            continue
        elif j.state == "HELD" and op < 3:
            j = replace(j, state="PENDING", eligible_time=now)
        out.append(j)
    for _ in range(data.draw(st.integers(0, 4))):
        next_id += 1
        out.append(draw_job(data, next_id, now, [j.id for j in out], out))
    return out, next_id


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_plan_agrees_with_the_reference(data):
    config = data.draw(configs())
    node_list = data.draw(nodes())
    jobs = []
    for k in range(data.draw(st.integers(0, 25))):
        jobs.append(draw_job(data, k + 1, NOW, [j.id for j in jobs], jobs))
    ended = {9001: "COMPLETED", 9002: "FAILED", 9003: "CANCELLED"}
    memo = PlanMemo()
    now, next_id = NOW, 1000
    for _ in range(data.draw(st.integers(1, 5))):
        snap = snapshot_of(node_list, jobs, ended, config, memo)
        ref = reference_plan(snap, now)
        with_memo = plan(snap, now)
        assert_same(with_memo, ref)
        assert_same(plan(replace(snap, memo=None), now), ref)
        jobs, next_id = next_jobs(data, jobs, with_memo, now, ended, next_id)
        now += data.draw(st.sampled_from([0.0, 1.0, 600.0, 7200.0]))


def busy_cluster(data):
    """Nodes of one GPU type, partly taken by running jobs that reach their limits at various
    times: what reservations and backfill are about."""
    d = data.draw
    node_list, jobs = [], []
    for i in range(d(st.integers(1, 3))):
        gpus, cpus = d(st.sampled_from([4, 8])), d(st.sampled_from([8, 16]))
        node_list.append(NodeView(f"n{i}", "up", cpus, 64000,
                                  tuple(GpuSlot(k, "A100", 80000) for k in range(gpus)),
                                  frozenset(range(gpus)), cpus, 64000))
        free, cpus_left = list(range(gpus)), cpus
        while free and d(st.integers(0, 2)):
            take, c = min(len(free), d(st.sampled_from([1, 1, 2, 4]))), d(st.sampled_from([1, 4]))
            if c > cpus_left:
                break
            jobs.append(JobView(len(jobs) + 1, "u", "g", "RUNNING", 5, NOW - 5000, gpus=take,
                                cpus=c, time_limit_s=d(st.sampled_from([600.0, 3600.0, 7200.0])),
                                node=f"n{i}", gpu_indices=tuple(free[:take]),
                                start_time=NOW - d(st.sampled_from([0.0, 300.0, 3000.0]))))
            free, cpus_left = free[take:], cpus_left - c
    for _ in range(d(st.integers(1, 14))):
        jobs.append(JobView(len(jobs) + 1, d(st.sampled_from(["u", "v"])), "g", "PENDING",
                            d(st.sampled_from([1, 5, 9])),
                            NOW - d(st.sampled_from([1.0, 100.0, 3000.0])),
                            gpus=d(st.sampled_from([0, 1, 1, 2, 3, 4, 8])),
                            cpus=d(st.sampled_from([1, 2, 4, 8])),
                            memory_mb=d(st.sampled_from([0, 16000, 32000])),
                            time_limit_s=d(st.sampled_from([None, 300.0, 900.0, 3600.0,
                                                            7200.0]))))
    return node_list, jobs


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_reservations_and_backfill_agree_with_the_reference(data):
    config = PolicyConfig(weight_age=data.draw(st.sampled_from([0.0, 1000.0])),
                          weight_size=data.draw(st.sampled_from([0.0, 500.0])),
                          weight_short=data.draw(st.sampled_from([0.0, 300.0])),
                          max_age_s=4096.0, default_time_limit_s=3600.0)
    node_list, jobs = busy_cluster(data)
    memo = PlanMemo()
    now, next_id, ended = NOW, 1000, {}
    for _ in range(data.draw(st.integers(1, 4))):
        snap = snapshot_of(node_list, jobs, ended, config, memo)
        ref = reference_plan(snap, now)
        with_memo = plan(snap, now)
        assert_same(with_memo, ref)
        assert_same(plan(replace(snap, memo=None), now), ref)
        jobs, next_id = next_jobs(data, jobs, with_memo, now, ended, next_id)
        now += data.draw(st.sampled_from([0.0, 300.0, 900.0]))



def kept_job(data, jid, now) -> JobView:
    d = data.draw
    nodes = d(st.sampled_from([1, 1, 1, 2]))
    return JobView(jid, d(st.sampled_from(["u", "v"])), d(st.sampled_from(["g0", "g1"])),
                   "PENDING", d(st.sampled_from([1, 5, 9])),
                   now - d(st.sampled_from([0.0, 100.0, 3000.0, 9000.0])),
                   gpus=d(st.sampled_from([0, 1, 1, 2, 3, 4, 8] if nodes == 1 else [2, 4, 8])),
                   cpus=d(st.sampled_from([1, 2, 4])), nodes=nodes,
                   memory_mb=d(st.sampled_from([0, 16000])),
                   time_limit_s=d(st.sampled_from([None, 60.0, 300.0, 900.0, 3600.0, 7200.0])))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_walk_for_the_starts_alone_on_a_kept_cluster_starts_what_a_full_walk_starts(data):
    # the replay simulator's way: a Cluster and a PendingQueue kept across passes, starts and
    # ends applied to them, and a walk for the starts alone, which stops once no shape can
    # start anything, takes the classes shape by shape when priorities are fixed, and asks
    # the cluster's ReadyIndexes for reservations. A full walk that scans the nodes for them,
    # on a twin cluster and queue, must start the same jobs on the same GPUs
    d = data.draw
    config = PolicyConfig(weight_age=d(st.sampled_from([0.0, 1000.0])),
                          weight_fairshare=d(st.sampled_from([0.0, 10000.0])),
                          weight_priority=d(st.sampled_from([0.0, 1000.0])),
                          weight_size=d(st.sampled_from([0.0, 500.0])),
                          weight_short=d(st.sampled_from([0.0, 300.0])),
                          backfill=d(st.booleans()) or d(st.booleans()),
                          max_age_s=4096.0, default_time_limit_s=3600.0)
    node_list = [NodeView(f"n{i}", "up", 16, 64000,
                          tuple(GpuSlot(k, "A100", 80000) for k in range(g)),
                          frozenset(range(g)), 16, 64000)
                 for i, g in enumerate(d(st.lists(st.sampled_from([4, 8]), min_size=1,
                                                  max_size=5)))]
    kept = (Cluster(node_list, config.limits, kept=True), PendingQueue(config, NOW))
    scan = (Cluster(node_list, config.limits), PendingQueue(config, NOW))
    usage = {"g0": 100.0, "g1": 300.0}
    running: set[int] = set()
    now, next_id = NOW, 0
    for _ in range(d(st.integers(1, 12))):
        for _ in range(d(st.integers(0, 10))):
            next_id += 1
            job = kept_job(data, next_id, now)
            for _, queue in (kept, scan):
                queue.add(job)
        for jid in sorted(jid for jid in running if d(st.integers(0, 3)) == 0):
            running.discard(jid)
            for cluster, _ in (kept, scan):
                cluster.finish(jid)
        plans = []
        for (cluster, queue), full in ((kept, False), (scan, True)):
            queue.advance(age_floor(config, now))
            pairs = {(c.head.group, c.head.owner) for c in queue.classes.values()}
            fs = fairshare.factors(usage, {}, {}, {}, pairs)
            plans.append(schedule(cluster, queue, now, config, fs, full=full))
            jobs = {j.id: j for c in queue.classes.values() for j in c.ordered()}
            for s in plans[-1].starts:
                queue.remove(jobs[s.job])
        assert plans[0].starts == plans[1].starts
        running.update(s.job for s in plans[0].starts)
        now += d(st.sampled_from([0.0, 60.0, 300.0, 900.0]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_kept_clusters_nodes_are_ready_when_their_running_jobs_limits_say(data):
    # the ReadyIndex kept across starts and ends against every node worked out afresh
    d = data.draw
    node_list = [NodeView(f"n{i}", d(st.sampled_from(["up", "up", "up", "down"])), 8, 64000,
                          tuple(GpuSlot(k, "A100", 80000) for k in range(g)),
                          frozenset(range(g)), 8, 64000)
                 for i, g in enumerate(d(st.lists(st.sampled_from([2, 4, 8]), min_size=1,
                                                  max_size=6)))]
    cluster = Cluster(node_list, kept=True)
    asks = [JobView(-1, "u", "g", "PENDING", 5, NOW, gpus=g, cpus=c, nodes=n)
            for g, c, n in [(1, 1, 1), (4, 2, 1), (8, 1, 1), (2, 4, 2), (0, 8, 1)]]
    for step in range(d(st.integers(1, 30))):
        if cluster.jobs and d(st.booleans()):
            cluster.finish(d(st.sampled_from(sorted(cluster.jobs))))
        else:
            ns = d(st.sampled_from(cluster.nodes))
            free = sorted(ns.free)
            take = d(st.integers(0, len(free)))
            if ns.up and ns.free_cpus >= 1:
                j = JobView(step + 1, "u", "g", "RUNNING", 5, NOW, gpus=take, cpus=1)
                cluster.start(j, ns.idx, tuple(free[:take]),
                              NOW + d(st.sampled_from([60.0, 300.0, 900.0])))
        job = d(st.sampled_from(asks))
        expected = sorted((t, ns.idx) for ns in cluster.nodes
                          if (t := afresh(ns, job)) is not None)
        assert cluster.ready(job, 3) == expected[:3]


def afresh(ns, job) -> float | None:
    if not ns.up or len(ns.gpus) < job.gpus or job.cpus > ns.cpus:
        return None
    free, cpus = len(ns.free), ns.free_cpus
    if free >= job.gpus and cpus >= job.cpus:
        return float("-inf")
    for end, gpus, c, _ in sorted(ns.running.values()):
        free, cpus = free + len(gpus), cpus + c
        if free >= job.gpus and cpus >= job.cpus:
            return end
    return None
