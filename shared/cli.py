"""The `labq` command line: a thin layer over the client library."""
from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import cli_batch, clinotify, completion, connect, userconfig
from .clifollow import run_job
from .errors import LabqError
from .models import Job
from .spec import MAX_GPUS
from .text import printable
from .units import format_duration, format_size_mb, parse_duration_s, parse_size_mb

if TYPE_CHECKING:
    from .client import Client


def _job_json(job: Job) -> dict[str, Any]:
    return job.to_dict()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _ids(text_ids: list[str]) -> list[int]:
    out = []
    for t in text_ids:
        for part in t.split(","):
            try:
                out.append(int(part))
            except ValueError:
                raise SystemExit(f"labq: {part!r} is not a job id") from None
    return out


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _command_text(job: Job) -> str:
    if isinstance(job.command, str):
        return job.command
    import shlex
    return " ".join(shlex.quote(a) for a in job.command)


def _status_text(job: Job, now: float) -> str:
    if job.state.value == "RUNNING" and job.start_time:
        return format_duration(now - job.start_time)
    if job.state.value in ("PENDING", "HELD"):
        return job.reason or "-"
    if job.exit_code is not None:
        extra = job.reason if job.reason and not job.reason.startswith("exit code") else ""
        return f"exit {job.exit_code}" + (f" ({extra})" if extra else "")
    return job.reason or "-"


# -- commands ------------------------------------------------------------------------------
def _submit_args(a: argparse.Namespace, usage: str) -> tuple[list[str] | str, dict[str, Any]]:
    """The command and Client.submit's options from `labq submit` or `labq run` arguments."""
    if a.wrap is not None:
        if a.command:
            raise SystemExit("labq: give either --wrap STRING or -- CMD ARGS, not both")
        command: list[str] | str = a.wrap
    else:
        command = a.command
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise SystemExit(f"labq: nothing to run; usage: {usage}")
    env: dict[str, str] = {}
    for item in a.env or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"labq: --env takes NAME=VALUE, got {item!r}")
        env[k] = v
    after: list[int | str] = []
    for dep in a.after or []:
        after.extend(d for d in dep.split(",") if d)
    return command, dict(
        gpus=a.gpus, gpu_type=a.gpu_type, gpu_memory=a.gpu_mem, cpus=a.cpus, memory=a.mem,
        time_limit=a.time, name=a.name, priority=a.priority, after=after, cwd=a.chdir,
        env=env, export_env=not a.no_export, group=a.group, partition=a.partition,
        hold=a.hold, requeue=not a.no_requeue, notify=userconfig.submit_notify(a.notify),
        experiment=a.experiment, key=a.key, preemptible=a.preemptible,
        early_signal=a.signal)


def cmd_submit(q: Client, a: argparse.Namespace) -> int:
    if a.from_file is not None:
        if a.command or a.wrap is not None or a.array or a.param:
            raise SystemExit("labq: --from takes its jobs from the file; give no command")
        return cli_batch.submit_from(q, a)
    command, options = _submit_args(a, "labq submit [options] -- CMD ARGS...")
    if a.array or a.param:
        return cli_batch.submit_tasks(q, a, command, options)
    if a.max_running is not None:
        raise SystemExit("labq: --max-running is for --array or --param")
    job = q.submit(command, **options)
    if a.json:
        _print_json(_job_json(job))
    else:
        print(job.id)
    return 0


def cmd_run(q: Client, a: argparse.Namespace) -> int:
    return run_job(q, *_submit_args(a, "labq run [options] -- CMD ARGS..."))


