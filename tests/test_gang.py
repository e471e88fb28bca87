"""What a submit of a gang may ask for (--nodes, --gpus-per-node, --gpus split into whole
nodes) and what each of its parts is told; pure checks, no processes."""
from __future__ import annotations

import pytest

from labq.cli import build_parser
from labq.daemon import gangs
from labq.errors import ValidationError
from labq.protocol import ReadLogRequest
from labq.spec import submit_request, validate_submit


def spec(**kw):
    return validate_submit(dict(command=["train"], **kw))


def refused(field, **kw):
    with pytest.raises(ValidationError) as e:
        spec(**kw)
    assert e.value.details["field"] == field
    return e.value.message


def test_nodes_and_gpus_per_node_make_a_gang_whose_gpus_are_its_total():
    assert (spec(nodes=2, gpus_per_node=8)["nodes"], spec(nodes=2, gpus_per_node=8)["gpus"]) \
        == (2, 16)
    s = spec(gpus=16, nodes=2)  # --gpus is the job's total, as Slurm's
    assert (s["nodes"], s["gpus"]) == (2, 16)
    s = spec(gpus=16, gpus_per_node=8)  # the node count follows
    assert (s["nodes"], s["gpus"]) == (2, 16)
    assert spec(nodes=3)["gpus"] == 0  # a gang without GPUs
    # the daemon checks a spec again: a normalised one comes out the same
    s = spec(gpus_per_node=4, nodes=3)
    assert validate_submit(s) == s


def test_a_job_that_names_no_nodes_leaves_them_to_labqd():
    assert spec(gpus=16)["nodes"] is None and spec(gpus=16)["gpus"] == 16


def test_gang_options_that_disagree_or_make_no_sense_are_refused_by_name():
    assert "not 3 node(s) times 8" in refused("gpus", gpus=16, gpus_per_node=8, nodes=3)
    assert "split evenly" in refused("gpus", gpus=15, nodes=2)
    refused("nodes", nodes=0, gpus=1)
    refused("nodes", nodes=5000)
    refused("gpus_per_node", gpus_per_node=-1)
    refused("gpus_per_node", nodes=1024, gpus_per_node=8)  # more GPUs than any job may have
    refused("results", nodes=2, results=["out/*"])
    # on one node, it is fine; a gang may be preemptible (it is stopped whole)
    assert spec(gpus=2, preemptible=True, results=["out/*"])["nodes"] is None
    assert spec(gpus=2, nodes=2, preemptible=True)["preemptible"] is True


def test_the_cli_and_the_client_send_what_the_user_asked_for():
    a = build_parser().parse_args(["submit", "--nodes", "2", "--gpus-per-node", "8", "--",
                                   "torchrun", "train.py"])
    assert (a.nodes, a.gpus_per_node, a.gpus) == (2, 8, None)
    req = submit_request(["x"], nodes=2, gpus_per_node=8)
    assert "gpus" not in req and validate_submit(req)["gpus"] == 16
    assert validate_submit(submit_request(["x"], gpus=16, nodes=2))["gpus"] == 16


def test_gpus_no_node_has_are_split_into_whole_nodes_when_they_can_be():
    s = {"nodes": None, "gpus": 16}
    gangs.fit_to_cluster(s, [8, 8, 8, 4])
    assert s["nodes"] == 2  # two parts of 8
    for gpus, sizes in ((12, [8, 8]), (24, [8, 8, 4]), (8, [8, 8]), (16, [16, 8])):
        s = {"nodes": None, "gpus": gpus}
        gangs.fit_to_cluster(s, sizes)
        assert s["nodes"] == 1, (gpus, sizes)  # fits one node, or cannot be split whole


def test_a_gang_the_cluster_cannot_hold_is_refused_with_the_reason():
    with pytest.raises(ValidationError, match="the cluster has 2") as e:
        gangs.fit_to_cluster({"nodes": 3, "gpus": 3}, [4, 2])
    assert e.value.details["field"] == "nodes"
    with pytest.raises(ValidationError, match="no node has more than 4") as e:
        gangs.fit_to_cluster({"nodes": 2, "gpus": 16}, [4, 2])
    assert e.value.details["field"] == "gpus_per_node"
    with pytest.raises(ValidationError, match="2 nodes of 3 GPUs; the cluster has 1"):
        gangs.fit_to_cluster({"nodes": 2, "gpus": 6}, [4, 2])
    gangs.fit_to_cluster({"nodes": 2, "gpus": 4}, [4, 2])  # two parts of 2: fits
    # a node not seen since labqd started could have any number: it is not held against
    gangs.fit_to_cluster({"nodes": 2, "gpus": 16}, [8, None])
    with pytest.raises(ValidationError, match="3 nodes of 8 GPUs; the cluster has 2"):
        gangs.fit_to_cluster({"nodes": 3, "gpus": 24}, [4, 8, None])


def test_each_part_is_told_what_torchrun_reads():
    job = {"id": 12, "nodes": 2, "gpus": 16, "restarts": 0}
    env = gangs.part_env(job, 1, "10.0.0.5")
    assert env["NODE_RANK"] == env["LABQ_NODE_RANK"] == env["PET_NODE_RANK"] == "1"
    assert env["LABQ_NUM_NODES"] == env["PET_NNODES"] == "2"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "10.0.0.5"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == str(gangs.master_port(12))
    assert env["WORLD_SIZE"] == "16" and env["PET_NPROC_PER_NODE"] == "8"
    cpu = gangs.part_env({"id": 13, "nodes": 3, "gpus": 0, "restarts": 0}, 0, "h")
    assert cpu["WORLD_SIZE"] == "3" and "PET_NPROC_PER_NODE" not in cpu
    assert gangs.master_port(12) != gangs.master_port(13)
    # queued again (its port was taken, say), a gang gets another port
    again = gangs.part_env(dict(job, restarts=1), 0, "10.0.0.5")
    assert again["MASTER_PORT"] == str(gangs.master_port(12, 1)) != env["MASTER_PORT"]


def test_only_a_failing_part_or_rank_0_ends_a_gang():
    assert gangs.part_failed(1, "b", 0, None, None) is None
    assert gangs.part_failed(0, "a", 3, None, None) is None  # judged as the job's own end
    assert gangs.part_failed(1, "b", 3, None, None) == "part 1 on b failed: exit code 3"
    assert "signal 9" in gangs.part_failed(2, "c", None, 9, None)
    assert gangs.part_failed(1, "b", None, 15, "timeout") is None  # the gang's time limit


def test_a_log_part_is_sent_only_when_asked_for():
    assert len(ReadLogRequest(id=3).to_args()) == 4  # a labqd without parts still serves it
    assert ReadLogRequest(id=3, part=1).to_args()[-1] == 1
    # the part goes sixth, after the streams flag
    assert ReadLogRequest(id=3, part=1).to_args()[4:] == (False, 1)
    assert ReadLogRequest.from_args(3, 0, 0.0, 10, False, 1).part == 1
    with pytest.raises(ValidationError):
        ReadLogRequest.from_args(3, 0, 0.0, 10, False, -1)
    with pytest.raises(ValidationError):
        ReadLogRequest.from_args(3, 0, 0.0, 10, False, True)
