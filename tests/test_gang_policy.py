"""Gangs in the scheduling policy: a job of N parts on N distinct nodes starts whole or not at
all, waits with a reason, and backfill reserves its whole set of nodes."""
from __future__ import annotations

import itertools

from labq.daemon.policy import (
    GpuSlot,
    JobView,
    Limits,
    NodeView,
    PlanMemo,
    PolicyConfig,
    Snapshot,
    estimate,
    plan,
)

NOW = 1_000_000.0
_ids = itertools.count(1)


def node(name, gpus=8, free=None, state="up", cpus=64):
    slots = tuple(GpuSlot(i, "A100", 40960) for i in range(gpus))
    free = frozenset(range(gpus) if free is None else free)
    return NodeView(name, state, cpus, 512_000, slots, free, cpus, 512_000)


def job(gpus=8, nodes=1, submit=NOW - 100, **kw):
    return JobView(kw.pop("id", next(_ids)), kw.pop("owner", "alice"), kw.pop("group", "lab"),
                   kw.pop("state", "PENDING"), kw.pop("priority", 5), submit, gpus=gpus,
                   nodes=nodes, **kw)


def busy(name, gpu_indices, limit, **kw):
    """A job running on `name` since NOW - 10 that reaches its time limit at NOW - 10 + limit."""
    return job(len(gpu_indices), state="RUNNING", node=name, gpu_indices=tuple(gpu_indices),
               start_time=NOW - 10, time_limit_s=limit, submit=NOW - 20, **kw)


def snap(nodes, jobs, **cfg):
    return Snapshot(nodes, jobs, config=PolicyConfig(**cfg))


def free_minus(gpus, *held):
    return frozenset(range(gpus)) - {g for h in held for g in h}


def test_a_gang_starts_one_part_on_each_of_n_distinct_nodes():
    g = job(gpus=4, nodes=3, time_limit_s=3600)
    p = plan(snap([node("a"), node("b"), node("c"), node("d", gpus=2)], [g]), NOW)
    (s,) = p.starts
    assert s.job == g.id and len(s.parts) == 3
    assert len({n for n, _ in s.parts}) == 3 and "d" not in {n for n, _ in s.parts}
    assert all(len(gpus) == 4 for _, gpus in s.parts)
    assert (s.node, s.gpus) == s.parts[0]  # rank 0's


def test_a_gang_that_cannot_have_all_its_nodes_now_starts_no_part_and_waits():
    nodes = [node("a"), node("b", free=free_minus(8, range(6)))]
    g = job(gpus=4, nodes=2)
    p = plan(snap(nodes, [busy("b", range(6), 3600), g]), NOW)
    assert p.starts == [] and p.reasons[g.id] == "Resources"


def test_a_gang_is_never_placed_twice_on_one_node():
    # one node has room for both parts, and no other node has any
    nodes = [node("a", gpus=16), node("b", free=())]
    g = job(gpus=8, nodes=2)
    p = plan(snap(nodes, [busy("b", range(8), 3600), g]), NOW)
    assert p.starts == [] and p.reasons[g.id] == "Resources"


def test_gangs_wait_with_a_reason_when_no_set_of_nodes_could_ever_run_them():
    three = job(gpus=8, nodes=3)
    wide = job(gpus=16, nodes=2)
    p = plan(snap([node("a"), node("b")], [three, wide]), NOW)
    assert p.reasons[three.id] == "NoNodeFits" and p.reasons[wide.id] == "NoNodeFits"
    down = job(gpus=8, nodes=2)
    p = plan(snap([node("a"), node("b", state="down")], [down]), NOW)
    assert p.reasons[down.id] == "NodeDown"


def test_limits_count_every_part_of_a_gang():
    g = job(gpus=8, nodes=2)
    p = plan(snap([node("a"), node("b")], [g], limits=Limits(group_gpus={"lab": 12})), NOW)
    assert p.starts == [] and p.reasons[g.id] == "QuotaGroupGPU"
    p = plan(snap([node("a"), node("b")], [g], limits=Limits(user_gpus=16)), NOW)
    assert [s.job for s in p.starts] == [g.id]


def test_a_running_gang_holds_every_node_it_runs_on():
    a, b = node("a", free=()), node("b", free=())
    run = job(8, nodes=2, state="RUNNING", node="a", gpu_indices=tuple(range(8)),
              parts=(("a", tuple(range(8))), ("b", tuple(range(8)))), start_time=NOW - 10,
              time_limit_s=1000)
    one = job(gpus=1)
    p = plan(snap([a, b], [run, one], limits=Limits(user_gpus=16)), NOW)
    assert p.starts == [] and p.reasons[one.id] == "QuotaUserGPU"
    p = plan(snap([a, b], [run, one]), NOW)
    assert p.starts == [] and p.reasons[one.id] == "Resources"
    assert p.estimates[one.id] == NOW - 10 + 1000


def test_backfill_reserves_the_gangs_whole_set_of_nodes():
    # a: free now; b: busy until NOW+90; c: half busy for a long time
    nodes = [node("a"), node("b", free=()), node("c", free=free_minus(8, range(4)))]
    running = [busy("b", range(8), 100), busy("c", range(4), 100_000)]
    gang = job(gpus=8, nodes=2, priority=9, time_limit_s=3600)
    long_a = job(gpus=8, priority=1, time_limit_s=7200)  # would hold a past NOW+90
    short_a = job(gpus=8, priority=1, time_limit_s=60)  # ends before the gang starts
    long_c = job(gpus=4, priority=1, time_limit_s=7200)  # on c, which the gang does not need
    p = plan(snap(nodes, running + [gang, long_a, short_a, long_c]), NOW)
    got = {s.job: s.node for s in p.starts}
    assert gang.id not in got and long_a.id not in got
    assert got[short_a.id] == "a" and got[long_c.id] == "c"
    assert p.reasons[gang.id] == "Resources" and p.reasons[long_a.id] == "Priority"
    assert p.estimates[gang.id] == NOW - 10 + 100


