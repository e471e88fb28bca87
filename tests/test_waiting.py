"""What a waiting job waits for, against a real labqd and its local node: the backfill
reservation in its way (whose job, how many GPUs, until when) and the --time that would start
it now, in `labq show`, `labq ls` and the TUI's job view; and that the --time it names does
start the job."""
import re
import shutil
import subprocess

import pytest
from daemonproc import Daemon, wait_for
from tuikit import drive, screen_text, until

from labq.tui.app import LabqApp
from labq.tui.detail import JobDetailScreen
from labq.tui.queue import QueueTable
from labq.waiting import time_hint

LABQ = shutil.which("labq")
CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "1s",
               "socket_mode": "0666"},
    "scheduler": {"interval": "1s"},
    "node": [{"name": "gpu1", "local": True, "cpus": 8, "memory": "16G",
              "gpus": [{"type": "A100", "memory_mb": 81920}] * 4}],
}
KW = {"cwd": "/tmp", "export_env": False}


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    """Job `first` runs on 2 of the 4 GPUs for up to an hour; `wide` asks for all 4 and gets
    the reservation; `long` would fit on the 2 free GPUs, but its 2 hours would delay `wide`."""
    d = Daemon(tmp_path_factory.mktemp("waiting"), CONFIG)
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            first = q.submit(["sleep", "600"], gpus=2, time_limit="1h", **KW)
            wait_for(lambda: q.job(first.id).state.value == "RUNNING", what="first running")
            wide = q.submit(["true"], gpus=4, time_limit="1h", priority=9, **KW)
            long = q.submit(["true"], gpus=2, time_limit="2h", priority=1, **KW)
            wait_for(lambda: q.job(long.id).backfill_limit_s, what="the backfill limit")
        yield d, first, wide, long
    finally:
        d.cancel_all()
        d.close()


def labq(d, *args) -> str:
    r = subprocess.run([LABQ, *args], capture_output=True, text=True, env=d.env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_show_and_ls_name_the_reservation_and_the_time_that_starts_a_job_now(queue):
    d, first, wide, long = queue
    shown = labq(d, "show", str(long.id))
    line = next((x for x in shown.splitlines() if "waiting for" in x), shown)
    m = re.search(r"4 GPUs on gpu1 reserved for job (\d+) until \d\d:\d\d — "
                  r"give --time ≤ (\d+)m to start now", line)
    assert m, shown
    assert int(m[1]) == wide.id and 55 <= int(m[2]) <= 59
    assert "PENDING  (Priority)" in shown
    wide_shown = labq(d, "show", str(wide.id))
    assert re.search(r"waiting for: 4 GPUs on gpu1 reserved for it from \d\d:\d\d", wide_shown)
    rows = {r.split()[0]: r for r in labq(d, "ls").splitlines()[1:]}
    assert f"Priority (--time ≤{m[2]}m starts now)" in rows[str(long.id)]
    assert "Resources (reserved)" in rows[str(wide.id)]
    assert "waiting for" not in labq(d, "show", str(first.id))


def test_the_tui_job_view_says_the_same(queue):
    d, _, wide, long = queue
    app = LabqApp(socket=d.socket, interval=0.3)

    async def scenario(pilot):
        table = app.query_one("#queue-table", QueueTable)
        await until(pilot, lambda: str(long.id) in [str(k.value) for k in table.rows], "job")
        row = next(x for x in screen_text(app).splitlines() if x.lstrip().startswith(
            str(long.id)))
        assert re.search(r"Priority ≤\d+m", row), row
        table.select_job(long.id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job view")
        await until(pilot, lambda: "reserved for job" in screen_text(app), "the reservation")
        text = " ".join(screen_text(app).split())
        assert re.search(rf"4 GPUs on gpu1 reserved for job {wide.id} until \d\d:\d\d:\d\d — "
                         r"give --time ≤ \d+m to start now", text), text

    drive(app, scenario, (160, 48))


def test_the_time_it_names_starts_the_job(queue):
    d, first, wide, long = queue
    with d.client() as q:
        # the --time the hint names, as a user would type it a moment after reading it
        q.set_time_limit(long.id, time_hint(q.job(long.id).backfill_limit_s))
        # `true` may have ended by the time it is looked at: started is what counts
        started = wait_for(lambda: (lambda j: j.start_time is not None and j)(q.job(long.id)),
                           what="the shortened job started")
        assert started.gpu_indices == [2, 3]
        assert q.job(wide.id).state.value == "PENDING"
        q.cancel(first.id, long.id, wide.id)
