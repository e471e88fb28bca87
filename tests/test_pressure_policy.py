"""Scheduling under pressure: starved_first bounds waits that fair-share would stretch, and the
replay's measure of what fair-share promises."""
from __future__ import annotations

from dataclasses import replace

import pytest

from labq.daemon import policyconfig
from labq.daemon.config import ConfigError, load
from labq.daemon.policy import GpuSlot, JobView, NodeView, PolicyConfig, Snapshot, plan
from labq.daemon.simshare import ShareMeter
from labq.daemon.trace import TraceJob
from labq.daemon.waitbound import least_max_wait, worst_window

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


def test_share_meter_says_how_long_a_vc_waited_and_what_it_was_short_of():
    from labq.daemon.simshare import format_worst
    m = ShareMeter({"a": 8, "b": 8})
    m.advance(0.0, 0)
    m.waiting("a", 8)
    m.started("a", 8)
    m.waiting("b", 8, gang=True)  # b's gang waits 100 s holding nothing: owed 4 of 8
    m.advance(100.0, 8)
    m.waiting("b", 1)  # then a one-node job too, for 50 s more
    m.advance(150.0, 8)
    d = m.detail()
    assert list(d) == ["b"]
    assert d["b"]["backlogged_s"] == 150.0 and d["b"]["empty_s"] == 150.0
    assert d["b"]["short_gang_gpu_h"] == pytest.approx(4 * 100 / 3600)
    assert d["b"]["short_one_node_gpu_h"] == pytest.approx(4 * 50 / 3600)
    text = format_worst("labq", d, 5)
    assert "the 5 worst" in text and "b" in text.splitlines()[2]


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


def node4(name: str, free: tuple = ()) -> NodeView:
    slots = tuple(GpuSlot(i, "A100", 40960) for i in range(4))
    return NodeView(name, "up", 8, 64000, slots, frozenset(free), 8 - 4 + len(free), 64000)


def runs(jid: int, group: str, node: str, gpus: tuple, started: float) -> JobView:
    return JobView(jid, f"u-{group}", group, "RUNNING", 5, started, gpus=len(gpus),
                   node=node, gpu_indices=gpus, start_time=started)


def over_share_plan(jobs: list, **cfg) -> list:
    # three groups of equal share on 8 GPUs: each is owed 8/3; heavy has used the most
    config = PolicyConfig(group_shares={"heavy": 1, "light": 1, "mid": 1}, starved_first=True,
                          max_age_s=2 * DAY, **cfg)
    return plan(Snapshot([node4("a"), node4("b")], jobs, group_usage={"heavy": 1e7},
                         config=config), NOW).preempts


def test_over_share_a_group_under_its_share_preempts_what_a_group_runs_beyond_its_own():
    jobs = [runs(1, "heavy", "a", (0, 1), NOW - 3000), runs(2, "heavy", "a", (2,), NOW - 2000),
            runs(3, "heavy", "b", (0, 1, 3), NOW - 1000), runs(4, "mid", "a", (3,), NOW - 600),
            runs(5, "mid", "b", (2,), NOW - 500),
            # heavy's starved job is the top job and cannot start; heavy holds 6 GPUs, over
            # its share, so it may not preempt; light's job, ranked below it, may
            JobView(6, "u-heavy", "heavy", "PENDING", 5, NOW - 3 * DAY, gpus=4),
            JobView(7, "u-light", "light", "PENDING", 5, NOW - 10, gpus=1)]
    # not submitted preemptible: nothing may be stopped
    assert over_share_plan(jobs) == []
    # heavy's latest job on a node where one GPU is enough; not mid's (within its share),
    # though they started later
    assert over_share_plan(jobs, preempt_over_share=True) == [(2, 7)]
    # the budget still holds: then heavy's job that loses the fewest GPU-seconds (3 GPUs
    # for 1000 s, not 2 for 3000 s)
    jobs[1].preemptions = 3
    assert over_share_plan(jobs, preempt_over_share=True) == [(3, 7)]
    assert over_share_plan(jobs, preempt_over_share=True, preempt_min_run_s=5000) == []


def test_over_share_a_group_over_its_share_never_preempts():
    jobs = [runs(1, "heavy", "a", (0, 1, 2, 3), NOW - 3000),
            runs(2, "mid", "b", (0, 1, 2, 3), NOW - 2000),
            JobView(3, "u-mid", "mid", "PENDING", 10, NOW - 50, gpus=1)]
    # mid holds 4 of the 8/3 it is owed, as heavy does: it preempts nobody
    assert over_share_plan(jobs, preempt_over_share=True) == []


