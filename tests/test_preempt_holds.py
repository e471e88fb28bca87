"""The GPUs a preemption frees are the preemptor's (policy.holds): the plan names them, every
other job is kept off them until it starts there, and it does not preempt again meanwhile."""
from __future__ import annotations

from labq.daemon.policy import GpuSlot, JobView, Limits, NodeView, PolicyConfig, Snapshot, plan
from labq.daemon.policy.holds import Hold

NOW = 1_000_000.0


def node(free: tuple) -> NodeView:
    slots = tuple(GpuSlot(i, "A100", 40960) for i in range(4))
    return NodeView("n", "up", 8, 64000, slots, frozenset(free), 8 - 4 + len(free), 64000)


def on_node(jid: int, gpus: tuple, started: float, **kw) -> JobView:
    return JobView(jid, "u-scav", "scav", "RUNNING", 1, started, gpus=len(gpus),
                   node="n", gpu_indices=gpus, start_time=started, **kw)


def pending(jid: int, gpus: int, priority: int, submit: float = NOW - 10) -> JobView:
    return JobView(jid, "u-lab", "lab", "PENDING", priority, submit, gpus=gpus)


def test_a_preemption_names_the_gpus_the_preemptor_may_have():
    jobs = [on_node(1, (0, 1), NOW - 900, preemptible=True),
            on_node(2, (2,), NOW - 600, preemptible=True),
            on_node(3, (3,), NOW - 700), pending(4, 1, 9)]
    p = plan(Snapshot([node(())], jobs), NOW)
    assert p.preempts == [(2, 4)] and p.holds == {4: ("n", (2,))}


def test_a_job_ranked_above_the_preemptor_does_not_take_the_gpus_it_freed():
    # the victims are gone: the whole node is free, and a 4-GPU job ranks above the preemptor
    jobs = [pending(4, 1, 5), pending(5, 4, 9)]
    free = plan(Snapshot([node((0, 1, 2, 3))], jobs), NOW)
    assert [(s.job, s.gpus) for s in free.starts] == [(5, (0, 1, 2, 3))]
    held = plan(Snapshot([node((0, 1, 2, 3))], jobs, holds={4: Hold("n", (2,), NOW + 60)}),
                NOW)
    assert [s.job for s in held.starts] == [4]
    assert held.reasons[5] == "Resources"


def test_a_hold_past_its_time_is_none():
    jobs = [pending(4, 1, 5), pending(6, 2, 9)]
    held = plan(Snapshot([node((1, 2, 3))], jobs, holds={4: Hold("n", (2, 3), NOW + 60)}),
                NOW)
    assert [s.job for s in held.starts] == [4]
    late = plan(Snapshot([node((1, 2, 3))], jobs, holds={4: Hold("n", (2, 3), NOW - 1)}), NOW)
    assert [s.job for s in late.starts][0] == 6


def test_a_preemptor_whose_gpus_are_coming_does_not_preempt_again():
    # its victim (job 2) is still stopping: GPU 2 is not free yet
    jobs = [on_node(1, (0, 1), NOW - 900, preemptible=True), on_node(3, (3,), NOW - 700),
            pending(4, 1, 9)]
    assert plan(Snapshot([node(())], jobs), NOW).preempts == [(1, 4)]
    held = plan(Snapshot([node(())], jobs, holds={4: Hold("n", (2,), NOW + 60)}), NOW)
    assert held.preempts == [] and held.starts == []


def test_a_holder_whose_user_reached_a_limit_since_it_preempted_waits():
    # its user started another job while the victim was stopping, and may run one at a time
    jobs = [JobView(7, "u-lab", "lab", "RUNNING", 1, NOW - 5, gpus=1, node="n",
                    gpu_indices=(0,), start_time=NOW - 5), pending(4, 1, 9)]
    held = {4: Hold("n", (2,), NOW + 60)}
    free = plan(Snapshot([node((1, 2, 3))], jobs, holds=held), NOW)
    assert [s.job for s in free.starts] == [4]
    cfg = PolicyConfig(limits=Limits(user_jobs=1))
    capped = plan(Snapshot([node((1, 2, 3))], jobs, holds=held, config=cfg), NOW)
    assert capped.starts == [] and capped.reasons[4] == "QuotaUserJobs"
