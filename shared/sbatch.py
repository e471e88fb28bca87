"""Batch scripts as sbatch reads them: the `#SBATCH` lines at the top of a script become the
job's options, and the script's text travels with the job, so that it runs on a node that
does not share the submitter's files.

`parse_script` is pure: text in, a BatchScript (options, warnings) out, or a ValidationError
that names the script's line. A directive labq cannot honour exactly is refused when
ignoring it would run the job wrongly (`-N 2-4`, `--dependency=after:12`) and is a warning when
the job runs as meant without it (`--qos`, `-o FILE`).
"""
from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ValidationError
from .spec import MAX_COMMAND_BYTES
from .units import parse_duration_s, parse_size_mb

if TYPE_CHECKING:
    from .client import Client
    from .models import Job

# The job's environment carries the script; the launcher takes it out before the script runs.
SCRIPT_VAR = "LABQ_SCRIPT"
MAX_SCRIPT_BYTES = MAX_COMMAND_BYTES - len(SCRIPT_VAR) - 2  # one environment string: NAME=text
# /bin/sh hands the text to the script's interpreter on descriptor 3 (a here-document: a pipe
# or a deleted file), so nothing is left behind on the node when the job is killed.
_LAUNCHER = ('s=$' + SCRIPT_VAR + '; unset ' + SCRIPT_VAR + '; exec {interpreter} /dev/fd/3 "$@"'
             ' 3<<LABQ_SCRIPT_END\n$s\nLABQ_SCRIPT_END')

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOB_ID = re.compile(r"[0-9]{1,19}")
_COUNT = re.compile(r"[0-9]{1,9}")
_DEP_KINDS = ("afterok", "afterany", "afternotok")
_MAIL = {"NONE": "none", "END": "end", "FAIL": "fail", "ALL": "all", "BEGIN": "all"}

# sbatch's option -> what labq does with it
_LONG = {"gres": "gres", "gpus": "gpus", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus",
         "mem": "mem", "mem-per-cpu": "mem_per_cpu", "mem-per-gpu": "mem_per_gpu", "time": "time",
         "job-name": "name", "chdir": "chdir", "array": "array", "dependency": "dependency",
         "partition": "partition", "export": "export", "output": "output", "error": "output",
         "input": "output", "account": "account", "mail-type": "mail_type", "nodes": "nodes",
         "ntasks": "ntasks", "ntasks-per-node": "ntasks", "signal": "signal"}
_SHORT = {"G": "gpus", "c": "cpus", "t": "time", "J": "name", "D": "chdir", "a": "array",
          "d": "dependency", "p": "partition", "o": "output", "e": "output", "i": "output",
          "A": "account", "N": "nodes", "n": "ntasks"}
_FLAGS = {"hold": ("hold", True), "H": ("hold", True), "requeue": ("requeue", True),
          "no-requeue": ("requeue", False)}


@dataclass(frozen=True)
class BatchScript:
    """A script and what its `#SBATCH` lines ask for. `options` are Client.submit's keyword
    arguments; `array` is Slurm's array spec, or None."""
    name: str
    text: str
    interpreter: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    array: str | None = None
    warnings: tuple[str, ...] = ()

    def command(self, args: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The job's argv: /bin/sh runs the interpreter on the script's text, with `args`
        as the script's arguments ($1, $2, ...) and the script's name as $0 of the shell."""
        launcher = _LAUNCHER.format(interpreter=" ".join(map(shlex.quote, self.interpreter)))
        return ["/bin/sh", "-c", launcher, self.name, *args]

    def submit_args(self, args: list[str] | tuple[str, ...] = (),
                    overrides: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
        """The command and Client.submit's options: the directives' with `overrides` on top
        (a None override leaves the directive's value; `env` entries are merged)."""
        options = dict(self.options)
        env = dict(options.pop("env", {}))
        for key, value in (overrides or {}).items():
            if key == "env":
                env.update(value or {})
            elif value is not None:
                options[key] = value
        env[SCRIPT_VAR] = self.text
        options["env"] = env
        return self.command(args), options


def _fail(where: str, message: str, line: int = 0, directive: str = "") -> ValidationError:
    details: dict[str, Any] = {"field": "script", "line": line}
    if directive:
        details["directive"] = directive
    return ValidationError(f"{where}: {message}", details)


def is_batch_script(path: str) -> bool:
    """Whether `path` is a file that starts with `#!` and has `#SBATCH` lines in its header:
    `labq submit FILE` then submits it as sbatch would."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    if not head.startswith(b"#!"):
        return False
    return bool(_directive_lines(head.decode("utf-8", "replace")))


def read_script(path: str) -> str:
    """The text of a batch script, or a ValidationError saying why it cannot be one."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as e:
        raise _fail(path, f"cannot read the script: {e.strerror or e}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise _fail(path, f"the script is larger than {MAX_SCRIPT_BYTES} bytes, which a job "
                    "cannot carry; make it a file on the nodes' shared filesystem and submit "
                    "`-- bash FILE` instead")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"the script is not UTF-8 text (byte {e.start})") from None


def _directive_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text after `#SBATCH`) for each directive, read as sbatch reads them:
    up to the first line that is neither blank nor a comment."""
    out = []
    for n, line in enumerate(text.splitlines()[1:], start=2):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if line.startswith("#SBATCH") and line[7:8] in (" ", "\t"):
            out.append((n, line[8:]))
    return out


def interpreter(text: str, where: str = "script") -> tuple[str, ...]:
    """The `#!` line as the kernel reads it: the interpreter and at most one argument, which
    is everything after the interpreter's path."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.startswith("#!"):
        raise _fail(where, "a batch script starts with #! and its interpreter, e.g. "
                    "#!/bin/bash", 1)
    program, _, arg = first[2:].strip().partition(" ")
    if not program:
        raise _fail(where, "the #! line names no interpreter", 1)
    arg = arg.strip()
    return (program, arg) if arg else (program,)


