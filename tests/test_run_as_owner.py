"""run_as_owner: on a node whose agent runs as root, a job runs as the user who submitted it."""
import os
import tempfile

import pytest

import labq
from daemonproc import Daemon, as_user
from sshnodes import ensure_user


@pytest.fixture(scope="module")
def owner_daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("owner")
    d = Daemon(base, {"daemon": {"socket_mode": "0666"},
                      "node": [{"name": "here", "local": True, "run_as_owner": True,
                                "job_root": str(base / "jobs")}]})
    d.start(wait_nodes=1)
    yield d
    d.close()


def test_job_runs_as_its_owner(owner_daemon):
    uid, gid = ensure_user("labqtest")
    out = tempfile.mkdtemp(prefix="labq-owner-")
    os.chmod(out, 0o777)

    def submit():
        with labq.connect(owner_daemon.socket) as q:
            job = q.submit(["bash", "-c", f"id -un > {out}/who; touch {out}/made"], cwd=out,
                           export_env=False)
            return q.wait(job.id, timeout=30)[0].state.value
    assert as_user(uid, gid, submit) == "COMPLETED"
    with open(f"{out}/who") as f:
        assert f.read().strip() == "labqtest"
    assert os.stat(f"{out}/made").st_uid == uid
    with owner_daemon.client() as q:  # root's own jobs still run as root
        job = q.submit(["bash", "-c", f"id -un > {out}/root"], cwd=out, export_env=False)
        q.wait(job.id, timeout=30)
    with open(f"{out}/root") as f:
        assert f.read().strip() == "root"


def test_unknown_owner_on_the_node_fails_clearly(owner_daemon, tmp_path):
    # an owner without an account on the node cannot run there: the job fails with a message
    uid = 54321
    assert not _uid_exists(uid)

    def submit():
        with labq.connect(owner_daemon.socket) as q:
            job = q.submit(["true"], cwd="/tmp", export_env=False)
            done = q.wait(job.id, timeout=30)[0]
            return [done.state.value, done.exit_code, q.logs(job.id)]
    state, code, log = as_user(uid, uid, submit)
    assert state == "FAILED" and code == 126 and "cannot run as user" in log


def _uid_exists(uid):
    import pwd
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False
