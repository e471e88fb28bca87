"""The agent: JSON lines on stdin/stdout, launches, watches, reports."""
import base64
import json
import os
import pwd
import select
import shutil
import signal
import socket
import sys
import threading
import time

from .cgroups import Containment, cg_destroy, cg_exists, sweep_marker
from .ends import Announcer, open_ends_socket, read_ends, wake_shepherd
from .files import is_dir, is_run_key, lsize, open_nofollow, read_json, write_json, write_text
from .probe import CpuMeter, meminfo, probe_gpus, probe_host
from .shepherd import killpg_quiet, spawn_shepherd
from .streams import ERR_NAME, RunLog
from .transfer import TransferError, Transfers

PROTOCOL = 1
POLL_S = 0.02
SCAN_S = 1.0
GONE = ".gone"  # the suffix of a run directory being removed
CHUNK = 256 * 1024


# -- the agent -------------------------------------------------------------------------------
class Agent:
    def __init__(self, directory, cluster, node, containment=None, no_root_jobs=False):
        self.dir = directory
        self.cluster = cluster
        self.node = node
        self.containment = containment or Containment("none", "not probed")
        self.no_root_jobs = no_root_jobs
        self.lock_fd = None  # the agent lock, held for the agent's life
        self.out_lock = threading.Lock()
        self.watch_lock = threading.Lock()
        self.shepherds = set()  # pids of this agent's shepherds, reaped once they end
        self.watched = {}  # job id -> log offset to stream from
        self.exit_sent = set()
        self.cpu = CpuMeter()
        self.gpu_source = None
        self.announce = Announcer(directory)

    def send(self, msg, flush=True):
        line = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        with self.out_lock:
            sys.stdout.buffer.write(line)
            if flush:
                sys.stdout.buffer.flush()

    def flush(self):
        with self.out_lock:
            sys.stdout.buffer.flush()

    def jobdir(self, key):
        if not is_run_key(key):
            raise ValueError("bad job key %r" % (key,))
        return os.path.join(self.dir, key)

    def log_path(self, key):
        return os.path.join(self.jobdir(key), "log")

    # requests --------------------------------------------------------------------------
    def op_launch(self, req):
        job = req["job"]
        jobdir = self.jobdir(job)
        euid = os.geteuid()
        uid = req.get("uid")
        if uid is not None and euid != 0 and int(uid) != euid and not req.get("shared"):
            return {"ok": False, "code": "account",
                    "error": "this node's agent runs as %s (uid %d): it runs only that "
                             "account's jobs, not uid %d's" % (_user_name(euid), euid, int(uid))}
        if uid is None and req.get("user") and euid != 0:
            return {"ok": False, "code": "error",
                    "error": "run_as_owner needs the node's agent to run as root"}
        try:
            os.mkdir(jobdir, 0o700)  # atomic: a second launch of the same run fails here
        except FileExistsError:
            return {"ok": False, "code": "exists", "error": "job %s already launched here" % job}
        port = req.get("master_port")
        if port is not None and not _port_free(int(port)):
            os.rmdir(jobdir)
            return {"ok": False, "code": "port", "error": "MASTER_PORT %d is in use" % port}
        spec = {"argv": list(req["argv"]), "env": dict(req["env"]), "cwd": req["cwd"],
                "time_limit_s": req.get("time_limit_s"),
                "early_signal": req.get("early_signal"), "user": req.get("user"),
                "uid": None if uid is None else int(uid), "shared": bool(req.get("shared")),
                "memory_mb": req.get("memory_mb"), "pids_max": req.get("pids_max"),
                "marker": "%s/%s/%s" % (self.cluster, self.node, job)}
        try:
            spec["cgroup"] = self.containment.create(job, spec["memory_mb"], spec["pids_max"])
        except OSError as e:
            shutil.rmtree(jobdir, ignore_errors=True)
            return {"ok": False, "code": "error",
                    "error": "cannot make the run's cgroup: %s" % e}
        write_json(os.path.join(jobdir, "spec.json"), spec, durable=False)
        # made before the shepherd: a run's log is never read without it, so none of its
        # stderr is taken for stdout
        write_text(os.path.join(jobdir, ERR_NAME), "")
        pid = spawn_shepherd(jobdir, spec, float(req.get("grace_s", 10)), self.no_root_jobs)
        with self.watch_lock:
            self.shepherds.add(pid)
            idle = not self.watched
            self.watched[job] = 0
        if idle:
            # the monitor may be in its long sleep: a new log to follow. Otherwise it looks
            # at every watched log within POLL_S anyway, and the wake would cost it a turn
            self.announce("")
        return {"ok": True}

    def op_list(self, req):
        jobs = []
        for name in os.listdir(self.dir):
            if not is_run_key(name):
                continue
            d = self.jobdir(name)
            if not is_dir(d):
                continue
            pid = read_json(os.path.join(d, "pid"))
            ex = read_json(os.path.join(d, "exit"))
            size = lsize(os.path.join(d, "log"))
            if ex is None and pid is not None:
                ex = lost_run(d, name, pid)
            try:
                age = time.time() - os.lstat(d).st_mtime
            except OSError:
                age = 0.0
            jobs.append({"job": name, "pid": pid, "exit": ex, "log_size": size,
                         "started": pid is not None or ex is not None, "age": age})
        return {"ok": True, "jobs": jobs}

    def op_watch(self, req):
        job = req["job"]
        if not is_dir(self.jobdir(job)):
            return {"ok": False, "code": "unknown", "error": "no job %s here" % job}
        with self.watch_lock:
            self.watched[job] = int(req.get("offset", 0))
            self.exit_sent.discard(job)
        self.announce(job)  # it may have ended already: look now
        return {"ok": True}

    def op_cancel(self, req):
        jobdir = self.jobdir(req["job"])
        if not is_dir(jobdir):
            return {"ok": False, "code": "unknown", "error": "no job %s here" % req["job"]}
        write_text(os.path.join(jobdir, "cancel"), str(req.get("reason", "cancel")))
        wake_shepherd(jobdir)
        return {"ok": True}

    def op_forget(self, req):
        job = req["job"]
        with self.watch_lock:
            self.watched.pop(job, None)
            self.exit_sent.discard(job)
        jobdir = self.jobdir(job)
        spec = read_json(os.path.join(jobdir, "spec.json")) or {}
        pid = read_json(os.path.join(jobdir, "pid")) or {}
        if cg_exists(spec.get("cgroup")) and not _alive(pid.get("shepherd")):
            cg_destroy(spec["cgroup"])  # a live shepherd removes its own on the way out
        remove_run_dir(jobdir)
        return {"ok": True}

    def op_ping(self, req):
        stats = {"cpu_percent": self.cpu.percent()}
        try:
            import psutil
            vm = psutil.virtual_memory()
            stats["memory_used_mb"] = (vm.total - vm.available) >> 20
        except Exception:
            mi = meminfo()
            stats["memory_used_mb"] = (mi.get("MemTotal", 0) - mi.get("MemAvailable", 0)) >> 10
        if req.get("gpus") and self.gpu_source in ("nvml", "nvidia-smi"):
            source, gpus, _ = probe_gpus(self.gpu_source)
            stats["gpus"] = gpus
        return dict(ok=True, time=time.time(), **stats)

    def describe(self):
        """What a kind of agent adds to its hello."""
        return {}

    # loops -----------------------------------------------------------------------------
    def monitor(self):
        """Stream new log bytes of watched jobs, then their exit record once drained.

        An end wakes this loop at once (a datagram from the shepherd); logs of running jobs
        are read every POLL_S (output reaches labqd promptly: a node may die any moment); every
        SCAN_S each watched run's directory is checked as well, for ends nobody announced
        (a shepherd killed, an agent restarted)."""
        ends = open_ends_socket(self.dir)
        files = {}  # job -> open log file
        last_scan = 0.0
        due = set()  # announced ends not reported yet
        while True:
            exits = []  # this turn's ends, reported in one message
            with self.watch_lock:
                items = list(self.watched.items())
            ended = read_ends(ends) if ends is not None else set()
            due |= ended
            now = time.time()
            scan = now - last_scan >= SCAN_S
            if scan:
                last_scan = now
            busy = False
            for job, offset in items:
                if self._stream(job, offset, files):
                    busy = True
                elif job not in self.exit_sent and (scan or job in due):
                    if self._report_exit(job, offset, files, scan, exits):
                        due.discard(job)
            due &= {job for job, _ in items}
            if exits:
                # after the turn's log chunks: labqd has a run's whole log when its end comes
                self.send(exits[0] if len(exits) == 1 else {"ev": "exits", "exits": exits},
                          flush=False)
            if ended or scan:  # a shepherd ends just after announcing it; the scan reaps it
                self._reap()
            self.flush()  # what this turn found goes out in one write
            for job in list(files):
                if job not in self.watched:
                    files.pop(job).close()
            if busy:
                continue
            timeout = POLL_S if items else SCAN_S
            if ends is not None:
                select.select([ends], [], [], timeout)
            else:
                time.sleep(min(timeout, POLL_S))

    def _reap(self):
        with self.watch_lock:
            pids = list(self.shepherds)
        for pid in pids:
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                done = pid
            if done:
                with self.watch_lock:
                    self.shepherds.discard(pid)

    def _stream(self, job, offset, files):
        """Send the next chunk of a job's log; False when there is nothing new, None when
        there may be but it cannot be read this moment."""
        f = files.get(job)
        try:
            if f is None:
                f = files[job] = RunLog(self.jobdir(job), self.log_path(job))
            got = f.read(offset, CHUNK)
        except (OSError, ValueError):
            return False
        if got is None:
            return None
        data, err = got
        if not data:
            return False
        with self.watch_lock:
            if self.watched.get(job) != offset:
                return True  # re-watched meanwhile
            self.watched[job] = offset + len(data)
        msg = {"ev": "log", "job": job, "offset": offset,
               "data": base64.b64encode(data).decode()}
        if err:
            msg["err"] = err  # [[start, end], ...] of stderr, in the log's offsets
        self.send(msg, flush=False)
        return True

    def _report_exit(self, job, offset, files, lost_check, exits):
        jobdir = self.jobdir(job)
        ex = read_json(os.path.join(jobdir, "exit"))
        if ex is None and lost_check:
            # a shepherd killed on its own (OOM killer, kill -9) writes no record
            pid = read_json(os.path.join(jobdir, "pid"))
            if pid is not None:
                ex = lost_run(jobdir, job, pid)
        if ex is None:
            return False
        if self._stream(job, offset, files) is not False:
            return False  # written after the last read: drain first, report on the next turn
        with self.watch_lock:
            self.exit_sent.add(job)
        ex.update(ev="exit", job=job, log_size=offset)
        exits.append(ex)
        return True

    def serve(self):
        source, gpus, notes = probe_gpus()
        self.gpu_source = source
        euid = os.geteuid()
        hello = {"ev": "hello", "protocol": PROTOCOL, "node": self.node, "pid": os.getpid(),
                 "gpu_source": source, "gpus": gpus, "gpu_notes": notes,
                 "euid": euid, "user": _user_name(euid), "root_jobs": not self.no_root_jobs,
                 "containment": self.containment.kind,
                 "containment_note": self.containment.note}
        hello.update(probe_host())
        hello.update(self.describe())
        self.send(hello)
        threading.Thread(target=self.monitor, daemon=True).start()
        ops = {"launch": self.op_launch, "list": self.op_list, "watch": self.op_watch,
               "cancel": self.op_cancel, "forget": self.op_forget, "ping": self.op_ping}
        files = Transfers(self.cluster, self.node)
        ops.update({name[3:]: getattr(files, name) for name in dir(files)
                    if name.startswith("op_")})
        stdin = sys.stdin.buffer
        start = []  # the pieces of a line not complete yet (an upload's chunk is megabytes)
        while True:
            # all the requests that have come, answered in one write: labqd sends a scheduler
            # pass's launches, and a turn's forgets, together
            chunk = stdin.read1(CHUNK)
            if not chunk:
                return  # labqd went away; jobs carry on under their shepherds
            if b"\n" not in chunk:
                start.append(chunk)
                continue
            lines = chunk.split(b"\n")
            if start:
                lines[0] = b"".join(start + [lines[0]])
            rest = lines.pop()
            start = [rest] if rest else []
            for n, line in enumerate(lines, 1):
                self.answer(ops, line)
                if n % 32 == 0:
                    self.flush()  # a long batch of launches: the first answers go out meanwhile
            self.flush()

    def answer(self, ops, line):
        req = None
        try:
            req = json.loads(line)
            fn = ops.get(req.get("op"))
            reply = fn(req) if fn else {"ok": False, "code": "bad_op",
                                        "error": "unknown op %r" % req.get("op")}
        except TransferError as e:
            reply = {"ok": False, "code": "transfer", "error": str(e)}
        except Exception as e:
            reply = {"ok": False, "code": "error", "error": "%s: %s" % (type(e).__name__, e)}
        if reply is None:
            return  # the op answers later, from a thread of its own
        if isinstance(req, dict) and "id" not in req:
            return  # labqd waits for no answer (a forget), so none is sent
        reply["re"] = req.get("id") if isinstance(req, dict) else None
        self.send(reply, flush=False)


