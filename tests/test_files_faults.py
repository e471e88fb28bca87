"""Staged files and results when things break: the node dies while files go to it or come
back, labqd is killed -9 in the middle of a copy. Nothing is lost, and a half copy is never
presented as complete. Real labqd, a real sshd node with a job root of its own."""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from faultkit import crash_node
from sshnodes import NodeSet

A100 = [{"type": "A100", "memory_mb": 81920}]
BIG = 96 << 20


@pytest.fixture
def lab(tmp_path):
    scratch = Path(tempfile.mkdtemp(prefix="labq-scratch-", dir="/var/tmp"))
    with NodeSet(tmp_path / "nodes", names=["far"]) as ns:
        [far] = ns.config_entries({"far": A100})
        far.update(job_root=str(tmp_path / "far-jobs"), scratch_root=str(scratch))
        d = Daemon(tmp_path / "daemon", {
            "daemon": {"kill_grace": "1s", "heartbeat": "1s", "node_timeout": "3s",
                       "requeue_grace": "60s"},
            "node": [far]})
        d.node = ns[0]
        d.job_root = far["job_root"]
        d.scratch = scratch
        d.state = d.database.parent
        with d.start(wait_nodes=1):
            yield d
    shutil.rmtree(scratch, ignore_errors=True)


def up(d: Daemon) -> bool:
    with d.client() as q:
        return all(n.state == "up" for n in q.nodes())


def big_results_job(q, tmp_path):
    return q.submit(["bash", "-c", f"mkdir out && head -c {BIG} /dev/urandom > out/big && "
                     "sha256sum out/big | cut -c1-64 > out/big.sha"],
                    results=["out/*"], gpus=1, export_env=False, cwd=str(tmp_path))


def check_results(q, job_id, tmp_path):
    q.download_results(job_id, tmp_path / "got", extract=True)
    got = tmp_path / "got" / "out"
    assert hashlib.sha256((got / "big").read_bytes()).hexdigest() == \
        (got / "big.sha").read_text().strip()


def staging_checked_job(lab, q, tmp_path):
    """A job whose big staged file is under way to the node; the job checks it got the whole
    file, so a half-staged one would fail it."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(BIG))
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    job = q.submit(["bash", "-c", f"test $(sha256sum data.bin | cut -c1-64) = {want}"],
                   stage=[str(data)], gpus=1, export_env=False)
    wait_for(lambda: any(lab.scratch.rglob("data.bin")),
             60, interval=0.01, what="staging under way")
    return job


def test_node_dying_while_files_are_staged_stages_them_again(lab, tmp_path):
    with lab.client() as q:
        job = staging_checked_job(lab, q, tmp_path)
        crash_node(lab.node, lab.job_root)
        lab.node.restart()
        [j] = q.wait(job.id, timeout=120)
        assert j.state.value == "COMPLETED", (j.reason, lab.log())
        assert "staging on far stopped" in lab.log()


def test_labqd_killed_while_files_are_staged_stages_them_whole_after_its_restart(lab, tmp_path):
    with lab.client() as q:
        job = staging_checked_job(lab, q, tmp_path)
    lab.kill9()
    lab.start(wait_nodes=1)
    with lab.client() as q:
        [j] = q.wait(job.id, timeout=120)
    assert j.state.value == "COMPLETED", (j.reason, lab.log())


def test_a_job_cancelled_while_its_files_are_staged_never_runs(lab, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(BIG))
    ran = tmp_path / "ran"
    os.chmod(tmp_path, 0o777)
    with lab.client() as q:
        job = q.submit(["touch", str(ran)], stage=[str(data)], gpus=1, export_env=False)
        wait_for(lambda: any(lab.scratch.rglob("data.bin")),
                 60, interval=0.01, what="staging under way")
        q.cancel(job.id)
        [j] = q.wait(job.id, timeout=60)
        assert j.state.value == "CANCELLED", (j.reason, lab.log())
        # another job can still use the node, and the cancelled one never started
        assert q.wait(q.submit(["true"], gpus=1, export_env=False).id,
                      timeout=60)[0].state.value == "COMPLETED"
    assert not ran.exists()


def test_node_dying_while_results_are_copied_is_retried_when_it_returns(lab, tmp_path):
    with lab.client() as q:
        job = big_results_job(q, tmp_path)
        part = lab.state / "results" / f"{job.id}.part"
        wait_for(part.exists, 60, interval=0.01, what="the copy under way")
        crash_node(lab.node, lab.job_root)
        wait_for(lambda: (q.job(job.id).reason or "").startswith("ResultsIncomplete"), 30,
                 what="ResultsIncomplete")
        j = q.job(job.id)
        assert j.state.value == "COMPLETED" and q.results(job.id)["state"] == "incomplete"
        assert not (lab.state / "results" / str(job.id)).exists()
        lab.node.restart()
        wait_for(lambda: q.results(job.id)["state"] == "complete", 60, what="the copy again")
        assert q.job(job.id).reason is None  # its end reason is back
        check_results(q, job.id, tmp_path)


def test_labqd_killed_mid_copy_never_presents_half_a_file(lab, tmp_path):
    with lab.client() as q:
        job = big_results_job(q, tmp_path)
        part = lab.state / "results" / f"{job.id}.part"
        wait_for(part.exists, 60, interval=0.01, what="the copy under way")
    lab.kill9()
    assert not (lab.state / "results" / str(job.id)).exists()
    lab.start(wait_nodes=1)
    with lab.client() as q:
        assert q.results(job.id)["files"] == [] or q.results(job.id)["state"] == "complete"
        wait_for(lambda: q.results(job.id)["state"] == "complete", 60, what="the copy again")
        assert not part.exists()
        check_results(q, job.id, tmp_path)


def test_scratch_is_removed_once_results_are_safe_and_kept_for_node_keep(tmp_path):
    scratch = Path(tempfile.mkdtemp(prefix="labq-scratch-", dir="/var/tmp"))
    try:
        d = Daemon(tmp_path / "d", {
            "daemon": {"node_keep": "2s", "retention": "4s"},
            "node": [{"name": "box", "local": True, "job_root": str(tmp_path / "jobs"),
                      "scratch_root": str(scratch)}]})
        src = tmp_path / "in.txt"
        src.write_text("x")
        with d.start(wait_nodes=1), d.client() as q:
            job = q.submit(["bash", "-c", "cp in.txt out.txt"], stage=[str(src)],
                           results=["out.txt"], export_env=False)
            q.wait(job.id)
            wait_for(lambda: q.results(job.id)["state"] == "complete", 30, what="results")
            assert list(scratch.rglob("out.txt"))  # still there for the user to look
            wait_for(lambda: not list(scratch.rglob("out.txt")), 30, what="scratch removed")
            wait_for(lambda: q.results(job.id)["state"] == "purged", 30, what="retention")
            assert q.job(job.id).purged_time > q.job(job.id).end_time
            assert not (d.database.parent / "stage").exists() or \
                not list((d.database.parent / "stage").iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
