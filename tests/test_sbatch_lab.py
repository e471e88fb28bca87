"""`labq submit SCRIPT` as lab members use it: real Unix users run the real CLI against a
root labqd with an SSH node (an A100) and its local node. The job's spec comes from the
script's `#SBATCH` lines, the command line wins over them, the script's text travels with
the job (the file may be gone when it starts), and a bad directive queues nothing."""
import json
import os
import shutil
from pathlib import Path

import pytest
from daemonproc import Daemon
from sshnodes import NodeSet
from userkit import User, cli_venv

from labq.errors import ValidationError
from labq.sbatch import DirectiveWarning

A100 = [{"type": "A100", "memory_mb": 81920}]


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("sbatch")
    with NodeSet(base / "nodes", names=["far"]) as ns:
        [far] = ns.config_entries({"far": A100})
        far.update(job_root=str(base / "far-jobs"))
        local = {"name": "here", "local": True, "job_root": str(base / "here-jobs")}
        d = Daemon(base / "daemon", {
            "daemon": {"socket_mode": "0666", "kill_grace": "1s", "heartbeat": "1s"},
            "node": [far, local]})
        d.nodes = ns
        with d.start(wait_nodes=2):
            yield d


def member(venv, lab, name: str) -> User:
    u = User(name, venv, lab.socket)
    proj = u.home / "sbatch-proj"
    shutil.rmtree(proj, ignore_errors=True)
    (proj / "out").mkdir(parents=True)
    for p in (proj, proj / "out"):
        os.chown(p, u.uid, u.gid)
    return u


def write(u: User, name: str, text: str) -> Path:
    p = u.home / "sbatch-proj" / name
    p.write_text(text)
    os.chown(p, u.uid, u.gid)
    return p


def job_ids(out: str) -> list[str]:
    return out.split()


def show(u: User, jid: str) -> dict:
    return json.loads(u.ok("show", "--json", jid))


def my_job_count(u: User) -> int:
    return len(json.loads(u.ok("ls", "--all", "--mine", "--json")))


GPU_SCRIPT = """#!/bin/bash
# train on one A100
#SBATCH --gres=gpu:a100:1 -c 2
#SBATCH --mem=1G
#SBATCH -t 10:00 -J sbatch-gpu -D out
#SBATCH --export=ALL,GREETING=hello
set -e
echo "user=$(id -un) cwd=$(pwd) args=$*"
echo "greeting=$GREETING gpus=$CUDA_VISIBLE_DEVICES script=${LABQ_SCRIPT-gone}"
"""


def test_a_gpu_script_runs_on_the_ssh_node_with_its_directives(lab, venv):
    alice = member(venv, lab, "labqtest")
    path = write(alice, "train.sh", GPU_SCRIPT)
    r = alice.labq("submit", "--hold", "train.sh", "one", "two words",
                   cwd=str(path.parent))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    [jid] = job_ids(r.stdout)
    path.unlink()  # the job carries the script: the file need not exist when it starts
    alice.ok("release", jid)
    assert alice.labq("wait", jid).returncode == 0, alice.ok("logs", jid)
    job = show(alice, jid)
    assert {k: job[k] for k in ("gpus", "gpu_type", "cpus", "memory_mb", "time_limit_s",
                                "name", "node", "owner")} == {
        "gpus": 1, "gpu_type": "a100", "cpus": 2, "memory_mb": 1024, "time_limit_s": 600,
        "name": "sbatch-gpu", "node": "far", "owner": "labqtest"}
    assert job["cwd"] == str(path.parent / "out")
    assert alice.ok("logs", jid).splitlines() == [
        f"user=labqtest cwd={path.parent / 'out'} args=one two words",
        f"greeting=hello gpus={job['gpu_indices'][0]} script=gone"]


def test_a_cpu_script_on_the_local_node_with_the_command_line_winning(lab, venv):
    bob = member(venv, lab, "labqtest2")
    path = write(bob, "prep.py", "#!/usr/bin/env python3\n"
                 "#SBATCH -c 2 -J from-script --time=5\n"
                 "#SBATCH --priority=9 --constraint=fast\n"
                 "import getpass, os, sys\n"
                 "print(getpass.getuser(), sys.argv[1:], os.environ['LABQ_JOB_NAME'])\n")
    r = bob.labq("submit", "-c", "1", "--name", "from-cli", "prep.py", "--x",
                 cwd=str(path.parent))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "labq: warning: prep.py:3: #SBATCH --priority=9: labq does not know this "
        "directive; ignored",
        "labq: warning: prep.py:3: #SBATCH --constraint=fast: labq does not know this "
        "directive; ignored"]
    [jid] = job_ids(r.stdout)
    assert bob.labq("wait", jid).returncode == 0, bob.ok("logs", jid)
    job = show(bob, jid)
    assert (job["cpus"], job["name"], job["time_limit_s"], job["node"], job["gpus"]) == (
        1, "from-cli", 300, "here", 0)
    assert bob.ok("logs", jid) == "labqtest2 ['--x'] from-cli\n"


