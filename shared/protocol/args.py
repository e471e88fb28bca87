"""Checks of single arguments of requests other than a submit (whose spec labq.spec checks):
each refuses with a ValidationError that names the argument."""
from __future__ import annotations

from typing import Any

from ..errors import ValidationError
from ..spec import CONTROL_CHARS, MAX_IDENT, MAX_IDS, MAX_INT, utf8_len


def arg_error(key: str, message: str) -> ValidationError:
    return ValidationError(f"{key}: {message}", {"field": key})


def check_id(args: dict[str, Any], key: str = "id") -> int:
    v = args.get(key)
    if type(v) is not int or not 1 <= v <= MAX_INT:
        raise arg_error(key, "must be a job id (a positive integer)")
    return v


def check_ids(args: dict[str, Any]) -> list[int]:
    ids = args.get("ids")
    if type(ids) is not list or not ids:
        raise arg_error("ids", "must be a non-empty list of job ids")
    if len(ids) > MAX_IDS:
        raise arg_error("ids", f"at most {MAX_IDS} job ids per request")
    if any(type(i) is not int or not 1 <= i <= MAX_INT for i in ids):
        raise arg_error("ids", "must be a non-empty list of job ids")
    return list(dict.fromkeys(ids))  # each job once, in the order given


def check_text(args: dict[str, Any], key: str, limit: int, *, what: str = "a string") -> str | None:
    """A string of at most `limit` UTF-8 bytes, free of control characters: these end up in
    other people's terminals (queue listings, event histories)."""
    v = args.get(key)
    if v is None:
        return None
    if type(v) is not str:
        raise arg_error(key, f"must be {what}")
    if utf8_len(key, v) > limit:
        raise arg_error(key, f"is longer than {limit} bytes")
    if CONTROL_CHARS.search(v):
        raise arg_error(key, "must not contain control characters")
    return v


def check_name(args: dict[str, Any], key: str, limit: int = MAX_IDENT) -> str:
    v = check_text(args, key, limit, what="a name")
    if not v:
        raise arg_error(key, "must be a name")
    return v


def check_number(args: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = args.get(key, default)
    if type(v) not in (int, float) or not lo <= v <= hi:  # NaN is never in range
        raise arg_error(key, f"must be a number from {lo:g} to {hi:g}")
    return float(v)


def check_int(args: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = args.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise arg_error(key, f"must be an integer from {lo} to {hi}")
    return v


def check_flag(args: dict[str, Any], key: str, default: bool) -> bool:
    v = args.get(key)
    if v is None:
        return default
    if type(v) is not bool:
        raise arg_error(key, "must be true or false")
    return v
