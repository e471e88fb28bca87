"""The nodes tab: state, CPU and memory (allocated by jobs and measured), and one line per GPU
with its utilisation, memory and the job that holds it."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from labq import Job, Node
from labq.cli_format import pool_summary
from labq.text import printable
from labq.units import format_size_mb

from .bars import bar
from .format import plain

NODE_STATE_STYLE = {"up": "bold green", "drain": "bold yellow", "down": "bold red",
                    "connecting": "cyan", "refused": "bold red"}


def _frac(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def render_node(node: Node, live_stats: bool = True,
                jobs: dict[int, Job] | None = None) -> Group:
    """`live_stats=False` leaves out what the node measures (CPU %, memory in use, GPU
    utilisation), which changes from one second to the next. `jobs` names each GPU's job."""
    head = Text.assemble((printable(f" {node.name} "), "bold reverse"), "  ",
                         (printable(node.state.upper()), NODE_STATE_STYLE.get(node.state, "")),
                         "  ", printable(node.host),
                         "  ", printable(f"gpus via {node.gpu_source or '-'}"),
                         "  ", f"jobs: {', '.join(map(str, node.running_jobs)) or '-'}")
    lines: list[Text] = [head]
    if node.reason:  # its own line: a long reason must not run into the state
        lines.append(Text.assemble("  ", (printable(node.reason), "italic red")))
    if node.kind == "slurm":  # Slurm places its jobs: no bars of labq's own to show
        lines.append(Text.assemble("  ", printable(pool_summary(node))))
        return Group(*lines, Text(""))
    grid = Table.grid(padding=(0, 1))
    for _ in range(4):
        grid.add_column(no_wrap=True)
    alloc_cpu = node.cpus - node.free_cpus
    alloc_mem = node.memory_mb - node.free_memory_mb
    cpu_used = node.cpu_percent if live_stats else None
    mem_used = node.memory_used_mb if live_stats else None
    grid.add_row("CPU alloc", bar(_frac(alloc_cpu, node.cpus)),
                 f"{alloc_cpu}/{node.cpus} cpus", "")
    grid.add_row("CPU used", bar(None if cpu_used is None else cpu_used / 100),
                 _pct(cpu_used), "")
    grid.add_row("MEM alloc", bar(_frac(alloc_mem, node.memory_mb)),
                 f"{format_size_mb(alloc_mem)}/{format_size_mb(node.memory_mb)}", "")
    grid.add_row("MEM used", bar(_frac(mem_used, node.memory_mb)),
                 "n/a" if mem_used is None else
                 f"{format_size_mb(mem_used)}/{format_size_mb(node.memory_mb)}", "")
    for g in node.gpus:
        util = g.utilization if live_stats else None
        gmem = g.memory_used_mb if live_stats else None
        holder = _holder(g.job, jobs or {})
        grid.add_row(
            plain(f"GPU{g.index} {g.type}"[:28]),
            Text.assemble("util ", bar(None if util is None else util / 100, 12), " ",
                          _pct(util).rjust(4)),
            Text.assemble("mem ", bar(_frac(gmem, g.memory_mb), 12), " ",
                          "-" if gmem is None else format_size_mb(gmem), "/",
                          format_size_mb(g.memory_mb)),
            holder)
    if not node.gpus:
        grid.add_row("GPUs", Text("none", style="dim"), "", "")
    return Group(*lines, grid, Text(""))


def _holder(job_id: int | None, jobs: dict[int, Job]) -> Text:
    if job_id is None:
        return Text("free", style="dim")
    job = jobs.get(job_id)
    who = f" {job.owner} {job.name}"[:30] if job is not None else ""
    return Text.assemble((f"job {job_id}", "bold cyan"), printable(who))


def _gpu_bar(node: Node, width: int = 8) -> Text:
    """One cell per GPU while they fit (used █, free ░), else a bar of the used fraction."""
    used = sum(g.job is not None for g in node.gpus)
    total = len(node.gpus)
    if not total:
        return Text("-".ljust(width), style="dim")
    if total > width:
        return bar(used / total, width)
    style = "red" if used == total else "yellow" if used else "green"
    return Text.assemble(("█" * used, style), ("░" * (total - used), "dim"),
                         " " * (width - total))