def test_a_malformed_directive_queues_nothing(lab, venv):
    alice = member(venv, lab, "labqtest")
    path = write(alice, "bad.sh", "#!/bin/bash\n#SBATCH -c 2\n#SBATCH --gres=gpu:a100:lots\n"
                 "echo never\n")
    before = my_job_count(alice)
    r = alice.labq("submit", "bad.sh", cwd=str(path.parent))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("labq: VALIDATION_ERROR: bad.sh:3: #SBATCH --gres=gpu:a100:lots: "
                        "'lots' is not a number of GPUs\n")
    assert my_job_count(alice) == before


def test_an_array_script_and_a_dependency_from_directives(lab, venv):
    alice = member(venv, lab, "labqtest")
    first = write(alice, "first.sh", "#!/bin/sh\n#SBATCH -J first\necho first\n")
    [dep] = job_ids(alice.ok("submit", "first.sh", cwd=str(first.parent)))
    path = write(alice, "shards.sh", "#!/bin/bash\n"
                 f"#SBATCH --array=0-2%1 -d afterok:{dep}\n"
                 "for index in x; do echo \"task $LABQ_ARRAY_INDEX ${index}\"; done\n")
    ids = job_ids(alice.ok("submit", "shards.sh", cwd=str(path.parent)))
    assert len(ids) == 3
    assert alice.labq("wait", *ids).returncode == 0
    assert [alice.ok("logs", i) for i in ids] == [f"task {n} x\n" for n in range(3)]
    tasks = [show(alice, i) for i in ids]
    assert {t["array_limit"] for t in tasks} == {1}
    assert all(t["dependencies"] == [f"afterok:{dep}"] for t in tasks)


def test_another_user_sees_neither_the_script_nor_may_charge_a_group_not_theirs(lab, venv):
    alice, bob = member(venv, lab, "labqtest"), member(venv, lab, "labqtest2")
    path = write(alice, "secret.sh", "#!/bin/bash\n#SBATCH -c 1\necho token=s3cr3t\n")
    [jid] = job_ids(alice.ok("submit", "--hold", "secret.sh", cwd=str(path.parent)))
    assert "s3cr3t" not in bob.ok("show", "--json", jid)
    assert "s3cr3t" not in bob.ok("ls", "--all", "--json")
    assert "s3cr3t" in alice.ok("show", "--json", jid)  # the owner's own job carries it
    r = bob.labq("logs", jid)
    assert r.returncode != 0 and "belongs to labqtest" in r.stderr
    mine = write(bob, "charge.sh", "#!/bin/bash\n#SBATCH -A root\necho x\n")
    before = my_job_count(bob)
    r = bob.labq("submit", "charge.sh", cwd=str(mine.parent))
    assert r.returncode == 1 and "not a member of group 'root'" in r.stderr
    assert my_job_count(bob) == before
    alice.ok("cancel", jid)


def test_labq_run_runs_a_script_and_exits_as_it_did(lab, venv):
    bob = member(venv, lab, "labqtest2")
    path = write(bob, "quick.sh", "#!/bin/bash\n#SBATCH -t 1\necho ran $1\nexit 4\n")
    r = bob.labq("run", "quick.sh", "now", cwd=str(path.parent))
    assert (r.returncode, r.stdout) == (4, "ran now\n")


def test_the_python_api_submits_scripts_with_overrides(lab, tmp_path):
    text = "#!/bin/sh\n#SBATCH -c 2 -J api --qos=x\necho api $1\n"
    with lab.client() as q, pytest.warns(DirectiveWarning, match="--qos=x"):
        [job] = q.submit_script(text, "arg", cpus=1)
    with lab.client() as q:
        done = q.wait(job.id)[0]
        assert (done.state.value, done.cpus, done.name) == ("COMPLETED", 1, "api")
        assert q.logs(job.id) == "api arg\n"
        (tmp_path / "a.sh").write_text("#!/bin/sh\n#SBATCH --array=0-1\necho $LABQ_ARRAY_INDEX\n")
        tasks = q.submit_script(tmp_path / "a.sh", hold=True)
        assert [t.state.value for t in tasks] == ["HELD", "HELD"]
        q.cancel(*(t.id for t in tasks))
        with pytest.raises(ValidationError, match="script:2: #SBATCH -N 2-4"):
            q.submit_script("#!/bin/sh\n#SBATCH -N 2-4\necho\n")
        # a gang wider than the cluster: labqd refuses it, naming the field
        with pytest.raises(ValidationError, match="nodes: asks for 3 nodes"):
            q.submit_script("#!/bin/sh\n#SBATCH -N 3\necho\n")
