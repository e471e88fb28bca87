"""The pure parts of a Slurm pool: labq's spec as sbatch's options, Slurm's end states as
labq's exit records, sinfo's GRES counts, and the pool's config entry."""
import shlex
import subprocess
import time

import pytest

from labq.daemon.config import ConfigError, load
from labq.daemon.nodes.agent.slurm import (
    batch_script,
    exit_record,
    gres_count,
    sbatch_argv,
    slurm_time,
)

POOL = {"partition": "gpu", "account": "mylab", "gpu_types": ["A100", "v100"],
        "sbatch_args": ["--constraint=ib"]}


def launch(**slurm):
    req = {"job": "42.0", "cwd": "/home/alice/exp", "argv": ["python", "train.py"],
           "time_limit_s": 3601, "memory_mb": 2048, "early_signal": [10, 120],
           "slurm": dict({"gpus": 2, "gpu_type": "a100", "cpus": 8, "name": "run-1",
                          "requeue": True}, **slurm)}
    return sbatch_argv(req, POOL, "/j/42.0/out/log", "labq:c/hpc/42.0")


def test_the_spec_becomes_sbatchs_options():
    argv = launch()
    assert argv[:2] == ["sbatch", "--parsable"]
    for opt in ("--job-name=run-1", "--chdir=/home/alice/exp", "--output=/j/42.0/out/log",
                "--open-mode=append", "--export=ALL", "--comment=labq:c/hpc/42.0",
                "--cpus-per-task=8",
                "--requeue", "--partition=gpu", "--account=mylab", "--mem=2048M",
                "--signal=10@120", "--constraint=ib"):
        assert opt in argv
    assert "--time=61" in argv  # whole minutes, rounded up
    assert "--gres=gpu:A100:2" in argv  # the pool's spelling of the type asked for


def test_a_cpu_job_asks_for_no_gpu_and_no_requeue_when_labq_would_not():
    argv = launch(gpus=0, requeue=False)
    assert not any(a.startswith("--gres") for a in argv) and "--no-requeue" in argv
    assert "--gres=gpu:3" in launch(gpus=3, gpu_type=None)


def test_the_batch_script_hands_the_argv_over_word_for_word():
    argv = ["printf", "%s|", "a b", "it's", "$(touch /tmp/x)", "`id`", ""]
    script = batch_script(argv)
    assert shlex.split(script.splitlines()[1])[1:] == argv
    out = subprocess.run(["sh", "-c", script.replace("exec ", "", 1)], capture_output=True,
                         text=True).stdout
    assert out == "|".join(argv[2:]) + "|"


@pytest.mark.parametrize("state,code,want", [
    ("COMPLETED", "0:0", {"code": 0, "signal": None, "reason": None}),
    ("FAILED", "3:0", {"code": 3, "signal": None, "reason": None}),
    ("FAILED", "0:9", {"code": None, "signal": 9, "reason": None}),
    ("CANCELLED", "0:15", {"reason": "cancelled"}),
    ("TIMEOUT", "0:15", {"reason": "timeout"}),
    ("OUT_OF_MEMORY", "0:125", {"reason": "oom"}),
    ("NODE_FAIL", "0:0", {"reason": "lost"}),
    ("PREEMPTED", "0:0", {"reason": "lost"}),
])
def test_slurms_end_states_become_exit_records(state, code, want):
    rec = exit_record({"JobState": state, "ExitCode": code, "StartTime": "2026-01-02T03:04:05",
                       "EndTime": "2026-01-02T03:04:09"})
    assert {k: rec[k] for k in want} == want and rec["slurm_state"] == state
    assert rec["end"] - rec["start"] == 4


def test_a_job_still_running_has_no_exit_record():
    assert exit_record({"JobState": "RUNNING", "ExitCode": "0:0"}) is None
    assert exit_record({"JobState": "PENDING"}) is None


def test_slurm_times_are_local_and_unknown_is_none():
    assert slurm_time("2026-01-02T03:04:05") == time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert slurm_time("Unknown") is None and slurm_time("N/A") is None


def test_gres_counts_from_sinfo():
    assert gres_count("gpu:a100:4(S:0-1),gpu:v100:2") == 6
    assert gres_count("gpu:fake:0(IDX:N/A)") == 0 and gres_count("(null)") == 0


def write(tmp_path, text):
    p = tmp_path / "labq.toml"
    p.write_text(text)
    return p


def test_a_pool_entry_reaches_the_node_config(tmp_path):
    cfg = load(write(tmp_path, '[[node]]\nname = "hpc"\nkind = "slurm"\nhost = "login"\n'
                               'partition = "gpu"\naccount = "mylab"\nmax_gpus = 64\n'
                               'max_jobs = 200\ngpu_types = ["A100"]\npoll = "5s"\n'
                               '[[node]]\nname = "box"\nlocal = true\n'))
    hpc = cfg.nodes[0]
    assert (hpc.kind, hpc.partition, hpc.account, hpc.max_gpus, hpc.max_jobs) == (
        "slurm", "gpu", "mylab", 64, 200)
    assert hpc.slurm_pool()["gpu_types"] == ["A100"] and hpc.poll_s == 5
    assert cfg.nodes[1].kind == "host"


@pytest.mark.parametrize("text,path", [
    ('name = "a"\nhost = "h"\npartition = "gpu"\n', "node[0].partition"),
    ('name = "a"\nhost = "h"\nmax_gpus = 4\n', "node[0].max_gpus"),
    ('name = "a"\nhost = "h"\nkind = "pbs"\n', "node[0].kind"),
    ('name = "a"\nhost = "h"\nkind = "slurm"\ngpus = [{ type = "A100" }]\n', "node[0]"),
    ('name = "a"\nhost = "h"\nkind = "slurm"\nmax_jobs = 0\n', "node[0].max_jobs"),
])
def test_pool_keys_belong_to_pools(tmp_path, text, path):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "[[node]]\n" + text))
    assert e.value.path == path


def test_a_pool_is_shown_in_words_in_labq_nodes_and_the_tui():
    from rich.console import Console

    from labq import Node
    from labq.cli_admin import pool_line
    from labq.tui.nodes import render_node
    pool = Node.from_dict({
        "name": "hpc", "host": "login", "state": "up", "kind": "slurm", "cpus": 1 << 20,
        "gpus": [{"index": i, "type": "A100", "memory_mb": 0} for i in range(8)],
        "pool": {"partition": "gpu", "nodes": 12, "nodes_up": 11, "nodes_alloc": 9,
                 "gpus": 48, "gpus_alloc": 40, "labq_running": 3, "labq_waiting": 2,
                 "labq_gpus": 6, "max_gpus": 8, "max_jobs": 200}})
    words = ("labq: 3 running, 2 waiting in Slurm (max 200), 6/8 GPUs; partition gpu: "
             "11/12 nodes up, 9 allocated, GPUs 40/48 allocated")
    assert pool_line(pool)[5] == "2/8" and pool_line(pool)[-1] == words
    console = Console(width=200, record=True)
    console.print(render_node(pool))
    shown = console.export_text()
    assert words in shown and "1048576" not in shown and "GPU7" not in shown
