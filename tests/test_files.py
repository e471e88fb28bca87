"""Files in, results out: `--stage` sends files to a scratch directory on a node that shares
no filesystem with the submitter, `--results` copies files back when the job ends, and
`labq results` hands them to their owner (and admins) only. Real labqd, real sshd nodes with
job roots of their own, real Unix users running the real CLI."""
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
from daemonproc import Daemon, as_user, wait_for
from sshnodes import NodeSet, ensure_group
from userkit import User, cli_venv

from labq.errors import NotFound, PermissionDenied, QuotaExceeded, ValidationError
from labq.protocol import SubmitRequest
from labq.spec import validate_submit

A100 = [{"type": "A100", "memory_mb": 81920}]


def passable_dir(prefix: str) -> Path:
    """A scratch root every user may pass through (pytest's own temp dirs are root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(d, 0o711)
    return d


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """labqd as root, any user may connect; one sshd node with an A100 and a job root of its
    own, and the local node (no GPUs); small limits, so that they can be reached."""
    ensure_group("labqadm")
    base = tmp_path_factory.mktemp("files")
    scratch = passable_dir("labq-scratch-")
    with NodeSet(base / "nodes", names=["far"]) as ns:
        [far] = ns.config_entries({"far": A100})
        far.update(job_root=str(base / "far-jobs"), scratch_root=str(scratch / "far"))
        local = {"name": "here", "local": True, "job_root": str(base / "here-jobs"),
                 "scratch_root": str(scratch / "here")}
        d = Daemon(base / "daemon", {
            "daemon": {"socket_mode": "0666", "admin_group": "labqadm", "kill_grace": "1s",
                       "heartbeat": "1s", "results_max": "3M"},
            "limits": {"job_max_stage": "8M", "user_max_storage": "4M"},
            "node": [far, local],
        })
        d.nodes = ns
        d.scratch = scratch
        with d.start(wait_nodes=2):
            yield d
    shutil.rmtree(scratch, ignore_errors=True)


def user(venv, lab, name):
    u = User(name, venv, lab.socket)
    for p in u.home.iterdir() if u.home.exists() else []:
        if p.name.startswith("proj"):
            shutil.rmtree(p, ignore_errors=True)
    return u


def project(u: User, name: str = "proj") -> Path:
    """A project in the user's home: a script, a data directory with a symlink in it."""
    d = u.home / name
    shutil.rmtree(d, ignore_errors=True)
    (d / "data" / "deep").mkdir(parents=True)
    (d / "train.py").write_text(
        "import os, pathlib\n"
        "out = pathlib.Path('out'); (out / 'sub').mkdir(parents=True)\n"
        "(out / 'metrics.json').write_text(open('data/deep/x.txt').read().upper())\n"
        "(out / 'sub' / 'weights.bin').write_bytes(bytes(range(256)) * 4096)\n"
        "pathlib.Path('scratch.tmp').write_text('not a result')\n"
        "os.symlink('/etc/shadow', 'out/shadow')\n")
    (d / "data" / "deep" / "x.txt").write_text("loss 0.1\n")
    os.symlink("/etc/passwd", d / "data" / "passwd")
    for p in [d, *d.rglob("*")]:
        os.lchown(p, u.uid, u.gid)
    return d


def job_id(out: str) -> int:
    return int(out.strip().splitlines()[-1])


