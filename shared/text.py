"""Text from other users made safe to print on a terminal."""
from __future__ import annotations

import re
from functools import cache

# C0 controls, DEL and C1 controls (ESC and CSI start every ANSI sequence, so escaping them
# defuses all of those), and the Unicode line breaks and bidi overrides, which also rearrange
# what a terminal shows. Names, commands and reasons are whatever another user typed.
_UNPRINTABLE = "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
_UNPRINTABLE_IN_LINES = "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(value: object, lines: bool = False) -> str:
    """`value` as text that cannot move the cursor, restyle or retitle a terminal: control
    characters appear as Python writes them in a string literal (ESC as `\\x1b`). `lines`
    keeps newlines and tabs, for text that is meant to span lines."""
    return _pattern(lines).sub(_escape_one, str(value))


@cache
def _pattern(lines: bool) -> re.Pattern[str]:
    # compiled on first use: compiling these classes costs a command that prints nothing
    # another user wrote half a millisecond
    return re.compile(_UNPRINTABLE_IN_LINES if lines else _UNPRINTABLE)
