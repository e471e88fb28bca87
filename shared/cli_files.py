"""The `labq` commands for files: `submit --stage/--results`, `labq results` and
`labq purge`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .errors import LabqError
from .text import printable
from .units import parse_duration_s

if TYPE_CHECKING:
    from collections.abc import Callable

    from .client import Client
    from .models import Job


def submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", action="append", metavar="PATH",
                   help="send this file or directory (recursively, no symlinks) to the node; "
                   "the job runs in a scratch directory holding it; repeatable")
    p.add_argument("--results", action="append", metavar="GLOB",
                   help="copy files matching GLOB ('**' allowed, relative to the job's "
                   "working directory) back when the job ends; repeatable")


def submit_files(a: argparse.Namespace) -> dict[str, Any]:
    """Client.submit's stage and results options; symlinks left out are said on stderr."""
    if not a.stage:
        return {"results": a.results}
    from .stagefiles import stage_manifest
    try:
        _files, skipped = stage_manifest(a.stage)
    except LabqError as e:
        raise SystemExit(f"labq: {printable(e.message)}") from None
    for s in skipped:
        print(f"labq: not staged (not a regular file; symlinks are not followed): "
              f"{printable(s)}", file=sys.stderr)
    return {"stage": a.stage, "results": a.results}


def cmd_results(q: Client, a: argparse.Namespace) -> int:
    job_id = int(a.id) if a.id.isdigit() else -1
    if job_id < 1:
        raise SystemExit(f"labq: not a job id: {a.id!r}")
    info = q.results(job_id)
    if a.output or a.dir:
        if not info["files"]:
            print(f"labq: job {job_id} has no results to save ({_state_words(info)})",
                  file=sys.stderr)
            return 1
        listing = (q.download_results(job_id, a.output) if a.output
                   else q.download_results(job_id, a.dir, extract=True))
        where = a.output or a.dir
        if a.json:
            print(json.dumps({"saved": where, "files": listing}, indent=2))
        else:
            print(f"saved {len(listing)} files ({sum(f[1] for f in listing)} bytes) to "
                  f"{printable(where)}")
        if info["note"]:
            print(f"labq: {printable(info['note'])}", file=sys.stderr)
        return 0
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for path, size in info["files"]:
        print(f"{size:>12}  {printable(path)}")
    print(f"{len(info['files'])} files, {info['bytes']} bytes ({_state_words(info)})")
    if info["note"]:
        print(f"note: {printable(info['note'])}")
    return 0


def _state_words(info: Any) -> str:
    words: dict[str, str] = {"none": "the job asked for no results (--results)",
            "pending": "being copied from the node",
            "complete": "complete",
            "incomplete": "incomplete: labqd retries while the node is reachable",
            "purged": "purged " + time.strftime("%Y-%m-%d %H:%M",
                                                time.localtime(info.get("purged") or 0)),
            }
    return words.get(info["state"], str(info["state"]))


def parse_before(text: str) -> float:
    """A date (2026-01-31, 2026-01-31T12:00) or an age (30d, 12h): the Unix time it names."""
    try:
        from datetime import datetime  # only purge reads dates
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        return time.time() - parse_duration_s(text, "before")
    except LabqError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a date (2026-01-31) nor an "
                                         "age (30d)") from None


def cmd_purge(q: Client, a: argparse.Namespace) -> int:
    out = q.purge(a.before)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"purged the files of {out['jobs']} jobs ({out['bytes']} bytes)")
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("results", cmd_results, "list a job's results, or save them: -o FILE.zip, -d DIR")
    p.add_argument("id")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--output", "-o", metavar="FILE.zip", help="save them as one zip archive")
    g.add_argument("--dir", "-d", metavar="DIR", help="save them as files under DIR")
    g.add_argument("--list", action="store_true", help="list them (the default)")
    p = add("purge", cmd_purge, "admin: remove log copies, results and scratch directories of "
            "jobs that ended before a date")
    p.add_argument("--before", required=True, type=parse_before,
                   metavar="DATE", help="2026-01-31, 2026-01-31T12:00, or an age like 30d")


def show_fields(job: Job) -> list[tuple[str, Any]]:
    """`labq show` lines for staged files, results and purging."""
    out: list[tuple[str, Any]] = []
    if job.stage:
        out.append(("staged", f"{job.stage.get('files')} files, {job.stage.get('bytes')} "
                              "bytes"))
    if job.results:
        files = job.files or {}
        state = files.get("state") or ("waiting for the job to end" if not job.finished
                                       else "pending")
        out.append(("results", " ".join(job.results) + f"  ({state}"
                    + (f", {files.get('count')} files, {files.get('bytes')} bytes"
                       if state == "complete" else "") + ")"))
    if job.purged_time:
        out.append(("files purged", time.strftime("%Y-%m-%d %H:%M:%S",
                                                  time.localtime(job.purged_time))))
    return out
