"""The node agent: one stdlib-only program per node, speaking JSON lines on stdin/stdout.

labqd starts it over one SSH exec channel (remote nodes) or a pipe (the local machine). It
probes the node, launches jobs detached so they outlive the agent, the link and labqd, streams
their log bytes and exit records back, and on start reports what it finds in the job
directories. It must run on any python3 >= 3.8 without third-party packages (psutil and pynvml
are used when importable).

Job directory layout (<root>/<cluster>/<job id>.<run>/, run = the job's restart count, so a
requeued job never collides with what an earlier run left behind):
    spec.json   what to run          pid     {"pid", "pgid", "start"} once started
    log         stdout + stderr      exit    {"code", "signal", "reason", "end"} once ended
    cancel      asks the shepherd to stop the job ("cancel" or "timeout")

Each job has a shepherd: a double-forked process in its own session that starts the job in a
new session (so its process group is its own), enforces the time limit, carries out cancel
requests (SIGTERM to the group, SIGKILL after the grace period) and writes the exit record.
Because the shepherd, not the agent, owns the job, the agent can die and come back freely.
"""
import base64
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

PROTOCOL = 1
POLL_S = 0.02
CHUNK = 256 * 1024
SMI_QUERY = "index,name,memory.total,memory.used,utilization.gpu,uuid"


