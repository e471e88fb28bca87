"""A Slurm pool's overhead: trivial jobs straight through `sbatch` and the same jobs through
labq's Slurm pool, on one real one-node Slurm cluster, side by side in one run. Prints
figures; asserts nothing.

    python3 tests/bench/bench_slurm.py [--jobs 200] [--cpus 16]

Each side submits every job as fast as it can, then waits until Slurm (or labq) says all
are COMPLETED; the figure is the time from the first submit to the last end seen. The
cluster's node offers --cpus CPUs (more than the machine has, so that Slurm's own launch
rate, not two cores, bounds both sides).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon  # noqa: E402
from slurmkit import SlurmCluster  # noqa: E402


def bare(slurm: SlurmCluster, n: int) -> tuple[float, float]:
    t0 = time.monotonic()
    ids = [str(slurm.sbatch("--job-name=bare", "--wrap", "true")) for _ in range(n)]
    submitted = time.monotonic() - t0
    want = set(ids)
    while True:
        out = slurm.cmd("squeue", "-h", "-t", "all", "--jobs=" + ",".join(ids), "-o", "%i %T")
        done = {line.split()[0] for line in out.splitlines() if line.endswith(" COMPLETED")}
        if done >= want:
            return submitted, time.monotonic() - t0
        time.sleep(0.2)


def pooled(d: Daemon, n: int) -> tuple[float, float]:
    with d.client() as q:
        t0 = time.monotonic()
        ids = [q.submit(["true"], name="pooled").id for _ in range(n)]
        submitted = time.monotonic() - t0
        jobs = q.wait(*ids, timeout=3600)
        elapsed = time.monotonic() - t0
        bad = [j.id for j in jobs if j.state.value != "COMPLETED"]
        if bad:
            print(f"  not COMPLETED: {bad[:10]}")
        return submitted, elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=16)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labq-bench-slurm-"))
    base.chmod(0o755)
    with SlurmCluster(base / "slurm", cpus=args.cpus) as slurm:
        d = Daemon(base / "daemon", {
            "daemon": {"log_level": "warning", "heartbeat": "1s"},
            "node": [{"name": "hpc", "kind": "slurm", "local": True, "partition": "gpu",
                      "max_jobs": args.jobs, "poll": "1s", "job_root": str(base / "pool")}]})
        d.env = lambda: dict(os.environ, LABQ_SOCKET=str(d.socket), SLURM_CONF=str(slurm.conf))
        d.start(wait_nodes=1)
        try:
            version = subprocess.run(["sinfo", "--version"], env=slurm.env, text=True,
                                     capture_output=True).stdout.strip()
            print(f"{args.jobs} trivial jobs, one Slurm node with {args.cpus} CPUs, {version}")
            print(f"{'':22s} {'submit all':>12s} {'all COMPLETED':>15s} {'jobs/s':>8s}")
            rows = {}
            for name, fn in (("bare sbatch", lambda: bare(slurm, args.jobs)),
                             ("labq Slurm pool", lambda: pooled(d, args.jobs))):
                sub, total = fn()
                rows[name] = total
                print(f"{name:22s} {sub:10.1f} s {total:13.1f} s {args.jobs / total:8.1f}")
            over = rows["labq Slurm pool"] - rows["bare sbatch"]
            print(f"labq's overhead: {over:+.1f} s ({over / rows['bare sbatch'] * 100:+.0f}%), "
                  f"{over / args.jobs * 1000:+.0f} ms per job")
        finally:
            d.close()


if __name__ == "__main__":
    main()
