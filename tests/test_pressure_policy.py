"""Scheduling under pressure: starved_first bounds waits that fair-share would stretch, and the
replay's measure of what fair-share promises."""
from __future__ import annotations

import pytest

from labq.daemon.policy import GpuSlot, JobView, NodeView, PolicyConfig, Snapshot, plan
from labq.daemon.sim import ShareMeter

NOW = 1_000_000.0
DAY = 86400.0


def one_gpu_node() -> NodeView:
    return NodeView("n", "up", 8, 64000, (GpuSlot(0, "A100", 40960),), frozenset({0}), 8, 64000)


def pending(jid: int, group: str, submit: float, priority: int = 5) -> JobView:
    return JobView(jid, f"u-{group}", group, "PENDING", priority, submit, gpus=1)


def snapshot(jobs, **cfg) -> Snapshot:
    # "heavy" used far more than its share; "light" used nothing
    return Snapshot([one_gpu_node()], jobs, group_usage={"heavy": 1e7},
                    config=PolicyConfig(max_age_s=2 * DAY, **cfg))


def test_fair_share_alone_lets_a_heavy_groups_old_job_wait_behind_new_ones():
    old = pending(1, "heavy", NOW - 3 * DAY)
    new = pending(2, "light", NOW - 60)
    p = plan(snapshot([old, new]), NOW)
    assert [s.job for s in p.starts] == [2]


def test_starved_first_starts_the_job_that_waited_max_age_first():
    old = pending(1, "heavy", NOW - 3 * DAY)
    new = pending(2, "light", NOW - 60)
    p = plan(snapshot([old, new], starved_first=True), NOW)
    assert [s.job for s in p.starts] == [1]
    assert p.priorities[1] > p.priorities[2]
    assert p.reasons[2] == "Resources"


def test_starved_jobs_go_in_submit_order_whatever_their_group():
    older = pending(1, "heavy", NOW - 5 * DAY)
    old = pending(2, "light", NOW - 3 * DAY)
    p = plan(snapshot([old, older], starved_first=True), NOW)
    assert [s.job for s in p.starts] == [1]
    assert p.priorities[1] == p.priorities[2]


def test_starved_first_needs_an_age_weight():
    old = pending(1, "heavy", NOW - 3 * DAY)
    new = pending(2, "light", NOW - 60)
    p = plan(snapshot([old, new], starved_first=True, weight_age=0.0), NOW)
    assert [s.job for s in p.starts] == [2]


def test_share_meter_counts_only_while_a_vc_waits():
    m = ShareMeter({"a": 8, "b": 8})
    m.advance(0.0, 0)
    m.waiting("a", 8)
    m.started("a", 8)  # a holds the whole cluster
    m.waiting("b", 4)  # b waits for 100 s: entitled to half of the 8 GPUs in use
    m.advance(100.0, 8)
    m.ended("a", 8)
    m.started("b", 4)  # b runs, nobody waits: not counted
    m.advance(200.0, 4)
    m.waiting("b", 2)
    m.started("b", 2)
    r = m.ratios()
    assert r == {"b": pytest.approx(0.0)}  # b held nothing of the 4 GPUs it was owed


def test_share_meter_caps_what_is_owed_at_what_was_asked_for():
    m = ShareMeter({"a": 8, "b": 8})
    m.advance(0.0, 0)
    for vc, gpus in (("a", 6), ("b", 1)):
        m.waiting(vc, gpus)
        m.started(vc, gpus)
    m.waiting("b", 1)  # b holds 1 and asks for 1 more: owed 2, not half of 7
    m.advance(50.0, 7)
    assert m.ratios() == {"b": pytest.approx(0.5)}


def four_gpu_node() -> NodeView:
    slots = tuple(GpuSlot(i, "A100", 40960) for i in range(4))
    return NodeView("n", "up", 8, 64000, slots, frozenset(), 6, 64000)


def on_node(jid: int, gpus: tuple, started: float, **kw) -> JobView:
    return JobView(jid, "u-scav", "scav", "RUNNING", 5, started, gpus=len(gpus),
                   node="n", gpu_indices=gpus, start_time=started, **kw)


def test_the_top_job_preempts_the_latest_started_preemptible_jobs_it_needs():
    jobs = [on_node(1, (0, 1), NOW - 900, preemptible=True),
            on_node(2, (2,), NOW - 600, preemptible=True),
            on_node(3, (3,), NOW - 700),
            pending(4, "light", NOW - 10, priority=9)]
    jobs[3].gpus = 1
    p = plan(Snapshot([four_gpu_node()], jobs), NOW)
    assert p.preempts == [(2, 4)]  # one GPU freed, the least run time lost


def test_preemption_budget_and_who_may_preempt():
    def preempts(victim: JobView, waiting: JobView, **cfg) -> list:
        p = plan(Snapshot([four_gpu_node()], [victim, on_node(9, (1, 2, 3), NOW - 60),
                                              waiting], config=PolicyConfig(**cfg)), NOW)
        return p.preempts
    fresh = pending(4, "light", NOW - 10, priority=9)
    assert preempts(on_node(1, (0,), NOW - 900, preemptible=True), fresh) == [(1, 4)]
    assert preempts(on_node(1, (0,), NOW - 900), fresh) == []  # not preemptible
    assert preempts(on_node(1, (0,), NOW - 900, preemptible=True, preemptions=3), fresh) == []
    assert preempts(on_node(1, (0,), NOW - 900, preemptible=True), fresh,
                    preempt_min_run_s=3600) == []
    scavenger = JobView(4, "u-light", "light", "PENDING", 9, NOW - 10, gpus=1,
                        preemptible=True)
    same_rank = pending(4, "light", NOW)  # the victim requeued would rank above it
    assert preempts(on_node(1, (0,), NOW - 900, preemptible=True), same_rank) == []
    assert preempts(on_node(1, (0,), NOW - 900, preemptible=True), scavenger) == []


def test_a_preempted_job_keeps_its_age_so_a_starved_one_is_never_a_victim():
    def preempts(victim: JobView) -> list:
        waiting = pending(4, "light", NOW - 10, priority=9)
        return plan(Snapshot([four_gpu_node()], [victim, on_node(9, (1, 2, 3), NOW - 60),
                                                 waiting],
                             config=PolicyConfig(max_age_s=2 * DAY, starved_first=True)),
                    NOW).preempts
    # both started a quarter of an hour ago; one was submitted 3 days ago, and requeued it
    # would be starved, ranking above every job that is not
    recent = on_node(1, (0,), NOW - 900, preemptible=True)
    assert preempts(recent) == [(1, 4)]
    starved = on_node(1, (0,), NOW - 900, preemptible=True)
    starved.submit_time = NOW - 3 * DAY
    assert preempts(starved) == []
