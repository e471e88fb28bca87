"""The submit request: what a client may send, checked field by field; and the checks every
request's arguments share (plain JSON values, ids, names, numbers) that labq.protocol's
request types are built from.

labqd runs `validate_submit` on every submit before its store is touched: a bad one changes
nothing. Clients may run it too, for early messages."""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import ValidationError
from .units import parse_duration_s, parse_size_mb

MAX_GPUS = 1024
MAX_NODES = 1024  # parts of one gang
MAX_CPUS = 65536
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB
MAX_GPU_MEMORY_MB = 16 * 1024 * 1024
MAX_TIME_S = 366 * 86400
MAX_ARGV = 4096
# the kernel refuses a single argument over 128 KiB (MAX_ARG_STRLEN), and a `bash -c` string
# is one argument, so a longer command could be queued but never started
MAX_COMMAND_BYTES = 128 * 1024
MAX_ENV_VARS = 4096
MAX_ENV_BYTES = 1024 * 1024
MAX_NAME = 256  # characters
MAX_CWD_BYTES = 4096  # PATH_MAX
MAX_DEPS = 100
MAX_IDENT = 64  # group, partition, user and GPU type names
MAX_REASON_BYTES = 1024
DEP_KINDS = ("afterok", "afterany", "afternotok")
# when a job's owner hears of it (Slurm's --mail-type): when it ends, only when it ends other
# than COMPLETED, or when it starts and when it ends
NOTIFY_WHEN = ("end", "fail", "all")
# what --signal may send: the signals jobs use to save their work
EARLY_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "CONT", "URG")

# Bounds of every request, whatever it asks for. SQLite stores signed 64-bit integers; beyond
# them a value fails deep inside the store instead of at the door.
MIN_INT, MAX_INT = -(1 << 63), (1 << 63) - 1
MAX_IDS = 10_000  # job ids in one cancel, hold, release or wait
MAX_REQUEST_CHARS = 4 << 20  # a request's JSON text
MAX_DEPTH = 16  # nesting of lists and mappings inside one argument
MAX_ITEMS = MAX_IDS  # entries of one list or mapping
MAX_VALUES = 100_000  # values in one request, all arguments together

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEP_ID = re.compile(r"[0-9]{1,19}")
# 'exp:NAME' or 'afterany:exp:NAME': every job of the submitter's experiment NAME
_DEP_EXP = re.compile(r"(?:(after[a-z]+):)?exp:([A-Za-z0-9_.-]{1,64})")
MAX_KEY_BYTES = 128

FIELDS = ("command", "name", "cwd", "env", "gpus", "gpu_type", "gpu_memory_mb", "cpus",
          "memory_mb", "time_limit_s", "priority", "dependencies", "group", "partition",
          "hold", "requeue", "notify", "experiment", "key", "stage", "results", "preemptible",
          "early_signal", "nodes", "gpus_per_node")


def _fail(field: str, message: str, value: Any = None) -> ValidationError:
    details = {"field": field}
    if value is not None:
        details["value"] = repr(value)[:200]
    return ValidationError(f"{field}: {message}", details)


def _shown(v: int) -> str:
    # a 4000-digit number helps no one in a message
    return str(v) if abs(v) < 10 ** 20 else "a larger number"


def utf8_len(field: str, v: str) -> int:
    """The length of `v` in UTF-8; JSON lets lone surrogates through, but neither SQLite nor
    exec() can take them."""
    try:
        return len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise _fail(field, "is not valid Unicode text (it holds a lone surrogate)") from None


class _Bad(Exception):
    """A bad value deep inside an argument; the path to it is gathered on the way out."""

    def __init__(self, message: str):
        self.message = message
        self.path: list[str] = []