def render_compact(nodes: list[Node]) -> Group:
    """One line per node: name, state, GPUs used/total as a bar, CPUs and memory allocated,
    and its jobs; a summary line above. Fits 50 nodes in a few screens at 80 columns."""
    states: dict[str, int] = {}
    for n in nodes:
        states[n.state] = states.get(n.state, 0) + 1
    used = sum(g.job is not None for n in nodes for g in n.gpus)
    total = sum(len(n.gpus) for n in nodes)
    summary = Text.assemble(
        (f"{len(nodes)} node{'' if len(nodes) == 1 else 's'}: ", "bold"),
        ", ".join(f"{k} {states[k]}" for k in sorted(states)),
        f" · GPUs {used}/{total} used · c: cards")
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True, max_width=16, overflow="ellipsis")
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(no_wrap=True, ratio=1, overflow="ellipsis")
    head = "bold"
    grid.add_row(Text("NODE", head), Text("STATE", head), Text("GPUS", head), "",
                 Text("CPUS", head), Text("MEM", head), Text("JOBS", head))
    for n in nodes:
        alloc_mem = n.memory_mb - n.free_memory_mb
        grid.add_row(
            plain(n.name), Text(printable(n.state), NODE_STATE_STYLE.get(n.state, "")),
            _gpu_bar(n), f"{sum(g.job is not None for g in n.gpus)}/{len(n.gpus)}",
            f"{n.cpus - n.free_cpus}/{n.cpus}",
            f"{format_size_mb(alloc_mem)}/{format_size_mb(n.memory_mb)}",
            _jobs_or_reason(n))
    return Group(summary, grid)


def _jobs_or_reason(node: Node) -> Text:
    if node.reason and not node.running_jobs:  # why a node is down says more than "-"
        return Text(printable(node.reason), style="italic red")
    return Text(",".join(map(str, node.running_jobs)) or "-",
                style="" if node.running_jobs else "dim")


class NodeCard(Static):
    pass


class NodesView(VerticalScroll):
    """One card per node, or with `c` one line per node (for many nodes)."""

    can_focus = True
    BINDINGS = [Binding("c", "toggle_compact", "Lines/cards")]

    def __init__(self, live_stats: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.live_stats = live_stats
        self.compact = False
        self._shown: dict[str, tuple] = {}
        self._cards: dict[str, NodeCard] = {}
        self._last: tuple[list[Node], dict[int, Job] | None] = ([], None)
        self._compact_key: tuple | None = None
        self._behind = False  # nodes came while the view was not shown

    def compose(self) -> ComposeResult:
        yield Static("waiting for labqd…", id="nodes-empty")
        yield Static(id="nodes-compact")

    def on_mount(self) -> None:
        self.query_one("#nodes-compact").display = False

    def action_toggle_compact(self) -> None:
        self.compact = not self.compact
        self.query_one("#nodes-compact").display = self.compact
        for card in self._cards.values():
            card.display = not self.compact
        self._compact_key = None
        self.set_nodes(*self._last)

    def on_show(self) -> None:
        if self._behind:
            self.set_nodes(*self._last)

    def set_nodes(self, nodes: list[Node], jobs: dict[int, Job] | None = None) -> None:
        self._last = (nodes, jobs)
        # a node's measured CPU and GPU use change on every poll: on another tab they would
        # lay out and draw the screen every second for nothing
        self._behind = bool(self._shown or self._compact_key) and not self.is_on_screen
        if self._behind:
            return
        empty = self.query_one("#nodes-empty")
        if empty.display != (not nodes):
            empty.display = not nodes
        if self.compact:  # the hidden cards catch up when they are shown again
            key = tuple((n.name, n.state, n.cpus, n.free_cpus, n.memory_mb, n.free_memory_mb,
                         tuple(g.job for g in n.gpus), tuple(n.running_jobs)) for n in nodes)
            if key != self._compact_key:
                self.query_one("#nodes-compact", Static).update(render_compact(nodes))
                self._compact_key = key
            return
        self._set_cards(nodes, jobs)

    def _set_cards(self, nodes: list[Node], jobs: dict[int, Job] | None) -> None:
        names = [n.name for n in nodes]
        for name in [k for k in self._shown if k not in names]:
            self._cards.pop(name).remove()
            del self._shown[name]
        for node in nodes:
            # compare what is drawn, not the node: last_seen changes on every poll
            key = (node.state, node.reason, node.free_cpus, node.free_memory_mb,
                   node.cpus, node.memory_mb, tuple(node.running_jobs),
                   tuple((g.index, g.job) for g in node.gpus),
                   tuple(_holder(g.job, jobs or {}).plain for g in node.gpus)) + ((
                       node.cpu_percent, node.memory_used_mb,
                       tuple((g.utilization, g.memory_used_mb) for g in node.gpus))
                       if self.live_stats else ())
            if self._shown.get(node.name) == key:
                continue
            if node.name in self._cards:
                self._cards[node.name].update(render_node(node, self.live_stats, jobs))
            else:
                self._cards[node.name] = NodeCard(render_node(node, self.live_stats, jobs))
                self.mount(self._cards[node.name])
            self._shown[node.name] = key
