"""The over-share tier (preempt_over_share) takes back what a group runs beyond its share for a
group under its share, whole nodes and gangs included: victims packed on the nodes that lose
the least, gangs stopped whole, a gang of a group under its share making way on several nodes
at once, and never a job of which less than half runs beyond its group's share."""
from __future__ import annotations

import itertools

import pytest

from labq.daemon import policyconfig
from labq.daemon.config import ConfigError, load
from labq.daemon.policy import GpuSlot, JobView, NodeView, PolicyConfig, Snapshot, plan
from labq.daemon.policy.holds import Hold

NOW = 1_000_000.0
DAY = 86400.0
_ids = itertools.count(100)


def node(name: str, free: tuple = ()) -> NodeView:
    slots = tuple(GpuSlot(i, "A100", 40960) for i in range(8))
    return NodeView(name, "up", 64, 512_000, slots, frozenset(free), 64, 512_000)


def runs(group: str, node_gpus: dict[str, tuple], started: float = NOW - 3600,
         **kw) -> JobView:
    """A job of `group` running since `started`, a gang where it names several nodes."""
    parts = tuple(node_gpus.items())
    (n0, g0) = parts[0]
    return JobView(kw.pop("id", next(_ids)), f"u-{group}", group, "RUNNING",
                   kw.pop("priority", 5), started - 60, gpus=len(g0), nodes=len(parts),
                   node=n0, gpu_indices=g0, start_time=started,
                   parts=parts if len(parts) > 1 else (), **kw)


def waits(group: str, gpus: int, nodes: int = 1, **kw) -> JobView:
    return JobView(kw.pop("id", next(_ids)), f"u-{group}", group, "PENDING",
                   kw.pop("priority", 5), kw.pop("submit", NOW - 10), gpus=gpus, nodes=nodes,
                   **kw)


def tier(nodes: list[NodeView], jobs: list[JobView], shares: dict, holds=None, **cfg):
    config = PolicyConfig(group_shares=shares, preempt_over_share=True, starved_first=True,
                          max_age_s=5 * DAY, **cfg)
    return plan(Snapshot(nodes, jobs, config=config, holds=holds or {}), NOW)


def test_a_tiny_group_takes_a_whole_node_back_from_jobs_that_rank_above_its_job():
    # big runs everything; its jobs rank above tiny's (priority 10 against 1), but a quarter
    # of the cluster is tiny's, so an 8-GPU job of tiny's stops a whole node of big's
    nodes = [node(n) for n in "abcd"]
    on_a = [runs("big", {"a": (g,)}, NOW - 600 * (g + 1), priority=10) for g in range(8)]
    on_b = [runs("big", {"b": tuple(range(8))}, NOW - 60_000, priority=10)]
    rest = [runs("big", {n: tuple(range(8))}, NOW - 900, priority=10) for n in "cd"]
    mine = waits("tiny", 8, priority=1)
    p = tier(nodes, on_a + on_b + rest + [mine], {"big": 3, "tiny": 1})
    # one job to stop on b, c or d, eight on a; of those the one losing least work: c or d
    (victim,) = [v for v, by in p.preempts if by == mine.id]
    assert victim in {rest[0].id, rest[1].id}
    held_node = p.holds[mine.id][0]
    assert held_node in "cd" and p.holds[mine.id][1] == tuple(range(8))


def test_a_group_loses_only_jobs_that_run_mostly_beyond_its_share():
    # a and b hold 8 GPUs each, owed 8 each: b's 2-GPU job finds nothing to take back
    nodes = [node("n1"), node("n2")]
    jobs = [runs("a", {"n1": tuple(range(8))}), runs("b", {"n2": tuple(range(8))}),
            waits("b", 2)]
    assert tier(nodes, jobs, {"a": 1, "b": 1}).preempts == []
    # a holds 12 (4 beyond its share), c is owed its third: one of a's 4-GPU jobs goes, and
    # the 8-GPU job of c that would need two of them finds only one a may lose
    nodes = [node("n1"), node("n2"), node("n3", free=(4, 5, 6, 7))]
    jobs = [runs("a", {"n1": (0, 1, 2, 3)}), runs("a", {"n1": (4, 5, 6, 7)}),
            runs("a", {"n2": (0, 1, 2, 3)}), runs("b", {"n2": (4, 5, 6, 7)}),
            runs("b", {"n3": (0, 1, 2, 3)})]
    big = waits("c", 8, submit=NOW - 20)
    assert tier(nodes, jobs + [big], {"a": 1, "b": 1, "c": 1}).preempts == []
    # with n3 full too, c's 4-GPU job takes back one job, on the first node of those losing
    # as little
    small = waits("c", 4)
    nodes[2] = node("n3")
    jobs.append(runs("b", {"n3": (4, 5, 6, 7)}))
    p = tier(nodes, jobs + [small], {"a": 1, "b": 1, "c": 1})
    assert len(p.preempts) == 1 and p.preempts[0][1] == small.id
    assert p.preempts[0][0] in {jobs[0].id, jobs[1].id, jobs[2].id}


