"""The command line's views of the cluster: nodes, node administration, fair-share groups,
usage and whoami."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cli_format import pool_summary, print_json, table
from .cli_options import positive_int
from .text import printable
from .units import format_size_mb, parse_size_mb

if TYPE_CHECKING:
    from .client import Client
    from .models import Node

Add = Callable[..., argparse.ArgumentParser]


def cmd_nodes(q: Client, a: argparse.Namespace) -> int:
    nodes = q.nodes()
    if a.json:
        print_json([{**n.__dict__, "gpus": [g.__dict__ for g in n.gpus]} for n in nodes])
        return 0
    rows = []
    for n in nodes:
        if n.kind == "slurm":
            rows.append(pool_line(n))
            continue
        types: dict[str, int] = {}
        for g in n.gpus:
            types[g.type] = types.get(g.type, 0) + 1
        busy = sum(1 for g in n.gpus if g.job is not None)
        rows.append([n.name, n.host, n.state, f"{n.free_cpus}/{n.cpus}",
                     f"{format_size_mb(n.free_memory_mb)}/{format_size_mb(n.memory_mb)}",
                     f"{len(n.gpus) - busy}/{len(n.gpus)}",
                     ", ".join(f"{c}x {t}" for t, c in types.items()) or "-",
                     n.gpu_source or "-", (n.containment or "-").split(" (")[0],
                     (n.runs_jobs_of or "-").split(" (")[0], n.reason or ""])
    table(rows, ["NODE", "HOST", "STATE", "CPUS", "MEMORY", "GPUS", "GPU TYPES", "SOURCE",
                  "CONTAINMENT", "RUNS JOBS OF", "REASON"])
    return 0


def pool_line(n: Node) -> list[str]:
    """A Slurm pool's row: labq's GPUs there, and the pool in words where reasons go."""
    p = n.pool or {}
    free = p.get("max_gpus", 0) - p.get("labq_gpus", 0)
    types = n.gpus[0].type if n.gpus else "-"
    return [n.name, n.host, n.state, "-", "-", f"{free}/{p.get('max_gpus', 0)}", types,
            "slurm", "slurm", (n.runs_jobs_of or "-").split(" (")[0],
            "; ".join(x for x in (n.reason, pool_summary(n)) if x)]


def cmd_node(q: Client, a: argparse.Namespace) -> int:
    node: dict[str, Any]  # Node's fields as a mapping, or what a removal answers
    if a.action == "add":
        entry = {"name": a.name}
        if a.local:
            entry["local"] = True
        for key in ("host", "port", "user", "identity_file", "known_hosts", "job_root"):
            if getattr(a, key) is not None:
                entry[key] = getattr(a, key)
        if a.gpu:
            entry["gpus"] = [_gpu_decl(g) for g in a.gpu]
        node = q.add_node(**entry)
    elif a.action == "remove":
        node = dict(q.remove_node(a.name))
        node.setdefault("state", "removed")
    else:
        node = q.drain(a.name) if a.action == "drain" else q.resume(a.name)
    if a.json:
        print_json(node)
    else:
        print(printable(f"{node['name']} {node['state']}"))
    return 0


def _gpu_decl(text: str) -> dict[str, Any]:
    """TYPE[:MEMORY] -> a GPU declaration, e.g. A100:80G."""
    gtype, _, mem = text.partition(":")
    decl: dict[str, Any] = {"type": gtype}
    if mem:
        decl["memory_mb"] = parse_size_mb(mem, "--gpu")
    return decl


def _kv(items: list[str] | None, what: str, cast: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"labq: {what} takes NAME=VALUE, got {item!r}")
        try:
            out[k] = cast(v)
        except ValueError:
            raise SystemExit(f"labq: {what}: {v!r} is not a number") from None
    return out


def cmd_group(q: Client, a: argparse.Namespace) -> int:
    if a.action == "set":
        settings: dict[str, Any] = {}
        if a.share is not None:
            settings["share"] = a.share
        if a.max_gpus is not None:
            settings["max_gpus"] = None if a.max_gpus < 0 else a.max_gpus
        if a.max_gpus_type:
            settings["max_gpus_by_type"] = _kv(a.max_gpus_type, "--max-gpus-type", int)
        if a.user_share:
            settings["users"] = _kv(a.user_share, "--user-share", float)
        groups = [q.set_group(a.group, **settings)]
    else:
        groups = q.groups()
    if a.json:
        print_json(groups)
        return 0
    table([[g["group"], f"{g['share']:g}", "-" if g["max_gpus"] is None else g["max_gpus"],
             ",".join(f"{t}={n}" for t, n in g["max_gpus_by_type"].items()) or "-",
             g["gpus_in_use"], f"{g['usage'] / 3600:.2f}", f"{g['fairshare']:.3f}"]
            for g in groups],
           ["GROUP", "SHARE", "MAX GPUS", "BY TYPE", "IN USE", "USAGE (GPU-h, decayed)",
            "FAIRSHARE"])
    return 0


def cmd_usage(q: Client, a: argparse.Namespace) -> int:
    rep = q.usage(days=a.days, bucket=getattr(a, "by", None) or "day")
    if a.json:
        print_json(rep)
        return 0
    print(f"GPU-hours over the last {a.days:g} days")
    table([[g["group"], f"{g['gpu_hours']:.2f}", f"{g['share']:g}", f"{g['fairshare']:.3f}"]
            for g in rep["groups"]], ["GROUP", "GPU-HOURS", "SHARE", "FAIRSHARE"])
    print()
    table([[u["group"], u["user"], f"{u['gpu_hours']:.2f}", f"{u['fairshare']:.3f}"]
            for u in rep["users"]], ["GROUP", "USER", "GPU-HOURS", "FAIRSHARE"])
    if getattr(a, "by", None):
        shape = "%Y-%m-%d %H:00" if a.by == "hour" else "%Y-%m-%d"
        print()
        table([[p["group"], time.strftime(shape, time.localtime(p["start"])),
                f"{p['gpu_hours']:.2f}"] for p in rep["series"]],
              ["GROUP", a.by.upper(), "GPU-HOURS"])
    return 0


def cmd_whoami(q: Client, a: argparse.Namespace) -> int:
    info = q.whoami()
    if a.json:
        print_json(info)
    else:
        print(printable(f"{info['user']} (group {info['group']})")
              + (" admin" if info["admin"] else ""))
    return 0


def cmd_version(q: Client, a: argparse.Namespace) -> int:
    """The daemon's release and protocol beside the client's, which main() has printed."""
    from . import __version__
    from .protocol import PROTOCOL
    info = q.ping()
    daemon, proto = info.get("version"), info.get("protocol")
    if a.json:
        print_json({"client": {"version": __version__, "protocol": PROTOCOL},
                    "daemon": {"version": daemon, "protocol": proto}})
        return 0
    if daemon is None:  # labqd from before releases were reported
        print("labqd: older than 0.1.0 (no protocol number): upgrade it")
        return 1
    print(printable(f"labqd {daemon} (protocol {proto})"))
    return 0


def add_parsers(add: Add) -> None:
    add("nodes", cmd_nodes, "list nodes and their GPUs")
    p = add("node", cmd_node, "admin: drain, resume, add or remove a node")
    p.add_argument("action", choices=["drain", "resume", "add", "remove"])
    p.add_argument("name")
    p.add_argument("--host", help="add: hostname or ~/.ssh/config alias")
    p.add_argument("--port", type=positive_int(1, 65535))
    p.add_argument("--user")
    p.add_argument("--identity-file", dest="identity_file")
    p.add_argument("--known-hosts", dest="known_hosts")
    p.add_argument("--job-root", dest="job_root")
    p.add_argument("--local", action="store_true", help="add: the daemon's own machine")
    p.add_argument("--gpu", action="append", help="add: declare a GPU as TYPE[:MEMORY]; "
                   "repeat per GPU (default: detect)")
    p = add("group", cmd_group, "fair-share groups: list them, or (admins) set shares and "
            "limits")
    p.add_argument("action", choices=["ls", "set"], nargs="?", default="ls")
    p.add_argument("group", nargs="?")
    p.add_argument("--share", type=float)
    p.add_argument("--max-gpus", type=int, help="GPUs the group may use at once; -1 clears")
    p.add_argument("--max-gpus-type", action="append", metavar="TYPE=N")
    p.add_argument("--user-share", action="append", metavar="USER=SHARE")
    p = add("usage", cmd_usage, "GPU-hours per group and user, and fair-share factors")
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--by", choices=["day", "hour"],
                   help="also GPU-hours per group per day or hour (hours: at most 31 days)")
    add("whoami", cmd_whoami, "who labqd thinks you are")
    add("version", cmd_version, "labq's and labqd's releases and protocols")
