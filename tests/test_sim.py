"""The replay simulator on a slice of the Philly trace: invariants and output format."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from labq.daemon import sim
from labq.daemon.trace import load_trace

# a slice of the trace shipped with the tests (see data/philly/README.md)
DATA = os.path.join(os.path.dirname(__file__), "data", "philly")
JOBS = os.path.join(DATA, "jobs.csv")
VCS = os.path.join(DATA, "vcs.csv")
KEYS = {"avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_wait_s", "p99_wait_s", "max_wait_s",
        "utilization", "jain", "jobs", "vc_share", "share_ratio", "worst_share"}

@pytest.fixture(scope="module")
def trace():
    return load_trace(JOBS, VCS, limit=2000, seed=3)


def test_trace_model(trace):
    jobs, vcs = trace
    assert len(jobs) == 2000
    assert all(j.submit <= k.submit for j, k in zip(jobs, jobs[1:]))
    assert all(j.duration <= j.time_limit <= 10 * j.duration + 60 for j in jobs)
    assert all(1 <= j.gpus // j.nodes <= 8 and j.gpus % j.nodes == 0 and j.gpus <= vcs[j.vc]
               for j in jobs)
    again, _ = load_trace(JOBS, VCS, limit=2000, seed=3)
    assert again == jobs  # the limit model is seeded


@pytest.mark.parametrize("policy", sim.POLICIES)
def test_invariants(trace, policy):
    jobs, vcs = trace
    capacity = sum(vcs.values())
    # a denser slice so that jobs actually queue
    dense = [sim.replace(j, submit=j.submit * 0.05) for j in jobs]
    r = sim.simulate(dense, vcs, policy, record=True)
    assert r["violations"] == 0
    assert r["jobs"] == len(dense)
    recs = r["records"]
    by_id = {j.id: j for j in dense}
    for jid, (submit, start, finish, _gpus) in recs.items():
        assert start is not None and finish is not None
        assert submit <= start <= finish
        assert finish - start == pytest.approx(by_id[jid].duration)
    assert all(busy <= capacity for _, busy in r["timeline"])
    # independent sweep: GPUs in use never exceed the cluster at any instant
    events = sorted([(s, g) for _, s, _, g in recs.values()] +
                    [(f, -g) for _, _, f, g in recs.values()], key=lambda e: (e[0], e[1]))
    busy = 0
    for _, delta in events:
        busy += delta
        assert busy <= capacity
    assert 0 < r["utilization"] <= 1
    assert 0 < r["jain"] <= 1 + 1e-9
    if policy == "vc-fifo":
        # FIFO within each VC: starts are in submit order
        for vc in vcs:
            starts = [recs[j.id][1] for j in dense if j.vc == vc]
            assert starts == sorted(starts)


def test_policies_differ_under_load(trace):
    jobs, vcs = trace
    dense = [sim.replace(j, submit=j.submit * 0.05) for j in jobs]
    jct = {p: sim.simulate(dense, vcs, p)["avg_jct_s"] for p in ("vc-fifo", "labq",
                                                                 "sjf-oracle")}
    assert jct["labq"] < jct["vc-fifo"]
    assert jct["sjf-oracle"] <= jct["labq"] * 1.05


def test_run_json_keys():
    r = sim.run(JOBS, VCS, limit=500)
    assert set(r) == {"wall_s", "restart_cost_s", "policies"}
    assert r["restart_cost_s"] is None  # a preempted job loses its run
    assert set(r["policies"]) == set(sim.POLICIES)
    for m in r["policies"].values():
        assert KEYS <= set(m)
        shares = m["vc_share"]
        assert sum(v["gpu_time_share"] for v in shares.values()) == pytest.approx(1.0)
        assert sum(v["entitlement"] for v in shares.values()) == pytest.approx(1.0)
    assert "avg JCT" in sim.format_table(r)


def test_installed_executable_json():
    exe = shutil.which("labq-sim") or os.path.join(os.path.dirname(sys.executable), "labq-sim")
    out = subprocess.run([exe, "--trace", JOBS, "--vcs", VCS, "--limit", "300", "--json",
                          "--seed", "1"], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert set(data["policies"]) == set(sim.POLICIES)
    assert data["policies"]["labq"]["jobs"] == 300
    assert KEYS <= set(data["policies"]["labq"])


def small_trace(tmp_path, nodes: dict[str, int], rows: list[str]):
    """A trace in the shipped files' format: VCs with their node counts, and job rows
    (timestamp, duration, GPUs, GPU time, VC)."""
    (tmp_path / "vcs.csv").write_text("vc,node num\n"
                                      + "".join(f"{vc},{n}\n" for vc, n in nodes.items()))
    (tmp_path / "jobs.csv").write_text("timestamp,duration,num_gpus,gpu_time,cluster\n"
                                       + "".join(r + "\n" for r in rows))
    return load_trace(str(tmp_path / "jobs.csv"), str(tmp_path / "vcs.csv"))


def test_multi_node_jobs_replay_as_gangs_as_they_ran(tmp_path):
    jobs, vcs = small_trace(tmp_path, {"big": 3, "small": 1}, [
        "2017-10-09 07:00:00,100.0,16,1600.0,big",
        "2017-10-09 07:00:01,100.0,12,1200.0,big",
        "2017-10-09 07:00:02,100.0,8,800.0,big",
        "2017-10-09 07:00:03,100.0,16,1600.0,small"])
    assert [(j.nodes, j.gpus, j.duration) for j in jobs] == [
        (2, 16, 100.0), (2, 12, 100.0), (1, 8, 100.0),
        (1, 8, 200.0)]  # a VC of one node: on it, for twice as long
    for policy in sim.POLICIES:
        r = sim.simulate(jobs, vcs, policy, record=True)
        assert r["violations"] == 0 and r["jobs"] == 4, policy
        recs = r["records"]
        assert recs[1][1:] == (0.0, 100.0, 16)  # two whole nodes at once, for as long as it ran
        assert all(f - s == j.duration for j, (_, s, f, _) in zip(jobs, recs.values()))
    # FIFO on the big VC's 3 nodes: the 12-GPU gang needs 2 of them, so the 8-GPU job behind
    # it waits too, though the third node is free
    fifo = sim.simulate(jobs, vcs, "vc-fifo", record=True)["records"]
    assert fifo[2][1] == 100.0 and fifo[3][1] == 100.0


def test_preemption_replays_the_daemons_decision_and_costs_the_run_so_far(tmp_path):
    # "big" holds its share (2 nodes) with jobs 1 and 2, so its third job is submitted
    # preemptible; "small"'s job then finds no node free
    jobs, vcs = small_trace(tmp_path, {"big": 2, "small": 1}, [
        "2017-10-09 07:00:00,10000.0,8,80000.0,big",
        "2017-10-09 07:00:01,10000.0,8,80000.0,big",
        "2017-10-09 07:00:02,10000.0,8,80000.0,big",
        "2017-10-09 07:16:40,100.0,8,800.0,small"])
    plain = sim.simulate(jobs, vcs, "labq", record=True)
    assert plain["preemptions"] == 0
    assert plain["records"][4][1] == 10000.0  # small waits for the first of big's jobs to end
    r = sim.simulate(jobs, vcs, "labq-preempt", record=True)
    recs = r["records"]
    assert r["violations"] == 0 and r["jobs"] == 4
    assert r["preemptions"] == 1
    assert recs[4][1:3] == (1000.0, 1100.0)  # small starts at once, on job 3's node
    assert recs[1][1:3] == (0.0, 10000.0) and recs[2][1:3] == (1.0, 10001.0)  # never preempted
    # job 3 lost its 998 s of run and runs again whole, from when small's job ended
    assert recs[3][1:3] == (1100.0, 11100.0)
    assert r["lost_gpu_hours"] == pytest.approx(8 * 998 / 3600)


def test_with_a_restart_cost_a_preempted_job_resumes_losing_only_that(tmp_path):
    # as above, but jobs checkpoint when signalled: job 3 stopped after 998 s of its 10,000
    # resumes when small's job ends and loses 300 s, so it runs 9,302 s more
    jobs, vcs = small_trace(tmp_path, {"big": 2, "small": 1}, [
        "2017-10-09 07:00:00,10000.0,8,80000.0,big",
        "2017-10-09 07:00:01,10000.0,8,80000.0,big",
        "2017-10-09 07:00:02,10000.0,8,80000.0,big",
        "2017-10-09 07:16:40,100.0,8,800.0,small"])
    r = sim.simulate(jobs, vcs, "labq-preempt", record=True, restart_cost=300.0)
    recs = r["records"]
    assert r["violations"] == 0 and r["jobs"] == 4 and r["preemptions"] == 1
    assert recs[4][1:3] == (1000.0, 1100.0)
    assert recs[3][1:3] == (1100.0, 1100.0 + 10000.0 - 998.0 + 300.0)
    assert r["lost_gpu_hours"] == pytest.approx(8 * 300 / 3600)
    # a cost longer than the run loses the run, no more
    r = sim.simulate(jobs, vcs, "labq-preempt", record=True, restart_cost=5000.0)
    assert r["records"][3][1:3] == (1100.0, 11100.0)
    assert r["lost_gpu_hours"] == pytest.approx(8 * 998 / 3600)


def test_the_executable_states_the_restart_cost_and_refuses_a_bad_one():
    exe = shutil.which("labq-sim") or os.path.join(os.path.dirname(sys.executable), "labq-sim")
    args = [exe, "--trace", JOBS, "--vcs", VCS, "--limit", "200", "--policy", "labq-preempt"]
    out = subprocess.run(args + ["--restart-cost", "600"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "preempted jobs resume from a checkpoint, losing 600 s of their run" in out
    out = subprocess.run(args + ["--restart-cost", "600", "--json"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert json.loads(out)["restart_cost_s"] == 600.0
    for bad in ("-1", "soon", "nan", "inf"):
        r = subprocess.run(args + [f"--restart-cost={bad}"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and not r.stdout
        assert f"{bad!r} is not a number of seconds (0 or more)" in r.stderr


def test_the_replays_over_share_tier_keeps_a_run_of_more_than_a_day_and_a_half(
        tmp_path, monkeypatch):
    # big runs both nodes, one beyond its share, for 4 days; small's job comes 2 days in
    day = 86400.0
    jobs, vcs = small_trace(tmp_path, {"big": 1, "small": 1}, [
        "2017-10-09 07:00:00,345600.0,8,2764800.0,big",
        "2017-10-09 07:00:01,345600.0,8,2764800.0,big",
        "2017-10-11 07:00:00,600.0,8,4800.0,small"])
    assert sim.policy_config("labq-preempt-share", vcs).preempt_max_run_s == 1.5 * day
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    assert r["preemptions"] == 0 and r["records"][3][1] == 4 * day  # it waits for one to end
    monkeypatch.setattr(sim, "SHARE_PREEMPT_MAX_RUN_S", 0.0)  # no limit: the daemon's default
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    assert r["preemptions"] == 1 and r["records"][3][1] == 2 * day  # at once


def big_then_small(tmp_path):
    """Two 8-GPU jobs of big, on one node each, then seven short 8-GPU jobs of small."""
    rows = ["2017-10-09 07:00:00,5000.0,8,40000.0,big",
            "2017-10-09 07:00:01,5000.0,8,40000.0,big"]
    rows += [f"2017-10-09 {7 + k // 6:02d}:{(k % 6) * 10:02d}:30,60.0,8,480.0,small"
             for k in range(1, 8)]
    return small_trace(tmp_path, {"big": 1, "small": 1}, rows)


def test_a_preempted_job_is_preempted_at_most_preempt_max_times(tmp_path):
    # big's 2nd job is preemptible; small submits one short job after another: each may stop
    # it, but after preempt_max (3) times it runs to its end
    jobs, vcs = big_then_small(tmp_path)
    r = sim.simulate(jobs, vcs, "labq-preempt", record=True)
    assert r["violations"] == 0 and r["jobs"] == len(jobs)
    assert r["preemptions"] == sim.policy_config("labq", vcs).preempt_max == 3
    recs = r["records"]
    last = recs[2][1]  # job 2's last start, after small's 3rd job: it then ran to its end
    assert recs[2][2] == last + 5000.0
    assert last == recs[5][2]
    # small's later jobs wait for job 1, which was never preemptible, to end
    assert all(recs[k][1] >= recs[1][2] for k in range(6, len(jobs) + 1))


@pytest.fixture
def daemon_budget(monkeypatch):
    """The over-share tier with the daemon's default budget (3 times, after 5 minutes)
    instead of the replay's."""
    defaults = sim.policy_config("labq", {})
    monkeypatch.setattr(sim, "SHARE_PREEMPT_MAX", defaults.preempt_max)
    monkeypatch.setattr(sim, "SHARE_PREEMPT_MIN_RUN_S", defaults.preempt_min_run_s)


