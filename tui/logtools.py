"""What the job view does with the log it shows: save it to a file, or hand it to $PAGER."""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from textual.screen import Screen


def log_file_name(job_id: int) -> str:
    return f"labq-job-{job_id}.log"


def write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def save_log(screen: Screen, job_id: int, lines: Sequence[str],
             directory: str | None = None) -> Path | None:
    """Write what the view shows to ./labq-job-ID.log (the full log is `labq logs ID`)."""
    path = Path(directory or os.getcwd()) / log_file_name(job_id)
    try:
        write_lines(path, lines)
    except OSError as e:
        screen.notify(f"could not save the log: {e.strerror} ({path})", severity="error",
                      markup=False)
        return None
    screen.notify(f"saved {len(lines)} lines to {path}", timeout=4, markup=False)
    return path


def open_pager(screen: Screen, job_id: int, lines: Sequence[str]) -> None:
    """Suspend the UI and show the lines in $PAGER (less by default)."""
    pager = shlex.split(os.environ.get("PAGER") or "less -R")
    with tempfile.TemporaryDirectory(prefix="labq-") as d:
        path = Path(d) / log_file_name(job_id)
        write_lines(path, lines)
        try:
            with screen.app.suspend():
                subprocess.run([*pager, str(path)], check=False)
        except Exception as e:  # no terminal to suspend to, or no such pager
            screen.notify(f"could not open the pager: {e}", severity="error", markup=False)