def test_staged_job_runs_on_a_far_node_and_its_results_come_back(lab, venv, tmp_path):
    alice = user(venv, lab, "labqtest")
    proj = project(alice)
    r = alice.labq("submit", "--gpus", "1", "--stage", "train.py", "--stage", "data",
                   "--results", "out/**", "--", "bash", "-c",
                   "python3 train.py && stat -c '%U %a' . train.py data/deep/x.txt "
                   "&& echo wd=$LABQ_WORKDIR && ls data", cwd=str(proj))
    assert r.returncode == 0, r.stderr
    assert "not staged" in r.stderr and "data/passwd" in r.stderr  # the symlink stays home
    jid = job_id(r.stdout)
    assert alice.labq("wait", jid).returncode == 0, alice.ok("logs", str(jid))
    log = alice.ok("logs", str(jid))
    # staged files belong to the job's user, in a directory only they can read
    assert "labqtest 700" in log and log.count("labqtest ") == 3
    workdir = next(line[3:] for line in log.splitlines() if line.startswith("wd="))
    assert workdir.startswith(str(lab.scratch / "far")) and "passwd" not in log
    shown = json.loads(alice.ok("show", "--json", str(jid)))
    assert shown["node"] == "far" and shown["stage"]["files"] == 2
    info = json.loads(wait_for(lambda: (lambda o: o if json.loads(o)["state"] == "complete"
                                        else None)(alice.ok("results", str(jid), "--json")),
                               30, what="results copied"))
    assert sorted(f[0] for f in info["files"]) == ["out/metrics.json", "out/sub/weights.bin"]
    assert info["bytes"] == len("LOSS 0.1\n") + 256 * 4096
    listing = alice.ok("results", str(jid))
    assert "out/sub/weights.bin" in listing and "2 files" in listing
    alice.ok("results", str(jid), "-o", "run.zip", cwd=str(proj))
    with zipfile.ZipFile(proj / "run.zip") as zf:
        assert zf.read("out/metrics.json") == b"LOSS 0.1\n"
        assert zf.read("out/sub/weights.bin") == bytes(range(256)) * 4096
    alice.ok("results", str(jid), "-d", "got", cwd=str(proj))
    assert (proj / "got" / "out" / "metrics.json").read_text() == "LOSS 0.1\n"
    assert (proj / "got" / "out" / "sub" / "weights.bin").stat().st_uid == alice.uid
    assert not (proj / "got" / "out" / "shadow").exists()

    # another user gets nothing of it; an admin does
    bob = user(venv, lab, "labqtest2")
    for args in (["results", str(jid)], ["results", str(jid), "-o", "x.zip"]):
        r = bob.labq(*args)
        assert r.returncode == 1 and "belongs to labqtest" in r.stderr, r.stderr
    assert not (bob.home / "x.zip").exists()

    def read_alices():
        import labq
        with labq.connect(lab.socket) as q:
            try:
                q.results_read(jid, 0)
            except PermissionDenied as e:
                return e.code
    assert as_user(bob.uid, bob.gid, read_alices) == "PERMISSION_DENIED"
    with lab.client() as root:
        assert root.results_read(jid, 0)[:4] == b"LOSS"


def test_the_local_node_runs_staged_jobs_too(lab, venv):
    bob = user(venv, lab, "labqtest2")
    proj = project(bob, "proj-local")
    jid = job_id(bob.ok("submit", "--stage", "train.py", "--stage", "data", "--results",
                        "**/*.json", "--results", "*.tmp", "--", "python3", "train.py",
                        cwd=str(proj)))
    assert bob.labq("wait", str(jid)).returncode == 0
    info = wait_for(lambda: (lambda i: i if i["state"] == "complete" else None)(
        json.loads(bob.ok("results", str(jid), "--json"))), 30, what="results")
    assert sorted(f[0] for f in info["files"]) == ["out/metrics.json", "scratch.tmp"]
    assert json.loads(bob.ok("show", "--json", str(jid)))["node"] == "here"


def test_python_api_stages_and_downloads(lab, tmp_path):
    src = tmp_path / "inputs"
    src.mkdir()
    (src / "numbers.txt").write_text("1 2 3\n")
    with lab.client() as q:
        job = q.submit(["bash", "-c", "mkdir out && tr ' ' '+' < inputs/numbers.txt > out/sum"],
                       stage=[str(src)], results=["out/**"], export_env=False)
        assert q.wait(job.id)[0].state.value == "COMPLETED"
        wait_for(lambda: q.results(job.id)["state"] == "complete", 30, what="results")
        assert q.results(job.id)["files"] == [["out/sum", 6]]
        listing = q.download_results(job.id, tmp_path / "r.zip")
        assert listing == [["out/sum", 6]]
        assert zipfile.ZipFile(tmp_path / "r.zip").read("out/sum") == b"1+2+3\n"


