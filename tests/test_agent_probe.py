"""Parsing of real-format nvidia-smi output by the node agent."""
from labq.daemon.nodes.agent.probe import parse_nvidia_smi

A100_SMI = """0, NVIDIA A100-SXM4-80GB, 81920, 4, 0, GPU-5b0a1c4e-2f3d-4c5b-9a8e-7d6c5b4a3f21
1, NVIDIA A100-SXM4-80GB, 81920, 40960, 97, GPU-6c1b2d5f-3e4a-4d6c-8b9f-8e7d6c5b4a32
2, Tesla V100-PCIE-16GB, 16384, [N/A], [N/A], GPU-7d2c3e6a-4f5b-4e7d-9c0a-9f8e7d6c5b43
"""


def test_parses_every_gpu_with_numbers_and_missing_values():
    gpus = parse_nvidia_smi(A100_SMI)
    assert [g["index"] for g in gpus] == [0, 1, 2]
    assert gpus[0]["type"] == "NVIDIA A100-SXM4-80GB" and gpus[0]["memory_mb"] == 81920
    assert gpus[1]["memory_used_mb"] == 40960 and gpus[1]["utilization"] == 97
    assert gpus[2]["utilization"] is None and gpus[2]["memory_used_mb"] is None
    assert gpus[2]["uuid"].startswith("GPU-7d2c")


def test_ignores_headers_and_error_lines():
    text = "index, name, memory.total [MiB]\nNo devices were found\n" + A100_SMI.splitlines()[0]
    assert len(parse_nvidia_smi(text)) == 1
