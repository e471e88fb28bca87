"""Behaviour of the scheduling policy: priority, fair-share, limits, placement, backfill,
dependencies and pending reasons."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labq.daemon.policy import (
    Dependency,
    GpuSlot,
    JobView,
    Limits,
    NodeView,
    PolicyConfig,
    Snapshot,
    could_ever_fit,
    fairshare,
    gpu_matches,
    plan,
)
from labq.daemon.policy.dependencies import find_cycle

NOW = 1_000_000.0
DAY = 86400.0


def node(name, gpus=8, free=None, state="up", gtype="A100", mem=40960, cpus=64,
         memory_mb=512_000, free_cpus=None, free_mem=None):
    slots = tuple(GpuSlot(i, gtype, mem) for i in range(gpus))
    free = frozenset(range(gpus) if free is None else free)
    return NodeView(name, state, cpus, memory_mb, slots, free,
                    cpus if free_cpus is None else free_cpus,
                    memory_mb if free_mem is None else free_mem)


_ids = itertools.count(1)


def job(gpus=1, owner="alice", group="lab", state="PENDING", submit=NOW - 100, **kw):
    return JobView(kw.pop("id", next(_ids)), owner, group, state, kw.pop("priority", 5),
                   submit, gpus=gpus, **kw)


def running(node_name, gpu_indices, start, limit, **kw):
    return job(len(gpu_indices), state="RUNNING", node=node_name,
               gpu_indices=tuple(gpu_indices), start_time=start, time_limit_s=limit,
               submit=start, **kw)


def snap(nodes, jobs, **cfg):
    usage = cfg.pop("group_usage", {})
    user_usage = cfg.pop("user_usage", {})
    ended = cfg.pop("ended", {})
    return Snapshot(nodes, jobs, ended=ended, group_usage=usage, user_usage=user_usage,
                    config=PolicyConfig(**cfg))


def started(p):
    return {s.job: s for s in p.starts}


# -- priority factors --------------------------------------------------------------------------

def test_age_factor_orders_older_first_and_saturates():
    old, new = job(submit=NOW - 3 * DAY), job(submit=NOW - DAY)
    p = plan(snap([node("n", free=())], [new, old]), NOW)
    assert p.priorities[old.id] > p.priorities[new.id]
    ancient, older = job(submit=NOW - 30 * DAY), job(submit=NOW - 20 * DAY)
    p = plan(snap([node("n", free=())], [ancient, older]), NOW)
    assert p.priorities[ancient.id] == p.priorities[older.id]  # both past max_age_s


def test_age_counts_from_eligible_time():
    a = job(submit=NOW - 5 * DAY, eligible_time=NOW - 10)
    b = job(submit=NOW - DAY)
    p = plan(snap([node("n", free=())], [a, b], weight_fairshare=0, weight_priority=0), NOW)
    assert p.priorities[b.id] > p.priorities[a.id]


def test_age_frozen_while_waiting_on_dependency():
    target = job(submit=NOW - DAY, state="RUNNING", node="n", gpu_indices=(0,), start_time=NOW)
    waiter = job(submit=NOW - 6 * DAY, dependencies=(Dependency("afterok", target.id),))
    p = plan(snap([node("n", free=range(1, 8))], [target, waiter], weight_fairshare=0,
                  weight_priority=0), NOW)
    assert p.priorities[waiter.id] == 0.0
    assert p.reasons[waiter.id] == "Dependency"


def test_user_priority_factor():
    lo, hi = job(priority=1), job(priority=10, submit=NOW - 10)
    p = plan(snap([node("n", free=())], [lo, hi]), NOW)
    assert p.priorities[hi.id] - p.priorities[lo.id] == pytest.approx(1000.0, abs=1.0)


def test_size_factor_only_with_weight():
    small, big = job(gpus=1), job(gpus=8, submit=NOW - 100)
    nodes = [node("n", free=())]
    assert plan(snap(nodes, [small, big], weight_size=0), NOW).priorities[small.id] == \
        plan(snap(nodes, [small, big], weight_size=0), NOW).priorities[big.id]
    p = plan(snap(nodes, [small, big], weight_size=800), NOW)
    assert p.priorities[big.id] - p.priorities[small.id] == pytest.approx(700.0)


def test_ties_go_to_earlier_submit_then_lower_id():
    a = job(submit=NOW - 50, id=900)
    b = job(submit=NOW - 50, id=901)
    c = job(submit=NOW - 60, id=902)
    p = plan(snap([node("n", gpus=1)], [a, b, c], weight_age=0), NOW)
    assert [s.job for s in p.starts] == [902]
    p = plan(snap([node("n", gpus=1)], [b, a], weight_age=0), NOW)
    assert [s.job for s in p.starts] == [900]


def test_without_age_weight_ties_go_by_submit_even_after_a_release():
    # released from a hold: it has an eligible time, but age counts for nothing
    released = job(submit=NOW - 100, eligible_time=NOW - 10)
    later = job(submit=NOW - 50)
    p = plan(snap([node("n", gpus=1)], [later, released], weight_age=0), NOW)
    assert [s.job for s in p.starts] == [released.id]
    assert p.priorities[released.id] == p.priorities[later.id]


# -- fair-share --------------------------------------------------------------------------------

def test_fairshare_prefers_group_under_its_share():
    heavy = job(group="heavy", owner="h")
    light = job(group="light", owner="l", submit=NOW - 50)
    p = plan(snap([node("n", gpus=1)], [heavy, light],
                  group_usage={"heavy": 1e6, "light": 1e3}), NOW)
    assert [s.job for s in p.starts] == [light.id]
    assert p.priorities[light.id] > p.priorities[heavy.id]


def test_fairshare_factor_values():
    f = fairshare.factors({"a": 100.0, "b": 0.0}, {}, {"a": 1, "b": 1}, {}, [("a", "x"),
                                                                             ("b", "y")])
    assert f[("b", "y")] == 1.0
    assert f[("a", "x")] == pytest.approx(2 ** (-1 / 0.5))  # all usage, half the shares
    f = fairshare.factors({"a": 50.0, "b": 50.0}, {}, {"a": 3, "b": 1}, {}, [("a", "x"),
                                                                             ("b", "y")])
    assert f[("a", "x")] > f[("b", "y")]  # same usage, bigger share


def test_fairshare_user_within_group():
    f = fairshare.factors({"g": 10.0}, {("g", "u1"): 9.0, ("g", "u2"): 1.0}, {}, {},
                          [("g", "u1"), ("g", "u2")])
    assert f[("g", "u2")] > f[("g", "u1")]


def test_decay_half_life_over_days():
    assert fairshare.decay(1000.0, 7 * DAY, 7 * DAY) == pytest.approx(500.0)
    assert fairshare.decay(1000.0, 28 * DAY, 7 * DAY) == pytest.approx(62.5)
    # accruing in one step or day by day gives the same usage
    one = fairshare.accrue({"g": 100.0}, {"g": 8.0}, 10 * DAY, 7 * DAY)
    many = {"g": 100.0}
    for _ in range(10):
        many = fairshare.accrue(many, {"g": 8.0}, DAY, 7 * DAY)
    assert many["g"] == pytest.approx(one["g"])
    # steady use converges to rate * half-life / ln 2
    steady = fairshare.accrue({}, {"g": 1.0}, 1000 * DAY, DAY)
    assert steady["g"] == pytest.approx(DAY / 0.6931471805599453, rel=1e-6)


def test_accrue_runs_charges_overlap_only():
    g, u = fairshare.accrue_runs({}, {}, [fairshare.Run("g", "u", 2, 4, 0.0, 100.0),
                                          fairshare.Run("g", "v", 1, 0, 50.0, None)],
                                 0.0, 200.0, 0.0, cpu_weight=0.5)
    assert u[("g", "u")] == pytest.approx(100 * (2 + 0.5 * 4))
    assert u[("g", "v")] == pytest.approx(150.0)
    assert g["g"] == pytest.approx(400 + 150)


# -- limits ------------------------------------------------------------------------------------

def limits_case(limits, queued, run=()):
    nodes = [node("n1"), node("n2", gtype="V100")]
    return plan(snap(nodes, list(run) + list(queued), limits=limits), NOW)


def test_group_gpu_limit():
    a, b = job(gpus=4), job(gpus=4, submit=NOW - 10)
    p = limits_case(Limits(group_gpus={"lab": 6}), [a, b])
    assert set(started(p)) == {a.id} and p.reasons[b.id] == "QuotaGroupGPU"


def test_group_gpu_type_limit():
    r = running("n1", [0, 1], NOW - 10, 3600, gpu_type="A100")
    a = job(gpus=2, gpu_type="a100")
    b = job(gpus=2, gpu_type="v100", submit=NOW - 10)
    p = limits_case(Limits(group_gpu_type={("lab", "A100"): 3}), [a, b], [r])
    assert set(started(p)) == {b.id}
    assert p.reasons[a.id] == "QuotaGroupGPUType"


def test_user_jobs_limit():
    r = running("n1", [0], NOW - 10, 3600)
    a = job()
    p = limits_case(Limits(user_jobs=1), [a], [r])
    assert not p.starts and p.reasons[a.id] == "QuotaUserJobs"


def test_user_gpu_limit_counts_starts_in_same_plan():
    a, b = job(gpus=2, submit=NOW - 20), job(gpus=2, submit=NOW - 1)
    other = job(gpus=2, owner="bob", submit=NOW - 5)
    p = limits_case(Limits(user_gpus=3), [a, b, other])
    assert set(started(p)) == {a.id, other.id}
    assert p.reasons[b.id] == "QuotaUserGPU"


def test_partition_user_jobs_limit():
    a = job(partition="debug", submit=NOW - 20)
    b = job(partition="debug", submit=NOW - 10)
    c = job(partition="default", submit=NOW - 1)
    p = limits_case(Limits(partition_user_jobs={"debug": 1}), [a, b, c])
    assert set(started(p)) == {a.id, c.id}
    assert p.reasons[b.id] == "QuotaPartitionJobs"


def test_limited_job_does_not_block_others():
    big = job(gpus=8, submit=NOW - 1000)
    small = job(gpus=1, owner="bob")
    p = plan(snap([node("n")], [big, small], limits=Limits(user_gpus=4)), NOW)
    assert set(started(p)) == {small.id}
    assert p.reasons[big.id] == "QuotaUserGPU"


# -- placement ---------------------------------------------------------------------------------

def test_best_fit_keeps_a_whole_node_for_an_8_gpu_job():
    nodes = [node("empty"), node("busy", free=range(4, 8))]
    small = job(gpus=1, submit=NOW - 100)
    p = plan(snap(nodes, [running("busy", [0, 1, 2, 3], NOW - 10, 3600), small]), NOW)
    assert started(p)[small.id].node == "busy"
    big = job(gpus=8)
    p = plan(snap(nodes, [running("busy", [0, 1, 2, 3], NOW - 10, 3600), small, big]), NOW)
    assert started(p)[small.id].node == "busy"
    assert started(p)[big.id].node == "empty"


def test_gpu_type_memory_cpu_and_memory_requests_are_honoured():
    nodes = [node("v", gtype="V100", mem=16384), node("a", gtype="NVIDIA A100-SXM4", mem=81920,
                                                         free_cpus=2)]
    typed = job(gpus=1, gpu_type="a100", cpus=2)
    bigmem = job(gpus=1, gpu_memory_mb=32000, cpus=1, submit=NOW - 10)
    p = plan(snap(nodes, [typed, bigmem]), NOW)
    assert started(p)[typed.id].node == "a"
    assert bigmem.id not in started(p)  # a100 node's CPUs are taken; V100 lacks memory
    assert gpu_matches(GpuSlot(0, "NVIDIA A100", 40960), job(gpu_type="a100"))
    assert not gpu_matches(GpuSlot(0, "V100", 16384), job(gpu_memory_mb=20000))


def test_down_nodes_get_nothing_and_reason_node_down():
    a = job(gpus=8)
    p = plan(snap([node("d", state="down"), node("s", gpus=4)], [a]), NOW)
    assert not p.starts and p.reasons[a.id] == "NodeDown"


def test_no_node_fits():
    a = job(gpus=16)
    b = job(gpus=1, gpu_type="h100")
    p = plan(snap([node("n"), node("d", state="drain")], [a, b]), NOW)
    assert p.reasons[a.id] == "NoNodeFits" and p.reasons[b.id] == "NoNodeFits"
    assert not could_ever_fit(node("n"), a)


def test_a_job_without_a_uid_does_not_hold_back_the_same_users_job_with_one():
    # a node whose agent runs uid 1000's jobs only; the older job is from before uids were kept
    mine = NodeView("mine", "up", 8, 64000, (GpuSlot(0, "A100", 40960),), frozenset({0}), 8,
                    64000, only_uid=1000)
    legacy = job(owner_uid=-1, submit=NOW - 100)
    current = job(owner_uid=1000, submit=NOW - 50)
    p = plan(snap([mine], [legacy, current]), NOW)
    assert [s.job for s in p.starts] == [current.id]
    assert p.reasons[legacy.id] == "NoNodeForUser"


def test_held_reason():
    h = job(state="HELD")
    p = plan(snap([node("n")], [h]), NOW)
    assert not p.starts and p.reasons[h.id] == "Held"


# -- backfill ----------------------------------------------------------------------------------

def test_backfill_short_job_runs_long_job_waits():
    r = running("n", range(6), NOW - 100, 1000)  # ends at NOW + 900
    top = job(gpus=4, submit=NOW - 500, time_limit_s=3600)
    short = job(gpus=2, submit=NOW - 10, time_limit_s=600)
    long = job(gpus=2, submit=NOW - 5, time_limit_s=7200)
    p = plan(snap([node("n", free=(6, 7))], [r, top, short, long]), NOW)
    assert set(started(p)) == {short.id}
    assert p.reasons[top.id] == "Resources"
    assert p.reasons[long.id] == "Priority"
    assert p.estimates[top.id] == NOW + 900


def test_backfill_long_job_may_use_what_the_reservation_leaves():
    r = running("n1", range(8), NOW - 100, 1000)
    top = job(gpus=8, submit=NOW - 500)
    long = job(gpus=2, submit=NOW - 5, time_limit_s=30 * DAY)
    p = plan(snap([node("n1", free=()), node("n2", free=range(4), gtype="A100")],
                  [r, top, long]), NOW)
    assert started(p)[long.id].node == "n2"


def test_long_jobs_share_what_the_reservation_leaves_on_its_node():
    r = running("n", range(4), NOW - 100, 1100, cpus=8)  # ends at NOW + 1000
    top = job(gpus=4, cpus=12, submit=NOW - 500)  # reserved: GPUs 0-3 and 12 CPUs at NOW + 1000
    long = [job(gpus=1, cpus=3, submit=NOW - 10, time_limit_s=7200) for _ in range(2)]
    p = plan(snap([node("n", free=range(4, 8), cpus=16, free_cpus=8)], [r, top] + long), NOW)
    assert p.estimates == {top.id: NOW + 1000}
    # the first keeps 1 of the 4 spare CPUs free; the second would leave the reservation short
    assert [s.job for s in p.starts] == [long[0].id]
    assert p.reasons[long[1].id] == "Priority"


def test_no_backfill_when_switched_off():
    r = running("n", range(6), NOW - 100, 1000)
    top = job(gpus=4, submit=NOW - 500)
    short = job(gpus=2, submit=NOW - 10, time_limit_s=60)
    p = plan(snap([node("n", free=(6, 7))], [r, top, short], backfill=False), NOW)
    assert not p.starts and p.reasons[short.id] == "Priority"


def _replay(nodes, jobs, backfill, watch):
    """Run plan at every event until `watch` starts, jobs running exactly their limits."""
    t = NOW
    state = {j.id: j for j in jobs}
    ends = [j.start_time + j.time_limit_s for j in jobs if j.state == "RUNNING"]
    for _ in range(200):
        cur_nodes = []
        for n in nodes:
            used = set()
            for j in state.values():
                if j.state == "RUNNING" and j.node == n.name:
                    used.update(j.gpu_indices)
            cur_nodes.append(NodeView(n.name, n.state, n.cpus, n.memory_mb, n.gpus,
                                      frozenset(range(len(n.gpus))) - used, n.cpus,
                                      n.memory_mb))
        p = plan(Snapshot(cur_nodes, list(state.values()),
                          config=PolicyConfig(weight_age=0, weight_fairshare=0,
                                              backfill=backfill)), t)
        for s in p.starts:
            j = state[s.job]
            if j.id == watch:
                return t
            state[j.id] = JobView(j.id, j.owner, j.group, "RUNNING", j.priority, j.submit_time,
                                  gpus=j.gpus, time_limit_s=j.time_limit_s, node=s.node,
                                  gpu_indices=s.gpus, start_time=t)
            ends.append(t + j.time_limit_s)
        future = [e for e in ends if e > t]
        if not future:
            return None
        t = min(future)
        for jid, j in list(state.items()):
            if j.state == "RUNNING" and j.start_time + j.time_limit_s <= t:
                del state[jid]
    return None


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_backfill_never_delays_the_top_job(data):
    n_nodes = data.draw(st.integers(1, 3))
    nodes = [node(f"n{i}", gpus=4) for i in range(n_nodes)]
    jobs = []
    jid = 1
    for nd in nodes:
        for g in range(4):
            if data.draw(st.booleans()):
                jobs.append(JobView(jid, "u", "g", "RUNNING", 5, NOW - 10, gpus=1,
                                    time_limit_s=data.draw(st.integers(1, 50)) * 100.0,
                                    node=nd.name, gpu_indices=(g,), start_time=NOW - 10))
                jid += 1
    top = JobView(jid, "u", "g", "PENDING", 10, NOW - 10, gpus=data.draw(st.integers(2, 4)),
                  time_limit_s=data.draw(st.integers(1, 50)) * 100.0)
    jobs.append(top)
    for k in range(data.draw(st.integers(0, 12))):
        jobs.append(JobView(jid + 1 + k, "u", "g", "PENDING", data.draw(st.integers(1, 9)),
                            NOW - 10, gpus=data.draw(st.integers(1, 4)),
                            time_limit_s=data.draw(st.integers(1, 50)) * 100.0))
    without = _replay(nodes, jobs, False, top.id)
    with_bf = _replay(nodes, jobs, True, top.id)
    assert without is not None and with_bf is not None
    assert with_bf <= without


# -- dependencies ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,final,outcome", [
    ("afterok", "COMPLETED", "start"), ("afterok", "FAILED", "never"),
    ("afterany", "COMPLETED", "start"), ("afterany", "CANCELLED", "start"),
    ("afternotok", "FAILED", "start"), ("afternotok", "TIMEOUT", "start"),
    ("afternotok", "NODE_FAIL", "start"), ("afternotok", "COMPLETED", "never"),
])
def test_dependency_kinds(kind, final, outcome):
    d = job(dependencies=(Dependency(kind, 77),))
    p = plan(snap([node("n")], [d], ended={77: final}), NOW)
    if outcome == "start":
        assert d.id in started(p)
    else:
        assert not p.starts
        assert (d.id, "DependencyNeverSatisfied") in p.cancels


def test_dependency_waits_on_active_target_and_all_must_hold():
    target = job(state="PENDING", gpus=16)
    d = job(dependencies=(Dependency("afterany", 77), Dependency("afterok", target.id)))
    p = plan(snap([node("n")], [target, d], ended={77: "FAILED"}), NOW)
    assert d.id not in started(p) and p.reasons[d.id] == "Dependency"


def test_unknown_dependency_kept_waiting_when_not_cancelling():
    d = job(dependencies=(Dependency("afterok", 12345),))
    p = plan(snap([node("n")], [d], cancel_unsatisfiable=False), NOW)
    assert not p.cancels and p.reasons[d.id] == "DependencyNeverSatisfied"


def test_find_cycle():
    edges = {2: [1], 3: [2]}
    assert find_cycle(edges, 4, [3]) is None
    assert find_cycle(edges, 1, [3]) == [1, 3, 2, 1]
    assert find_cycle(edges, 5, [5]) == [5, 5]


# -- reasons and priorities for everyone ----------------------------------------------------

def test_every_pending_job_has_priority_and_reason():
    r = running("n", range(8), NOW - 100, 1000)
    queued = [job(gpus=g, owner=f"u{k % 3}", submit=NOW - k) for k, g in
              enumerate([8, 1, 2, 4, 1, 8, 2] * 5)]
    p = plan(snap([node("n", free=())], [r] + queued), NOW)
    assert set(p.priorities) == {j.id for j in queued}
    assert set(p.reasons) == {j.id for j in queued}
    assert sum(1 for v in p.reasons.values() if v == "Resources") == 1
    assert set(p.reasons.values()) == {"Resources", "Priority"}


# -- start estimates beyond the reservation ---------------------------------------------------
def test_estimates_follow_time_limits_in_priority_order():
    from labq.daemon.policy import estimate
    now = 1000.0
    node = NodeView("n", "up", 16, 64000, tuple(GpuSlot(i, "A100", 40960) for i in range(4)),
                    frozenset(), 12, 64000)
    running = JobView(1, "u", "g", "RUNNING", 5, 0.0, gpus=4, cpus=4, time_limit_s=1100,
                      node="n", gpu_indices=(0, 1, 2, 3), start_time=100.0)  # ends at 1200
    b = JobView(2, "u", "g", "PENDING", 9, 10.0, gpus=4, time_limit_s=50)
    c = JobView(3, "u", "g", "PENDING", 7, 20.0, gpus=2, time_limit_s=100)
    d = JobView(4, "u", "g", "PENDING", 5, 30.0, gpus=2, time_limit_s=100)
    e = JobView(5, "u", "g", "PENDING", 1, 40.0, gpus=3, time_limit_s=10)
    snap = Snapshot([node], [running, b, c, d, e])
    p = plan(snap, now)
    assert p.starts == []
    est = estimate(snap, p, now)
    # b takes all four GPUs at 1200 for 50 s; c and d share them at 1250; e waits for both
    assert est == {2: 1200.0, 3: 1250.0, 4: 1250.0, 5: 1350.0}
    assert p.estimates[2] == est[2]  # agrees with the plan's reservation


def test_estimates_skip_jobs_that_wait_for_other_reasons():
    from labq.daemon.policy import estimate
    node = NodeView("n", "up", 16, 64000, (GpuSlot(0, "A100", 40960),), frozenset({0}), 16,
                    64000)
    held = JobView(1, "u", "g", "HELD", 5, 0.0, gpus=1)
    never = JobView(2, "u", "g", "PENDING", 5, 0.0, gpus=1, gpu_type="H100")
    snap = Snapshot([node], [held, never])
    p = plan(snap, 10.0)
    assert estimate(snap, p, 10.0) == {}


# -- a memo between plans gives the plan a fresh one gives ---------------------------------------

def _same_plan(a, b):
    assert a.starts == b.starts
    assert a.reasons == b.reasons and dict(a.reasons) == dict(b.reasons)
    assert len(a.reasons) == len(b.reasons)
    assert a.priorities == b.priorities and dict(a.priorities) == dict(b.priorities)
    assert len(a.priorities) == len(b.priorities)
    assert a.estimates == b.estimates and a.cancels == b.cancels
    for jid in dict(b.reasons):
        assert jid in a.reasons and a.reasons.get(jid) == b.reasons[jid]


def _draw_job(data, jid, now, ids):
    deps = ()
    if ids and data.draw(st.integers(0, 9)) == 0:
        deps = (Dependency(data.draw(st.sampled_from(["afterok", "afterany"])),
                           data.draw(st.sampled_from(ids + [7777, 8888]))),)
    submit = now - data.draw(st.sampled_from([5.0, 600.0, DAY, 3 * DAY, 9 * DAY]))
    elig = data.draw(st.sampled_from([None, None, submit, now - 2 * DAY, now - 10.0]))
    return JobView(jid, data.draw(st.sampled_from(["a", "b"])), "lab",
                   data.draw(st.sampled_from(["PENDING"] * 5 + ["HELD"])),
                   data.draw(st.sampled_from([1, 5, 9])), submit,
                   gpus=data.draw(st.sampled_from([0, 1, 2, 4, 8])),
                   time_limit_s=data.draw(st.sampled_from([None, 600.0, 3600.0, DAY])),
                   dependencies=deps, eligible_time=elig)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_memo_plans_like_a_fresh_plan(data):
    from dataclasses import replace

    from labq.daemon.policy import PlanMemo
    nodes = [node("n1", gpus=4), node("n2", gpus=8, gtype="V100")]
    cfg = PolicyConfig(
        max_age_s=data.draw(st.sampled_from([DAY, 7 * DAY])),
        backfill=data.draw(st.booleans()),
        limits=Limits(user_gpus=data.draw(st.sampled_from([None, 6]))))
    now = NOW
    jobs = []
    for k in range(data.draw(st.integers(0, 30))):
        jobs.append(_draw_job(data, k + 1, now, [j.id for j in jobs]))
    next_id = 1000
    memo = PlanMemo()
    earlier = []
    for _ in range(data.draw(st.integers(2, 8))):
        free = {n.name: set(range(len(n.gpus))) for n in nodes}
        for j in jobs:
            if j.state == "RUNNING":
                free[j.node] -= set(j.gpu_indices)
        views = [replace(n, free_gpus=frozenset(free[n.name])) for n in nodes]
        snapshot = Snapshot(views, list(jobs), ended={7777: "COMPLETED", 8888: "FAILED"},
                            group_usage={"lab": 10.0}, config=cfg, memo=memo)
        p = plan(snapshot, now)
        fresh = plan(replace(snapshot, memo=None), now)
        _same_plan(p, fresh)
        earlier.append((p, fresh))
        # the next pass: starts applied, some jobs end, held, released or changed, new ones
        starts = {s.job: s for s in p.starts}
        nxt = []
        for j in jobs:
            op = data.draw(st.integers(0, 19))
            if j.id in starts:
                s = starts[j.id]
                j = replace(j, state="RUNNING", node=s.node, gpu_indices=s.gpus, start_time=now)
            elif op == 0:
                continue  # ended, cancelled
            elif op == 1 and j.state == "PENDING":
                j = replace(j, state="HELD")
            elif op == 2 and j.state == "HELD":
                j = replace(j, state="PENDING", eligible_time=now)
            elif op == 3 and j.state == "PENDING":
                j = replace(j, priority=data.draw(st.sampled_from([1, 5, 9])))
            nxt.append(j)
        for _ in range(data.draw(st.integers(0, 4))):
            next_id += 1
            nxt.append(_draw_job(data, next_id, now, [j.id for j in nxt]))
        if data.draw(st.integers(0, 9)) == 0:
            nxt.reverse()  # any order will do, at a cost
        jobs = nxt
        now += data.draw(st.sampled_from([0.0, 1.0, 3600.0, DAY]))
    assert memo.fresh_builds == 1  # it followed every change
    for p, fresh in earlier:  # and later passes did not change earlier plans
        _same_plan(p, fresh)


def test_schedule_on_a_kept_queue_matches_plan():
    from labq.daemon.policy import schedule
    from labq.daemon.policy.placement import Cluster
    from labq.daemon.policy.queue import PendingQueue
    r = running("n", range(6), NOW - 100, 1000)
    queued = [job(gpus=g, owner=f"u{k % 3}", submit=NOW - 50 * k,
                  time_limit_s=[600.0, 7200.0, None][k % 3]) for k, g in
              enumerate([4, 1, 2, 4, 1, 8, 2] * 4)]
    s = snap([node("n", free=(6, 7)), node("m", free=range(3))], [r] + queued)
    p = plan(s, NOW)
    cluster = Cluster(s.nodes, s.config.limits)
    cluster.add_running(r, r.start_time + r.time_limit_s)
    queue = PendingQueue(s.config, NOW, queued)
    fs = fairshare.factors({}, {}, {}, {}, {(j.group, j.owner) for j in queued})
    q = schedule(cluster, queue, NOW, s.config, fs)
    assert q.starts == p.starts and q.estimates == p.estimates
    assert dict(q.reasons) == dict(p.reasons) and dict(q.priorities) == dict(p.priorities)
    assert {x.job for x in p.starts} and set(p.reasons.values()) >= {"Resources", "Priority"}


def test_an_array_throttle_lets_n_tasks_run_and_the_rest_wait_with_array_throttle():
    tasks = [job(id=100 + i, submit=NOW - 100 + i, array_id=100, array_limit=2)
             for i in range(6)]
    other = job(id=200, submit=NOW)
    p = plan(snap([node("n1")], tasks + [other]), NOW)
    # two tasks of the array start; a job outside it still gets a GPU
    assert sorted(s.job for s in p.starts) == [100, 101, 200]
    assert {t.id: p.reasons[t.id] for t in tasks[2:]} == {t.id: "ArrayThrottle"
                                                          for t in tasks[2:]}
    # with two running, the next pass starts none of the others though GPUs are free
    now_running = [running("n1", [k], NOW, 3600, id=t.id, array_id=100, array_limit=2)
                   for k, t in enumerate(tasks[:2])]
    p2 = plan(snap([node("n1", free=range(2, 8))], now_running + tasks[2:]), NOW + 1)
    assert p2.starts == []
    assert p2.reasons[102] == "ArrayThrottle"


def test_a_job_that_backfill_keeps_waiting_learns_the_reservation_and_the_time_that_fits():
    r = running("n", range(4), NOW - 100, 1000)  # ends at NOW + 900
    top = job(gpus=8, submit=NOW - 500)  # reserved: all 8 GPUs at NOW + 900
    long = job(gpus=2, submit=NOW - 10, time_limit_s=7200)  # fits on GPUs 4-7, but too long
    wide = job(gpus=6, submit=NOW - 5, time_limit_s=60)  # fits nowhere now, whatever its limit
    p = plan(snap([node("n", free=range(4, 8))], [r, top, long, wide]), NOW)
    assert not p.starts
    res = p.reservation
    assert (res.job, res.node, res.gpus, res.until) == (top.id, "n", 8, NOW + 900)
    assert p.reasons[long.id] == "Priority"
    assert p.backfill_limits.get(long.id) == 900
    assert wide.id not in p.backfill_limits and top.id not in p.backfill_limits
    assert dict(p.backfill_limits) == {long.id: 900}
    # with that limit the same job starts now
    fits = job(gpus=2, submit=NOW - 10, time_limit_s=900)
    p = plan(snap([node("n", free=range(4, 8))], [r, top, fits]), NOW)
    assert set(started(p)) == {fits.id}


def test_no_time_limit_helps_where_a_job_fits_clear_of_the_reservation_or_not_at_all():
    r = running("n1", range(8), NOW - 100, 1000)
    top = job(gpus=8, submit=NOW - 500)
    big = job(gpus=4, submit=NOW - 5, time_limit_s=30 * DAY)  # n2 has only 2 free
    p = plan(snap([node("n1", free=()), node("n2", free=range(2))], [r, top, big]), NOW)
    assert p.reasons[big.id] == "Priority" and big.id not in p.backfill_limits
    assert p.reservation.job == top.id and p.reservation.node == "n1"
    free = plan(snap([node("n", free=range(8))], [job(gpus=1)]), NOW)
    assert free.reservation is None and dict(free.backfill_limits) == {}