def test_the_replays_over_share_budget_lets_every_short_job_take_its_node_back(tmp_path):
    # the replay's tier may stop a job 6 times after a minute of running: each of small's
    # seven short jobs starts at once, and neither of big's jobs is stopped more than 6 times
    jobs, vcs = big_then_small(tmp_path)
    config = sim.policy_config("labq-preempt-share", vcs)
    assert (config.preempt_max, config.preempt_min_run_s) == (6, 60.0)
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    assert r["violations"] == 0 and r["jobs"] == len(jobs) and r["preemptions"] == 7
    recs = r["records"]
    assert all(recs[k][1] == recs[k][0] for k in range(3, len(jobs) + 1))
    assert "small" not in r["share_ratio"]  # it never waited
    # each big job ran its whole 5000 s once small was done
    assert recs[1][2] - recs[1][1] == recs[2][2] - recs[2][1] == 5000.0
    assert min(recs[1][1], recs[2][1]) >= recs[8][2]


def test_over_its_share_a_vcs_latest_jobs_are_preempted_each_at_most_preempt_max_times(
        tmp_path, daemon_budget):
    # labq-preempt-share: big runs two jobs on its share of one node, so both are beyond it
    # while both run; small submits one short job after another: each stops the latest of
    # big's jobs that may still be stopped, but after preempt_max (3) times a job runs to
    # its end
    jobs, vcs = big_then_small(tmp_path)
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    assert r["violations"] == 0 and r["jobs"] == len(jobs)
    assert r["preemptions"] == 2 * sim.policy_config("labq", vcs).preempt_max == 6
    recs = r["records"]
    # job 2's last start, after small's 3rd job, and job 1's (started at 0), after its 6th:
    # each then ran to its end
    assert recs[2][1:3] == (recs[5][2], recs[5][2] + 5000.0)
    assert recs[1][1:3] == (recs[8][2], recs[8][2] + 5000.0)
    # small's last job waits for one of them to end
    assert recs[9][1] == recs[2][2]


