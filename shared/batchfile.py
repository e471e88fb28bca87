"""Jobs from a file (`labq submit --from`): NDJSON/JSON Lines or CSV, one job per row, keyed by
the submit options' long names; and the row -> submit spec mapping that Client.submit_many
shares. Standard library only."""
from __future__ import annotations

import csv
import io
import json
import shlex
from typing import Any

from .errors import BadEncoding, BadFormat, LabqError, ValidationError
from .spec import submit_request

FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv"}
ROW_KEYS = ("command", "wrap", "gpus", "gpu_type", "gpu_mem", "gpu_memory", "cpus", "mem",
            "memory", "time", "time_limit", "name", "priority", "after", "group",
            "partition", "experiment", "key", "env", "hold", "requeue", "cwd")
_ALIASES = {"gpu_mem": "gpu_memory", "mem": "memory", "time": "time_limit"}
_INTS = ("gpus", "cpus", "priority")
_FLAGS = ("hold", "requeue")


def file_format(name: str, forced: str | None) -> str:
    """'ndjson' or 'csv', from --format or else the file name's ending."""
    if forced is not None:
        fmt = {"jsonl": "ndjson"}.get(forced.lower(), forced.lower())
        if fmt not in ("ndjson", "csv"):
            raise BadFormat(f"unknown format {forced!r}: use ndjson, jsonl or csv",
                            {"format": forced})
        return fmt
    for ending, fmt in FORMATS.items():
        if name.lower().endswith(ending):
            return fmt
    raise BadFormat(f"cannot tell the format of {name!r}: name it .ndjson, .jsonl or .csv, "
                    "or give --format", {"file": name})


def read_rows(data: bytes, fmt: str) -> list[tuple[int, dict[str, Any] | LabqError]]:
    """(line number, the row's fields or why the row is bad) for every row. Not UTF-8:
    BadEncoding, and nothing is read."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadEncoding(f"the file is not UTF-8 text (byte {e.start}); nothing was queued",
                          {"offset": e.start}) from None
    out: list[tuple[int, dict[str, Any] | LabqError]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            fields = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if None in row:
                out.append((reader.line_num, ValidationError(
                    "more values than columns", {"field": "row"})))
            else:
                out.append((reader.line_num, fields))
        return out
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            out.append((n, ValidationError(f"not JSON: {e}", {"field": "row"})))
            continue
        out.append((n, row if type(row) is dict else ValidationError(
            "a row must be a JSON object", {"field": "row"})))
    return out


_SCALARS = (str, int, float, bool, type(None))


def plain_row(row: Any) -> bool:
    """`row` holds only plain values (text, numbers, lists and mappings of them), so two
    rows with the same repr are the same row."""
    if type(row) is not dict:
        return False
    for v in row.values():
        t = type(v)
        if t in _SCALARS:
            continue
        if t is list or t is tuple:
            if not all(type(x) in _SCALARS for x in v):
                return False
        elif t is dict:
            if not all(type(k) is str and type(x) in _SCALARS for k, x in v.items()):
                return False
        else:
            return False
    return True


def row_spec(row: Any) -> dict[str, Any]:
    """A row (the submit options' long names; strings as a CSV file has them) as the spec
    labqd checks."""
    if type(row) is not dict:
        raise ValidationError("a row must be a mapping of submit options", {"field": "row"})
    unknown = sorted(str(k)[:40] for k in row if k not in ROW_KEYS)
    if unknown:
        raise ValidationError(f"unknown column(s): {', '.join(unknown[:5])}",
                              {"field": unknown[0]})
    kw: dict[str, Any] = {_ALIASES.get(str(k), str(k)): v for k, v in row.items()}
    command = _command(kw.pop("command", None), kw.pop("wrap", None))
    for k in _INTS:
        if isinstance(kw.get(k), str):
            kw[k] = _int(k, kw[k])
    for k in _FLAGS:
        if isinstance(kw.get(k), str):
            kw[k] = kw[k].strip().lower() in ("1", "true", "yes", "y")
    if isinstance(kw.get("after"), str):
        kw["after"] = [d for d in kw["after"].replace(";", ",").split(",") if d]
    if isinstance(kw.get("env"), str):
        kw["env"] = _env_text(kw["env"])
    try:
        return submit_request(command, **kw)
    except TypeError as e:  # a value of the wrong kind for one of the options
        raise ValidationError(f"bad row: {e}", {"field": "row"}) from None


def _command(command: Any, wrap: Any) -> list[str] | str:
    if (command is None) == (wrap is None):
        raise ValidationError("give a command or a wrap, not both and not neither",
                              {"field": "command"})
    if wrap is not None:
        if not isinstance(wrap, str):
            raise ValidationError("wrap must be a shell string", {"field": "wrap"})
        return wrap
    if isinstance(command, str):
        try:
            return shlex.split(command)
        except ValueError as e:
            raise ValidationError(f"command: {e}", {"field": "command"}) from None
    if isinstance(command, list):
        return command
    raise ValidationError("command must be a list of arguments or a string",
                          {"field": "command"})


def _int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValidationError(f"{key}: {text[:40]!r} is not an integer",
                              {"field": key}) from None


def _env_text(text: str) -> dict[str, str]:
    env = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep:
            raise ValidationError(f"env: {item[:40]!r} is not NAME=VALUE", {"field": "env"})
        env[k.strip()] = v
    return env