def _walk(v: Any, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _Bad(f"the request holds more than {MAX_VALUES} values")
    t = type(v)
    if t is str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad("is not valid Unicode text (it holds a lone surrogate)") from None
    elif t is int:
        if not MIN_INT <= v <= MAX_INT:
            raise _Bad("is out of range (integers must fit in 64 bits)")
    elif t is float:
        if not math.isfinite(v):
            raise _Bad("must be a finite number")
    elif t is list or t is tuple or t is dict:
        if depth >= MAX_DEPTH:
            raise _Bad(f"is nested more than {MAX_DEPTH} levels deep")
        if len(v) > MAX_ITEMS:
            raise _Bad(f"has more than {MAX_ITEMS} entries")
        if t is dict:
            for k, x in v.items():
                try:
                    k.encode("utf-8")
                    _walk(x, depth + 1, budget)
                except UnicodeEncodeError:
                    raise _Bad("holds a key that is not valid Unicode text") from None
                except _Bad as e:
                    # the path is printed: no escape sequences of the caller's in it
                    e.path.append("." + CONTROL_CHARS.sub("?", k[:64]))
                    raise
        else:
            for i, x in enumerate(v):
                try:
                    _walk(x, depth + 1, budget)
                except _Bad as e:
                    e.path.append(f"[{i}]")
                    raise
    elif v is not None and t is not bool:
        raise _Bad(f"cannot take a {t.__name__}")


def check_plain(v: Any, field: str, budget: list[int] | None = None) -> None:
    """Check a decoded JSON value before anything looks inside it: valid text, integers that
    fit 64 bits, finite numbers, bounded nesting and size. The error names `field` (the
    argument) and, when the bad value is deeper, the path to it. `budget` is shared by the
    arguments of one request."""
    try:
        _walk(v, 0, budget if budget is not None else [MAX_VALUES])
    except _Bad as e:
        where = (field + "".join(reversed(e.path)))[:200]
        details = {"field": field}
        if e.path:
            details["path"] = where
        raise ValidationError(f"{where}: {e.message}", details) from None


def _int(data: dict[str, Any], field: str, lo: int, hi: int, default: int | None) -> int | None:
    v = data.get(field, default)
    if v is None:
        return None
    if type(v) is not int:  # bool is an int to Python, never to a request
        raise _fail(field, f"must be an integer, got {type(v).__name__}", v)
    if not lo <= v <= hi:
        raise _fail(field, f"must be between {lo} and {hi}, got {_shown(v)}")
    return v


def _text(field: str, v: Any, limit: int) -> str:
    if not isinstance(v, str):
        raise _fail(field, f"must be a string, got {type(v).__name__}", v)
    if "\x00" in v:
        raise _fail(field, "must not contain NUL bytes (a program cannot receive them)")
    if utf8_len(field, v) > limit:
        raise _fail(field, f"is longer than {limit} bytes")
    return v


def _command(v: Any) -> list[str] | str:
    if isinstance(v, str):
        if not v.strip():
            raise _fail("command", "is empty")
        return _text("command", v, MAX_COMMAND_BYTES)
    if not isinstance(v, (list, tuple)) or not v:
        raise _fail("command", "must be a non-empty list of arguments or a shell string", v)
    if len(v) > MAX_ARGV:
        raise _fail("command", f"has more than {MAX_ARGV} arguments")
    argv = [_text("command", a, MAX_COMMAND_BYTES) for a in v]
    if not argv[0]:
        raise _fail("command", "the program name is empty")
    # each argument reaches exec() with its terminating NUL
    if sum(utf8_len("command", a) + 1 for a in argv) > MAX_COMMAND_BYTES:
        raise _fail("command", f"is longer than {MAX_COMMAND_BYTES} bytes")
    return argv


# environments found valid, by their variables: a script's submits send the same one each
# time, and checking it is most of checking a submit. Kept small, and only for small ones
_GOOD_ENVS: dict[tuple[tuple[Any, Any], ...], None] = {}
_GOOD_ENVS_MAX, _GOOD_ENV_BYTES = 64, 64 * 1024


def _known_env(v: Any) -> bool:
    """`v` is an environment found valid before."""
    if type(v) is not dict or not v:
        return False
    try:
        return tuple(v.items()) in _GOOD_ENVS
    except TypeError:  # an unhashable value: never a valid one
        return False


def _env(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail("env", "must be a mapping of names to strings", v)
    if len(v) > MAX_ENV_VARS:
        raise _fail("env", f"has more than {MAX_ENV_VARS} variables")
    total = 0
    out = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise _fail("env", f"{repr(k)[:80]} is not a valid variable name")
        out[k] = _text(f"env.{k}", val, MAX_ENV_BYTES)
        total += len(k) + utf8_len(f"env.{k}", val) + 2  # NAME=value and its NUL
    if total > MAX_ENV_BYTES:
        raise _fail("env", f"is larger than {MAX_ENV_BYTES} bytes")
    if out and total <= _GOOD_ENV_BYTES:
        if len(_GOOD_ENVS) >= _GOOD_ENVS_MAX:
            _GOOD_ENVS.clear()
        _GOOD_ENVS[tuple(out.items())] = None
    return out


def parse_dependency(v: Any) -> tuple[str, int]:
    """'afterok:12', '12' (afterok), or ('afterany', 12)."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        kind, job = v
    elif type(v) is int:
        kind, job = "afterok", v
    elif isinstance(v, str) and len(v) <= 64:
        kind, _, job = v.rpartition(":")
        kind = kind or "afterok"
        # only ASCII digits: int() would also take '1_0', ' 12 ' and other scripts' digits
        if not _DEP_ID.fullmatch(job):
            raise _fail("dependencies", f"{v!r} is not KIND:ID (e.g. afterok:12)", v)
        job = int(job)
    else:
        raise _fail("dependencies", f"{repr(v)[:80]} is not KIND:ID (e.g. afterok:12)", v)
    if type(kind) is not str or kind not in DEP_KINDS:
        raise _fail("dependencies", f"unknown kind {repr(kind)[:80]}; use one of "
                    f"{', '.join(DEP_KINDS)}", v)
    if type(job) is not int or not 1 <= job <= MAX_INT:
        raise _fail("dependencies", f"{repr(job)[:80]} is not a job id", v)
    return kind, job


def experiment_dependency(v: Any) -> tuple[str, str] | None:
    """(kind, experiment name) for 'exp:NAME' or 'KIND:exp:NAME', else None."""
    m = _DEP_EXP.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        return None
    kind = m.group(1) or "afterok"
    if kind not in DEP_KINDS:
        raise _fail("dependencies", f"unknown kind {kind!r}; use one of {', '.join(DEP_KINDS)}")
    return kind, m.group(2)


def _dependencies(deps: Any) -> list[str]:
    deps = [] if deps is None else deps
    if not isinstance(deps, (list, tuple)):
        raise _fail("dependencies", "must be a list such as ['afterok:12']", deps)
    if len(deps) > MAX_DEPS:
        raise _fail("dependencies", f"more than {MAX_DEPS}")
    out = set()
    for d in deps:
        exp = experiment_dependency(d)
        kind, target = exp if exp else parse_dependency(d)
        out.add(f"{kind}:exp:{target}" if exp else f"{kind}:{target}")
    return sorted(out)


def _workflow_fields(data: dict[str, Any], out: dict[str, Any]) -> None:
    """The experiment a job belongs to and the submitter's idempotency key."""
    exp = data.get("experiment")
    if exp is not None and (not isinstance(exp, str) or not _IDENT.fullmatch(exp)):
        raise _fail("experiment", "must be 1-64 letters, digits, '.', '_' or '-'", exp)
    out["experiment"] = exp
    key = data.get("key")
    if key is not None:
        key = _text("key", key, MAX_KEY_BYTES)
        if not key or CONTROL_CHARS.search(key):
            raise _fail("key", f"must be 1-{MAX_KEY_BYTES} bytes without control characters")
    out["key"] = key


def _name(name: Any, command: list[str] | str) -> str:
    """The job's name, by default its program's."""
    if name is None:
        name = (command[0] if isinstance(command, list) else command.split()[0])
        name = CONTROL_CHARS.sub("?", name.rsplit("/", 1)[-1])[:MAX_NAME]
    checked: str = _text("name", name, 4 * MAX_NAME)
    if len(checked) > MAX_NAME:
        raise _fail("name", f"is longer than {MAX_NAME} characters")
    if CONTROL_CHARS.search(checked):
        raise _fail("name", "must not contain control characters", checked)
    return checked


def _plain_fields(data: Any) -> bool:
    """Refuse a spec that is not a mapping of known fields of plain values; True when its
    environment is one already accepted (it was not walked again)."""
    if not isinstance(data, dict):
        raise ValidationError("the request must be a mapping of fields", {"field": "spec"})
    unknown = sorted(str(k)[:64] for k in set(data) - set(FIELDS))
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(map(repr, unknown[:5]))}"
                              + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                              {"field": unknown[0], "unknown": unknown[:20]})
    budget = [MAX_VALUES]
    env: Any = data.get("env")
    env_known = _known_env(env)
    for key in FIELDS:
        if key in data:
            if key == "env" and env_known and budget[0] > len(env):
                budget[0] -= len(env) + 1  # what walking it would have counted
                continue
            check_plain(data[key], key, budget)
    return env_known


