"""labqd cannot be crashed, hung or bloated through its socket, and its state is its own."""
import os
import socket
import stat
import struct
import subprocess
import time

import psutil
import pytest
from daemonproc import Daemon, as_user, wait_for
from sshnodes import ensure_user

import labq

HEADER = struct.Struct("!LB")  # rpyc's frame header: length, compressed


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("guards"), {
        "daemon": {"socket_mode": "0666", "max_connections_per_user": 8,
                   "idle_timeout": "3s"},
        "limits": {"user_max_pending": 40}})
    with d.start():
        yield d


def _raw(d) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.socket))
    return s


def _closed_by_peer(s: socket.socket, within: float = 5.0) -> bool:
    """labqd hangs up (after at most a goodbye frame of rpyc's) within `within` seconds."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            if s.recv(65536) == b"":
                return True
        return False
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_a_compressed_frame_is_dropped_unread(daemon):
    import zlib
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # ~64 KB that would inflate to 64 MiB
    s = _raw(daemon)
    s.sendall(HEADER.pack(len(bomb), 1) + bomb + b"\n")
    assert _closed_by_peer(s)
    with daemon.client() as q:
        assert q.ping()["pid"] == daemon.proc.pid
    assert psutil.Process(daemon.proc.pid).memory_info().rss < 200 << 20


def test_an_oversized_frame_is_dropped_before_it_is_read(daemon):
    s = _raw(daemon)
    s.sendall(HEADER.pack(1 << 31, 0) + b"x" * 4096)
    assert _closed_by_peer(s)
    with daemon.client() as q:
        assert q.ping()["pid"] == daemon.proc.pid


def test_an_idle_connection_is_closed(daemon):
    s = _raw(daemon)
    assert _closed_by_peer(s, within=10)


def test_one_user_cannot_take_every_connection(daemon):
    uid, gid = ensure_user("labqtest")
    other_uid, other_gid = ensure_user("labqtest2")

    def flood():
        held, codes = [], []
        for _ in range(20):
            try:
                c = labq.connect(daemon.socket)
                c.ping()
                held.append(c)
            except labq.errors.LabqError as e:
                codes.append(e.code)
        for c in held:
            c.close()
        return [len(held), codes]

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # hold the user's connections open while another user is served
        os.close(r)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        conns = [labq.connect(daemon.socket) for _ in range(8)]
        for c in conns:
            c.ping()
        os.write(w, b"x")
        time.sleep(2.5)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    try:
        def mine():
            try:
                labq.connect(daemon.socket).ping()
                return "ok"
            except labq.errors.LabqError as e:
                return e.code
        assert as_user(uid, gid, mine) == "RATE_LIMITED"
        assert as_user(other_uid, other_gid, mine) == "ok"
    finally:
        os.waitpid(pid, 0)
    time.sleep(0.5)  # labqd sees the child's connections close
    # its connections closed, the user is served again
    held, codes = as_user(uid, gid, flood)
    assert held == 8 and set(codes) == {"RATE_LIMITED"}
    with daemon.client() as q:
        assert q.ping()["pid"] == daemon.proc.pid


def test_running_out_of_descriptors_does_not_stop_labqd(tmp_path):
    d = Daemon(tmp_path, {"daemon": {"local_node": False}})
    with d.start():
        subprocess.run(["prlimit", f"--pid={d.proc.pid}", "--nofile=48:"], check=True)
        socks = []
        for _ in range(80):  # root is not capped per user: this reaches EMFILE in labqd
            try:
                socks.append(_raw(d))
            except OSError:
                break
        time.sleep(1.0)
        assert d.proc.poll() is None
        for s in socks:
            s.close()
        subprocess.run(["prlimit", f"--pid={d.proc.pid}", "--nofile=4096:"], check=True)
        wait_for(lambda: _pings(d), 20, what="labqd serving again")
        assert "accept failed" in d.log()
    assert d.proc.returncode == 0  # stopped when asked, with success


def _pings(d) -> bool:
    try:
        with d.client() as q:
            return q.ping()["pid"] == d.proc.pid
    except labq.errors.LabqError:
        return False


def test_submits_beyond_the_pending_limit_are_refused_and_others_still_served(daemon):
    uid, gid = ensure_user("labqtest")

    def fill():
        with labq.connect(daemon.socket) as q:
            ids = []
            try:
                for _ in range(60):
                    ids.append(q.submit(["true"], hold=True, cwd="/", export_env=False).id)
            except labq.errors.QuotaExceeded as e:
                err = e.details.get("limit")
            q.cancel(*ids)
            return [len(ids), err]
    assert as_user(uid, gid, fill) == [40, "user_max_pending"]


def test_state_is_private_whatever_the_umask(tmp_path):
    d = Daemon(tmp_path, {"daemon": {"local_node": True}})
    old = os.umask(0)
    try:
        d.start(wait_nodes=1)
    finally:
        os.umask(old)
    try:
        with d.client() as q:
            job = q.submit(["echo", "secret output"], cwd="/", env={"TOKEN": "t0ps3cret"})
            q.wait(job.id, timeout=30)
        state = d.database.parent
        for path in [state, *state.rglob("*")]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            assert not mode & 0o077, f"{path} is {mode:o}"
    finally:
        d.close()


def test_loose_state_from_before_is_tightened_with_a_warning(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    d = Daemon(tmp_path, {"daemon": {"local_node": False}})
    with d.start():
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert "was readable by others" in d.log()


def test_a_huge_cancel_lets_others_in_between_its_chunks(tmp_path):
    import threading
    d = Daemon(tmp_path, {"daemon": {"local_node": False}})
    with d.start(), d.client() as q:
        ids = [q.submit(["true"], hold=True, cwd="/", export_env=False).id
               for _ in range(3000)]
        served, stop = [], threading.Event()

        def other_user():
            with d.client() as o:
                while not stop.is_set():
                    o.nodes()
                    served.append(time.monotonic())
        t = threading.Thread(target=other_user)
        t.start()
        time.sleep(0.2)
        start = time.monotonic()
        done = q.cancel(*ids)
        end = time.monotonic()
        stop.set()
        t.join()
        assert {j.state.value for j in done} == {"CANCELLED"} and len(done) == 3000
        assert any(start < s < end for s in served), "nobody was served during the cancel"
        # a listing with a limit gives the newest jobs, without the environment
        last = q.jobs(limit=5)
        assert [j.id for j in last] == ids[-5:] and all(j.env is None for j in last)


def test_by_default_a_user_may_queue_ten_thousand_jobs_and_no_more(tmp_path):
    from labq.daemon.admission import DEFAULT_USER_MAX_PENDING
    uid, gid = ensure_user("labqtest")
    other_uid, other_gid = ensure_user("labqtest2")
    d = Daemon(tmp_path, {"daemon": {"local_node": False, "socket_mode": "0666"}})
    with d.start():
        def flood():
            with labq.connect(d.socket) as q:
                n = 0
                try:
                    while n <= DEFAULT_USER_MAX_PENDING:
                        q.submit(["true"], hold=True, cwd="/", export_env=False)
                        n += 1
                except labq.errors.QuotaExceeded as e:
                    return [n, e.details.get("limit")]
            return [n, None]

        def one():
            with labq.connect(d.socket) as q:
                return q.submit(["true"], hold=True, cwd="/", export_env=False).state.value
        assert as_user(uid, gid, flood) == [10_000, "user_max_pending"]
        assert as_user(other_uid, other_gid, one) == "HELD"  # the cap is each user's own


def test_labqd_exits_non_zero_when_it_stops_unasked(tmp_path):
    """Restart=on-failure brings labqd back only if it says it failed: a server loop that ends
    without a stop being asked for (here its listening socket is shut down under it) exits 1."""
    import sys
    d = Daemon(tmp_path, {"daemon": {"local_node": False}})
    d.config_path.write_text(__import__("daemonproc").to_toml(d.config))
    code = ("import sys, threading\n"
            "import labq.daemon.server as server\n"
            "from labq.daemon.main import main\n"
            "made = server.make_server\n"
            "def make(core):\n"
            "    srv = made(core)\n"
            "    threading.Timer(1.0, srv.listener.shutdown, (2,)).start()\n"
            "    return srv\n"
            "server.make_server = make\n"
            "sys.exit(main(['--config', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(d.config_path)], env=d.env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "without a stop being asked for" in r.stderr
