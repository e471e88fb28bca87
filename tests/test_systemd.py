"""The systemd units and the example config, checked against the real tools and a real labqd.

- both units pass `systemd-analyze verify`;
- systemd/labq.toml loads, and a broken copy is refused with the key's path;
- labqd speaks sd_notify: READY=1 only once a client can connect, STOPPING=1 on SIGTERM, and
  exit code 0; a job of the local node outlives the daemon, and the next daemon records how it
  ended;
- under systemd's watchdog labqd pings from its scheduler loop and sends a STATUS= line;
- a config error stops labqd at start with exit code 2 and no READY=1.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshnodes import ensure_group

import labq

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
EXAMPLE = UNITS / "labq.toml"

SYSTEM_EXEC = "ExecStart=/opt/labq/venv/bin/labqd"
USER_EXEC = "ExecStart=%h/.local/bin/labqd"
# what systemd prints for a key it does not know, a value it cannot parse, a missing binary
VERIFY_PROBLEMS = re.compile(r"Unknown (key|section|lvalue)|Failed|ignoring|not executable|"
                             r"Invalid|bad-setting", re.I)


def _labqd() -> str:
    """The labqd console script of the Python running the tests (the one pip installed)."""
    here = Path(sys.executable).with_name("labqd")
    if here.exists():
        return str(here)
    found = shutil.which("labqd")
    if not found:
        pytest.fail("labqd is not installed (pip install -e .)")
    return found


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.fail("systemd-analyze is not on PATH: install the `systemd` package "
                    "(apt-get install systemd); the unit files cannot be checked without it")
    return path


# -- the unit files --------------------------------------------------------------------------
@pytest.mark.parametrize("unit, exec_line, user", [
    ("labqd.service", SYSTEM_EXEC, False),
    ("labqd-user.service", USER_EXEC, True),
])
def test_unit_passes_systemd_analyze_verify(tmp_path, unit, exec_line, user):
    analyze = _systemd_analyze()
    text = (UNITS / unit).read_text()
    assert exec_line in text, f"{unit} should start labqd with {exec_line!r}"
    # verify checks that ExecStart's binary exists: point it at the installed labqd
    labqd = shutil.which("labqd") or _labqd()
    (tmp_path / unit).write_text(text.replace(exec_line, f"ExecStart={labqd}"))
    env = dict(os.environ)
    cmd = [analyze, "verify"]
    if user:
        cmd.append("--user")
        run_dir = tmp_path / "run"  # a user manager needs a runtime directory
        run_dir.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(run_dir)
    cmd.append(str(tmp_path / unit))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"systemd-analyze verify {unit} failed:\n{out}"
    bad = [line for line in out.splitlines() if VERIFY_PROBLEMS.search(line)]
    assert not bad, f"systemd-analyze verify {unit} complained:\n" + "\n".join(bad)


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("unit", ["labqd.service", "labqd-user.service"])
def test_unit_keeps_jobs_alive_and_waits_for_ready(unit):
    """The settings labqd's behaviour depends on: a wrong one kills users' jobs on restart,
    or lets dependants start before the socket exists."""
    s = _unit_settings(UNITS / unit)
    assert s.get("Type") == ["notify"]
    assert s.get("NotifyAccess") == ["main"]
    assert s.get("KillMode") == ["process"], "stopping labqd must not kill the local jobs"
    assert s.get("Restart") == ["on-failure"]
    assert s.get("WatchdogSec") == ["60s"], "a hung scheduler loop must be restarted"
    if unit == "labqd.service":
        assert s.get("StateDirectory") == ["labq"]
        assert s.get("RuntimeDirectory") == ["labq"]
        assert s.get("RuntimeDirectoryMode") == ["0755"]
        assert s.get("ConfigurationDirectory") == ["labq"]
        assert s.get("ExecStart") == ["/opt/labq/venv/bin/labqd --config /etc/labq/labq.toml"]
        # local jobs inherit the sandbox: they must still be able to write home and /tmp
        assert s.get("ProtectSystem", ["no"])[-1] != "strict"
        assert s.get("ProtectHome", ["no"])[-1] in ("no", "false")
        assert s.get("PrivateTmp", ["no"])[-1] in ("no", "false")
        assert "PrivateDevices" not in s and "DeviceAllow" not in s, "GPUs must stay reachable"
    else:
        assert s.get("WantedBy") == ["default.target"]


# -- the example config ----------------------------------------------------------------------
def _check_config(path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LABQ_CONFIG"}
    return subprocess.run([_labqd(), "--check-config", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_example_config_loads():
    ensure_group("labq-users")  # the example's socket_group must exist for it to load
    res = _check_config(EXAMPLE)
    assert res.returncode == 0, res.stderr
    assert "/run/labq/labq.sock" in res.stdout
    for node in ("gpu1", "gpu2", "head (local)"):
        assert node in res.stdout


def _known_keys(tmp_path: Path, where: str, toml: str) -> set[str]:
    """The keys labqd accepts at `where`, from its own unknown-key message."""
    from labq.daemon.config import ConfigError, load

    path = tmp_path / "probe.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.path == f"{where}.zz_unknown", str(err.value)
    m = re.search(r"known here: ([^)]*)", str(err.value))
    assert m, str(err.value)
    return set(m.group(1).split(", "))


def test_example_config_covers_every_key(tmp_path):
    """Each key labqd accepts appears in the example, so admins find all of them there."""
    import tomllib

    example = tomllib.loads(EXAMPLE.read_text())
    probes = {
        "daemon": ("[daemon]\nzz_unknown = 1\n", example["daemon"]),
        "scheduler": ("[scheduler]\nzz_unknown = 1\n", example["scheduler"]),
        "limits": ("[limits]\nzz_unknown = 1\n", example["limits"]),
        "groups.g": ("[groups.g]\nzz_unknown = 1\n",
                     {k: v for g in example["groups"].values() for k, v in g.items()}),
        "tokens": ("[tokens]\nzz_unknown = 1\n", example["tokens"]),
        "metrics": ("[metrics]\nzz_unknown = 1\n", example["metrics"]),
        "notify": ("[notify]\nzz_unknown = 1\n", example["notify"]),
        "notify.webhook": ("[notify.webhook]\nzz_unknown = 1\n", example["notify"]["webhook"]),
        "notify.command": ("[notify.command]\nzz_unknown = 1\n", example["notify"]["command"]),
        "node[0]": ('[[node]]\nname = "n"\nzz_unknown = 1\n',
                    {k: v for n in example["node"] for k, v in n.items()}),
        "node[0].gpus[0]": ('[[node]]\nname = "n"\nhost = "h"\n'
                            'gpus = [{type = "t", zz_unknown = 1}]\n',
                            {k: v for n in example["node"] for g in n.get("gpus", [])
                             for k, v in g.items()}),
    }
    missing = []
    for where, (toml, shown) in probes.items():
        known = _known_keys(tmp_path, where, toml)
        missing += [f"{where}.{k}" for k in sorted(known - set(shown))]
    assert not missing, f"systemd/labq.toml does not show: {missing}"
    # the kinds of node: SSH with every key, an SSH config alias, a Slurm pool, the local machine
    alias_keys = {"name", "host", "ssh_config", "gpu_indices", "enabled"}
    kinds = sorted("local" if n.get("local") else "alias" if set(n) <= alias_keys
                   else n.get("kind", "ssh") for n in example["node"])
    assert kinds == ["alias", "local", "slurm", "ssh"], kinds


@pytest.mark.parametrize("old, new, key", [
    ('socket = "/run/labq/labq.sock"', 'sockett = "/run/labq/labq.sock"', "daemon.sockett"),
    ("port = 22", 'port = "x"', "node[0].port"),
])
def test_broken_example_config_is_refused(tmp_path, old, new, key):
    text = EXAMPLE.read_text()
    assert text.count(old) == 1
    bad = tmp_path / "labq.toml"
    bad.write_text(text.replace(old, new))
    res = _check_config(bad)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert key in res.stderr, res.stderr


# -- a real labqd under an sd_notify socket --------------------------------------------------
def _notify_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    return s


def _daemon_env(tmp: Path, notify_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LABQ_CONFIG", "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "XDG_RUNTIME_DIR")}
    (tmp / "home").mkdir(exist_ok=True)
    env.update(LABQ_SOCKET=str(tmp / "labq.sock"), XDG_STATE_HOME=str(tmp / "state"),
               HOME=str(tmp / "home"),  # the local node's job directories go below it
               NOTIFY_SOCKET=str(notify_path))
    return env


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([_labqd(), *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _expect(ns: socket.socket, want: str, proc: subprocess.Popen, log: Path,
            timeout: float) -> list[str]:
    """Read notify datagrams until one carries `want`; return every line received."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"labqd did not send {want} within {timeout} s (got {seen}); "
                        f"exit code {proc.poll()}; its log:\n{log.read_text()}")
        ns.settimeout(min(0.5, left))
        try:
            data = ns.recv(4096)
        except TimeoutError:
            if proc.poll() is not None and want != "STOPPING=1":
                pytest.fail(f"labqd exited with {proc.returncode} before sending {want}; "
                            f"its log:\n{log.read_text()}")
            continue
        lines = data.decode().splitlines()
        seen += lines
        if want in lines:
            return seen


