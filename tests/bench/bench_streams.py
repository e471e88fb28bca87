"""What keeping stderr apart costs a job: bulk output to stdout (straight to the log) against
the same to stderr (through the supervisor's pipe), on a real labqd's local node. Prints
figures; asserts nothing.

    python3 tests/bench/bench_streams.py [--mb N] [--rounds N]
"""
import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402


def row(figure, values, unit):
    print(f"{figure:<56} {min(values):8.2f}–{max(values):<8.2f} {unit}", flush=True)


def job_seconds(q, command):
    """The job's own run time (start to end on the node), and submit → all output read."""
    t0 = time.perf_counter()
    job = q.run(command, stdout=io.BytesIO(), stderr=io.BytesIO())
    return job.end_time - job.start_time, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        d = Daemon(base / "d", {"daemon": {"log_level": "warning", "log_copy_max": "1M"},
                                "node": [{"name": "local", "local": True,
                                          "job_root": str(base / "jobs")}]})
        d.start(wait_nodes=1)
        try:
            with d.client() as q:
                q.run(["true"], stdout=io.BytesIO())  # warm
                for stream, redirect in (("stdout", ""), ("stderr", " >&2")):
                    cmd = f"head -c {args.mb}M /dev/zero{redirect}"
                    runs = [job_seconds(q, cmd) for _ in range(args.rounds)]
                    row(f"{args.mb} MB to {stream}: the job's run time",
                        [r[0] for r in runs], "s")
                    row(f"{args.mb} MB to {stream}: MB/s inside the job",
                        [args.mb / max(r[0], 1e-6) for r in runs], "MB/s")
                lines = ("python3 -c \"import sys\nfor i in range(100000):\n"
                         "    print('out', i, flush=True); print('err', i, file=sys.stderr)\"")
                for how, cmd in (("apart", lines), ("both into stdout (2>&1)", lines + " 2>&1")):
                    runs = [job_seconds(q, cmd) for _ in range(args.rounds)]
                    row(f"100,000 lines on each stream, {how}: run time",
                        [r[0] for r in runs], "s")
        finally:
            d.close()


if __name__ == "__main__":
    main()
