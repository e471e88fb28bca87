"""The checkers of labqd's configuration values: each takes (path, value), returns the value
normalised, and raises ConfigError naming the key's path and why."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labq.units import parse_duration_s, parse_size_mb


class ConfigError(Exception):
    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}" if path else why)
        self.path = path


def _type(*types, what: str) -> Callable[[str, Any], Any]:
    def check(path: str, v: Any) -> Any:
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            raise ConfigError(path, f"must be {what}, got {type(v).__name__} {v!r}")
        return v
    return check


STR = _type(str, what="a string")
BOOL = _type(bool, what="true or false")


def INT(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(path: str, v: Any) -> int:
        _type(int, what="an integer")(path, v)
        if not lo <= v <= hi:
            raise ConfigError(path, f"must be between {lo} and {hi}, got {v}")
        return v
    return check


def NUM(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(path: str, v: Any) -> float:
        _type(int, float, what="a number")(path, v)
        if not lo <= v <= hi:
            raise ConfigError(path, f"must be between {lo} and {hi}, got {v}")
        return float(v)
    return check


def DURATION(path: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ConfigError(path, f"must be seconds or a duration like '30s', '7d', got {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise ConfigError(path, "must not be negative")
        return v
    try:
        # a bare number is seconds here (Slurm's bare minutes would surprise in a config)
        return parse_duration_s(v + "s" if v.strip().isdigit() else v, path)
    except Exception:
        raise ConfigError(path, f"cannot read {v!r} as a duration "
                          "(e.g. '30s', '2h', '7d')") from None


def SIZE_MB(path: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ConfigError(path, f"must be MiB or a size like '64M', got {v!r}")
    try:
        return parse_size_mb(v, path)
    except Exception:
        raise ConfigError(path, f"cannot read {v!r} as a size (e.g. '64M', '2G')") from None


def PATHV(path: str, v: Any) -> Path:
    return Path(os.path.expanduser(STR(path, v)))


def MODE(path: str, v: Any) -> int:
    """A socket's permission bits. Connecting to a unix socket takes write permission, so each
    class either may connect (rw) or may not (nothing); anything else is a typo waiting to
    surprise. How the mode goes with socket_group is checked in load()."""
    s = STR(path, v)
    if not s or len(s) > 4 or any(c not in "01234567" for c in s):
        raise ConfigError(path, f"must be an octal mode like \"0660\", got {v!r}")
    mode = int(s, 8)
    if mode & ~0o777:
        raise ConfigError(path, f"{v!r} sets setuid, setgid or sticky bits, which mean nothing "
                          "on a socket; use \"0600\", \"0660\" or \"0666\"")
    if mode & 0o111:
        raise ConfigError(path, f"{v!r} sets execute bits, which mean nothing on a socket "
                          "(connecting takes read and write); use \"0600\", \"0660\" or \"0666\"")
    if mode & 0o600 != 0o600:
        raise ConfigError(path, f"{v!r} must let the owner (labqd's user) read and write")
    for who, bits in (("group", mode >> 3 & 7), ("others", mode & 7)):
        if bits not in (0, 6):
            raise ConfigError(path, f"{v!r} gives {who} {bits:o}; give them read and write "
                              "(6: may connect) or nothing (0)")
    if mode & 0o007 and not mode & 0o070:
        raise ConfigError(path, f"{v!r} gives others more than the group")
    return mode


def ONE_OF(*choices: str) -> Callable[[str, Any], str]:
    def check(path: str, v: Any) -> str:
        if STR(path, v) not in choices:
            raise ConfigError(path, f"must be one of {', '.join(choices)}, got {v!r}")
        return v
    return check


def LIST(item: Callable[[str, Any], Any]) -> Callable[[str, Any], list]:
    def check(path: str, v: Any) -> list:
        if not isinstance(v, list):
            raise ConfigError(path, f"must be a list, got {type(v).__name__}")
        return [item(f"{path}[{i}]", x) for i, x in enumerate(v)]
    return check


def TABLE(schema: dict[str, Callable], required: tuple[str, ...] = (),
          removed: dict[str, str] | None = None) -> Callable:
    """`removed` maps keys that older versions took to why they are gone: an old config gets
    told what to do instead of "unknown key", and the key is not offered as a known one."""
    def check(path: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise ConfigError(path, f"must be a table, got {type(v).__name__}")
        out = {}
        for key, val in v.items():
            sub = f"{path}.{key}" if path else key
            if removed and key in removed:
                raise ConfigError(sub, removed[key])
            if key not in schema:
                raise ConfigError(sub, f"unknown key (known here: {', '.join(sorted(schema))})")
            out[key] = schema[key](sub, val)
        for key in required:
            if key not in v:
                raise ConfigError(f"{path}.{key}" if path else key, "is required")
        return out
    return check


def MAP(value: Callable[[str, Any], Any]) -> Callable[[str, Any], dict]:
    """A table whose keys are names the admin chooses (groups, users, GPU types)."""
    def check(path: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise ConfigError(path, f"must be a table, got {type(v).__name__}")
        return {k: value(f"{path}.{k}", x) for k, x in v.items()}
    return check


def ADDRESS(path: str, v: Any) -> tuple[str, int]:
    """"HOST:PORT" ("[::1]:PORT" for IPv6) to listen on."""
    s = STR(path, v)
    host, sep, port = s.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(path, f"must be \"HOST:PORT\" like \"0.0.0.0:7464\", got {v!r}")
    return host, int(port)


def RATE(path: str, v: Any) -> str:
    from .ratelimit import parse_rate
    try:
        parse_rate(STR(path, v))
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return v