def validate_submit(data: Any) -> dict[str, Any]:
    """Return the normalised request or raise ValidationError naming the first bad field."""
    env_known = _plain_fields(data)
    env: Any = data.get("env")
    if "command" not in data:
        raise _fail("command", "is required")
    out: dict[str, Any] = {"command": _command(data["command"])}
    out["name"] = _name(data.get("name"), out["command"])
    cwd = data.get("cwd")
    cwd = _text("cwd", "/" if cwd is None or cwd == "" else cwd, MAX_CWD_BYTES)
    if not cwd.startswith("/"):
        raise _fail("cwd", "must be an absolute path", cwd)
    out["cwd"] = cwd
    out["env"] = dict(env) if env_known else _env(env)
    out["gpus"] = _int(data, "gpus", 0, MAX_GPUS, 0)
    gpu_type = data.get("gpu_type")
    if gpu_type is not None:
        gpu_type = _text("gpu_type", gpu_type, 64).strip()
        if not _IDENT.fullmatch(gpu_type.replace(" ", "_")):
            raise _fail("gpu_type", "must be letters, digits, '.', '_' or '-'", gpu_type)
    out["gpu_type"] = gpu_type or None
    out["gpu_memory_mb"] = _int(data, "gpu_memory_mb", 1, MAX_GPU_MEMORY_MB, None)
    out["cpus"] = _int(data, "cpus", 1, MAX_CPUS, 1)
    out["memory_mb"] = _int(data, "memory_mb", 0, MAX_MEMORY_MB, None)
    out["time_limit_s"] = _int(data, "time_limit_s", 1, MAX_TIME_S, None)
    out["priority"] = _int(data, "priority", 1, 10, 5)
    out["dependencies"] = _dependencies(data.get("dependencies"))
    _workflow_fields(data, out)
    for key in ("group", "partition"):
        v = data.get(key)
        if v is not None and (not isinstance(v, str) or not _IDENT.fullmatch(v)):
            raise _fail(key, "must be 1-64 letters, digits, '.', '_' or '-'", v)
        out[key] = v
    out["partition"] = out["partition"] or "default"
    for key, default in (("hold", False), ("requeue", True), ("preemptible", False)):
        v = data.get(key, default)
        if not isinstance(v, bool):
            raise _fail(key, "must be true or false", v)
        out[key] = v
    out["early_signal"] = _early_signal(data.get("early_signal"))
    notify = data.get("notify")
    if notify is not None and (type(notify) is not str or notify not in NOTIFY_WHEN):
        raise _fail("notify", f"must be one of {', '.join(NOTIFY_WHEN)}", notify)
    out["notify"] = notify
    from .stagefiles import files_fields  # it builds on this module's checks
    files_fields(data, out)
    _gang(data, out)
    return out