def parse_script(text: str, name: str = "script", *, cwd: str | None = None,
                 environ: Mapping[str, str] | None = None) -> BatchScript:
    """Read a script's `#SBATCH` lines into a BatchScript. `cwd` is where a relative
    `--chdir` starts (the caller's directory), `environ` where `--export=NAME` reads NAME."""
    if "\x00" in text:
        raise _fail(name, "the script holds a NUL byte")
    if "\r\n" in text:  # as sbatch: its interpreter would read each line with a \r
        raise _fail(name, "the script has DOS line breaks (\\r\\n); convert it with dos2unix")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
        raise _fail(name, f"the script is larger than {MAX_SCRIPT_BYTES} bytes")
    shebang = interpreter(text, name)
    reader = _Reader(os.path.basename(name) or "script", cwd or os.getcwd(),
                     os.environ if environ is None else environ)
    for line, rest in _directive_lines(text):
        reader.line(line, rest)
    options, array = reader.finish()
    options.setdefault("name", reader.name)
    return BatchScript(name=reader.name, text=text, interpreter=shebang,
                       options=options, array=array, warnings=tuple(reader.warnings))


class _Reader:
    """The options of one script, directive by directive."""

    def __init__(self, name: str, cwd: str, environ: Mapping[str, str]) -> None:
        self.name, self.cwd, self.environ = name, cwd, environ
        self.options: dict[str, Any] = {}
        self.array: str | None = None
        self.warnings: list[str] = []
        self.at = (0, "")  # the line and the option being read, for messages
        self.mem_per: tuple[str, int] | None = None
        self.per_node = False  # the GPU count is each node's (--gres, --gpus-per-node)
        self.handlers: dict[str, Callable[[str], None]] = {
            "gres": self._gres, "gpus": self._gpus, "cpus": self._cpus, "mem": self._mem,
            "gpus_per_node": self._gpus_per_node,
            "mem_per_cpu": lambda v: self._mem_per("cpu", v),
            "mem_per_gpu": lambda v: self._mem_per("gpu", v), "time": self._time,
            "name": self._name,
            "chdir": self._chdir, "array": self._array, "dependency": self._dependency,
            "partition": self._partition, "export": self._export, "output": self._output,
            "account": self._account, "mail_type": self._mail_type, "nodes": self._nodes,
            "ntasks": self._ntasks, "signal": self._signal}

    def error(self, message: str) -> ValidationError:
        line, opt = self.at
        return _fail(f"{self.name}:{line}: #SBATCH {opt}", message, line, opt)

    def warn(self, message: str) -> None:
        line, opt = self.at
        self.warnings.append(f"{self.name}:{line}: #SBATCH {opt}: {message}")

    def line(self, n: int, rest: str) -> None:
        try:
            tokens = shlex.split(rest, comments=True)
        except ValueError as e:
            self.at = (n, rest.strip())
            raise self.error(f"cannot read the line: {e}") from None
        i = 0
        while i < len(tokens):
            i = self.option(n, tokens, i)

    def option(self, n: int, tokens: list[str], i: int) -> int:
        """Read the option at tokens[i] (and its value); the index of the next one."""
        tok = tokens[i]
        self.at = (n, tok)
        if tok.startswith("--"):
            opt, eq, value = tok[2:].partition("=")
            kind, inline = _LONG.get(opt), value if eq else None
        elif tok.startswith("-") and len(tok) > 1:
            opt, value = tok[1], tok[2:].removeprefix("=")
            kind, inline = _SHORT.get(opt), value or None
        else:
            self.warn("labq does not know this word; ignored")
            return i + 1
        if opt in _FLAGS and inline is None:
            key, flag = _FLAGS[opt]
            self.options[key] = flag
            return i + 1
        if kind is None:
            shown = tok
            if inline is None and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                i += 1  # most likely its value: shown with it, not read as an option
                shown = f"{tok} {tokens[i]}"
            self.at = (n, shown)
            self.warn("labq does not know this directive; ignored")
            return i + 1
        if inline is None:
            if i + 1 >= len(tokens):
                raise self.error("needs a value")
            i += 1
            inline = tokens[i]
            self.at = (n, f"{tok} {inline}")
        self.handlers[kind](inline)
        return i + 1

    def finish(self) -> tuple[dict[str, Any], str | None]:
        if self.mem_per is not None:
            per, mb = self.mem_per
            if "memory" in self.options:
                self.at = (self.at[0], f"--mem-per-{per}")
                raise self.error("--mem and --mem-per-cpu/--mem-per-gpu exclude each other")
            count = self.options.get("gpus" if per == "gpu" else "cpus", 1)
            self.options["memory"] = mb * max(1, count)
        nodes = self.options.get("nodes", 1)
        if nodes > 1 and self.per_node and "gpus" in self.options:
            self.options["gpus"] *= nodes  # labq's --gpus is the job's total, as Slurm's
        return self.options, self.array

    # -- one handler per kind of directive ----------------------------------------------------
    def _count(self, text: str, what: str, lo: int = 0) -> int:
        if not _COUNT.fullmatch(text) or int(text) < lo:
            raise self.error(f"{text!r} is not a number of {what}")
        return int(text)

    def _gres(self, value: str) -> None:
        for item in value.split(","):
            name, *rest = item.split(":")
            if name != "gpu":
                self.warn(f"labq schedules GPUs only; {item!r} ignored")
                continue
            if len(rest) > 2 or "" in rest:
                raise self.error(f"{item!r} is not gpu[:TYPE][:COUNT]")
            kind: str | None = rest[0] if rest else None
            count = rest[-1] if len(rest) == 2 else "1"
            if len(rest) == 1 and _COUNT.fullmatch(rest[0]):  # gpu:2, not gpu:a100
                kind, count = None, rest[0]
            self._set_gpus(self._count(count, "GPUs"), kind, per_node=True)

    def _gpus(self, value: str, per_node: bool = False) -> None:
        kind, _, count = value.rpartition(":")
        if kind and ":" in kind:
            raise self.error(f"{value!r} is not [TYPE:]COUNT")
        self._set_gpus(self._count(count, "GPUs"), kind or None, per_node)

    def _gpus_per_node(self, value: str) -> None:
        self._gpus(value, per_node=True)

    def _set_gpus(self, count: int, kind: str | None, per_node: bool = False) -> None:
        self.options["gpus"] = count
        self.per_node = per_node
        if kind:
            self.options["gpu_type"] = kind

    def _cpus(self, value: str) -> None:
        self.options["cpus"] = self._count(value, "CPUs", 1)

    def _size(self, value: str) -> int:
        try:
            return parse_size_mb(value)  # a bare number is MiB, as in Slurm
        except ValidationError:
            raise self.error(f"{value!r} is not a size (e.g. 16000, 16G)") from None

    def _mem(self, value: str) -> None:
        mb = self._size(value)
        if mb == 0:
            self.warn("0 (all of a node's memory) has no equal in labq; the job asks for none")
            self.options.pop("memory", None)
            return
        self.options["memory"] = mb

    def _mem_per(self, per: str, value: str) -> None:
        self.mem_per = (per, self._size(value))

    def _time(self, value: str) -> None:
        if value.upper() in ("UNLIMITED", "INFINITE", "0"):  # 0 is no limit to Slurm too
            self.options.pop("time_limit", None)
            return
        try:
            self.options["time_limit"] = parse_duration_s(value)
        except ValidationError:
            raise self.error(f"{value!r} is not a time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
                             "or D-HH:MM:SS)") from None

    def _name(self, value: str) -> None:
        if not value:
            raise self.error("the job name is empty")
        self.options["name"] = value

    def _chdir(self, value: str) -> None:
        if not value:
            raise self.error("the directory is empty")
        self.options["cwd"] = os.path.normpath(os.path.join(self.cwd, os.path.expanduser(value)))

    def _array(self, value: str) -> None:
        from .sweep import parse_array
        try:
            parse_array(value)
        except ValidationError as e:
            raise self.error(e.message.removeprefix("array: ")) from None
        self.array = value

    def _dependency(self, value: str) -> None:
        if "?" in value:
            raise self.error("labq waits for all dependencies (','), not for any one ('?')")
        after: list[str] = []
        for item in value.split(","):
            kind, _, ids = item.partition(":")
            if kind == "singleton" or kind not in _DEP_KINDS:
                raise self.error(f"{kind!r}: labq knows {', '.join(_DEP_KINDS)}; a job "
                                 "started on any other condition could start too early")
            for job in ids.split(":"):
                if not _JOB_ID.fullmatch(job):
                    raise self.error(f"{job!r} is not a job id (array tasks and +TIME delays "
                                     "are not supported)")
                after.append(f"{kind}:{job}")
        self.options["after"] = after

    def _partition(self, value: str) -> None:
        if "," in value:
            raise self.error("labq takes one partition")
        self.options["partition"] = value

    def _export(self, value: str) -> None:
        items = [x for x in value.split(",") if x]
        export_all = bool(items) and items[0].upper() == "ALL"
        env: dict[str, str] = {}
        for item in items:
            if item.upper() in ("ALL", "NONE"):
                continue
            key, eq, val = item.partition("=")
            if not _NAME.fullmatch(key):
                raise self.error(f"{key!r} is not a variable name")
            if eq:
                env[key] = val
            elif key in self.environ:
                env[key] = self.environ[key]
            else:
                self.warn(f"{key} is not set here; not exported")
        self.options["export_env"] = export_all
        self.options["env"] = env

    def _output(self, value: str) -> None:
        self.warn("labq keeps the job's output in its own log (`labq logs ID`); ignored")

    def _account(self, value: str) -> None:
        self.options["group"] = value  # the fair-share group labq charges, as Slurm's account

    def _mail_type(self, value: str) -> None:
        kinds = {k.strip().upper() for k in value.split(",")}
        known = {_MAIL[k] for k in kinds if k in _MAIL}
        for k in sorted(kinds - set(_MAIL)):
            self.warn(f"{k} has no equal in labq's notifications (end, fail, all); ignored")
        if "BEGIN" in kinds and "ALL" not in kinds:
            self.warn("labq tells of a start only with every end too (ALL)")
        if known:
            order = ("none", "fail", "end", "all")
            self.options["notify"] = max(known, key=order.index)

    def _nodes(self, value: str) -> None:
        low, _, high = value.partition("-")
        n = self._count(low, "nodes", 1)
        if high and self._count(high, "nodes", 1) != n:
            raise self.error(f"labq runs a job on a set number of nodes; give -N {n}")
        if n > 1:
            self.options["nodes"] = n  # a gang: a part on each node
        else:
            self.options.pop("nodes", None)

    def _ntasks(self, value: str) -> None:
        if self._count(value, "tasks", 1) > 1:
            self.warn("labq starts the script once, with --cpus-per-task CPUs; it starts no "
                      "tasks of its own")

    def _signal(self, value: str) -> None:
        sig, _, secs = value.split(":", 1)[-1].partition("@")
        self.options["early_signal"] = f"{sig.upper().removeprefix('SIG')}@{secs or 60}"


class DirectiveWarning(UserWarning):
    """An `#SBATCH` line labq ignores, in part or whole; the job runs as meant without it."""


def load_script(script: str | os.PathLike[str], *, cwd: str | None = None) -> BatchScript:
    """A BatchScript from a path, or from the text itself when it starts with `#!`."""
    if isinstance(script, str) and script.startswith("#!"):
        return parse_script(script, cwd=cwd)
    path = os.fspath(script)
    return parse_script(read_script(path), path, cwd=cwd)


def submit_script(q: Client, script: str | os.PathLike[str], args: tuple[str, ...],
                  overrides: dict[str, Any]) -> list[Job]:
    """Client.submit_script: the script's directives under `overrides`."""
    import warnings
    batch = load_script(script)
    for text in batch.warnings:
        warnings.warn(text, DirectiveWarning, stacklevel=3)
    array = overrides.pop("array", None) or batch.array
    max_running = overrides.pop("max_running", None)
    command, options = batch.submit_args(args, overrides)
    if array:
        return q.submit_array(command, array=array, max_running=max_running, **options)
    return [q.submit(command, **options)]