def test_the_short_factor_starts_the_shorter_limit_first_and_steps_keep_near_limits_together():
    from labq.daemon.policy.queue import PendingQueue
    config = dict(weight_short=10000.0, default_time_limit_s=DAY, short_step=2.0)

    def job(jid: int, submit: float, minutes: float) -> JobView:
        return JobView(jid, "u-a", "a", "PENDING", 5, submit, gpus=1,
                       time_limit_s=minutes * 60)
    long, short = job(1, NOW - 600, 180), job(2, NOW - 60, 10)
    p = plan(Snapshot([one_gpu_node()], [long, short], config=PolicyConfig(**config)), NOW)
    assert [s.job for s in p.starts] == [2]
    # 120 and 70 minutes both round up to 2^13 s: one class, in submit order
    early, late = job(3, NOW - 600, 120), job(4, NOW - 60, 70)
    cfg = PolicyConfig(weight_age=0.0, **config)
    p = plan(Snapshot([one_gpu_node()], [late, early], config=cfg), NOW)
    assert [s.job for s in p.starts] == [3]
    assert len(PendingQueue(cfg, NOW, [early, late]).classes) == 1
    assert len(PendingQueue(PolicyConfig(weight_age=0.0, weight_short=10000.0), NOW,
                            [early, late]).classes) == 2


def test_starved_jobs_after_the_top_one_reserve_nodes_of_their_own():
    # a: full until NOW + 1 h; b: half full until NOW + 2 h. Two starved 4-GPU jobs wait;
    # a fresh 1-GPU job with a 10-hour limit would take b's free GPUs from the second
    jobs = [runs(1, "x", "a", (0, 1, 2, 3), NOW - 600), runs(2, "x", "b", (0, 1), NOW - 600),
            JobView(3, "u-x", "x", "PENDING", 5, NOW - 4 * DAY, gpus=4, time_limit_s=3600.0),
            JobView(4, "u-y", "y", "PENDING", 5, NOW - 3 * DAY, gpus=4, time_limit_s=3600.0),
            JobView(5, "u-z", "z", "PENDING", 5, NOW - 60, gpus=1, time_limit_s=36000.0),
            JobView(6, "u-z", "z", "PENDING", 5, NOW - 60, gpus=1, time_limit_s=1800.0)]
    jobs[0].time_limit_s = jobs[1].time_limit_s = 600.0 + 3600.0
    jobs[1].time_limit_s = 600.0 + 7200.0

    def planned(k: int):
        config = PolicyConfig(max_age_s=2 * DAY, starved_first=True, starved_reservations=k)
        return plan(Snapshot([node4("a"), node4("b", (2, 3))], jobs, config=config), NOW)
    easy = planned(1)  # the top job's reservation alone: job 5 takes b from job 4
    assert sorted(s.job for s in easy.starts) == [5, 6]
    assert easy.estimates == {3: NOW + 3600.0}
    two = planned(2)  # job 4 holds b from NOW + 2 h: only the job that ends by then starts
    assert [s.job for s in two.starts] == [6]
    assert two.estimates == {3: NOW + 3600.0}  # shown for the top job, as before
    assert two.reasons[4] == "Priority" and two.reasons[5] == "Priority"
    # a job that has not waited max_age reserves nothing beyond the top job's
    jobs[3] = replace(jobs[3], submit_time=NOW - DAY)
    assert sorted(s.job for s in planned(2).starts) == [5, 6]


def test_no_policy_keeps_waits_under_the_bound_and_a_policy_reaches_it():
    # one 8-GPU node; three jobs of the whole node for 10 h each, all at once: the last one
    # waits 20 h whatever the order, and the bound finds that to the hour
    jobs = [TraceJob(i, "vc", 0.0, 36000.0, 8, 36000.0, 8) for i in (1, 2, 3)]
    w, why = least_max_wait(jobs, 8, step=3600.0, tolerance=600.0)
    assert 20 * 3600 - 3600 <= w <= 20 * 3600
    assert why is not None and why.excess > 0
    assert worst_window(jobs, 8, 20 * 3600.0, 3600.0).excess <= 0
    # spread out so that each ends before the next arrives: nothing need wait
    spread = [TraceJob(i, "vc", i * 40000.0, 36000.0, 8, 36000.0, 8) for i in (1, 2, 3)]
    assert least_max_wait(spread, 8, step=3600.0)[0] == 0.0


def test_starved_reservations_is_a_scheduler_setting(tmp_path):
    conf = tmp_path / "labq.toml"
    conf.write_text("[scheduler]\nstarved_first = true\nstarved_reservations = 8\n")
    assert policyconfig.build(load(conf), {}).starved_reservations == 8
    conf.write_text("[scheduler]\n")
    assert policyconfig.build(load(conf), {}).starved_reservations == 1  # EASY, as before
    for bad in ("0", '"many"', "1.5"):
        conf.write_text(f"[scheduler]\nstarved_reservations = {bad}\n")
        with pytest.raises(ConfigError) as e:
            load(conf)
        assert e.value.path == "scheduler.starved_reservations"