def _gang(data: dict[str, Any], out: dict[str, Any]) -> None:
    """`nodes` and `gpus` (the job's total, as Slurm's --gpus, split evenly over its nodes)
    from nodes, gpus_per_node and gpus, which must agree. `nodes` stays None when none was
    asked for: labqd then splits GPUs no node has into whole nodes where it can."""
    nodes = _int(data, "nodes", 1, MAX_NODES, None)
    per = _int(data, "gpus_per_node", 0, MAX_GPUS, None)
    total = out["gpus"] if data.get("gpus") is not None else None
    if per is not None:
        if nodes is None and total is not None and per and total % per == 0 and total >= per:
            nodes = total // per
        elif total is not None and total != (nodes or 1) * per:
            raise _fail("gpus", f"{total} GPUs in all are not {nodes or 1} node(s) times "
                        f"{per} GPUs per node", total)
        nodes = nodes or 1
        total = nodes * per
        if total > MAX_GPUS:
            raise _fail("gpus_per_node", f"{nodes} nodes of {per} GPUs are more than "
                        f"{MAX_GPUS} GPUs", per)
    elif nodes is not None and total and total % nodes:
        raise _fail("gpus", f"{total} GPUs do not split evenly over {nodes} nodes; give "
                    "--gpus-per-node", total)
    out["nodes"], out["gpus"] = nodes, total or 0
    if (nodes or 1) > 1:
        _gang_options(out)