def test_the_executable_replays_the_policies_asked_for_and_refuses_an_unknown_one():
    exe = shutil.which("labq-sim") or os.path.join(os.path.dirname(sys.executable), "labq-sim")
    args = [exe, "--trace", JOBS, "--vcs", VCS, "--limit", "200", "--json"]
    out = subprocess.run(args + ["--policy", "labq", "--policy", "fifo"], capture_output=True,
                         text=True, timeout=120, check=True)
    assert list(json.loads(out.stdout)["policies"]) == ["labq", "fifo"]
    bad = subprocess.run(args + ["--policy", "sjf"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'sjf'" in bad.stderr and not bad.stdout


def test_over_share_a_gang_is_preempted_whole_for_a_small_vcs_whole_node_job(
        tmp_path, daemon_budget):
    # big's 2-node gang and (just started) 8-GPU job fill the cluster; tiny's 8-GPU job then
    # takes back its node from the gang, which runs beyond big's share
    jobs, vcs = small_trace(tmp_path, {"big": 2, "tiny": 1}, [
        "2017-10-09 07:00:00,10000.0,16,160000.0,big",
        "2017-10-09 07:15:00,10000.0,8,80000.0,big",
        "2017-10-09 07:16:40,100.0,8,800.0,tiny"])
    assert jobs[0].nodes == 2
    plain = sim.simulate(jobs, vcs, "labq", record=True)
    assert plain["records"][3][1] == 10000.0 and plain["share_ratio"]["tiny"] == 0.0
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    recs = r["records"]
    assert r["violations"] == 0 and r["jobs"] == 3 and r["preemptions"] == 1
    assert recs[3][1:3] == (1000.0, 1100.0)  # at once
    assert "tiny" not in r["share_ratio"]  # it never waited
    # the gang lost its 1000 s on both nodes, and ran again whole once tiny's job was done
    # (its other node stayed free meanwhile: no job waited for it)
    assert r["lost_gpu_hours"] == pytest.approx(16 * 1000 / 3600)
    assert recs[1][1:3] == (1100.0, 11100.0) and recs[2][1:3] == (900.0, 10900.0)


def test_over_share_a_gang_of_a_vc_under_its_share_makes_way_on_two_nodes(tmp_path):
    rows = [f"2017-10-09 07:00:0{k},10000.0,8,80000.0,big" for k in range(4)]
    jobs, vcs = small_trace(tmp_path, {"big": 2, "mid": 2},
                            rows + ["2017-10-09 07:16:40,500.0,16,8000.0,mid"])
    r = sim.simulate(jobs, vcs, "labq-preempt-share", record=True)
    recs = r["records"]
    assert r["violations"] == 0 and r["preemptions"] == 2
    assert recs[5][1:3] == (1000.0, 1500.0)
    # big's two latest jobs went, and ran again once mid's gang ended
    assert [recs[k][1] for k in (1, 2, 3, 4)] == [0.0, 1.0, 1500.0, 1500.0]


def test_worst_lists_each_policys_worst_backlogged_vcs(capsys):
    args = ["--trace", JOBS, "--vcs", VCS, "--limit", "2000", "--seed", "3",
            "--arrival-scale", "0.05", "--policy", "vc-fifo", "--worst", "2"]
    assert sim.main(args) == 0
    out = capsys.readouterr().out.split("vc-fifo: the 2 worst backlogged VCs\n")[1]
    rows = out.splitlines()[1:]
    jobs, vcs = load_trace(JOBS, VCS, limit=2000, seed=3)
    dense = [sim.replace(j, submit=j.submit * 0.05) for j in jobs]
    detail = sim.simulate(dense, vcs, "vc-fifo")["share_detail"]  # worst first
    assert 1 <= len(rows) <= 2 and rows[0].split()[0] == next(iter(detail))
    assert list(detail.values())[0]["ratio"] == min(d["ratio"] for d in detail.values())


def test_the_executable_prints_the_least_max_wait_the_trace_allows(tmp_path):
    # one node; three jobs of the whole node for 10 hours, submitted together: the last to
    # start waits 20 hours whatever the policy, and the bound (on a grid of 3 hours) comes near
    small_trace(tmp_path, {"vc": 1}, ["2017-10-09 07:00:00,36000.0,8,288000.0,vc"] * 3)
    exe = shutil.which("labq-sim") or os.path.join(os.path.dirname(sys.executable), "labq-sim")
    out = subprocess.run([exe, "--trace", str(tmp_path / "jobs.csv"), "--vcs",
                          str(tmp_path / "vcs.csv"), "--wait-bound"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    m = re.match(r"no policy keeps every wait within (\d+) s", out)
    assert m and 15 * 3600 <= int(m[1]) <= 20 * 3600, out
    replayed = sim.run(str(tmp_path / "jobs.csv"), str(tmp_path / "vcs.csv"))["policies"]
    assert all(r["max_wait_s"] >= int(m[1]) for r in replayed.values())  # none beats it