def test_hostile_paths_are_refused_and_lose_nothing(lab, venv, tmp_path):
    mallory = user(venv, lab, "labqtest2")
    proj = mallory.home / "proj-evil"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir()
    os.symlink("/etc/shadow", proj / "shadow")
    os.lchown(proj / "shadow", mallory.uid, mallory.gid)
    os.lchown(proj, mallory.uid, mallory.gid)
    before = json.loads(mallory.ok("ls", "--all", "--json", "--mine"))
    for args, words in (
            (["--stage", "shadow"], "is a symlink"),
            (["--stage", "/etc/shadow"], "Permission denied"),
            (["--stage", "nonexistent"], "No such file"),
            (["--results", "../*"], "must not hold '..'"),
            (["--results", "/etc/*"], "must be relative"),
            (["--results", "out/../../../etc/shadow"], "must not hold '..'")):
        r = mallory.labq("submit", *args, "--", "true", cwd=str(proj))
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
    assert json.loads(mallory.ok("ls", "--all", "--json", "--mine")) == before

    # a token is its uploader's alone
    with lab.client() as root:
        token = root.stage_begin([["a.txt", 3, 0o644]])["token"]
        root.stage_put(token, 0, 0, b"abc")

    def steal():
        import labq
        with labq.connect(lab.socket) as q:
            try:
                q.stage_put(token, 0, 3, b"more")
            except NotFound as e:
                return e.code
    assert as_user(mallory.uid, mallory.gid, steal) == "NOT_FOUND"
    with lab.client() as root:
        with pytest.raises(ValidationError, match="more bytes than"):
            root.stage_put(token, 0, 3, b"x")
        # an upload cut short is refused at submit, and nothing is queued
        half = root.stage_begin([["a", 4, 0o644], ["b", 2, 0o644]])["token"]
        root.stage_put(half, 0, 0, b"abcd")
        n = len(root.jobs())
        with pytest.raises(ValidationError, match="b has 0 of its 2 bytes"):
            root.request(SubmitRequest(spec=validate_submit(
                {"command": ["true"], "stage": half, "cwd": "/"})))
        assert len(root.jobs()) == n


def test_extraction_never_writes_outside_the_directory(lab, venv, tmp_path):
    alice = user(venv, lab, "labqtest")
    proj = project(alice, "proj-slip")
    jid = job_id(alice.ok("submit", "--stage", "train.py", "--stage", "data", "--results",
                          "out/**", "--", "python3", "train.py", cwd=str(proj)))
    alice.ok("wait", str(jid))
    wait_for(lambda: json.loads(alice.ok("results", str(jid), "--json"))["state"]
             == "complete", 30, what="results")
    decoy = passable_dir("labq-decoy-")
    os.chown(decoy, alice.uid, alice.gid)
    (proj / "dest").mkdir()
    os.symlink(decoy, proj / "dest" / "out")  # planted where the results would go
    for p in (proj / "dest", proj / "dest" / "out"):
        os.lchown(p, alice.uid, alice.gid)
    r = alice.labq("results", str(jid), "-d", "dest", cwd=str(proj))
    assert r.returncode == 1 and "follows no symlinks" in r.stderr, r.stderr
    assert list(decoy.iterdir()) == []
    shutil.rmtree(decoy)
    from labq.stagefiles import open_inside
    for name in ("../escape", "/etc/x", "a/../../b", "a//b"):
        with pytest.raises(ValidationError):
            open_inside(tmp_path, name)


def test_limits_are_refused_at_submit_naming_them(lab, venv, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (9 << 20))
    with lab.client() as q:
        with pytest.raises(QuotaExceeded, match="limits.job_max_stage") as e:
            q.submit(["true"], stage=[str(big)], export_env=False)
        assert e.value.details["limit"] == "job_max_stage"
        # results are capped per job (results_max = 3M) with a note
        job = q.submit(["bash", "-c", "mkdir out; for i in 1 2; do head -c 2M /dev/zero > "
                        "out/$i; done"], results=["out/*"], export_env=False, cwd=str(tmp_path))
        q.wait(job.id)
        info = wait_for(lambda: (lambda i: i if i["state"] == "complete" else None)(
            q.results(job.id)), 30, what="results")
        assert info["files"] == [["out/1", 2 << 20]]
        assert "daemon.results_max" in info["note"]
        # root's results so far: 2M (+ earlier tests' few bytes); one more job passes the 4M
        job = q.submit(["bash", "-c", "mkdir out; head -c 3M /dev/zero > out/x"],
                       results=["out/*"], export_env=False, cwd=str(tmp_path))
        q.wait(job.id)
        wait_for(lambda: q.results(job.id)["state"] == "complete", 30, what="results")
        with pytest.raises(QuotaExceeded, match="limits.user_max_storage"):
            q.submit(["true"], results=["*"], export_env=False)
        q.submit(["true"], export_env=False)  # no results asked: no storage limit


