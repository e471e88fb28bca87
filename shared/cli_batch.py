"""The `labq` commands for work in many jobs: arrays and sweeps, `submit --from FILE`, and
`labq experiments`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .errors import LabqError
from .models import Job

if TYPE_CHECKING:
    from .client import Client

STATES = ("PENDING", "HELD", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
          "NODE_FAIL")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def submit_tasks(q: Client, a: argparse.Namespace, command: list[str] | str,
                 options: dict[str, Any]) -> int:
    """`submit --array SPEC` or `submit --param NAME=...`: every task's id, or with --json
    a list of job objects."""
    from .sweep import parse_param
    if a.array and a.param:
        raise SystemExit("labq: give either --array or --param, not both")
    params: dict[str, list[str]] | None = None
    if a.param:
        params = {}
        for text in a.param:
            name, values = parse_param(text)
            if name in params:
                raise SystemExit(f"labq: --param {name} is given twice")
            params[name] = values
    jobs = q.submit_array(command, array=a.array, params=params, max_running=a.max_running,
                          **options)
    if a.json:
        _print_json([j.to_dict() for j in jobs])
    else:
        for j in jobs:
            print(j.id)
    return 0


def submit_from(q: Client, a: argparse.Namespace) -> int:
    """`submit --from FILE|-`: every valid row queued, every bad one reported; exit 1 when any
    was refused."""
    from .batchfile import file_format, read_rows
    name = a.from_file
    fmt = file_format("stdin" if name == "-" else name,
                      a.format or ("ndjson" if name == "-" else None))
    try:
        data = sys.stdin.buffer.read() if name == "-" else open(name, "rb").read()
    except OSError as e:
        raise SystemExit(f"labq: cannot read {name}: {e.strerror or e}") from None
    rows = read_rows(data, fmt)
    good = [(n, r) for n, r in rows if not isinstance(r, LabqError)]
    results: dict[int, Job | LabqError] = {n: r for n, r in rows if isinstance(r, LabqError)}
    if good:
        for (n, _), res in zip(good, q.submit_many([r for _, r in good],
                                                   export_env=not a.no_export)):
            results[n] = res
    ordered = sorted(results.items())
    if a.json:
        _print_json([{"line": n, "ok": isinstance(r, Job),
                      **({"job": r.to_dict()} if isinstance(r, Job) else
                         {"error": {"code": r.code, "message": r.message}})}
                     for n, r in ordered])
    else:
        from .text import printable
        for n, r in ordered:
            if isinstance(r, Job):
                print(r.id)
            else:
                print(printable(f"line {n}: {r.code}: {r.message}"), file=sys.stderr)
    return 0 if ordered and all(isinstance(r, Job) for _, r in ordered) else 1


def cmd_experiments(q: Client, a: argparse.Namespace) -> int:
    from .cli_format import table, when
    user = a.user or (q.whoami()["user"] if a.mine else None)
    exps = q.experiments(user=user)
    if a.json:
        _print_json(exps)
        return 0
    rows = []
    for e in exps:
        counts = " ".join(f"{s.lower()}={e['counts'][s]}" for s in STATES if e["counts"].get(s))
        rows.append([e["name"], e["owner"], e["total"], counts, when(e["first_submit"]),
                     when(e["last_end"])])
    table(rows, ["EXPERIMENT", "USER", "JOBS", "BY STATE", "FIRST SUBMIT", "LAST END"])
    return 0
