"""The `labq` command line: a thin layer over the client library."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

from . import (
    __version__,
    cli_admin,
    cli_batch,
    cli_files,
    cli_remote,
    clinotify,
    completion,
    connect,
    userconfig,
)
from .cli_format import (
    job_json,
    parse_ids,
    print_json,
)
from .cli_logs import cmd_logs
from .cli_options import batch_options, positive_int, submit_options
from .cli_views import cmd_events, cmd_ls, cmd_show
from .errors import LabqError, ValidationError
from .models import Job
from .spec import MAX_NODES
from .text import printable
from .units import format_duration

if TYPE_CHECKING:
    from .client import Client


# -- commands ------------------------------------------------------------------------------
def _submit_args(a: argparse.Namespace, usage: str) -> tuple[list[str] | str, dict[str, Any]]:
    """The command and Client.submit's options from `labq submit` or `labq run` arguments.
    `labq submit FILE` with a batch script (`#!` and `#SBATCH` lines) submits it as sbatch
    does; the options given here win over its directives."""
    script = False
    if a.wrap is not None:
        if a.command:
            raise SystemExit("labq: give either --wrap STRING or -- CMD ARGS, not both")
        command: list[str] | str = a.wrap
    else:
        command = a.command
        if command and command[0] == "--":
            command = command[1:]
        elif command:
            from .sbatch import is_batch_script
            script = is_batch_script(command[0])
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
    # None where an option was not given: a batch script's directive then stands
    options = dict(
        gpus=a.gpus, gpu_type=a.gpu_type, gpu_memory=a.gpu_mem, cpus=a.cpus, memory=a.mem,
        time_limit=a.time, name=a.name, priority=a.priority, after=after or None, cwd=a.chdir,
        env=env, export_env=False if a.no_export else None, group=a.group,
        partition=a.partition, hold=a.hold or None, requeue=False if a.no_requeue else None,
        notify=a.notify, experiment=a.experiment, key=a.key, preemptible=a.preemptible,
        early_signal=a.signal, nodes=a.nodes, gpus_per_node=a.gpus_per_node,
        **cli_files.submit_files(a))
    if script:
        from .cli_script import script_args
        command, options = script_args(a, cast(list[str], command), options)
    options = {k: v for k, v in options.items() if v is not None}
    options["notify"] = userconfig.submit_notify(options.get("notify"))
    return command, options


def cmd_submit(q: Client, a: argparse.Namespace) -> int:
    if a.from_file is not None:
        if a.command or a.wrap is not None or a.array or a.param:
            raise SystemExit("labq: --from takes its jobs from the file; give no command")
        return cli_batch.submit_from(q, a)
    command, options = _submit_args(a, "labq submit [options] -- CMD ARGS...")
    if a.array or a.param:
        rc = cli_batch.submit_tasks(q, a, command, options)
    elif a.max_running is not None:
        raise SystemExit("labq: --max-running is for --array or --param")
    else:
        job = q.submit(command, **options)
        if a.json:
            print_json(job_json(job))
        else:
            print(job.id)
        rc = 0
    if a.notify not in (None, "none") and rc == 0:
        clinotify.warn_if_unheard(q, a.notify)
    return rc


def cmd_run(q: Client, a: argparse.Namespace) -> int:
    from .clifollow import run_job
    return run_job(q, *_submit_args(a, "labq run [options] -- CMD ARGS..."))


def _many(q: Client, a: argparse.Namespace, fn: Callable[..., list[Job]]) -> int:
    jobs = fn(*parse_ids(a.ids), experiment=a.experiment) if a.experiment else fn(*parse_ids(a.ids))
    if a.json:
        print_json([job_json(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id} {j.state.value}" + (f" ({printable(j.reason)})" if j.reason else ""))
    return 0


def cmd_cancel(q: Client, a: argparse.Namespace) -> int:
    return _many(q, a, lambda *ids, **kw: q.cancel(*ids, reason=a.reason, **kw))


def cmd_wait(q: Client, a: argparse.Namespace) -> int:
    try:
        jobs = q.wait(*parse_ids(a.ids), timeout=a.timeout, experiment=a.experiment)
    except TimeoutError as e:
        print(f"labq: {printable(e)}", file=sys.stderr)
        return 124
    if a.json:
        print_json([job_json(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id} {j.state.value} exit={j.exit_code}")
    return 0 if all(j.state.value == "COMPLETED" for j in jobs) else 1


def cmd_priority(q: Client, a: argparse.Namespace) -> int:
    job = q.set_priority(parse_ids([a.id])[0], a.priority)
    if a.json:
        print_json(job_json(job))
    else:
        print(f"{job.id} priority {job.priority}")
    return 0


def cmd_update(q: Client, a: argparse.Namespace) -> int:
    """Slurm's `scontrol update` for what a user may change: a waiting job's time limit and
    priority, each only downwards unless the caller is an admin."""
    if a.time is None and a.priority is None:
        raise ValidationError("update: give --time, --priority or both", {"field": "update"})
    job_id = parse_ids([a.id])[0]
    if a.time is not None:
        job = q.set_time_limit(job_id, a.time)
    if a.priority is not None:
        job = q.set_priority(job_id, a.priority)
    if a.json:
        print_json(job_json(job))
    else:
        print(f"{job.id} priority {job.priority} time limit {format_duration(job.time_limit_s)}")
    return 0


def cmd_tui(a: argparse.Namespace) -> int:
    # the UI connects by itself and keeps retrying, so it starts even while labqd is down
    from labq.tui.app import run
    # typed int; mypy does not follow labq.tui from here
    status: int = run(socket=a.url or a.socket)
    return status


# -- parser --------------------------------------------------------------------------------
class _Unparsed:
    """Stands in for the parser of a command this run does not parse: it takes that command's
    options and keeps none, so a run builds the parser of its own command only."""

    def __getattr__(self, name: str) -> Callable[..., _Unparsed]:
        return lambda *args, **kwargs: self


class _Formatter(argparse.HelpFormatter):
    """argparse's, with the terminal's width found as shutil finds it but without importing
    shutil (and bz2 and lzma with it): argparse makes a formatter for every option added,
    and that import cost each command more than a millisecond."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _columns() - 2)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


