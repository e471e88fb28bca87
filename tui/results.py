"""A job's results in the job view: listed with their sizes, and saved as one zip archive
with a key. Like everything in the UI, through the client only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import labq
from labq import Job
from labq.errors import LabqError

SHOWN = 8  # result files listed in the view; `labq results ID` lists them all


def fetch(q: labq.Client, job: Job) -> dict[str, Any] | None:
    """The job's results, if it asked for any and has ended; None otherwise."""
    if not job.results or not job.finished:
        return None
    try:
        return dict(q.results(job.id))
    except LabqError:
        return None


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def results_text(job: Job, info: dict[str, Any] | None) -> str:
    """The "results" line of the job view: the files with sizes, or where the copy stands."""
    if info is None:
        return " ".join(job.results or []) + ("  (copied when the job ends)"
                                               if not job.finished else "")
    if info["state"] != "complete" or not info["files"]:
        return f"{info['state']}" + (f": {info['note']}" if info.get("note") else "")
    lines = [f"{size_text(size):>10}  {path}" for path, size in info["files"][:SHOWN]]
    more = len(info["files"]) - SHOWN
    if more > 0:
        lines.append(f"… {more} more (labq results {job.id})")
    lines.append(f"{len(info['files'])} files, {size_text(info['bytes'])}; s saves them as "
                 "a zip")
    return "\n".join(lines)


def save(q: labq.Client, job_id: int, directory: Path | None = None) -> Path:
    """The results as job-<id>-results.zip in `directory` (the current one by default)."""
    target = (directory or Path.cwd()) / f"job-{job_id}-results.zip"
    q.download_results(job_id, target)
    return target
