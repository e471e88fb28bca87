"""starved_reservations inside a real labqd with two real SSH nodes: a starved job after the top
one holds the node it waits for, so a newer job that would outlast the wait stays off it, and
one that ends in time starts there."""
import pytest
from daemonproc import wait_for
from nodedaemon import daemon_on_nodes

GPUS = [{"type": "A100", "memory_mb": 40960}] * 2
NAMES = ["s1", "s2"]
STARVED = 10000 + 1000 + 1000  # the default weights of fair-share, user priority and age


@pytest.fixture(scope="module")
def starved(tmp_path_factory):
    with daemon_on_nodes(tmp_path_factory.mktemp("starved"), NAMES, GPUS, {
        "daemon": {"socket_mode": "0666", "kill_grace": "1s", "heartbeat": "1s",
                   "local_node": False},
        # a job is starved once it has waited 2 seconds
        "scheduler": {"interval": "1s", "starved_first": True, "max_age": "2s",
                      "starved_reservations": 2},
    }) as d:
        yield d


def test_a_starved_job_after_the_top_one_keeps_its_node_from_a_longer_newer_job(starved, tmp_path):
    kw = {"cwd": str(tmp_path), "export_env": False}
    with starved.client() as q:
        try:
            # one node full until its job's limit (10 minutes); one GPU of the other busy for
            # up to 20 minutes
            full = q.submit(["sleep", "600"], gpus=2, time_limit="10m", **kw)
            wait_for(lambda: q.job(full.id).state.value == "RUNNING", what="full running")
            half = q.submit(["sleep", "600"], gpus=1, time_limit="20m", **kw)
            wait_for(lambda: q.job(half.id).state.value == "RUNNING", what="half running")
            assert q.job(half.id).node != q.job(full.id).node
            # two jobs of 2 GPUs wait until they are starved: the first reserves the full node,
            # the second the half-busy one
            top = q.submit(["true"], gpus=2, time_limit="1m", **kw)
            second = q.submit(["true"], gpus=2, time_limit="1m", **kw)
            # starved: the highest priority any job can have (the sum of the weights)
            wait_for(lambda: all((q.job(j.id).priority_score or 0) >= STARVED
                                 for j in (top, second)), what="both starved")
            long = q.submit(["sleep", "60"], gpus=1, time_limit="1h", **kw)
            short = q.submit(["sleep", "60"], gpus=1, time_limit="5m", **kw)
            # the short one ends before the second job's reservation: it takes the free GPU
            wait_for(lambda: q.job(short.id).state.value == "RUNNING", what="short running")
            assert q.job(short.id).node == q.job(half.id).node
            # the long one would hold that GPU past it (with the top job's reservation alone it
            # would have started there)
            waiting = wait_for(lambda: (lambda j: j.reason and j)(q.job(long.id)),
                               what="long's reason")
            assert waiting.state.value == "PENDING" and waiting.reason == "Priority"
            assert {q.job(j.id).state.value for j in (top, second)} == {"PENDING"}
        finally:
            starved.cancel_all()
