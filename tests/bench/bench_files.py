"""How fast staged files and results move: a real labqd and a loopback SSH node with a job root
of its own. Prints figures beside their goals; asserts nothing.

    python3 tests/bench/bench_files.py [--mb 200]
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon, wait_for  # noqa: E402
from sshnodes import NodeSet  # noqa: E402


def row(figure, value, unit, goal):
    print(f"{figure:<52} {value:9.1f} {unit:<5} goal {goal}", flush=True)


def rss_kb(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    size = args.mb << 20
    base = Path(tempfile.mkdtemp(prefix="labq-bench-files-"))
    scratch = Path(tempfile.mkdtemp(prefix="labq-bench-scratch-", dir="/var/tmp"))
    data = base / "data.bin"
    with open(data, "wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(1 << 20))
    try:
        with NodeSet(base / "nodes", names=["far"]) as ns:
            [far] = ns.config_entries({"far": [{"type": "A100", "memory_mb": 81920}]})
            far.update(job_root=str(base / "far-jobs"), scratch_root=str(scratch))
            d = Daemon(base / "daemon", {"daemon": {"log_level": "warning",
                                                    "results_max": f"{2 * args.mb}M"},
                                         "node": [far]})
            d.start(wait_nodes=1)
            try:
                run(d, data, size, args.mb)
            finally:
                d.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def run(d, data, size, mb):
    pid = d.proc.pid
    with d.client() as q:
        q.wait(q.submit(["true"], gpus=1, export_env=False).id, timeout=60)  # warm
        before = rss_kb(pid)
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                peak[0] = max(peak[0], rss_kb(pid))
        threading.Thread(target=sample, daemon=True).start()

        from labq.client_files import upload
        t0 = time.perf_counter()
        token, _ = upload(q, [str(data)])
        up = time.perf_counter() - t0
        row(f"client → labqd upload, {mb} MB", mb / up, "MB/s", "(no goal)")

        t0 = time.time()
        job = q.submit(["bash", "-c", "date +%s.%N; mkdir out; cp data.bin out/result.bin"],
                       stage=[str(data)], results=["out/**"], gpus=1, export_env=False)
        t_submit = time.time() - t0  # the upload again, through submit
        t1 = time.time()
        q.wait(job.id, timeout=600)
        started = float(q.logs(job.id).split()[0])
        row(f"labqd → node staging over SSH, {mb} MB", mb / (started - t1), "MB/s", "≥ 50")
        end = q.job(job.id).end_time
        wait_for(lambda: q.results(job.id)["state"] == "complete", 600, interval=0.02,
                 what="results")
        fetched = time.time()
        row(f"node → labqd results over SSH, {mb} MB", mb / (fetched - end), "MB/s", "≥ 50")
        t0 = time.perf_counter()
        q.download_results(job.id, data.with_name("r.zip"))
        row(f"labqd → client download as zip, {mb} MB", mb / (time.perf_counter() - t0),
            "MB/s", "(no goal)")
        done.set()
        hwm = rss_kb(pid, "VmHWM")
        row("labqd RSS growth during all of it (sampled peak)", (peak[0] - before) / 1024,
            "MB", "< 50")
        row("labqd peak RSS since start (VmHWM)", hwm / 1024, "MB", "(RSS before: "
            f"{before / 1024:.0f} MB)")
        del t_submit, token


if __name__ == "__main__":
    main()
