"""Scale benchmark: a real labqd holding a long queue. Prints each figure beside its goal;
asserts nothing.

    python3 tests/bench/bench_scale.py [--jobs 100000] [--samples 50]

The queue is filled through the API with the default exported environment (which is also
the submits/s figure), as held jobs so that none runs; the other figures are taken with it
in place.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402

MB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def figure(name: str, measured: str, goal: str) -> None:
    print(f"{name:<44} {measured:>16}   {goal}", flush=True)


def fill(q, n: int, cwd: str) -> float:
    """n held jobs with the default exported environment; submits per second."""
    t0 = time.perf_counter()
    for _ in range(n):
        q.submit(["python", "train.py", "--lr", "0.001"], hold=True, cwd=cwd)
    return n / (time.perf_counter() - t0)


def ls_first_page(socket: Path) -> tuple[float, float]:
    """Seconds until `labq ls` has printed its first page, and until it has printed all."""
    from labq.cli_views import LS_PAGE
    env = dict(os.environ, LABQ_SOCKET=str(socket))
    t0 = time.perf_counter()
    p = subprocess.Popen([shutil.which("labq"), "ls"], stdout=subprocess.PIPE, env=env)
    first = None
    for i, _line in enumerate(p.stdout):
        if i == LS_PAGE and first is None:  # the header and one page
            first = time.perf_counter() - t0
    p.wait()
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def submit_to_running(q, samples: int, cwd: str) -> list[float]:
    lat = []
    for _ in range(samples):
        t0 = time.perf_counter()
        job = q.submit(["sleep", "0.2"], export_env=False, cwd=cwd)
        while q.job(job.id).state.value == "PENDING":
            pass
        lat.append(time.perf_counter() - t0)
        q.cancel(job.id)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-scale-"))
    d = Daemon(base / "daemon", {"daemon": {"log_level": "warning", "local_node": True},
                                 "limits": {"user_max_pending": args.jobs + 1000}})
    d.start(wait_nodes=1)
    try:
        with d.client() as q:
            run(q, d, args, str(base))
    finally:
        d.close()
        shutil.rmtree(base, ignore_errors=True)


def run(q, d: Daemon, args, cwd: str) -> None:
    n = args.jobs
    print(f"{'figure':<44} {'measured':>16}   goal   ({n} held jobs, "
          f"{len(os.environ)} exported variables)")
    idle = rss(d.proc.pid)
    rate = fill(q, n, cwd)
    held = rss(d.proc.pid)
    figure("API submits/s, default exported env", f"{rate:,.0f} /s", ">= 2,000 /s")
    figure("labqd RSS, idle", f"{idle / MB:.0f} MB", "")
    figure(f"labqd RSS, {n} held jobs", f"{held / MB:.0f} MB", "<= 150 MB")
    figure("bytes per held job", f"{(held - idle) / n:,.0f} B", "<= 1,000 B")
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        q.jobs(limit=100)
        t.append(time.perf_counter() - t0)
    figure("jobs(limit=100), p50", f"{statistics.median(t) * 1000:.1f} ms", "<= 10 ms")
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        q.jobs(limit=100, after_id=n // 2, include_ended=False)
        t.append(time.perf_counter() - t0)
    figure("jobs(limit=100, after_id=mid), p50", f"{statistics.median(t) * 1000:.1f} ms",
           "<= 10 ms")
    first, total = min(ls_first_page(d.socket) for _ in range(3))
    figure("labq ls: first page", f"{first:.2f} s", "<= 0.3 s")
    figure("labq ls: every page", f"{total:.2f} s", "")
    lat = submit_to_running(q, args.samples, cwd)
    figure("submit -> RUNNING, p50", f"{statistics.median(lat) * 1000:.1f} ms", "<= 10 ms")
    figure("submit -> RUNNING, max", f"{max(lat) * 1000:.1f} ms", "")


if __name__ == "__main__":
    main()