def cmd_ls(q: Client, a: argparse.Namespace) -> int:
    states = [s.upper() for s in a.state.split(",")] if a.state else None
    user = a.user or (q.whoami()["user"] if a.mine else None)
    if a.experiment and user is None:
        me = q.whoami()  # an experiment is yours; an admin sees everyone's of that name
        user = None if me["admin"] else me["user"]
    jobs = q.jobs(states=states, user=user, include_ended=a.all or bool(states) or
                  bool(a.experiment), limit=a.limit, experiment=a.experiment)
    if a.json:
        _print_json([_job_json(j) for j in jobs])
        return 0
    now = time.time()
    rows = [[j.id, j.name[:24], j.owner, j.group, j.state.value,
             j.gpus if not j.gpu_type else f"{j.gpus}:{j.gpu_type}", j.node or "-",
             f"{j.priority_score:.0f}" if j.priority_score is not None else j.priority,
             _status_text(j, now)] for j in jobs]
    _table(rows, ["ID", "NAME", "USER", "GROUP", "STATE", "GPUS", "NODE", "PRIO",
                  "REASON/TIME"])
    return 0


def cmd_show(q: Client, a: argparse.Namespace) -> int:
    job = q.job(_ids([a.id])[0])
    if a.json:
        _print_json(_job_json(job))
        return 0
    fields = [
        ("id", job.id), ("name", job.name), ("owner", f"{job.owner} (group {job.group})"),
        ("state", job.state.value + (f"  ({job.reason})" if job.reason else "")),
        ("command", _command_text(job)), ("cwd", job.cwd),
        ("resources", f"gpus={job.gpus}{':' + job.gpu_type if job.gpu_type else ''}"
                      f"{' min ' + format_size_mb(job.gpu_memory_mb) if job.gpu_memory_mb else ''}"
                      f" cpus={job.cpus} mem={format_size_mb(job.memory_mb)}"),
        ("time limit", format_duration(job.time_limit_s) if job.time_limit_s else "default"),
        ("priority", f"{job.priority}" + (f" (score {job.priority_score:.1f})"
                                          if job.priority_score is not None else "")),
        ("dependencies", ", ".join(job.dependencies) or "-"),
        ("submitted", _when(job.submit_time)),
        ("est. start", _when(job.estimated_start)), ("started", _when(job.start_time)),
        ("ended", _when(job.end_time)),
        ("node", job.node or "-"),
        ("gpu indices", ",".join(map(str, job.gpu_indices)) or "-"),
        ("exit code", "-" if job.exit_code is None else job.exit_code),
        ("restarts", job.restarts),
        ("notify", job.notify or "-"),
    ]
    if job.experiment:
        fields.append(("experiment", job.experiment))
    if job.array_id is not None:
        fields.append(("array", f"{job.array_id}[{job.array_index}]"
                                + (f" %{job.array_limit}" if job.array_limit else "")))
    if job.params:
        fields.append(("params", " ".join(f"{k}={v}" for k, v in job.params.items())))
    for k, v in fields:
        print(f"{k:>13}: {printable(v)}")
    return 0


def cmd_events(q: Client, a: argparse.Namespace) -> int:
    events = q.events(_ids([a.id])[0])
    if a.json:
        _print_json([e.__dict__ for e in events])
        return 0
    _table([[_when(e.time), e.who, e.from_state or "-", e.to_state, e.reason or ""]
            for e in events], ["TIME", "WHO", "FROM", "TO", "REASON"])
    return 0


def cmd_logs(q: Client, a: argparse.Namespace) -> int:
    job_id = _ids([a.id])[0]
    out = sys.stdout.buffer
    if a.json:  # one JSON object per chunk: {"id", "offset", "data"}
        offset = 0
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        chunks = q.follow_bytes(job_id) if a.follow else iter(
            lambda: q.read_log(job_id, offset)[0], b"")
        for chunk in chunks:
            print(json.dumps({"id": job_id, "offset": offset, "data": decoder.decode(chunk)}),
                  flush=True)
            offset += len(chunk)
        return 0
    if a.follow:
        for chunk in q.follow_bytes(job_id):
            out.write(chunk)
            out.flush()
    else:
        offset = 0
        while True:
            data, offset, _done = q.read_log(job_id, offset)
            if not data:
                break
            out.write(data)
        out.flush()
    return 0


