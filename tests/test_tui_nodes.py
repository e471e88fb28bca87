"""The nodes tab with many nodes: `c` switches between one card per node and one line per
node, and 50 nodes stay readable at 80x24. Hidden tabs (nodes, admin) are not redrawn on
every poll, and catch up when shown. The snapshots draw the nodes tab's own widget with
50 nodes made here (a lab's labqd cannot be given 50 real nodes on a test machine); the toggle
is also driven in the full app against a real labqd."""
import pytest
from daemonproc import Daemon
from textual.app import App
from tuikit import drive, pressing, screen_text, until

from labq.models import Gpu, Node
from labq.tui.app import LabqApp
from labq.tui.nodes import NodeCard, NodesView
from labq.tui.queue import QueueTable

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
STATES = ["up"] * 7 + ["drain", "down", "up"]


def fifty_nodes() -> list[Node]:
    nodes = []
    for i in range(50):
        n_gpus = (8, 4, 2, 0, 16)[i % 5]
        used = (i * 3) % (n_gpus + 1) if n_gpus else 0
        jobs = [1000 + i * 10 + k for k in range(used)]
        gpus = [Gpu(index=k, type="NVIDIA A100-SXM4-80GB", memory_mb=81920,
                    job=jobs[k] if k < used else None) for k in range(n_gpus)]
        cpus = 64 if n_gpus else 128
        nodes.append(Node(name=f"gpu-node-{i:02d}", host=f"10.0.0.{i}", state=STATES[i % 10],
                          reason="unreachable" if STATES[i % 10] == "down" else None,
                          cpus=cpus, free_cpus=cpus - 4 * used, memory_mb=512 * 1024,
                          free_memory_mb=512 * 1024 - 32 * 1024 * used, gpus=gpus,
                          running_jobs=jobs))
    return nodes


class NodesApp(App):
    def compose(self):
        yield NodesView(live_stats=False, id="nodes-view")

    def on_mount(self) -> None:
        view = self.query_one(NodesView)
        view.set_nodes(fifty_nodes())
        view.focus()


@SIZES
def test_fifty_nodes_one_line_each(snap_compare, size):
    assert snap_compare(NodesApp(), terminal_size=size, run_before=pressing("c"))


def test_compact_lines_fit_80_columns():
    import asyncio

    async def main():
        app = NodesApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("c")
            await pilot.pause(0.1)
            lines = screen_text(app).splitlines()
            rows = [x for x in lines if "gpu-node-" in x]
            # a header, the summary and a line per node down to the screen's end
            assert len(rows) >= 18
            first = next(x for x in rows if "gpu-node-00" in x)
            assert "up" in first and "0/8" in first and "0/64" in first
            second = next(x for x in rows if "gpu-node-01" in x)
            assert "███░" in second and "3/4" in second and "1010,1011,1012" in second
            assert "50 nodes: down 5, drain 5, up 40" in screen_text(app)
    asyncio.run(main())


CONFIG = {
    "daemon": {"local_node": False, "heartbeat": "1s", "kill_grace": "1s"},
    "node": [{"name": "gpu1", "local": True, "cpus": 16, "memory": "64G",
              "gpus": [{"type": "A100", "memory_mb": 81920}] * 2}],
}


def test_c_on_the_nodes_tab_toggles_cards_and_lines(tmp_path):
    """Also: a job that starts while another tab is shown is on the node's card as soon as
    the nodes tab is (a hidden tab is not redrawn on every poll)."""
    d = Daemon(tmp_path / "d", CONFIG)
    d.start(wait_nodes=1)
    try:
        # it polls only when woken here: what the nodes tab shows comes from the polls made
        # while it was hidden
        app = LabqApp(socket=d.socket, interval=3600)

        def running(job_id):
            return any(str(job_id) in x and "RUNNING" in x
                       for x in screen_text(app).splitlines())

        async def scenario(pilot):
            await until(pilot, lambda: app.query(NodeCard), "the node's card, drawn hidden")
            with d.client() as q:
                job = q.submit(["sleep", "60"], gpus=1, cwd="/tmp", export_env=False)
            while not running(job.id):
                app.settings.wake.set()
                await pilot.pause(0.3)
            await pilot.press("2")
            view = app.query_one(NodesView)
            await until(pilot, lambda: "GPU0" in screen_text(app), "the node's card")
            await until(pilot, lambda: f"job {job.id}" in screen_text(app), "the job on it")
            await pilot.press("c")
            await until(pilot, lambda: "1 node: up 1" in screen_text(app), "one line")
            line = next(x for x in screen_text(app).splitlines() if "gpu1 " in x)
            assert "█░" in line and "1/2" in line and f" {job.id}" in line
            assert "GPU0" not in screen_text(app) and view.compact
            await pilot.press("c")
            await until(pilot, lambda: "GPU0" in screen_text(app), "the cards again")
            assert "1 node:" not in screen_text(app)

        drive(app, scenario, (80, 24))
    finally:
        d.close()


def test_the_admin_tab_catches_up_when_it_is_shown(tmp_path):
    """The admin tab's table of every user's jobs is not redrawn while another tab is shown;
    a job submitted meanwhile is in it as soon as the tab is."""
    d = Daemon(tmp_path / "d", CONFIG)
    d.start(wait_nodes=1)
    try:
        app = LabqApp(socket=d.socket, interval=3600)  # polls only when woken here

        async def scenario(pilot):
            await until(pilot, lambda: app.query("#admin-nodes")
                        and app.query_one("#admin-nodes").row_count == 1,
                        "the admin tab (root), drawn once")
            table = app.query_one("#admin-jobs", QueueTable)
            with d.client() as q:
                job = q.submit(["sleep", "60"], hold=True, cwd="/tmp", export_env=False)
            while str(job.id) not in [str(k.value) for k in app.queue.table.rows]:
                app.settings.wake.set()
                await pilot.pause(0.3)
            assert str(job.id) not in [str(k.value) for k in table.rows]  # hidden: not yet
            await pilot.press("4")
            await until(pilot, lambda: str(job.id) in [str(k.value) for k in table.rows],
                        "the job in the admin tab")

        drive(app, scenario, (80, 24))
    finally:
        d.close()
