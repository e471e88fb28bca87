"""labqd's log copies: capped with a clear mark, readable after the node is gone; and the
local node's GPU detection saying once that there are none."""
import pytest
from daemonproc import Daemon, wait_for
from sshnodes import NodeSet


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    base = tmp_path_factory.mktemp("logs")
    with NodeSet(base / "nodes", names=["solo"]) as ns:
        entries = ns.config_entries()
        entries[0]["job_root"] = str(base / "jobs")
        d = Daemon(base / "daemon", {"daemon": {"log_copy_max": "1M", "heartbeat": "1s"},
                                     "node": entries})
        d.ns = ns
        with d.start(wait_nodes=1):
            yield d


def test_big_log_is_capped_with_a_mark(capped, tmp_path):
    with capped.client() as q:
        # 3 MiB of output, well past the 1 MiB cap
        job = q.submit(["python3", "-c", "import sys\nfor i in range(3 * 1024):\n"
                        "    sys.stdout.write(('%07d' % i) * 128 + '\\n')\nprint('END')"],
                       cwd=str(tmp_path))
        [done] = q.wait(job.id, timeout=60)
        assert done.state.value == "COMPLETED"
        text = q.logs(job.id)
        assert text.startswith("0000000" * 128 + "\n")
        assert len(text.encode()) < (1 << 20) + 1024
        assert "[labq: log truncated at 1048576 bytes; the full log is on node solo" in text
        assert "END" not in text


def test_logs_outlive_the_node(capped, tmp_path):
    with capped.client() as q:
        job = q.submit(["bash", "-c", "for i in $(seq 5); do echo line $i; done"],
                       cwd=str(tmp_path))
        q.wait(job.id, timeout=30)
        capped.ns["solo"].stop()
        wait_for(lambda: q.nodes()[0].state == "down", what="node down")
        assert q.logs(job.id) == "".join(f"line {i}\n" for i in range(1, 6))
        assert "".join(q.follow(job.id)) == q.logs(job.id)  # a finished job's follow ends


def test_local_node_without_driver_says_so_once(tmp_path):
    d = Daemon(tmp_path, {"daemon": {"local_node": True}})
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            [node] = q.nodes()
            assert node.gpus == [] and node.gpu_source == "none" and node.cpus >= 1
            assert node.memory_mb > 0
    finally:
        d.close()
    lines = [line for line in d.log().splitlines() if "no GPUs detected" in line]
    assert len(lines) == 1 and "nvml" in lines[0] and "nvidia-smi" in lines[0]


def test_follow_rides_out_a_daemon_restart(tmp_path):
    import threading
    gate = tmp_path / "gate"
    d = Daemon(tmp_path / "d", {"daemon": {},
                                "node": [{"name": "here", "local": True,
                                          "job_root": str(tmp_path / "jobs")}]})
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            job = q.submit(["bash", "-c", f"echo before; while [ ! -e {gate} ]; do sleep 0.05;"
                            " done; echo after"], cwd=str(tmp_path), export_env=False)
        got = []
        follower = d.client()
        t = threading.Thread(target=lambda: got.extend(follower.follow(job.id)), daemon=True)
        t.start()
        wait_for(lambda: "".join(got) == "before\n", what="first line")
        d.stop()
        d.start(wait_nodes=1)
        gate.write_text("")
        t.join(30)
        assert not t.is_alive() and "".join(got) == "before\nafter\n"
        follower.close()
    finally:
        d.close()


def test_read_log_from_the_tail(tmp_path):
    d = Daemon(tmp_path / "d", {"daemon": {"local_node": True}})
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            job = q.submit(["bash", "-c", "for i in $(seq 1000); do echo line $i; done"],
                           cwd=str(tmp_path))
            q.wait(job.id, timeout=30)
            whole = q.logs(job.id).encode()
            data, offset, done = q.read_log(job.id, -20)
            assert data == whole[-20:] and offset == len(whole)
            data, offset, _ = q.read_log(job.id, -10 ** 9)  # more than there is: the start
            assert data == whole and offset == len(whole)
    finally:
        d.close()
