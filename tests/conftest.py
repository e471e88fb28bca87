import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemonproc import Daemon  # noqa: E402
from sshnodes import H100_CSV, NodeSet  # noqa: E402

A100X4 = [{"type": "A100", "memory_mb": 81920}] * 4

# modules whose tests run in-process in milliseconds (pure logic, parsers, a SQLite file, a
# config check); every other test starts real processes (labqd, sshd, agents, users' CLIs)
# and is marked slow, so `pytest -m "not slow"` is the inner loop
FAST_MODULES = {"test_policy", "test_policy_reference", "test_units", "test_store",
                "test_agent_probe", "test_layers", "test_config", "test_protocol", "test_registry",
                "test_sweep", "test_sbatch", "test_tokens", "test_agent_transfer",
                "test_pressure_policy", "test_startup", "test_channels", "test_logcopy",
                "test_agent_streams", "test_gang_policy", "test_gang", "test_slurm_parts",
                "test_preempt_holds", "test_preempt_tier"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two real sshd nodes (4 declared A100s; 2 H100s detected by nvidia-smi), a node whose
    host key is unknown, and a real labqd that any local user may talk to."""
    base = tmp_path_factory.mktemp("cluster")
    with NodeSet(base / "nodes", names=["a4", "h2"], nvidia_smi_csv=[None, H100_CSV]) as ns:
        empty_kh = base / "empty_known_hosts"
        empty_kh.write_text("")
        entries = ns.config_entries({"a4": A100X4})
        for e in entries:
            # a path with spaces, quotes and $() must reach the node's agent intact
            e["job_root"] = str(base / f"jobs {e['name']} $(touch pwned) 'q'")
        unknown = dict(entries[0], name="nokey", known_hosts=str(empty_kh))
        unknown.pop("gpus")
        d = Daemon(base / "daemon", {
            "daemon": {"socket_mode": "0666", "kill_grace": "2s", "heartbeat": "1s"},
            "node": entries + [unknown],
        })
        d.nodes = ns
        with d.start(wait_nodes=2):
            yield d


@pytest.fixture
def q(cluster):
    with cluster.client() as client:
        yield client
