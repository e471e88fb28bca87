"""The submit request: what a client may send, checked field by field.

The daemon runs `validate_submit` on every request before touching its store, so a bad request
changes nothing; clients may run it too for early messages.
"""
from __future__ import annotations

import re
from typing import Any

from .errors import ValidationError
from .units import parse_duration_s, parse_size_mb

MAX_GPUS = 1024
MAX_CPUS = 65536
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB
MAX_GPU_MEMORY_MB = 16 * 1024 * 1024
MAX_TIME_S = 366 * 86400
MAX_ARGV = 4096
MAX_COMMAND_BYTES = 256 * 1024
MAX_ENV_BYTES = 1024 * 1024
MAX_NAME = 128
MAX_DEPS = 256
DEP_KINDS = ("afterok", "afterany", "afternotok")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]*$")
_IDENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

FIELDS = ("command", "name", "cwd", "env", "gpus", "gpu_type", "gpu_memory_mb", "cpus",
          "memory_mb", "time_limit_s", "priority", "dependencies", "group", "partition",
          "hold", "requeue")


def _fail(field: str, message: str, value: Any = None) -> ValidationError:
    details = {"field": field}
    if value is not None:
        details["value"] = repr(value)[:200]
    return ValidationError(f"{field}: {message}", details)


def _int(data: dict, field: str, lo: int, hi: int, default: int | None) -> int | None:
    v = data.get(field, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(field, f"must be an integer, got {type(v).__name__}", v)
    if not lo <= v <= hi:
        raise _fail(field, f"must be between {lo} and {hi}, got {v}", v)
    return v


def _text(field: str, v: Any, limit: int) -> str:
    if not isinstance(v, str):
        raise _fail(field, f"must be a string, got {type(v).__name__}", v)
    if "\x00" in v:
        raise _fail(field, "must not contain NUL bytes")
    if len(v.encode("utf-8", "surrogateescape")) > limit:
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
    if sum(len(a) for a in argv) > MAX_COMMAND_BYTES:
        raise _fail("command", f"is longer than {MAX_COMMAND_BYTES} bytes")
    return argv


def _env(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail("env", "must be a mapping of names to strings", v)
    total = 0
    out = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise _fail("env", f"{k!r} is not a valid variable name", k)
        out[k] = _text(f"env.{k}", val, MAX_ENV_BYTES)
        total += len(k) + len(val)
    if total > MAX_ENV_BYTES:
        raise _fail("env", f"is larger than {MAX_ENV_BYTES} bytes")
    return out


def parse_dependency(v: Any) -> tuple[str, int]:
    """'afterok:12', '12' (afterok), or ('afterany', 12)."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        kind, job = v
    elif isinstance(v, int) and not isinstance(v, bool):
        kind, job = "afterok", v
    elif isinstance(v, str):
        kind, _, job = v.rpartition(":")
        kind = kind or "afterok"
        try:
            job = int(job)
        except ValueError:
            raise _fail("dependencies", f"{v!r} is not KIND:ID (e.g. afterok:12)", v) from None
    else:
        raise _fail("dependencies", f"{v!r} is not KIND:ID (e.g. afterok:12)", v)
    if kind not in DEP_KINDS:
        raise _fail("dependencies", f"unknown kind {kind!r}; use one of {', '.join(DEP_KINDS)}", v)
    if isinstance(job, bool) or not isinstance(job, int) or job < 1:
        raise _fail("dependencies", f"{job!r} is not a job id", v)
    return kind, job


def validate_submit(data: Any) -> dict[str, Any]:
    """Return the normalised request or raise ValidationError naming the first bad field."""
    if not isinstance(data, dict):
        raise ValidationError("the request must be a mapping of fields")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(map(str, unknown))}",
                              {"field": unknown[0], "unknown": unknown})
    if "command" not in data:
        raise _fail("command", "is required")
    out: dict[str, Any] = {"command": _command(data["command"])}
    name = data.get("name")
    if name is None:
        cmd = out["command"]
        name = (cmd[0] if isinstance(cmd, list) else cmd.split()[0]).rsplit("/", 1)[-1]
        name = name[:MAX_NAME]
    name = _text("name", name, MAX_NAME)
    if not _NAME.match(name):
        raise _fail("name", "must not contain control characters", name)
    out["name"] = name
    cwd = _text("cwd", data.get("cwd") or "/", 4096)
    if not cwd.startswith("/"):
        raise _fail("cwd", "must be an absolute path", cwd)
    out["cwd"] = cwd
    out["env"] = _env(data.get("env"))
    out["gpus"] = _int(data, "gpus", 0, MAX_GPUS, 0)
    gpu_type = data.get("gpu_type")
    if gpu_type is not None:
        gpu_type = _text("gpu_type", gpu_type, 64).strip()
        if not _IDENT.match(gpu_type.replace(" ", "_")):
            raise _fail("gpu_type", "must be letters, digits, '.', '_' or '-'", gpu_type)
    out["gpu_type"] = gpu_type or None
    out["gpu_memory_mb"] = _int(data, "gpu_memory_mb", 1, MAX_GPU_MEMORY_MB, None)
    out["cpus"] = _int(data, "cpus", 1, MAX_CPUS, 1)
    out["memory_mb"] = _int(data, "memory_mb", 0, MAX_MEMORY_MB, None)
    out["time_limit_s"] = _int(data, "time_limit_s", 1, MAX_TIME_S, None)
    out["priority"] = _int(data, "priority", 1, 10, 5)
    deps = data.get("dependencies") or []
    if not isinstance(deps, (list, tuple)):
        raise _fail("dependencies", "must be a list such as ['afterok:12']", deps)
    if len(deps) > MAX_DEPS:
        raise _fail("dependencies", f"more than {MAX_DEPS}")
    out["dependencies"] = sorted({f"{k}:{j}" for k, j in map(parse_dependency, deps)})
    for key in ("group", "partition"):
        v = data.get(key)
        if v is not None and (not isinstance(v, str) or not _IDENT.match(v)):
            raise _fail(key, "must be 1-64 letters, digits, '.', '_' or '-'", v)
        out[key] = v
    out["partition"] = out["partition"] or "default"
    for key, default in (("hold", False), ("requeue", True)):
        v = data.get(key, default)
        if not isinstance(v, bool):
            raise _fail(key, "must be true or false", v)
        out[key] = v
    return out


def submit_request(command, *, gpus=0, gpu_type=None, gpu_memory_mb=None, cpus=1, memory=None,
                   time_limit=None, name=None, priority=5, after=(), cwd=None, env=None,
                   group=None, partition=None, hold=False, requeue=True) -> dict[str, Any]:
    """Build a request from friendly arguments ('16G', '2h', [12, 'afterany:13'])."""
    req: dict[str, Any] = {"command": list(command) if isinstance(command, tuple) else command,
                           "gpus": gpus, "cpus": cpus, "priority": priority, "hold": hold,
                           "requeue": requeue}
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
    for key, val in (("cwd", cwd), ("env", env), ("group", group), ("partition", partition)):
        if val is not None:
            req[key] = val
    return req