def _wait_for(what: str, cond, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}"
                + (f"; labqd's log:\n{log.read_text()}" if log else ""))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_sd_notify_lifecycle_and_jobs_outlive_the_daemon(tmp_path):
    notify_path = tmp_path / "notify.sock"
    ns = _notify_socket(notify_path)
    env = _daemon_env(tmp_path, notify_path)
    sock = tmp_path / "labq.sock"
    log = tmp_path / "labqd.log"
    work = tmp_path / "work"
    work.mkdir()
    marker, go, job_pid_file = work / "MARKER", work / "GO", work / "job.pid"
    # the job reports its pid, waits for GO (at most 120 s), then writes the marker
    script = ('echo $$ > job.pid; for i in $(seq 1200); do [ -e GO ] && break; sleep 0.1; '
              'done; [ -e GO ] && echo done > MARKER')
    first = second = None
    job_pid = None
    try:
        first = _start(env, log)
        _expect(ns, "READY=1", first, log, timeout=20)
        # READY=1 promises a listening socket: connect at once, no retry
        with labq.connect(sock, timeout=10) as q:
            assert q.ping()
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # no socket_group: owner only
            job = q.submit(["bash", "-c", script], cwd=str(work), name="outlives-labqd")
            _wait_for("the job to be RUNNING",
                      lambda: q.job(job.id).state == labq.JobState.RUNNING, 30, log)
            _wait_for("the job to start", lambda: job_pid_file.exists()
                      and job_pid_file.read_text().strip(), 30, log)
            job_pid = int(job_pid_file.read_text())
            assert q.job(job.id).node  # placed on the local node

        first.send_signal(signal.SIGTERM)
        _expect(ns, "STOPPING=1", first, log, timeout=10)
        t0 = time.monotonic()
        try:
            rc = first.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"labqd did not exit within 10 s of SIGTERM; log:\n{log.read_text()}")
        assert rc == 0, f"labqd exited with {rc} after SIGTERM; log:\n{log.read_text()}"
        assert time.monotonic() - t0 < 10
        assert not sock.exists(), "labqd left its socket behind"

        # the daemon is gone; the job is not
        time.sleep(0.5)
        assert _alive(job_pid), "the job died with labqd"
        assert not marker.exists()
        go.touch()
        _wait_for("the job to write its marker after labqd exited", marker.exists, 30)
        assert marker.read_text().strip() == "done"
        _wait_for("the job to exit", lambda: not _alive(job_pid), 30)

        # the next daemon finds the job's exit record and records the end
        second = _start(env, log)
        _expect(ns, "READY=1", second, log, timeout=20)
        with labq.connect(sock, timeout=10) as q:
            done = q.wait(job.id, timeout=60)[0]
            assert done.state == labq.JobState.COMPLETED, (done, log.read_text())
            assert done.exit_code == 0
        second.send_signal(signal.SIGTERM)
        _expect(ns, "STOPPING=1", second, log, timeout=10)
        assert second.wait(timeout=10) == 0
    finally:
        _stop(first)
        _stop(second)
        if job_pid is not None and _alive(job_pid):
            try:
                os.killpg(job_pid, signal.SIGKILL)  # the job leads its own process group
            except OSError:
                pass
        ns.close()


