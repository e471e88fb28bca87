"""`labq submit SCRIPT`: a batch script's `#SBATCH` lines under the options given on the
command line; and `labq submit --dry-run`, which shows the job and submits nothing."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .cli_format import print_json
from .sbatch import SCRIPT_VAR, parse_script, read_script
from .text import printable


def script_args(a: argparse.Namespace, command: list[str],
                options: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The job's command and options: the script's directives, then `options` (the command
    line's; None where not given) over them. The script's warnings go to stderr."""
    path, args = command[0], command[1:]
    script = parse_script(read_script(path), path)
    for warning in script.warnings:
        print(f"labq: warning: {printable(warning)}", file=sys.stderr)
    if script.array and not getattr(a, "array", None) and not getattr(a, "param", None):
        if not hasattr(a, "array"):
            raise SystemExit(f"labq: {printable(script.name)} asks for an array "
                             "(#SBATCH --array); `labq submit` queues arrays, `labq run` "
                             "runs one job")
        a.array = script.array
    return script.submit_args(args, options)


def dry_run(a: argparse.Namespace, command: list[str] | str, options: dict[str, Any]) -> int:
    """Print the spec labqd would get, checked as labqd checks its form (not the caller's
    groups, limits or dependencies), and queue nothing. The exported environment is left
    out; the variables set by --env or --export are shown."""
    from .spec import submit_request, validate_submit
    if a.from_file is not None:
        raise SystemExit("labq: --dry-run shows one command or script, not --from")
    options = dict(options)
    export_env = options.pop("export_env", True)
    stage = options.pop("stage", None)
    spec = validate_submit(submit_request(
        command, cwd=options.pop("cwd", None) or os.getcwd(),
        gpu_memory_mb=options.pop("gpu_memory", None), **options))
    if a.array:
        from .sweep import parse_array
        parse_array(a.array)
    shown = {k: v for k, v in spec.items() if v is not None and k != "env"}
    shown["env"] = {k: v for k, v in spec["env"].items() if k != SCRIPT_VAR}
    shown.update(export_env=export_env, array=a.array, params=a.param, stage=stage)
    if SCRIPT_VAR in spec["env"]:
        shown["script"] = spec["env"][SCRIPT_VAR]
    print_json({k: v for k, v in shown.items() if v is not None})
    return 0