def _many(q: Client, a: argparse.Namespace, fn: Callable[..., list[Job]]) -> int:
    jobs = fn(*_ids(a.ids), experiment=a.experiment) if a.experiment else fn(*_ids(a.ids))
    if a.json:
        _print_json([_job_json(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id} {j.state.value}" + (f" ({printable(j.reason)})" if j.reason else ""))
    return 0


def cmd_cancel(q: Client, a: argparse.Namespace) -> int:
    return _many(q, a, lambda *ids, **kw: q.cancel(*ids, reason=a.reason, **kw))


def cmd_wait(q: Client, a: argparse.Namespace) -> int:
    try:
        jobs = q.wait(*_ids(a.ids), timeout=a.timeout, experiment=a.experiment)
    except TimeoutError as e:
        print(f"labq: {printable(e)}", file=sys.stderr)
        return 124
    if a.json:
        _print_json([_job_json(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id} {j.state.value} exit={j.exit_code}")
    return 0 if all(j.state.value == "COMPLETED" for j in jobs) else 1


def cmd_nodes(q: Client, a: argparse.Namespace) -> int:
    nodes = q.nodes()
    if a.json:
        _print_json([{**n.__dict__, "gpus": [g.__dict__ for g in n.gpus]} for n in nodes])
        return 0
    rows = []
    for n in nodes:
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
    _table(rows, ["NODE", "HOST", "STATE", "CPUS", "MEMORY", "GPUS", "GPU TYPES", "SOURCE",
                  "CONTAINMENT", "RUNS JOBS OF", "REASON"])
    return 0


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
        _print_json(node)
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


def cmd_priority(q: Client, a: argparse.Namespace) -> int:
    job = q.set_priority(_ids([a.id])[0], a.priority)
    if a.json:
        _print_json(_job_json(job))
    else:
        print(f"{job.id} priority {job.priority}")
    return 0


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
        _print_json(groups)
        return 0
    _table([[g["group"], f"{g['share']:g}", "-" if g["max_gpus"] is None else g["max_gpus"],
             ",".join(f"{t}={n}" for t, n in g["max_gpus_by_type"].items()) or "-",
             g["gpus_in_use"], f"{g['usage'] / 3600:.2f}", f"{g['fairshare']:.3f}"]
            for g in groups],
           ["GROUP", "SHARE", "MAX GPUS", "BY TYPE", "IN USE", "USAGE (GPU-h, decayed)",
            "FAIRSHARE"])
    return 0


def cmd_usage(q: Client, a: argparse.Namespace) -> int:
    rep = q.usage(days=a.days)
    if a.json:
        _print_json(rep)
        return 0
    print(f"GPU-hours over the last {a.days:g} days")
    _table([[g["group"], f"{g['gpu_hours']:.2f}", f"{g['share']:g}", f"{g['fairshare']:.3f}"]
            for g in rep["groups"]], ["GROUP", "GPU-HOURS", "SHARE", "FAIRSHARE"])
    print()
    _table([[u["group"], u["user"], f"{u['gpu_hours']:.2f}", f"{u['fairshare']:.3f}"]
            for u in rep["users"]], ["GROUP", "USER", "GPU-HOURS", "FAIRSHARE"])
    return 0


def cmd_whoami(q: Client, a: argparse.Namespace) -> int:
    info = q.whoami()
    if a.json:
        _print_json(info)
    else:
        print(printable(f"{info['user']} (group {info['group']})")
              + (" admin" if info["admin"] else ""))
    return 0


def cmd_tui(a: argparse.Namespace) -> int:
    # the UI connects by itself and keeps retrying, so it starts even while labqd is down
    from labq.tui.app import run
    status: int = run(socket=a.socket)  # typed int; mypy does not follow labq.tui from here
    return status


# -- parser --------------------------------------------------------------------------------
def _positive_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return v
    return parse


def _checked(fn: Callable[[str, str], object], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            fn(text, what)
        except LabqError as e:
            raise argparse.ArgumentTypeError(e.message) from None
        return text
    return parse


def _submit_options(p: argparse.ArgumentParser) -> None:
    """What `labq submit` and `labq run` both take."""
    p.add_argument("--gpus", "-G", type=_positive_int(0, MAX_GPUS), default=0)
    p.add_argument("--gpu-type", help="e.g. A100 (matches the GPU name, case-insensitive)")
    p.add_argument("--gpu-mem", type=_checked(parse_size_mb, "gpu memory"),
                   help="minimum memory per GPU, e.g. 40G")
    p.add_argument("--cpus", "-c", type=_positive_int(1, 65536), default=1)
    p.add_argument("--mem", type=_checked(parse_size_mb, "memory"), help="e.g. 32G")
    p.add_argument("--time", "-t", type=_checked(parse_duration_s, "time"),
                   help="time limit: minutes, H:M:S, D-H:M:S, or 90s/30m/2h/1d")
    p.add_argument("--name", "-J")
    p.add_argument("--priority", "-p", type=_positive_int(1, 10), default=5)
    p.add_argument("--after", "-d", action="append",
                   help="ID[,ID] (afterok) or afterany:ID / afternotok:ID; repeatable")
    p.add_argument("--chdir", "-D", help="working directory (default: the current one)")
    p.add_argument("--env", action="append", help="NAME=VALUE, repeatable")
    p.add_argument("--no-export", action="store_true",
                   help="do not pass the current environment to the job")
    p.add_argument("--group", help="charge this group (default: your primary group)")
    p.add_argument("--partition")
    p.add_argument("--hold", action="store_true", help="submit held")
    p.add_argument("--no-requeue", action="store_true",
                   help="fail instead of requeueing if the node is lost")
    p.add_argument("--preemptible", action="store_true",
                   help="may be stopped and requeued for a job that is not (see README)")
    p.add_argument("--signal", metavar="SIG@SECS",
                   help="send SIG (e.g. USR1) SECS before the time limit, and on preemption")
    p.add_argument("--wrap", help="a shell command string run with bash -c")
    p.add_argument("--notify", choices=["end", "fail", "all", "none"],
                   help="tell me when the job ends, ends other than COMPLETED, or starts and "
                   "ends (default: [submit] notify in ~/.config/labq/config.toml)")
    p.add_argument("--experiment", "-e", help="file the jobs under this experiment name")
    p.add_argument("--key", help="refuse the submit if one of your jobs has this key already")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _batch_options(p: argparse.ArgumentParser) -> None:
    """Options of `labq submit` that queue many jobs at once."""
    p.add_argument("--array", "-a", help="an array of tasks: 0-99, 1,3,5-7, 0-99:2; %%N runs "
                   "at most N at once")
    p.add_argument("--param", action="append", metavar="NAME=V1,V2|NAME=A..B",
                   help="a sweep: one job per combination; {NAME} and {index} are filled in")
    p.add_argument("--max-running", type=_positive_int(1, 10_000),
                   help="at most this many tasks of the array or sweep run at once")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="one job per row of an .ndjson, .jsonl or .csv file; - for stdin")
    p.add_argument("--format", choices=["ndjson", "jsonl", "csv"], help="the --from format")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="labq", description="GPU job queue for research labs.")
    ap.add_argument("--socket", help="labqd's socket (default: $LABQ_SOCKET, else the user's "
                    "own daemon, else the system daemon)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str,
            json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = add("submit", cmd_submit, "queue a command: labq submit [options] -- CMD ARGS...")
    _submit_options(p)
    _batch_options(p)
    _submit_options(add("run", cmd_run, "run a command and follow it, as srun does: its "
                        "output comes here, labq exits with its exit code, Ctrl-C cancels it",
                        json_flag=False))

    p = add("ls", cmd_ls, "list jobs (active ones; --all adds ended jobs)")
    p.add_argument("--all", "-a", action="store_true")
    p.add_argument("--mine", "-m", action="store_true")
    p.add_argument("--user", "-u")
    p.add_argument("--state", "-s", help="comma-separated states, e.g. running,pending")
    p.add_argument("--limit", "-n", type=_positive_int(1, 1 << 30))
    p.add_argument("--experiment", "-e", help="the jobs of an experiment (yours; an admin: "
                   "anyone's), ended ones too")

    p = add("show", cmd_show, "show one job")
    p.add_argument("id")
    p = add("events", cmd_events, "a job's state history")
    p.add_argument("id")
    p = add("logs", cmd_logs, "print a job's output; -f follows it while it runs; --json "
            "prints one JSON object per chunk")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true")
    for name, fn, help_ in (("cancel", cmd_cancel, "cancel jobs"),
                            ("hold", lambda q, a: _many(q, a, q.hold), "hold pending jobs"),
                            ("release", lambda q, a: _many(q, a, q.release),
                             "release held jobs")):
        p = add(name, fn, help_)
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--experiment", "-e", help="every job of an experiment instead")
        if name == "cancel":
            p.add_argument("--reason")
    p = add("wait", cmd_wait, "wait until jobs end; exit 0 only if all COMPLETED")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--experiment", "-e", help="every job of an experiment instead")
    p.add_argument("--timeout", type=float)
    add("nodes", cmd_nodes, "list nodes and their GPUs")
    p = add("node", cmd_node, "admin: drain, resume, add or remove a node")
    p.add_argument("action", choices=["drain", "resume", "add", "remove"])
    p.add_argument("name")
    p.add_argument("--host", help="add: hostname or ~/.ssh/config alias")
    p.add_argument("--port", type=_positive_int(1, 65535))
    p.add_argument("--user")
    p.add_argument("--identity-file", dest="identity_file")
    p.add_argument("--known-hosts", dest="known_hosts")
    p.add_argument("--job-root", dest="job_root")
    p.add_argument("--local", action="store_true", help="add: the daemon's own machine")
    p.add_argument("--gpu", action="append", help="add: declare a GPU as TYPE[:MEMORY]; "
                   "repeat per GPU (default: detect)")
    p = add("priority", cmd_priority, "change a pending job's priority (1-10)")
    p.add_argument("id")
    p.add_argument("priority", type=_positive_int(1, 10))
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
    p = add("experiments", cli_batch.cmd_experiments, "experiments: their jobs by state")
    p.add_argument("--mine", "-m", action="store_true")
    p.add_argument("--user", "-u")
    add("whoami", cmd_whoami, "who labqd thinks you are")
    clinotify.add_parser(add("notify", clinotify.cmd_notify, "where your notifications go: "
                             "show, set webhook|mail VALUE, unset webhook|mail"))
    add("tui", cmd_tui, "the terminal UI", json_flag=False)
    add("completion", cmd_completion, "print the shell completion script",
        json_flag=False).add_argument("shell", choices=completion.SHELLS)
    return ap


def cmd_completion(a: argparse.Namespace) -> int:
    print(completion.script(a.shell), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["__complete"]:  # what the completion scripts run; not a command of users
        return completion.run(ap, args[1:])
    a = ap.parse_args(args)
    if a.cmd == "group" and a.action == "set" and not a.group:
        ap.error("group set needs a group name")
    if a.cmd in ("cancel", "hold", "release", "wait") and not a.ids and not a.experiment:
        ap.error(f"{a.cmd} needs job ids or --experiment NAME")
    if a.cmd == "tui":
        return cmd_tui(a)
    if a.cmd == "completion":
        return cmd_completion(a)
    try:
        with connect(a.socket) as q:
            fn: Callable[[Client, argparse.Namespace], int] = a.fn
            return fn(q, a)
    except LabqError as e:
        print(f"labq: {printable(e)}", file=sys.stderr)
        if e.details and os.environ.get("LABQ_DEBUG"):
            print(json.dumps(e.details), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
