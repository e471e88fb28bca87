"""The user's own client settings: ~/.config/labq/config.toml ($XDG_CONFIG_HOME/labq).

    [submit]
    notify = "fail"   # what `labq submit` does without --notify: end, fail, all or none

Standard library only, like the rest of what users import.
"""
from __future__ import annotations

import os
from typing import Any

from .errors import ValidationError
from .spec import NOTIFY_WHEN

SUBMIT_KEYS = {"notify": (*NOTIFY_WHEN, "none")}


def path() -> str:
    # os.path, not pathlib: every submit reads this, and most need nothing else of pathlib
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "labq", "config.toml")


def load() -> dict[str, Any]:
    """The file's settings, checked; {} when there is no file."""
    p = path()
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"{p}: cannot read it: {e}", {"file": str(p)}) from None
    import tomllib  # most users have no file: a submit then skips this import
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(f"{p}: cannot read it: {e}", {"file": str(p)}) from None
    for table, body in data.items():
        if table != "submit" or not isinstance(body, dict):
            raise ValidationError(f"{p}: unknown table [{table}] (known: [submit])",
                                  {"file": str(p), "field": table})
        for key, value in body.items():
            if key not in SUBMIT_KEYS:
                raise ValidationError(f"{p}: unknown key submit.{key} (known: "
                                      f"{', '.join(sorted(SUBMIT_KEYS))})",
                                      {"file": str(p), "field": f"submit.{key}"})
            if value not in SUBMIT_KEYS[key]:
                raise ValidationError(f"{p}: submit.{key} must be one of "
                                      f"{', '.join(SUBMIT_KEYS[key])}, not {value!r}",
                                      {"file": str(p), "field": f"submit.{key}"})
    return data


def submit_notify(flag: str | None) -> str | None:
    """--notify if given, else the file's default; 'none' means no notification."""
    value = flag if flag is not None else load().get("submit", {}).get("notify")
    return None if value in (None, "none") else str(value)
