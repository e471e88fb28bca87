"""Argument types and the option groups `labq submit` and `labq run` share."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from .errors import LabqError
from .spec import MAX_GPUS
from .units import parse_duration_s, parse_size_mb


def positive_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return v
    return parse


def checked(fn: Callable[[str, str], object], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            fn(text, what)
        except LabqError as e:
            raise argparse.ArgumentTypeError(e.message) from None
        return text
    return parse


def submit_options(p: argparse.ArgumentParser) -> None:
    """What `labq submit` and `labq run` both take."""
    # numbers default to None, not to submit's defaults: a batch script's directive then
    # stands where the option is not given
    p.add_argument("--gpus", "-G", type=positive_int(0, MAX_GPUS))
    p.add_argument("--gpu-type", help="e.g. A100 (matches the GPU name, case-insensitive)")
    p.add_argument("--gpu-mem", type=checked(parse_size_mb, "gpu memory"),
                   help="minimum memory per GPU, e.g. 40G")
    p.add_argument("--cpus", "-c", type=positive_int(1, 65536))
    p.add_argument("--mem", type=checked(parse_size_mb, "memory"), help="e.g. 32G")
    p.add_argument("--time", "-t", type=checked(parse_duration_s, "time"),
                   help="time limit: minutes, H:M:S, D-H:M:S, or 90s/30m/2h/1d")
    p.add_argument("--name", "-J")
    p.add_argument("--priority", "-p", type=positive_int(1, 10), help="1-10 (default 5)")
    p.add_argument("--after", "-d", action="append",
                   help="ID[,ID] (afterok) or afterany:ID / afternotok:ID; repeatable")
    p.add_argument("--chdir", "-D", help="working directory (default: the current one)")
    p.add_argument("--env", action="append", help="NAME=VALUE, repeatable")
    p.add_argument("--no-export", action="store_true",
                   help="do not pass the current environment to the job")
    p.add_argument("--group", help="charge this group (default: your primary group)")
    p.add_argument("--partition")
    p.add_argument("--hold", action="store_true", help="submit held")
    p.add_argument("--no-requeue", action="store_true",
                   help="fail instead of requeueing if the node is lost")
    p.add_argument("--preemptible", action="store_true",
                   help="may be stopped and requeued for a job that is not (see README)")
    p.add_argument("--signal", metavar="SIG@SECS",
                   help="send SIG (e.g. USR1) SECS before the time limit, and on preemption")
    p.add_argument("--wrap", help="a shell command string run with bash -c")
    p.add_argument("--notify", choices=["end", "fail", "all", "none"],
                   help="tell me when the job ends, ends other than COMPLETED, or starts and "
                   "ends (default: [submit] notify in ~/.config/labq/config.toml)")
    p.add_argument("--experiment", "-e", help="file the jobs under this experiment name")
    p.add_argument("--key", help="refuse the submit if one of your jobs has this key already")
    p.add_argument("command", nargs=argparse.REMAINDER)


def batch_options(p: argparse.ArgumentParser) -> None:
    """Options of `labq submit` that queue many jobs at once."""
    p.add_argument("--array", "-a", help="an array of tasks: 0-99, 1,3,5-7, 0-99:2; %%N runs "
                   "at most N at once")
    p.add_argument("--param", action="append", metavar="NAME=V1,V2|NAME=A..B",
                   help="a sweep: one job per combination; {NAME} and {index} are filled in")
    p.add_argument("--max-running", type=positive_int(1, 10_000),
                   help="at most this many tasks of the array or sweep run at once")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="one job per row of an .ndjson, .jsonl or .csv file; - for stdin")
    p.add_argument("--format", choices=["ndjson", "jsonl", "csv"], help="the --from format")