def _gang_options(out: dict[str, Any]) -> None:
    """What a gang (a job on several nodes) cannot have."""
    for key in ("stage", "results"):
        if out.get(key):
            raise _fail(key, "staged files and results are for jobs on one node, not a job "
                        "on several (--nodes)")


def _early_signal(v: Any) -> str | None:
    """--signal SIG@SECS (Slurm's form): SIG, one of EARLY_SIGNALS, SECS before the limit."""
    if v is None:
        return None
    m = re.fullmatch(r"(?:SIG)?([A-Z0-9]{2,6})@([0-9]{1,9})", v) if type(v) is str else None
    if m is None or m.group(1) not in EARLY_SIGNALS or not 1 <= int(m.group(2)) <= MAX_TIME_S:
        raise _fail("early_signal", "must be SIG@SECONDS, SIG one of "
                    f"{', '.join(EARLY_SIGNALS)} and 1 <= SECONDS <= {MAX_TIME_S}", v)
    return f"{m.group(1)}@{int(m.group(2))}"


def submit_request(command: list[str] | tuple[str, ...] | str, *, gpus: int = 0,
                   gpu_type: str | None = None, gpu_memory_mb: int | str | None = None,
                   cpus: int = 1, memory: int | str | None = None,
                   time_limit: int | str | None = None, name: str | None = None,
                   priority: int = 5, after: list[int | str] | tuple[int | str, ...] = (),
                   cwd: str | None = None, env: dict[str, str] | None = None,
                   group: str | None = None, partition: str | None = None,
                   hold: bool = False, requeue: bool = True,
                   notify: str | None = None, experiment: str | None = None,
                   key: str | None = None, stage: str | None = None,
                   results: list[str] | None = None, preemptible: bool = False,
                   early_signal: str | None = None, nodes: int | None = None,
                   gpus_per_node: int | None = None) -> dict[str, Any]:
    """Build a request from friendly arguments ('16G', '2h', [12, 'afterany:13'])."""
    req: dict[str, Any] = {"command": list(command) if isinstance(command, tuple) else command,
                           "gpus": gpus, "cpus": cpus, "priority": priority, "hold": hold,
                           "requeue": requeue}
    if preemptible:
        req["preemptible"] = True
    if nodes is not None:
        req["nodes"] = nodes
    if gpus_per_node is not None:
        req["gpus_per_node"] = gpus_per_node
        if not gpus:
            del req["gpus"]  # the total follows from the nodes
    if early_signal is not None:
        req["early_signal"] = early_signal
    if gpu_type is not None:
        req["gpu_type"] = gpu_type
    if gpu_memory_mb is not None:
        req["gpu_memory_mb"] = parse_size_mb(gpu_memory_mb, "gpu_memory_mb")
    if memory is not None:
        req["memory_mb"] = parse_size_mb(memory, "memory_mb")
    if time_limit is not None:
        req["time_limit_s"] = parse_duration_s(time_limit, "time_limit_s")
    if name is not None:
        req["name"] = name
    if after:
        req["dependencies"] = [a if isinstance(a, str) else f"afterok:{a}" for a in after]
    for field, val in (("cwd", cwd), ("env", env), ("group", group), ("partition", partition),
                       ("notify", notify), ("experiment", experiment), ("key", key),
                       ("stage", stage), ("results", results)):
        if val is not None:
            req[field] = val
    return req