def test_labqd_pings_the_watchdog_from_its_loop_and_says_how_the_queue_stands(tmp_path):
    notify_path = tmp_path / "notify.sock"
    ns = _notify_socket(notify_path)
    env = _daemon_env(tmp_path, notify_path)
    env["WATCHDOG_USEC"] = "3000000"  # as systemd sets it for WatchdogSec=3s
    log = tmp_path / "labqd.log"
    proc = None
    try:
        proc = _start(env, log)
        _expect(ns, "READY=1", proc, log, timeout=20)
        with labq.connect(tmp_path / "labq.sock", timeout=10) as q:
            q.submit(["true"], hold=True, export_env=False, cwd="/tmp")
        _expect(ns, "STATUS=1 pending, 0 running, 1/1 nodes up", proc, log, timeout=20)
        # a ping at least every second (a third of the 3 s), with no pass asked for
        seen = _expect(ns, "WATCHDOG=1", proc, log, timeout=5)
        seen += _expect(ns, "WATCHDOG=1", proc, log, timeout=5)
        assert seen.count("WATCHDOG=1") >= 2
    finally:
        _stop(proc)
        ns.close()


def test_config_error_stops_labqd_at_start(tmp_path):
    notify_path = tmp_path / "notify.sock"
    ns = _notify_socket(notify_path)
    env = _daemon_env(tmp_path, notify_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('[scheduler]\nbackfill = true\ninterval = "soon"\n')
    try:
        res = subprocess.run([_labqd(), "--config", str(bad)], env=env, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert res.returncode == 2, (res.returncode, res.stderr)
        assert "scheduler.interval" in res.stderr, res.stderr
        assert not (tmp_path / "labq.sock").exists()
        ns.setblocking(False)
        try:
            got = ns.recv(4096).decode()
        except BlockingIOError:
            got = ""
        assert "READY=1" not in got, "labqd reported READY with a broken config"
    finally:
        ns.close()