GLOBAL_OPTIONS = ("--socket", "--url")  # options before the command, each with a value


def command_word(args: list[str]) -> str | None:
    """The command `args` name, past the global options; None where none is plain (`--help`,
    an abbreviated option), which then needs the parser of every command."""
    i = 0
    while i < len(args):
        if args[i] in GLOBAL_OPTIONS:
            i += 2
        elif args[i].startswith(tuple(o + "=" for o in GLOBAL_OPTIONS)):
            i += 1
        else:
            return None if args[i].startswith("-") else args[i]
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only`, of that command alone (and of every
    command again when `only` names none, for argparse's message listing them)."""
    ap = argparse.ArgumentParser(prog="labq", description="GPU job queue for research labs.",
                                 formatter_class=_Formatter)
    ap.add_argument("--socket", help="labqd's socket (default: $LABQ_SOCKET, else the user's "
                    "own daemon, else the system daemon)")
    ap.add_argument("--url", help="labqd over TCP: labq://HOST:PORT (default: $LABQ_URL, else "
                    "the last `labq login`)")
    ap.add_argument("--version", action="version", version=f"labq {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str, json_flag: bool = True,
            options: Callable[[argparse.ArgumentParser], None] | None = None,
            ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return cast(argparse.ArgumentParser, _Unparsed())
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        p.set_defaults(fn=fn)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        if options is not None:
            options(p)
        return p

    p = add("submit", cmd_submit, "queue a command: labq submit [options] -- CMD ARGS..., or "
            "a batch script with #SBATCH lines: labq submit [options] SCRIPT [ARGS...]")
    submit_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the job's spec as labqd "
                   "would get it (JSON) and submit nothing")
    cli_files.submit_options(p)
    batch_options(p)
    p = add("run", cmd_run, "run a command and follow it, as srun does: its output comes here, "
            "labq exits with its exit code, Ctrl-C cancels it", json_flag=False)
    submit_options(p)
    cli_files.submit_options(p)

    _add_job_commands(add)
    cli_admin.add_parsers(add)
    p = add("experiments", cli_batch.cmd_experiments, "experiments: their jobs by state")
    p.add_argument("--mine", "-m", action="store_true")
    p.add_argument("--user", "-u")
    cli_files.add_parsers(add)
    add("notify", clinotify.cmd_notify, "where your notifications go: show, set webhook|mail "
        "VALUE, unset webhook|mail", options=clinotify.add_parser)
    cli_remote.add_parsers(add)
    add("tui", cmd_tui, "the terminal UI", json_flag=False)
    add("completion", cmd_completion, "print the shell completion script",
        json_flag=False).add_argument("shell", choices=completion.SHELLS)
    if only is not None and only not in sub.choices:
        return build_parser()
    return ap


def _add_job_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that look at and change jobs once queued."""
    p = add("ls", cmd_ls, "list jobs (active ones; --all adds ended jobs)")
    p.add_argument("--all", "-a", action="store_true",
                   help="every job, ended ones too, streamed a page at a time")
    p.add_argument("--mine", "-m", action="store_true")
    p.add_argument("--user", "-u")
    p.add_argument("--state", "-s", help="comma-separated states, e.g. running,pending")
    p.add_argument("--limit", "-n", type=positive_int(1, 1 << 30),
                   help="show the first N jobs of the queue")
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
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only what the job wrote to stdout")
    which.add_argument("--stderr", action="store_true", help="only what the job wrote to stderr")
    p.add_argument("--part", type=positive_int(0, MAX_NODES - 1), default=0,
                   help="part K of a job on several nodes (0: rank 0's, the default)")
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
    p = add("priority", cmd_priority, "lower a pending job's priority (1-10)")
    p.add_argument("id")
    p.add_argument("priority", type=positive_int(1, 10))
    p = add("update", cmd_update, "lower a pending job's time limit or priority")
    p.add_argument("id")
    p.add_argument("--time", "-t", help="the new time limit: 30m, 2h, 1:30:00, 90 (minutes)")
    p.add_argument("--priority", "-p", type=positive_int(1, 10))


def cmd_completion(a: argparse.Namespace) -> int:
    print(completion.script(a.shell), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["__complete"]:  # what the completion scripts run; not a command of users
        return completion.run(build_parser(), args[1:])
    ap = build_parser(only=command_word(args))
    a = ap.parse_args(args)
    if a.cmd == "group" and a.action == "set" and not a.group:
        ap.error("group set needs a group name")
    if a.cmd in ("cancel", "hold", "release", "wait") and not a.ids and not a.experiment:
        ap.error(f"{a.cmd} needs job ids or --experiment NAME")
    if a.cmd == "tui":
        return cmd_tui(a)
    if a.cmd == "completion":
        return cmd_completion(a)
    if a.cmd == "login":
        return cli_remote.cmd_login(a)
    if a.cmd == "version" and not a.json:
        # the client's own line first: it is what to report when labqd does not answer
        from .protocol import PROTOCOL
        print(f"labq {__version__} (protocol {PROTOCOL})", flush=True)
    try:
        if getattr(a, "dry_run", False):
            from .cli_script import dry_run
            return dry_run(a, *_submit_args(a, "labq submit --dry-run [options] -- CMD ARGS..."))
        with connect(a.url or a.socket) as q:
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


def entry() -> NoReturn:
    """The `labq` command: main(), then out without Python's teardown of its modules, a sixth
    of a short command's time. Its output is flushed first; its files are closed by then."""
    try:
        rc: object = main()
    except SystemExit as e:
        rc = e.code
    if rc is not None and not isinstance(rc, int):
        print(rc, file=sys.stderr)
        rc = 1
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit((rc or 0) & 0xFF)


if __name__ == "__main__":
    entry()
