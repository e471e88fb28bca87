"""Remote benchmark: a real labqd with TLS on loopback. Prints figures; asserts nothing.

    python3 tests/bench/bench_remote.py [--submits N]

Run as root: the submits are a test user's (labqtest) on both transports, since no token acts
as root; the unix socket's are sent from a child that has become that user.

- the round trip of one submit over TLS and over the unix socket (median, p95) and their ratio;
- sequential submits per second over TLS on one connection;
- a new TLS connection with its token (what one `labq` command over TCP pays once).
"""
import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemonproc import Daemon, as_user  # noqa: E402
from sshnodes import ensure_user  # noqa: E402

import labq  # noqa: E402

USER = "labqtest"


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def submit_times(q, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        q.submit(["true"], hold=True, export_env=False, cwd="/tmp")
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--submits", type=int, default=1000)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = Path(tempfile.mkdtemp(prefix="labq-bench-remote-"))
    uid, gid = ensure_user(USER)
    d = Daemon(base, {"daemon": {"log_level": "info", "local_node": False,
                                 "socket_mode": "0666", "listen": f"127.0.0.1:{port}"}})
    d.start()
    try:
        fp = re.search(r"fingerprint (SHA256:\S+)", d.log()).group(1)
        url = f"labq://127.0.0.1:{port}"
        with d.client() as local:
            token = local.create_token(user=USER)["token"]

        def unix_submits():
            with labq.connect(d.socket) as q:
                return submit_times(q, args.submits)
        unix = as_user(uid, gid, unix_submits)
        connects = []
        for _ in range(50):
            t = time.perf_counter()
            labq.connect(url, token=token, fingerprint=fp).close()
            connects.append(time.perf_counter() - t)
        with labq.connect(url, token=token, fingerprint=fp) as q:
            t0 = time.perf_counter()
            tls = submit_times(q, args.submits)
            wall = time.perf_counter() - t0
    finally:
        d.close()
    um, tm = statistics.median(unix), statistics.median(tls)
    print(f"submit round trip, unix socket: median {um * 1e3:.2f} ms, p95 "
          f"{pct(unix, 95) * 1e3:.2f} ms ({args.submits} submits)")
    print(f"submit round trip, TLS on loopback: median {tm * 1e3:.2f} ms, p95 "
          f"{pct(tls, 95) * 1e3:.2f} ms")
    print(f"TLS / unix ratio (medians): {tm / um:.2f}")
    print(f"sequential remote submits: {args.submits / wall:.0f} /s")
    print(f"new TLS connection with its token: median {statistics.median(connects) * 1e3:.1f} "
          f"ms, p95 {pct(connects, 95) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
