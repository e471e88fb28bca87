"""The installed `labq` executable against a real labqd and real sshd nodes."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LABQ = shutil.which("labq")


@pytest.fixture
def run(cluster, tmp_path):
    env = cluster.env()

    def run(*args, check=True, timeout=60):
        r = subprocess.run([LABQ, *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"labq {' '.join(args)} -> {r.returncode}\n{r.stderr}")
        return r
    return run


def test_submit_prints_the_id_and_wait_reports_success(run):
    r = run("submit", "--name", "hello", "--", "bash", "-c", "echo hello from $LABQ_JOB_ID")
    job_id = int(r.stdout.strip())
    w = run("wait", str(job_id))
    assert f"{job_id} COMPLETED exit=0" in w.stdout
    assert run("logs", str(job_id)).stdout == f"hello from {job_id}\n"
    shown = json.loads(run("show", str(job_id), "--json").stdout)
    assert shown["id"] == job_id and shown["state"] == "COMPLETED" and shown["exit_code"] == 0
    assert shown["name"] == "hello" and shown["node"] in ("a4", "h2") and "gpus" in shown
    text = run("show", str(job_id)).stdout
    assert "COMPLETED" in text and "hello" in text


def test_submit_json_and_options(run):
    r = run("submit", "--json", "--gpus", "2", "--gpu-type", "A100", "--cpus", "1",
            "--mem", "1G", "--time", "10m", "--priority", "7", "--name", "opts", "--",
            "true")
    job = json.loads(r.stdout)
    assert {"id", "state", "exit_code", "node", "gpus"} <= set(job)
    assert job["gpus"] == 2 and job["gpu_type"] == "A100" and job["memory_mb"] == 1024
    assert job["time_limit_s"] == 600 and job["priority"] == 7
    done = json.loads(run("wait", "--json", str(job["id"])).stdout)
    assert done[0]["state"] == "COMPLETED" and len(done[0]["gpu_indices"]) == 2


def test_wait_fails_when_a_job_fails(run):
    ok = run("submit", "--", "true").stdout.strip()
    bad = run("submit", "--", "bash", "-c", "exit 4").stdout.strip()
    w = run("wait", ok, bad, check=False)
    assert w.returncode == 1
    assert f"{bad} FAILED exit=4" in w.stdout


def test_after_runs_in_order(run, tmp_path):
    first = run("submit", "--", "bash", "-c", "sleep 0.5; echo 1 >> order").stdout.strip()
    second = run("submit", "--after", first, "--", "bash", "-c", "echo 2 >> order"
                 ).stdout.strip()
    run("wait", first, second)
    assert (tmp_path / "order").read_text() == "1\n2\n"


def test_ls_show_cancel_and_nodes(run):
    job_id = run("submit", "--name", "sleeper", "--", "sleep", "60").stdout.strip()
    ls = run("ls").stdout
    assert "sleeper" in ls and job_id in ls
    listed = json.loads(run("ls", "--json").stdout)
    assert any(j["id"] == int(job_id) for j in listed)
    c = json.loads(run("cancel", "--json", job_id).stdout)
    assert c[0]["state"] == "CANCELLED"
    assert job_id not in run("ls").stdout.split()
    assert job_id in run("ls", "--all").stdout.split()
    nodes = json.loads(run("nodes", "--json").stdout)
    assert {n["name"] for n in nodes} == {"a4", "h2", "nokey"}
    table = run("nodes").stdout
    assert "NVIDIA H100 80GB HBM3" in table and "refused" in table


def test_logs_follow(run):
    job_id = run("submit", "--", "bash", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done"
                 ).stdout.strip()
    r = run("logs", "-f", job_id)
    assert r.stdout == "line1\nline2\nline3\n"


def test_wrap_runs_a_shell_string(run):
    job_id = run("submit", "--wrap", "echo $((6*7)) | tr 4 x").stdout.strip()
    run("wait", job_id)
    assert run("logs", job_id).stdout == "x2\n"


def test_errors_are_clear_and_typed(run, tmp_path):
    r = run("show", "999999", check=False)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "999999" in r.stderr
    r = run("submit", "--gpus", "-3", "--", "true", check=False)
    assert r.returncode == 2 and "--gpus" in r.stderr
    r = run("submit", "--after", "999999", "--", "true", check=False)
    assert r.returncode == 1 and "VALIDATION_ERROR" in r.stderr
    r = run("submit", "--time", "soon", "--", "true", check=False)
    assert r.returncode == 2 and "duration" in r.stderr
    r = subprocess.run([LABQ, "--socket", str(tmp_path / "none.sock"), "ls"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no labqd answers" in r.stderr


def test_logs_json(run):
    job_id = run("submit", "--", "bash", "-c", "echo one; echo two").stdout.strip()
    run("wait", job_id)
    chunks = [json.loads(line) for line in run("logs", "--json", job_id).stdout.splitlines()]
    assert "".join(c["data"] for c in chunks) == "one\ntwo\n"
    assert all(c["id"] == int(job_id) for c in chunks) and chunks[0]["offset"] == 0
    followed = [json.loads(line) for line in
                run("logs", "--json", "-f", job_id).stdout.splitlines()]
    assert "".join(c["data"] for c in followed) == "one\ntwo\n"


def test_readme_python_example_runs_as_written(cluster, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "train.py").write_text("import os\nprint('training on GPU',"
                                       " os.environ['CUDA_VISIBLE_DEVICES'])\n")
    (tmp_path / "example.py").write_text(block)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                       text=True, env=cluster.env(), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("training on GPU ") and lines[-1] == "COMPLETED 0"