def test_stage_failure_ends_the_job_failed_naming_why(tmp_path, venv):
    closed = tmp_path / "closed"  # under pytest's temp dir, root's 0700: no user passes
    d = Daemon(tmp_path / "d", {"daemon": {"socket_mode": "0666", "kill_grace": "1s"},
                                "node": [{"name": "box", "local": True,
                                          "job_root": str(tmp_path / "jobs"),
                                          "scratch_root": str(closed)}]})
    with d.start(wait_nodes=1):
        alice = User("labqtest", venv, d.socket)
        proj = project(alice, "proj-fail")
        jid = job_id(alice.ok("submit", "--stage", "train.py", "--", "python3", "train.py",
                              cwd=str(proj)))
        assert alice.labq("wait", str(jid)).returncode == 1
        shown = json.loads(alice.ok("show", "--json", str(jid)))
        assert shown["state"] == "FAILED"
        assert shown["reason"].startswith("StageFailed: the job's user cannot reach ")
        assert "closed to other users" in shown["reason"] and "scratch_root" in shown["reason"]
        with d.client() as q:  # root's own jobs pass where root may
            job = q.submit(["true"], stage=[str(proj / "train.py")], export_env=False)
            assert q.wait(job.id)[0].state.value == "COMPLETED"


def test_purge_removes_files_and_keeps_the_job(lab, venv, tmp_path):
    alice = user(venv, lab, "labqtest")
    jid = job_id(alice.ok("submit", "--results", "o.txt", "--", "bash", "-c",
                          "echo hi > o.txt; echo logged", cwd=str(alice.home)))
    alice.ok("wait", str(jid))
    wait_for(lambda: json.loads(alice.ok("results", str(jid), "--json"))["state"]
             == "complete", 30, what="results")
    r = alice.labq("purge", "--before", "2099-01-01")
    assert r.returncode == 1 and "only admins" in r.stderr
    with lab.client() as root:
        out = root.purge(2 ** 32)
        assert out["jobs"] >= 1
    info = json.loads(alice.ok("results", str(jid), "--json"))
    assert info["state"] == "purged" and info["files"] == []
    assert "files purged" in alice.ok("show", str(jid))
    assert alice.ok("logs", str(jid)) == ""
    assert json.loads(alice.ok("show", "--json", str(jid)))["state"] == "COMPLETED"
    assert len(json.loads(alice.ok("events", "--json", str(jid)))) >= 3


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_job_view_lists_results_and_a_key_saves_them(lab, tmp_path, monkeypatch):
    from tuikit import drive, screen_text, until

    from labq.tui.app import LabqApp
    from labq.tui.detail import JobDetailScreen
    from labq.tui.queue import QueueTable
    with lab.client() as q:
        job = q.submit(["bash", "-c", "mkdir out; echo hello > out/greeting.txt; "
                        "head -c 3000 /dev/zero > out/zeros"], results=["out/*"],
                       cwd=str(tmp_path), export_env=False)
        q.wait(job.id)
        wait_for(lambda: q.results(job.id)["state"] == "complete", 30, what="results")
    monkeypatch.chdir(tmp_path)
    app = LabqApp(socket=lab.socket, interval=0.3)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await pilot.press("a")  # ended jobs wait behind a toggle
        await until(pilot, lambda: str(job.id) in [str(k.value) for k in table.rows],
                    "the job")
        table.select_job(job.id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the detail")
        await until(pilot, lambda: "out/greeting.txt" in screen_text(app), "the results")
        text = screen_text(app)
        assert "2.9 KiB  out/zeros" in text and "6 B  out/greeting.txt" in text
        await pilot.press("s")
        await until(pilot, lambda: (tmp_path / f"job-{job.id}-results.zip").exists(),
                    "the archive")

    drive(app, scenario, (160, 60))
    with zipfile.ZipFile(tmp_path / f"job-{job.id}-results.zip") as zf:
        assert zf.read("out/greeting.txt") == b"hello\n"