# -- probing -------------------------------------------------------------------------------
def parse_nvidia_smi(text):
    """Parse `nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue

        def num(i):
            try:
                return int(float(parts[i]))
            except (IndexError, ValueError):
                return None  # "[N/A]", "[Not Supported]"
        gpus.append({"index": int(parts[0]), "type": parts[1], "memory_mb": num(2) or 0,
                     "memory_used_mb": num(3), "utilization": num(4),
                     "uuid": parts[5] if len(parts) > 5 and parts[5].startswith("GPU-") else None})
    return gpus


def probe_nvml():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old pynvml wrapper warns on import
        import pynvml  # raises ImportError where absent
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except pynvml.NVMLError:
                util = None
            gpus.append({"index": i, "type": name.decode() if isinstance(name, bytes) else name,
                         "memory_mb": int(mem.total) >> 20, "memory_used_mb": int(mem.used) >> 20,
                         "utilization": util,
                         "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid})
        return gpus
    finally:
        pynvml.nvmlShutdown()


def probe_smi():
    exe = shutil.which("nvidia-smi")
    if not exe:
        raise FileNotFoundError("nvidia-smi not found on PATH")
    out = subprocess.run([exe, "--query-gpu=" + SMI_QUERY, "--format=csv,noheader,nounits"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                         universal_newlines=True)
    if out.returncode != 0:
        raise RuntimeError("nvidia-smi exited %d: %s" % (out.returncode, out.stderr.strip()[:200]))
    return parse_nvidia_smi(out.stdout)


def probe_gpus(prefer=None):
    """(source, gpus, notes): NVML, else nvidia-smi, else none."""
    notes = []
    for source, fn in (("nvml", probe_nvml), ("nvidia-smi", probe_smi)):
        if prefer and source != prefer:
            continue
        try:
            return source, fn(), notes
        except ImportError:
            notes.append("nvml: pynvml not installed")
        except Exception as e:  # no driver, no device, tool missing
            notes.append("%s: %s" % (source, str(e) or type(e).__name__))
    return "none", [], notes


def probe_host():
    try:
        import psutil
        cpus = len(psutil.Process().cpu_affinity() or []) or psutil.cpu_count()
        mem = psutil.virtual_memory().total >> 20
    except Exception:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        mem = _meminfo().get("MemTotal", 0) >> 10
    return {"cpus": cpus or 1, "memory_mb": mem, "hostname": socket.gethostname(),
            "python": sys.version.split()[0]}


def _meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class CpuMeter:
    """CPU use since the previous reading, from psutil or /proc/stat."""

    def __init__(self):
        self.prev = self._times()

    @staticmethod
    def _times():
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return sum(vals), idle
        except (OSError, ValueError, IndexError):
            return None

    def percent(self):
        now = self._times()
        prev, self.prev = self.prev, now
        if not now or not prev or now[0] == prev[0]:
            return None
        return round(100.0 * (1 - (now[1] - prev[1]) / float(now[0] - prev[0])), 1)


# -- files -----------------------------------------------------------------------------------
def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- the shepherd (runs in its own session, forked from the agent) --------------------------
def shepherd(jobdir, spec, grace_s):
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(jobdir, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.fork()
    if pid == 0:  # the job
        try:
            os.setsid()
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                        signal.SIGHUP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (ValueError, OSError):
                    pass
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if spec.get("user"):
                _become(spec["user"])
            try:
                os.chdir(spec["cwd"])
            except OSError as e:
                os.write(2, ("labq: cannot enter working directory %r: %s\n"
                             % (spec["cwd"], e.strerror)).encode())
                os._exit(1)
            argv = spec["argv"]
            try:
                os.execvpe(argv[0], argv, spec["env"])
            except OSError as e:
                os.write(2, ("labq: cannot run %r: %s\n" % (argv[0], e.strerror)).encode())
                os._exit(127 if e.errno == errno.ENOENT else 126)
        finally:
            os._exit(127)
    start = time.time()
    write_json(os.path.join(jobdir, "pid"), {"pid": pid, "pgid": pid, "start": start,
                                             "shepherd": os.getpid()})
    limit = spec.get("time_limit_s")
    deadline = start + limit if limit else None
    stop_reason, kill_at, status = None, None, None
    cancel_path = os.path.join(jobdir, "cancel")
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        now = time.time()
        if stop_reason is None:
            if os.path.exists(cancel_path):
                try:
                    with open(cancel_path) as f:
                        stop_reason = f.read().strip() or "cancel"
                except OSError:
                    stop_reason = "cancel"
            elif deadline is not None and now >= deadline:
                stop_reason = "timeout"
            if stop_reason:
                _killpg(pid, signal.SIGTERM)
                kill_at = now + grace_s
        elif kill_at is not None and now >= kill_at:
            _killpg(pid, signal.SIGKILL)
            kill_at = None
        time.sleep(0.05)
    # the job's leader is gone; whatever it left in its group goes with it
    _killpg(pid, signal.SIGKILL)
    code = sig = None
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    write_json(os.path.join(jobdir, "exit"), {"code": code, "signal": sig,
                                              "reason": stop_reason or "exit", "end": time.time(),
                                              "start": start})


def _become(user):
    """Drop to the job owner's account (run_as_owner nodes; the agent runs as root there)."""
    import pwd
    try:
        pw = pwd.getpwnam(user)
        os.initgroups(user, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except (KeyError, OSError) as e:
        os.write(2, ("labq: cannot run as user %r on this node: %s\n" % (user, e)).encode())
        os._exit(126)


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def spawn_shepherd(jobdir, spec, grace_s):
    """Double fork so the shepherd belongs to init, not to the agent or its SSH session."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        shepherd(jobdir, spec, grace_s)
    except BaseException:
        pass
    os._exit(0)


# -- the agent -------------------------------------------------------------------------------
class Agent:
    def __init__(self, root, cluster, node):
        self.dir = os.path.join(os.path.expanduser(root), cluster)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.node = node
        self.out_lock = threading.Lock()
        self.watch_lock = threading.Lock()
        self.watched = {}  # job id -> log offset to stream from
        self.exit_sent = set()
        self.cpu = CpuMeter()
        self.gpu_source = None

    def send(self, msg):
        line = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        with self.out_lock:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    def jobdir(self, key):
        if not _is_key(key):
            raise ValueError("bad job key %r" % (key,))
        return os.path.join(self.dir, key)

    # requests --------------------------------------------------------------------------
    def op_launch(self, req):
        job = req["job"]
        jobdir = self.jobdir(job)
        try:
            os.mkdir(jobdir, 0o700)  # atomic: a second launch of the same run fails here
        except FileExistsError:
            return {"ok": False, "code": "exists", "error": "job %s already launched here" % job}
        spec = {"argv": list(req["argv"]), "env": dict(req["env"]), "cwd": req["cwd"],
                "time_limit_s": req.get("time_limit_s"), "user": req.get("user")}
        if os.geteuid() != 0:
            if req.get("uid") != os.geteuid() and not req.get("shared"):
                os.rmdir(jobdir)
                return {"ok": False, "code": "account",
                        "error": "this node's agent runs as uid %d and runs no one else's jobs"
                                 % os.geteuid()}
            spec["user"] = None
        write_json(os.path.join(jobdir, "spec.json"), spec)
        spawn_shepherd(jobdir, spec, float(req.get("grace_s", 10)))
        with self.watch_lock:
            self.watched[job] = 0
        return {"ok": True}

    def op_list(self, req):
        jobs = []
        for name in os.listdir(self.dir):
            if not _is_key(name):
                continue
            d = self.jobdir(name)
            pid = read_json(os.path.join(d, "pid"))
            ex = read_json(os.path.join(d, "exit"))
            try:
                size = os.path.getsize(os.path.join(d, "log"))
            except OSError:
                size = 0
            if ex is None and pid is not None:
                ex = lost_run(d, name, pid)
            try:
                age = time.time() - os.path.getmtime(d)
            except OSError:
                age = 0.0
            jobs.append({"job": name, "pid": pid, "exit": ex, "log_size": size,
                         "started": pid is not None or ex is not None, "age": age})
        return {"ok": True, "jobs": jobs}

    def op_watch(self, req):
        job = req["job"]
        if not os.path.isdir(self.jobdir(job)):
            return {"ok": False, "code": "unknown", "error": "no job %s here" % job}
        with self.watch_lock:
            self.watched[job] = int(req.get("offset", 0))
            self.exit_sent.discard(job)
        return {"ok": True}

    def op_cancel(self, req):
        jobdir = self.jobdir(req["job"])
        if not os.path.isdir(jobdir):
            return {"ok": False, "code": "unknown", "error": "no job %s here" % req["job"]}
        with open(os.path.join(jobdir, "cancel"), "w") as f:
            f.write(req.get("reason", "cancel"))
        return {"ok": True}

    def op_forget(self, req):
        job = req["job"]
        with self.watch_lock:
            self.watched.pop(job, None)
            self.exit_sent.discard(job)
        shutil.rmtree(self.jobdir(job), ignore_errors=True)
        return {"ok": True}

    def op_ping(self, req):
        stats = {"cpu_percent": self.cpu.percent()}
        try:
            import psutil
            vm = psutil.virtual_memory()
            stats["memory_used_mb"] = (vm.total - vm.available) >> 20
        except Exception:
            mi = _meminfo()
            stats["memory_used_mb"] = (mi.get("MemTotal", 0) - mi.get("MemAvailable", 0)) >> 10
        if req.get("gpus") and self.gpu_source in ("nvml", "nvidia-smi"):
            source, gpus, _ = probe_gpus(self.gpu_source)
            stats["gpus"] = gpus
        return dict(ok=True, time=time.time(), **stats)

    # loops -----------------------------------------------------------------------------
    def monitor(self):
        """Stream new log bytes of watched jobs, then their exit record once drained."""
        checked = {}  # job -> when its shepherd was last seen alive
        while True:
            with self.watch_lock:
                items = list(self.watched.items())
            busy = False
            for job, offset in items:
                jobdir = self.jobdir(job)
                data = b""
                try:
                    with open(os.path.join(jobdir, "log"), "rb") as f:
                        f.seek(offset)
                        data = f.read(CHUNK)
                except OSError:
                    pass
                if data:
                    busy = True
                    with self.watch_lock:
                        if self.watched.get(job) != offset:
                            continue  # re-watched meanwhile
                        self.watched[job] = offset + len(data)
                    self.send({"ev": "log", "job": job, "offset": offset,
                               "data": base64.b64encode(data).decode()})
                    continue
                if job in self.exit_sent:
                    continue
                ex = read_json(os.path.join(jobdir, "exit"))
                if ex is None and time.time() - checked.get(job, 0) > 1.0:
                    # a shepherd killed on its own (OOM killer, kill -9) writes no record
                    checked[job] = time.time()
                    pid = read_json(os.path.join(jobdir, "pid"))
                    if pid is not None:
                        ex = lost_run(jobdir, job, pid)
                if ex is not None:
                    with self.watch_lock:
                        self.exit_sent.add(job)
                    ex.update(ev="exit", job=job, log_size=offset)
                    self.send(ex)
            if not busy:
                time.sleep(POLL_S)

    def serve(self):
        source, gpus, notes = probe_gpus()
        self.gpu_source = source
        import pwd
        try:
            me = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            me = str(os.geteuid())
        hello = {"ev": "hello", "protocol": PROTOCOL, "node": self.node, "pid": os.getpid(),
                 "euid": os.geteuid(), "user": me,
                 "gpu_source": source, "gpus": gpus, "gpu_notes": notes}
        hello.update(probe_host())
        self.send(hello)
        threading.Thread(target=self.monitor, daemon=True).start()
        ops = {"launch": self.op_launch, "list": self.op_list, "watch": self.op_watch,
               "cancel": self.op_cancel, "forget": self.op_forget, "ping": self.op_ping}
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                return  # labqd went away; jobs carry on under their shepherds
            try:
                req = json.loads(line)
                fn = ops.get(req.get("op"))
                reply = fn(req) if fn else {"ok": False, "code": "bad_op",
                                            "error": "unknown op %r" % req.get("op")}
            except Exception as e:
                req = req if isinstance(req, dict) else {}
                reply = {"ok": False, "code": "error", "error": "%s: %s" % (type(e).__name__, e)}
            reply["re"] = req.get("id")
            self.send(reply)


def lost_run(jobdir, key, pid):
    """The exit record of a run whose shepherd died without writing one (node rebooted, OOM
    killer), or None while the shepherd lives. The run counts as lost and will be requeued,
    so what is left of its job, now unsupervised, is killed: never two live copies."""
    if _alive(pid.get("shepherd")):
        return None
    ex = read_json(os.path.join(jobdir, "exit"))
    if ex is not None:  # written just before the shepherd ended
        return ex
    pgid = pid.get("pgid")
    want = [("LABQ_JOB_ID=%s" % key.partition(".")[0]).encode(),
            ("LABQ_RESTART_COUNT=%s" % key.partition(".")[2]).encode()]
    try:
        with open("/proc/%d/environ" % int(pgid), "rb") as f:
            env = f.read().split(b"\0")
        if all(w in env for w in want):  # the group's leader is still this run's job
            _killpg(int(pgid), signal.SIGKILL)
    except (OSError, TypeError, ValueError):
        pass
    ex = {"code": None, "signal": None, "reason": "lost", "end": time.time(),
          "start": pid.get("start")}
    try:
        write_json(os.path.join(jobdir, "exit"), ex)
    except OSError:
        pass
    return ex


def _is_key(name):
    job, dot, run = str(name).partition(".")
    return bool(dot) and job.isdigit() and run.isdigit()


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def take_lock(directory):
    """One agent per node and cluster: a stale agent from a dead link is told to go."""
    import fcntl
    path = os.path.join(directory, "agent.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.time() + 10
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            try:
                old = int(os.pread(fd, 32, 0).decode().strip() or 0)
                if old and old != os.getpid():
                    os.kill(old, signal.SIGTERM)
            except (ValueError, OSError):
                pass
            if time.time() > deadline:
                raise SystemExit("another labq agent holds %s" % path)
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = dict(zip(argv[::2], argv[1::2]))
    agent = Agent(opts.get("--root", "~/.local/state/labq-node"), opts.get("--cluster", "default"),
                  opts.get("--node", socket.gethostname()))
    agent.lock_fd = take_lock(agent.dir)
    agent.serve()


if __name__ == "__main__":
    main()