def test_a_gang_backfills_only_where_it_leaves_the_reservation_alone():
    # the top job waits for b; a 2-node gang that needs b as well must not jump in
    nodes = [node("a"), node("b", free=free_minus(8, range(4))), node("c")]
    running = [busy("b", range(4), 100)]
    top = job(gpus=8, priority=9, time_limit_s=3600, cpus=1)
    nodes[0] = node("a", free=())
    nodes[2] = node("c", free=())
    running += [busy("a", range(8), 200_000), busy("c", range(8), 200_000)]
    gang = job(gpus=4, nodes=2, priority=1, time_limit_s=7200)
    p = plan(snap(nodes, running + [top, gang]), NOW)
    assert p.starts == [] and p.reasons[gang.id] == "Priority"
    short = job(gpus=2, nodes=2, priority=1, time_limit_s=50)
    nodes[2] = node("c", free=free_minus(8, range(6)))
    running[-1] = busy("c", range(6), 200_000)
    p = plan(snap(nodes, running + [top, short]), NOW)
    assert [s.job for s in p.starts] == [short.id]


def test_a_gang_preempts_on_all_its_nodes_and_is_preempted_whole():
    nodes = [node("a", free=()), node("b", free=())]
    scav = [busy(n, range(8), 100_000, preemptible=True, priority=1) for n in "ab"]
    gang = job(gpus=8, nodes=2, priority=10)
    p = plan(snap(nodes, scav + [gang], preempt_min_run_s=0), NOW)
    assert sorted(p.preempts) == sorted((s.id, gang.id) for s in scav)
    assert p.holds[gang.id] == (("a", tuple(range(8))), ("b", tuple(range(8))))
    # a preemptible gang on both nodes makes way for a one-node job: stopped whole
    running = job(gpus=8, nodes=2, state="RUNNING", node="a", gpu_indices=tuple(range(8)),
                  parts=(("a", tuple(range(8))), ("b", tuple(range(8)))), start_time=NOW - 10,
                  submit=NOW - 20, preemptible=True, priority=1)
    one = job(gpus=4, priority=10)
    p = plan(snap(nodes, [running, one], preempt_min_run_s=0), NOW)
    assert p.preempts == [(running.id, one.id)]


def test_the_plan_is_the_same_with_a_memo_and_the_estimates_hold_whole_sets():
    nodes = [node("a"), node("b", free=()), node("c", free=())]
    running = [busy("b", range(8), 100), busy("c", range(8), 500)]
    g1 = job(gpus=8, nodes=2, priority=9, time_limit_s=1000)
    g2 = job(gpus=8, nodes=2, priority=8, time_limit_s=1000)
    s = snap(nodes, running + [g1, g2])
    bare = plan(s, NOW)
    s.memo = PlanMemo()
    kept = plan(s, NOW)
    assert bare.starts == kept.starts == []
    assert dict(bare.reasons) == dict(kept.reasons)
    est = estimate(s, bare, NOW)
    assert est[g1.id] == NOW + 90  # a and b
    assert est[g2.id] == NOW + 90 + 1000  # after g1 frees a and b (c at NOW+490 is one node)


def test_no_part_of_a_gang_goes_to_a_slurm_pool():
    # a pool is one node to the policy, whatever Slurm has behind it: Slurm places what it
    # is sent, so a gang there would have its parts anywhere, or not together
    pool = NodeView("hpc", "up", 64, 512_000, tuple(GpuSlot(i, "A100", 40960) for i in range(8)),
                    frozenset(range(8)), 64, 512_000, gang_ok=False)
    g = job(gpus=4, nodes=2, time_limit_s=3600)
    p = plan(snap([node("a"), pool], [g]), NOW)
    assert not p.starts and p.reasons[g.id] == "NoNodeFits"
    p = plan(snap([node("a"), pool, node("b")], [g]), NOW)
    (s,) = p.starts
    assert {n for n, _ in s.parts} == {"a", "b"}
    one = job(gpus=4, time_limit_s=3600)  # a job on one node may still go to the pool
    assert plan(snap([pool], [one]), NOW).starts[0].node == "hpc"



def test_a_gang_backfills_as_a_gang_behind_a_one_node_job_of_the_same_size_per_node():
    # node a is free and b frees at NOW + 990 by its limit: the top job, a 2-node gang, holds
    # both from then on. bob's 8-GPU job would outlast that, so it waits; his gang behind it
    # is short enough to backfill, but needs two free nodes and only a is
    top = job(gpus=8, nodes=2, submit=NOW - 900, owner="carol", group="cv")
    single = job(gpus=8, nodes=1, submit=NOW - 300, owner="bob", time_limit_s=7200)
    gang = job(gpus=8, nodes=2, submit=NOW - 200, owner="bob", time_limit_s=600)
    nodes = [node("a"), node("b", free=())]
    kept = snap(nodes, [busy("b", range(8), 1000), top, single, gang])
    kept.memo = PlanMemo()
    for p in (plan(snap(nodes, [busy("b", range(8), 1000), top, single, gang]), NOW),
              plan(kept, NOW)):
        assert p.starts == []
        assert p.reasons[top.id] == "Resources"
        assert p.reasons[single.id] == p.reasons[gang.id] == "Priority"