def test_a_gang_beyond_its_groups_share_is_stopped_whole():
    nodes = [node("a"), node("b")]
    gang = runs("big", {"a": tuple(range(8)), "b": tuple(range(8))}, NOW - 1800)
    mine = waits("small", 8)
    p = tier(nodes, [gang, mine], {"big": 1, "small": 1})
    assert p.preempts == [(gang.id, mine.id)]
    assert p.holds[mine.id] in (("a", tuple(range(8))), ("b", tuple(range(8))))
    # within the preemption budget only
    gang.preemptions = 3
    assert tier(nodes, [gang, mine], {"big": 1, "small": 1}).preempts == []
    gang.preemptions = 0
    assert tier(nodes, [gang, mine], {"big": 1, "small": 1},
                preempt_min_run_s=7200).preempts == []


def test_a_gang_of_a_group_under_its_share_makes_way_on_several_nodes_and_starts_on_them():
    # big holds three nodes, 16 GPUs beyond its share; small's 3-node gang takes the free
    # node and the two that lose the least work
    nodes = [node("a"), node("b"), node("c", free=tuple(range(8))), node("d")]
    big = [runs("big", {n: tuple(range(8))}, NOW - 900 * (i + 1)) for i, n in enumerate("abd")]
    gang = waits("small", 8, nodes=3)
    p = tier(nodes, big + [gang], {"big": 1, "small": 3})
    assert sorted(v for v, _ in p.preempts) == sorted(j.id for j in big[:2])
    assert {by for _, by in p.preempts} == {gang.id}
    held = p.holds[gang.id]
    assert sorted(n for n, _ in held) == ["a", "b", "c"]
    # the victims gone, the gang starts whole on the nodes it holds
    after = [node(n, free=tuple(range(8))) for n in "abc"]
    hold = Hold(held[0][0], held[0][1], NOW + 60, tuple(held[1:]))
    rival = waits("big", 8, priority=10)  # ranks above it, and would take a node
    p = tier(after + [nodes[3]], [big[2], gang, rival], {"big": 1, "small": 3},
             holds={gang.id: hold})
    (s,) = [s for s in p.starts if s.job == gang.id]
    assert sorted(n for n, _ in s.parts) == ["a", "b", "c"]
    assert rival.id not in {x.job for x in p.starts}


def test_a_starved_job_beyond_its_groups_share_is_taken_back_too():
    nodes = [node("a")]
    old = runs("big", {"a": tuple(range(8))}, NOW - 1800)
    old.submit_time = NOW - 6 * DAY  # it waited max_age: requeued it is starved, first again
    mine = waits("small", 8)
    p = tier(nodes, [old, mine], {"big": 1, "small": 1})
    assert p.preempts == [(old.id, mine.id)]


def test_a_group_whose_job_would_be_mostly_beyond_its_share_does_not_preempt():
    # small holds 4 of the 8 it is owed: a 4-GPU job is within it, a 16-GPU gang mostly not
    nodes = [node(n) for n in "abcd"]
    jobs = [runs("big", {n: tuple(range(8))}) for n in "bcd"]
    jobs.append(runs("small", {"a": (0, 1, 2, 3)}))
    jobs.append(runs("big", {"a": (4, 5, 6, 7)}))
    gang = waits("small", 8, nodes=2, priority=9)
    assert tier(nodes, jobs + [gang], {"big": 3, "small": 1}).preempts == []
    four = waits("small", 4)
    p = tier(nodes, jobs + [four], {"big": 3, "small": 1})
    assert p.preempts == [(jobs[-1].id, four.id)]