def remove_run_dir(jobdir):
    """Out of sight first, then removed: an agent killed half way through leaves a directory
    no listing takes for a run (one without its pid and exit records would pass for a run
    still starting), and the next agent finishes the removal."""
    gone = jobdir + GONE
    try:
        os.rename(jobdir, gone)
    except OSError:
        gone = jobdir
    try:
        _remove_flat(gone)
    except OSError:
        shutil.rmtree(gone, ignore_errors=True)


def _remove_flat(path):
    """A run's directory holds files only: removed by name, without rmtree's walk (a stat
    and an open for each entry)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    try:
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    finally:
        os.close(fd)
    os.rmdir(path)


def remove_leftovers(directory):
    for name in os.listdir(directory):
        if name.endswith(GONE) and is_run_key(name[:-len(GONE)]):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


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
            ("LABQ_RESTART_COUNT=%s" % key.split(".")[1]).encode()]
    try:
        with open("/proc/%d/environ" % int(pgid), "rb") as f:
            env = f.read().split(b"\0")
        if all(w in env for w in want):  # the group's leader is still this run's job
            killpg_quiet(int(pgid), signal.SIGKILL)
    except (OSError, TypeError, ValueError):
        pass
    spec = read_json(os.path.join(jobdir, "spec.json")) or {}
    if cg_exists(spec.get("cgroup")):
        cg_destroy(spec["cgroup"])
    elif spec.get("marker"):
        sweep_marker(spec["marker"], pid.get("uid"))
    ex = {"code": None, "signal": None, "reason": "lost", "end": time.time(),
          "start": pid.get("start")}
    try:
        write_json(os.path.join(jobdir, "exit"), ex)
    except OSError:
        pass
    return ex




def _port_free(port):
    """Whether a gang's rank 0 could listen on `port` here (as torchrun would, with
    SO_REUSEADDR, so a connection lingering in TIME_WAIT does not count)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (TypeError, ValueError):
        return False
    try:  # a zombie waiting for its reaper is gone all the same
        with open("/proc/%d/stat" % int(pid), "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[0] != b"Z"
    except (OSError, ValueError, IndexError):
        return True


def take_lock(directory):
    """One agent per node and cluster: a stale agent from a dead link is told to go."""
    import fcntl
    path = os.path.join(directory, "agent.lock")
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
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
                raise SystemExit("another labq agent holds %s" % path) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


