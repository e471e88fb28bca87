"""Arrays and sweeps: Slurm's `--array` syntax and `--param` grids, turned into the tasks one
submit makes, and the `{NAME}` / `{index}` fields filled in each task's command.

Standard library only; labqd expands a request with these, so a 10,000-task array crosses the
socket as one short request.
"""
from __future__ import annotations

import itertools
import re
from typing import Any

from .errors import ValidationError

MAX_TASKS = 10_000  # tasks in one array or sweep: as many ids as one cancel takes
MAX_ARRAY_INDEX = 10_000_000
MAX_PARAMS = 16
MAX_PARAM_VALUES = MAX_TASKS
MAX_PARAM_VALUE_BYTES = 1024
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9})(?::([0-9]{1,9}))?)?")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INT_RANGE = re.compile(r"(-?[0-9]{1,9})\.\.(-?[0-9]{1,9})")


def _bad(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field}: {message}", {"field": field})


def parse_array(text: Any) -> tuple[list[int], int | None]:
    """'0-99', '1,3,5-7', '0-99:2', each with an optional '%N': the indices in order, each
    once, and N (at most N tasks running), or None."""
    if type(text) is not str or not text or len(text) > 4096:
        raise _bad("array", "must be a string such as 0-99, 1,3,5-7, 0-99:2 or 0-999%16")
    spec, pct, limit_text = text.partition("%")
    limit = None
    if pct:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_TASKS:
            raise _bad("array", f"%N must be a number of tasks from 1 to {MAX_TASKS}")
        limit = int(limit_text)
    indices: dict[int, None] = {}
    for part in spec.split(","):
        m = _RANGE.fullmatch(part)
        if not m:
            raise _bad("array", f"{part[:40]!r} is not INDEX, FIRST-LAST or FIRST-LAST:STEP")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1 or hi > MAX_ARRAY_INDEX:
            raise _bad("array", f"{part[:40]!r}: ranges go up, by a step of 1 or more, to at "
                       f"most {MAX_ARRAY_INDEX}")
        if len(indices) + (hi - lo) // step + 1 > MAX_TASKS:
            raise _bad("array", f"more than {MAX_TASKS} tasks")
        indices.update(dict.fromkeys(range(lo, hi + 1, step)))
    return list(indices), limit


def parse_param(text: str) -> tuple[str, list[str]]:
    """'NAME=V1,V2,...' or 'NAME=A..B' (integers, both ends included)."""
    name, eq, values = text.partition("=")
    if not eq or not _PARAM_NAME.fullmatch(name):
        raise _bad("params", f"{text[:60]!r} is not NAME=V1,V2,... or NAME=A..B")
    m = _INT_RANGE.fullmatch(values)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo or hi - lo >= MAX_PARAM_VALUES:
            raise _bad("params", f"{name}={values}: the range must go up, with at most "
                       f"{MAX_PARAM_VALUES} values")
        return name, [str(v) for v in range(lo, hi + 1)]
    return name, values.split(",")


def check_params(v: Any) -> list[tuple[str, list[str]]]:
    """A request's params: [[NAME, [VALUE, ...]], ...], names once each."""
    if type(v) is not list or not v or len(v) > MAX_PARAMS:
        raise _bad("params", f"must be a list of 1 to {MAX_PARAMS} [NAME, [VALUES]] pairs")
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for item in v:
        if (type(item) is not list or len(item) != 2 or type(item[0]) is not str
                or not _PARAM_NAME.fullmatch(item[0]) or type(item[1]) is not list
                or not item[1] or len(item[1]) > MAX_PARAM_VALUES):
            raise _bad("params", "each entry must be [NAME, [VALUE, ...]] with a NAME of "
                       "letters, digits and '_'")
        name, values = item
        if name in seen or name == "index":
            raise _bad("params", f"{name!r} is given twice, or is the reserved name 'index'")
        seen.add(name)
        for x in values:
            if type(x) is not str or len(x.encode("utf-8", "replace")) > MAX_PARAM_VALUE_BYTES \
                    or "\x00" in x:
                raise _bad("params", f"{name}: values must be strings of at most "
                           f"{MAX_PARAM_VALUE_BYTES} bytes without NUL")
        out.append((name, list(values)))
    n = 1
    for _, values in out:
        n *= len(values)
        if n > MAX_TASKS:
            raise _bad("params", f"the grid has more than {MAX_TASKS} combinations")
    return out


def grid(params: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination, the first parameter varying slowest."""
    names = [n for n, _ in params]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in params))]


def fill(command: list[str] | str, values: dict[str, str]) -> list[str] | str:
    """`{NAME}` replaced by the value of NAME wherever it is a known field; other braces (a
    shell's `${HOME}` when HOME is no parameter) stay as written."""
    def sub(text: str) -> str:
        return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    return sub(command) if isinstance(command, str) else [sub(a) for a in command]


def task_env(index: int, values: dict[str, str]) -> dict[str, str]:
    env = {"LABQ_ARRAY_INDEX": str(index)}
    for k, v in values.items():
        if k != "index":
            env[f"LABQ_PARAM_{k.upper()}"] = v
    return env