def test_a_job_that_has_run_longer_than_preempt_max_run_is_not_taken_back():
    # big holds 12 of 16 GPUs, 4 beyond its share. To free a node for small's 8-GPU job, b's
    # 4-GPU job loses the least work (12 GPU-days against a's 16), unless it has run longer
    # than preempt_max_run: then a's job goes
    nodes = [node("a"), node("b", free=(4, 5, 6, 7))]
    young = runs("big", {"a": tuple(range(8))}, NOW - 2 * DAY)
    old = runs("big", {"b": (0, 1, 2, 3)}, NOW - 3 * DAY)
    mine = waits("small", 8)
    jobs, shares = [young, old, mine], {"big": 1, "small": 1}
    assert tier(nodes, jobs, shares).preempts == [(old.id, mine.id)]
    p = tier(nodes, jobs, shares, preempt_max_run_s=2.5 * DAY)
    assert p.preempts == [(young.id, mine.id)] and p.holds[mine.id] == ("a", tuple(range(8)))
    # both have run longer: nothing is stopped, though small is owed a node
    p = tier(nodes, jobs, shares, preempt_max_run_s=DAY)
    assert p.preempts == [] and mine.id not in p.holds
    # a job submitted --preemptible is kept the same way from the top waiting job
    spare = runs("big", {"a": tuple(range(8))}, NOW - 2 * DAY, preemptible=True)
    top = waits("big", 8, priority=10)
    for limit, stopped in ((DAY, []), (3 * DAY, [(spare.id, top.id)]),
                           (0.0, [(spare.id, top.id)])):
        config = PolicyConfig(preempt_max_run_s=limit)
        assert plan(Snapshot([node("a")], [spare, top], config=config), NOW).preempts == stopped


def test_preempt_max_run_is_a_scheduler_setting(tmp_path):
    conf = tmp_path / "labq.toml"
    conf.write_text('[scheduler]\npreempt_over_share = true\npreempt_max_run = "36h"\n')
    assert policyconfig.build(load(conf), {}).preempt_max_run_s == 36 * 3600
    conf.write_text("[scheduler]\n")
    assert policyconfig.build(load(conf), {}).preempt_max_run_s == 0  # no limit, as before
    for bad in ("-1", '"soon"', "true"):
        conf.write_text(f"[scheduler]\npreempt_max_run = {bad}\n")
        with pytest.raises(ConfigError) as e:
            load(conf)
        assert e.value.path == "scheduler.preempt_max_run"


def test_a_group_holding_more_than_preempt_share_floor_of_its_share_takes_nothing_back():
    # each group is owed 8 of the 16 GPUs; big holds 10, small 6 (75 % of its share), and
    # small's 2-GPU job waits
    nodes = [node("a"), node("b")]
    jobs = [runs("big", {"a": (2 * k, 2 * k + 1)}, NOW - 3600 * (k + 1)) for k in range(4)]
    jobs += [runs("small", {"b": tuple(range(6))}), runs("big", {"b": (6, 7)}, NOW - 600)]
    mine = waits("small", 2)
    shares = {"big": 1, "small": 1}
    # by default, and while 75 % is at most the floor, big's latest job goes
    for floor in (1.0, 0.8, 0.75):
        p = tier(nodes, jobs + [mine], shares, preempt_share_floor=floor)
        assert p.preempts == [(jobs[-1].id, mine.id)], floor
    # below it, small waits for big's jobs to end
    for floor in (0.7, 0.0):
        assert tier(nodes, jobs + [mine], shares, preempt_share_floor=floor).preempts == []


def test_preempt_share_floor_is_a_scheduler_setting(tmp_path):
    conf = tmp_path / "labq.toml"
    conf.write_text("[scheduler]\npreempt_over_share = true\npreempt_share_floor = 0.8\n")
    assert policyconfig.build(load(conf), {}).preempt_share_floor == 0.8
    conf.write_text("[scheduler]\n")
    assert policyconfig.build(load(conf), {}).preempt_share_floor == 1.0  # as before
    for bad in ("1.5", "-0.1", '"most"', "nan"):
        conf.write_text(f"[scheduler]\npreempt_share_floor = {bad}\n")
        with pytest.raises(ConfigError) as e:
            load(conf)
        assert e.value.path == "scheduler.preempt_share_floor"
