"""Parsing and printing of the sizes and durations users type."""
from __future__ import annotations

import re

from .errors import ValidationError

# patterns, not compiled ones: re compiles each on first use, so a command given no size or
# duration does not pay for them
_SIZE = r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$"
_SIZE_MB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 ** 2, "p": 1024 ** 3}


def parse_size_mb(text: str | int, what: str = "memory") -> int:
    """'16G', '512M', '2T', '1024' (MiB when no unit, as in Slurm's --mem)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.match(_SIZE, str(text))
    if not m:
        raise ValidationError(f"{what}: cannot read {text!r} as a size (e.g. 512M, 16G, 1T)",
                              {"field": what, "value": str(text)})
    return int(round(float(m.group(1)) * _SIZE_MB[m.group(2).lower()]))


_DUR_SUFFIX = r"(?i)^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$"
_DUR_SLURM = r"^\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*$"
_MULT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(text: str | int, what: str = "time") -> int:
    """Slurm forms (MIN, MIN:SEC, H:M:S, D-H, D-H:M, D-H:M:S) or 90s, 30m, 2h, 1d, 1w."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text)
    m = re.match(_DUR_SUFFIX, s)
    if m:
        return int(round(float(m.group(1)) * _MULT[m.group(2).lower()]))
    m = re.match(_DUR_SLURM, s)
    if not m:
        raise ValidationError(f"{what}: cannot read {s!r} as a duration (e.g. 90, 2h, 1-12:00:00)",
                              {"field": what, "value": s})
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        parts = [int(a), int(b or 0), int(c or 0)]
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if c is not None:
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60  # a bare number is minutes, as in Slurm


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def format_size_mb(mb: int | None) -> str:
    if mb is None:
        return "-"
    if mb >= 1024 and mb % 1024 == 0 or mb >= 10 * 1024:
        return f"{mb / 1024:.0f}G"
    return f"{mb}M"
