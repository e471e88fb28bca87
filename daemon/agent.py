"""The node agent: one stdlib-only program per node, speaking JSON lines on stdin/stdout.

labqd starts it over one SSH exec channel (remote nodes) or a pipe (the local machine). It
probes the node, launches jobs detached so they outlive the agent, the link and labqd, streams
their log bytes and exit records back, and on start reports what it finds in the job
directories. It must run on any python3 >= 3.8 without third-party packages (psutil and pynvml
are used when importable).

Job directory layout (<root>/<cluster>/<node>/<job id>.<run>/, run = the job's restart count,
so a requeued job never collides with what an earlier run left behind; keyed by node too, so
two node entries on one host never share a directory):
    spec.json   what to run          pid     {"pid", "pgid", "start", "shepherd", "uid"}
    log         stdout + stderr      exit    {"code", "signal", "reason", "end"} once ended
    cancel      asks the shepherd to stop the job ("cancel" or "timeout")
Every directory from <root> down is the agent's own, never a symlink, and closed to others
(checked at start; the agent refuses to run otherwise); the records are 0600. A job writes
its log only through the descriptor it inherits.

Each job has a shepherd: a double-forked process in its own session that starts the job in a
new session (so its process group is its own) and, where the node allows, in a cgroup of its
own (memory and pids limits; killed whole), switches to the job owner's account, enforces
the time limit, carries out cancel requests (SIGTERM, SIGKILL to all of the job after the
grace period) and writes the exit record. Because the shepherd, not the agent, owns the job,
the agent can die and come back freely.
"""
import base64
import errno
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
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

        def num(i, parts=parts):
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
# Everything under the agent's directory is opened without following symlinks: the directory
# chain is checked at start to be the agent's own and closed to others, and O_NOFOLLOW keeps a
# link that appears anyway from turning a root agent's write or read into one elsewhere.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path, flags, mode=0o600):
    return os.open(path, flags | NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)


def write_json(path, data):
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_nofollow(tmp, flags)
    except FileExistsError:  # left by a writer that died mid-write
        os.unlink(tmp)
        fd = open_nofollow(tmp, flags)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def write_text(path, text):
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_text(path, limit=1 << 20):
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode(errors="replace")


def read_json(path):
    try:
        return json.loads(read_text(path))
    except (OSError, ValueError):
        return None


def lsize(path):
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def is_dir(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# -- the agent's directory -------------------------------------------------------------------
class Refused(Exception):
    """The node cannot be served as configured; the agent says why and exits 3."""


def prepare_dir(root, cluster, node):
    """<job_root>/<cluster>/<node>, checked (and made where missing) so that no other account
    can plant or swap anything in it: a root agent writes records and reads logs there."""
    for what, name in (("cluster", cluster), ("node", node)):
        if not name or name in (".", "..") or "/" in name or "\0" in name or "\n" in name:
            raise Refused("%s name %r cannot be used as a directory name" % (what, name))
    euid = os.geteuid()
    root = os.path.abspath(os.path.expanduser(root))
    _check_ancestors(os.path.dirname(root), euid)
    # components from job_root down are used as they are named: never a symlink, always ours
    path = root
    for part in ("", cluster, node):
        path = os.path.join(path, part) if part else path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # made by an earlier agent, or by someone else: checked below either way
        except OSError as e:
            raise Refused("cannot create job_root %s: %s" % (path, e.strerror)) from None
        _check_own_dir(path, euid)
    return path


def _check_own_dir(path, euid):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise Refused("job_root %s is a symlink; refusing to use it" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise Refused("job_root %s is not a directory; refusing to use it" % path)
    if st.st_uid != euid:
        raise Refused("job_root %s is owned by uid %d, not %d; refusing to use it"
                      % (path, st.st_uid, euid))
    if st.st_mode & 0o022:
        raise Refused("job_root %s is writable by group or others (mode %04o); refusing to use "
                      "it" % (path, stat.S_IMODE(st.st_mode)))


def _check_ancestors(path, euid, depth=0):
    """Every directory on the way to `path` (and `path` itself) belongs to root or the agent's
    account, and where others may write it is sticky, so nobody else can rename or replace the
    entries the agent relies on. Symlinks on the way are allowed when owned by root or the
    agent; their targets are checked the same way. Missing directories are made (0700).
    Returns the resolved path."""
    if depth > 16:
        raise Refused("job_root: too many symlinks on the way to %s" % path)
    cur = "/"
    _check_ancestor(cur, os.lstat(cur), euid)
    for part in [p for p in path.split("/") if p]:
        nxt = os.path.join(cur, part)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            try:
                os.mkdir(nxt, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise Refused("cannot create job_root's parent %s: %s"
                              % (nxt, e.strerror)) from None
            st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            _check_ancestor(nxt, st, euid)
            target = os.path.join(cur, os.readlink(nxt))
            nxt = _check_ancestors(os.path.normpath(target), euid, depth + 1)
            st = os.lstat(nxt)
        _check_ancestor(nxt, st, euid)
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise Refused("job_root's parent %s is not a directory" % nxt)
        cur = nxt
    return cur


def _check_ancestor(path, st, euid):
    if st.st_uid not in (0, euid):
        raise Refused("job_root's parent %s is owned by uid %d, not root or %d; refusing to "
                      "use it" % (path, st.st_uid, euid))
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise Refused("job_root's parent %s is writable by others and not sticky (mode %04o); "
                      "refusing to use it" % (path, stat.S_IMODE(st.st_mode)))


# -- containment: one cgroup per run ----------------------------------------------------------
# A run's cgroup is recorded in its spec.json ("cgroup": {"kind", "dirs", ...}) so that the
# shepherd, a later agent (lost_run, forget) and a different agent process after a reconnect
# all find the same directories.
WANT_V2 = ("memory", "pids")
DEFAULT_PIDS_MAX = 4096


def _unescape(s):
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _cgroup_mounts():
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, sup = left.split(), right.split()
                if len(fields) >= 5 and len(sup) >= 3 and sup[0] in ("cgroup", "cgroup2"):
                    out.append((sup[0], _unescape(fields[4]), _unescape(fields[3]),
                                sup[2].split(",")))
    except OSError:
        pass
    return out


def _own_cgroups():
    own = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and not ctrls:
                    own[""] = path
                for c in ctrls.split(","):
                    if c:
                        own[c] = path
    except (OSError, ValueError):
        pass
    return own


def _in_mount(mnt, mroot, path):
    """The directory of cgroup `path` (as /proc/self/cgroup names it) under a mount of `mroot`."""
    if mroot != "/":
        if path != mroot and not path.startswith(mroot + "/"):
            return None
        path = path[len(mroot):]
    return os.path.normpath(mnt + "/" + path.lstrip("/"))


def _cg_read(path):
    with open(path) as f:
        return f.read()


def _cg_write(path, value):
    # cgroup files take one value per write(2)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _check_writable(parent):
    """Runs are made in `parent` and joined from the agent's own cgroup next to it (moving a
    process needs write access to the common ancestor's cgroup.procs)."""
    for path in (parent, os.path.join(os.path.dirname(parent), "cgroup.procs")):
        if not os.access(path, os.W_OK):
            raise OSError(errno.EACCES, "not writable by this account", path)


def _mkdir_cg(path):
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass


class Containment:
    """How this node contains runs: "cgroup2", "cgroup1" or "none", and the parent cgroup(s)
    runs are made under.

    Runs live under the agent's own cgroup, in <own>/labq-<cluster>-<node>/<run key>: whatever
    limits an administrator or a container put on the agent then bound its jobs too, an agent
    with a delegated subtree (a non-root account, a systemd unit with Delegate=yes) can do all
    of this without root, and two node entries on one host never share a parent. A root agent
    whose own cgroup cannot take children (cgroup v2, a cgroup with other processes in it, such
    as an SSH session's scope) uses the top of the hierarchy instead."""

    def __init__(self, kind="none", note="", parents=None):
        self.kind, self.note, self.parents = kind, note, parents or {}

    @classmethod
    def probe(cls, label, want="auto"):
        notes = []
        if want in ("auto", "cgroup2"):
            c = cls._probe_v2(label, notes)
            if c:
                return c
        if want in ("auto", "cgroup1"):
            c = cls._probe_v1(label, notes)
            if c:
                return c
        if want == "none":
            notes.append("disabled by --containment none")
        return cls("none", "; ".join(notes) or "no cgroup hierarchy found")

    @classmethod
    def _probe_v2(cls, label, notes):
        own = _own_cgroups().get("")
        mounts = [m for m in _cgroup_mounts() if m[0] == "cgroup2"]
        if own is None or not mounts:
            notes.append("cgroup2: not mounted")
            return None
        for _, mnt, mroot, _ in mounts:
            top = _in_mount(mnt, mroot, own)
            if top is None:
                continue
            try:
                ctrls = _cg_read(os.path.join(mnt, "cgroup.controllers")).split()
            except OSError:
                ctrls = []
            missing = [c for c in WANT_V2 if c not in ctrls]
            if missing:
                notes.append("cgroup2 at %s: no %s controller" % (mnt, " or ".join(missing)))
                continue
            tops = [top] + ([mnt] if os.geteuid() == 0 and top != mnt else [])
            for t in tops:
                try:
                    parent = cls._v2_parent(t, t == mnt, label)
                    return cls("cgroup2", "cgroup2 memory+pids under %s" % parent,
                               {"": parent})
                except OSError as e:
                    notes.append("cgroup2 at %s: %s" % (t, e.strerror or e))
        return None

    @staticmethod
    def _v2_parent(top, is_root, label):
        ctl = os.path.join(top, "cgroup.subtree_control")
        if not all(c in _cg_read(os.path.join(top, "cgroup.controllers")).split()
                   for c in WANT_V2):
            raise OSError(errno.ENOTSUP, "memory or pids not delegated here")
        if not os.access(ctl, os.W_OK):
            raise OSError(errno.EACCES, "not writable")
        if not all(c in _cg_read(ctl).split() for c in WANT_V2):
            if not is_root:
                # "no internal processes": a cgroup that hands controllers to children may
                # hold no processes itself; move the agent aside only if it is alone here
                procs = _cg_read(os.path.join(top, "cgroup.procs")).split()
                if [p for p in procs if p != str(os.getpid())]:
                    raise OSError(errno.EBUSY, "holds other processes")
                leaf = os.path.join(top, "labq-agent")
                _mkdir_cg(leaf)
                _cg_write(os.path.join(leaf, "cgroup.procs"), os.getpid())
            _cg_write(ctl, " ".join("+" + c for c in WANT_V2))
        parent = os.path.join(top, label)
        _mkdir_cg(parent)
        _check_writable(parent)
        sub = os.path.join(parent, "cgroup.subtree_control")
        if not all(c in _cg_read(sub).split() for c in WANT_V2):
            _cg_write(sub, " ".join("+" + c for c in WANT_V2))
        return parent

    @classmethod
    def _probe_v1(cls, label, notes):
        own = _own_cgroups()
        mounts = [m for m in _cgroup_mounts() if m[0] == "cgroup"]
        parents = {}
        for ctrl in ("memory", "pids", "freezer"):
            found = [m for m in mounts if ctrl in m[3]]
            top = _in_mount(found[0][1], found[0][2], own.get(ctrl, "/")) if found else None
            if top is None:
                notes.append("cgroup1: no %s hierarchy" % ctrl)
                return None
            parents[ctrl] = os.path.join(top, label)
        try:
            for d in sorted(set(parents.values())):
                _mkdir_cg(d)
                _check_writable(d)
        except OSError as e:
            notes.append("cgroup1: %s: %s" % (e.filename or d, e.strerror))
            return None
        return cls("cgroup1", "cgroup1 memory, pids and freezer under %s"
                   % os.path.dirname(parents["memory"]), parents)

    def create(self, key, memory_mb=None, pids_max=None):
        """Make the run's cgroup with its limits; returns its record (None without cgroups)."""
        if self.kind == "none":
            return None
        rec = self.record(key)
        if any(os.path.isdir(d) for d in rec["dirs"]):
            cg_destroy(rec)  # a leftover of a run this key named before: not ours to keep
        made = []
        try:
            for d in rec["dirs"]:
                os.mkdir(d, 0o755)
                made.append(d)
            pids = int(pids_max) if pids_max else DEFAULT_PIDS_MAX
            mem = rec["memory"]
            if self.kind == "cgroup2":
                _cg_write(os.path.join(rec["dirs"][0], "pids.max"), pids)
                if memory_mb:
                    _cg_write(os.path.join(mem, "memory.max"), int(memory_mb) << 20)
                    if os.path.exists(os.path.join(mem, "memory.swap.max")):
                        _cg_write(os.path.join(mem, "memory.swap.max"), 0)
            else:
                _cg_write(os.path.join(rec["pids"], "pids.max"), pids)
                if memory_mb:
                    _cg_write(os.path.join(mem, "memory.limit_in_bytes"), int(memory_mb) << 20)
                    # memory+swap, so that swapping cannot dodge the limit
                    if os.path.exists(os.path.join(mem, "memory.memsw.limit_in_bytes")):
                        _cg_write(os.path.join(mem, "memory.memsw.limit_in_bytes"),
                                  int(memory_mb) << 20)
        except OSError:
            for d in made:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            raise
        return rec


    def leftovers(self, known):
        """Run cgroups under this agent's parents whose run is not in `known`: a launch makes
        the run's directory before its cgroup, so these are remains of runs already
        forgotten (their shepherd killed with the machine's processes, say)."""
        if self.kind == "none":
            return []
        names = set()
        for parent in set(self.parents.values()):
            try:
                names.update(n for n in os.listdir(parent) if _is_key(n))
            except OSError:
                pass
        return [self.record(name) for name in sorted(names - set(known))]

    def record(self, key):
        if self.kind == "cgroup2":
            d = os.path.join(self.parents[""], key)
            return {"kind": "cgroup2", "dirs": [d], "memory": d, "freezer": d}
        rec = {"kind": "cgroup1", "memory": os.path.join(self.parents["memory"], key),
               "pids": os.path.join(self.parents["pids"], key),
               "freezer": os.path.join(self.parents["freezer"], key)}
        rec["dirs"] = sorted(set((rec["memory"], rec["pids"], rec["freezer"])))
        return rec


def cg_join(rec, pid):
    for d in rec["dirs"]:
        _cg_write(os.path.join(d, "cgroup.procs"), pid)


def cg_procs(rec):
    pids = set()
    for d in rec["dirs"]:
        try:
            pids.update(int(p) for p in _cg_read(os.path.join(d, "cgroup.procs")).split())
        except (OSError, ValueError):
            pass
    return pids


def cg_exists(rec):
    return bool(rec) and any(os.path.isdir(d) for d in rec.get("dirs", ()))


def cg_signal(rec, sig):
    for p in cg_procs(rec):
        try:
            os.kill(p, sig)
        except OSError:
            pass


def _set_frozen(rec, frozen):
    d = rec["freezer"]
    try:
        if rec["kind"] == "cgroup2":
            _cg_write(os.path.join(d, "cgroup.freeze"), 1 if frozen else 0)
            return
        _cg_write(os.path.join(d, "freezer.state"), "FROZEN" if frozen else "THAWED")
        if frozen:  # FREEZING until every task has stopped; a stuck one must not hold us up
            until = time.time() + 0.5
            while _cg_read(os.path.join(d, "freezer.state")).strip() != "FROZEN" \
                    and time.time() < until:
                time.sleep(0.005)
    except OSError:
        pass


def cg_kill(rec, timeout=5.0):
    """Kill every process of the run's cgroup, including what it forked meanwhile; True once
    it is empty."""
    until = time.time() + timeout
    if rec["kind"] == "cgroup2":
        try:
            _cg_write(os.path.join(rec["dirs"][0], "cgroup.kill"), 1)  # Linux >= 5.14
        except OSError:
            pass
    while True:
        if not cg_procs(rec):
            return True
        if time.time() > until:
            return False
        # frozen, nothing can fork between reading the list and the kills; SIGKILL is
        # delivered on thaw
        _set_frozen(rec, True)
        cg_signal(rec, signal.SIGKILL)
        _set_frozen(rec, False)
        time.sleep(0.01)


def cg_oom(rec):
    """Whether the kernel's OOM killer acted in the run's cgroup."""
    try:
        if rec["kind"] == "cgroup2":
            text = _cg_read(os.path.join(rec["memory"], "memory.events"))
        else:
            text = _cg_read(os.path.join(rec["memory"], "memory.oom_control"))
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v) > 0
        if rec["kind"] == "cgroup1":  # kernels before 4.13 do not count kills
            return int(_cg_read(os.path.join(rec["memory"], "memory.failcnt"))) > 0
    except (OSError, ValueError, KeyError):
        pass
    return False


def cg_remove(rec, timeout=2.0):
    until = time.time() + timeout
    for d in rec["dirs"]:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last processes finish exiting
                if time.time() > until:
                    break
                time.sleep(0.01)


def cg_destroy(rec):
    if cg_exists(rec):
        cg_kill(rec)
        cg_remove(rec)


def sweep_marker(marker, uid=None):
    """Without cgroups: kill every process whose environment carries the run's marker (and
    that runs as the run's uid), so what a job detached with setsid goes too."""
    want = ("LABQ_RUN_MARKER=" + marker).encode()
    me = os.getpid()
    for _ in range(20):  # a process may fork while the sweep runs: repeat until a clean pass
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open("/proc/%s/environ" % d, "rb") as f:
                    env = f.read().split(b"\0")
                if want not in env:
                    continue
                if uid is not None and _proc_uid(int(d)) != uid:
                    continue
            except (OSError, ValueError):
                continue
            found.append(int(d))
        if not found:
            return
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _proc_uid(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


# -- accounts --------------------------------------------------------------------------------
class Refusal(Exception):
    """A run that must not start on this node; the message goes to its log, the code is 126."""


def resolve_account(spec, no_root_jobs):
    """The account a run switches to: (name, uid, gid, groups), or None to stay the agent's.
    A root agent runs a job as the account that has the owner's uid here, and only if that
    account also has the owner's name (one uid can be two people on two machines)."""
    euid = os.geteuid()
    pw = None
    if spec.get("uid") is not None:
        if euid == 0:
            uid = int(spec["uid"])
            try:
                pw = pwd.getpwuid(uid)
            except KeyError:
                raise Refusal("labq: uid %d (%s) has no account on this node; refusing"
                              % (uid, spec.get("user"))) from None
            if spec.get("user") and pw.pw_name != spec["user"]:
                raise Refusal("labq: uid %d is %s on this node, not %s; refusing"
                              % (uid, pw.pw_name, spec["user"]))
    elif spec.get("user"):  # a daemon that names the owner only
        try:
            pw = pwd.getpwnam(spec["user"])
        except KeyError as e:
            raise Refusal("labq: cannot run as user %r on this node: %s"
                          % (spec["user"], e)) from None
    run_uid = pw.pw_uid if pw else euid
    if no_root_jobs and run_uid == 0:
        raise Refusal("labq: this node's agent runs no jobs as root (--no-root-jobs); refusing")
    if pw is None or (pw.pw_uid == euid and euid != 0):
        return None
    return pw.pw_name, pw.pw_uid, pw.pw_gid, os.getgrouplist(pw.pw_name, pw.pw_gid)


def _become(account):
    name, uid, gid, groups = account
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)  # from root to another uid: every capability goes too
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise OSError(errno.EPERM, "the switch to %s did not take" % name)


# -- the shepherd (runs in its own session, forked from the agent) --------------------------
def shepherd(jobdir, spec, grace_s, no_root_jobs=False):
    devnull = os.open(os.devnull, os.O_RDWR)
    # opened by the agent's account; the job only ever gets this descriptor, never the path
    log = open_nofollow(os.path.join(jobdir, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    refusal, account = None, None
    try:
        account = resolve_account(spec, no_root_jobs)
    except Refusal as e:
        refusal = str(e)
    except Exception as e:
        refusal = "labq: cannot look up the job's account: %s" % e
    cg = spec.get("cgroup")
    env = dict(spec["env"])
    if spec.get("marker"):
        env["LABQ_RUN_MARKER"] = spec["marker"]
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
            if refusal:
                os.write(2, (refusal + "\n").encode())
                os._exit(126)
            if cg:  # joined while still root, so nothing the job forks can leave it
                try:
                    cg_join(cg, os.getpid())
                except OSError as e:
                    os.write(2, ("labq: cannot enter the run's cgroup: %s\n" % e).encode())
                    os._exit(126)
            if account:
                try:
                    _become(account)
                except OSError as e:
                    os.write(2, ("labq: cannot run as user %r on this node: %s\n"
                                 % (account[0], e)).encode())
                    os._exit(126)
            try:
                os.chdir(spec["cwd"])
            except OSError as e:
                os.write(2, ("labq: cannot enter working directory %r: %s\n"
                             % (spec["cwd"], e.strerror)).encode())
                os._exit(1)
            argv = spec["argv"]
            try:
                os.execvpe(argv[0], argv, env)
            except OSError as e:
                os.write(2, ("labq: cannot run %r: %s\n" % (argv[0], e.strerror)).encode())
                os._exit(127 if e.errno == errno.ENOENT else 126)
        finally:
            os._exit(127)
    start = time.time()
    run_uid = account[1] if account else os.geteuid()
    write_json(os.path.join(jobdir, "pid"), {"pid": pid, "pgid": pid, "start": start,
                                             "shepherd": os.getpid(), "uid": run_uid})

    def kill_all():
        _killpg(pid, signal.SIGKILL)
        if cg:
            cg_kill(cg)
        elif spec.get("marker"):
            sweep_marker(spec["marker"], run_uid)

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
            if os.path.lexists(cancel_path):
                try:
                    stop_reason = read_text(cancel_path, 64).strip() or "cancel"
                except OSError:
                    stop_reason = "cancel"
            elif deadline is not None and now >= deadline:
                stop_reason = "timeout"
            if stop_reason:
                _killpg(pid, signal.SIGTERM)
                if cg:
                    cg_signal(cg, signal.SIGTERM)
                kill_at = now + grace_s
        elif kill_at is not None and now >= kill_at:
            kill_all()
            kill_at = None
        time.sleep(0.05)
    # the job's leader is gone; whatever it started, detached or not, goes with it
    kill_all()
    oom = False
    if cg:
        oom = cg_oom(cg)
        cg_remove(cg)
    code = sig = None
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    write_json(os.path.join(jobdir, "exit"),
               {"code": code, "signal": sig, "reason": stop_reason or ("oom" if oom else "exit"),
                "end": time.time(), "start": start})


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def spawn_shepherd(jobdir, spec, grace_s, no_root_jobs=False):
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
        shepherd(jobdir, spec, grace_s, no_root_jobs)
    except BaseException:
        pass
    os._exit(0)


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
        spec = {"argv": list(req["argv"]), "env": dict(req["env"]), "cwd": req["cwd"],
                "time_limit_s": req.get("time_limit_s"), "user": req.get("user"),
                "uid": None if uid is None else int(uid), "shared": bool(req.get("shared")),
                "memory_mb": req.get("memory_mb"), "pids_max": req.get("pids_max"),
                "marker": "%s/%s/%s" % (self.cluster, self.node, job)}
        try:
            spec["cgroup"] = self.containment.create(job, spec["memory_mb"], spec["pids_max"])
        except OSError as e:
            shutil.rmtree(jobdir, ignore_errors=True)
            return {"ok": False, "code": "error",
                    "error": "cannot make the run's cgroup: %s" % e}
        write_json(os.path.join(jobdir, "spec.json"), spec)
        spawn_shepherd(jobdir, spec, float(req.get("grace_s", 10)), self.no_root_jobs)
        with self.watch_lock:
            self.watched[job] = 0
        return {"ok": True}

    def op_list(self, req):
        jobs = []
        for name in os.listdir(self.dir):
            if not _is_key(name):
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
        return {"ok": True}

    def op_cancel(self, req):
        jobdir = self.jobdir(req["job"])
        if not is_dir(jobdir):
            return {"ok": False, "code": "unknown", "error": "no job %s here" % req["job"]}
        write_text(os.path.join(jobdir, "cancel"), str(req.get("reason", "cancel")))
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
        shutil.rmtree(jobdir, ignore_errors=True)
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
                    with os.fdopen(open_nofollow(os.path.join(jobdir, "log"), os.O_RDONLY),
                                   "rb") as f:
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
        euid = os.geteuid()
        hello = {"ev": "hello", "protocol": PROTOCOL, "node": self.node, "pid": os.getpid(),
                 "gpu_source": source, "gpus": gpus, "gpu_notes": notes,
                 "euid": euid, "user": _user_name(euid), "root_jobs": not self.no_root_jobs,
                 "containment": self.containment.kind,
                 "containment_note": self.containment.note}
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


def _is_key(name):
    job, dot, run = str(name).partition(".")
    return bool(dot) and job.isdigit() and run.isdigit()


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


FLAGS = ("--no-root-jobs", "--from-socket")


def parse_args(argv):
    opts, i = {}, 0
    while i < len(argv):
        if argv[i] in FLAGS:
            opts[argv[i]] = True
            i += 1
        else:
            opts[argv[i]] = argv[i + 1] if i + 1 < len(argv) else ""
            i += 2
    return opts


def _names_from_stdin():
    """--from-socket: systemd started this agent on a connection from labqd, whose first line
    names the cluster and node. They become directory names, so only plain names pass."""
    try:
        first = json.loads(sys.stdin.buffer.readline(4096) or b"null")
        names = (first["cluster"], first["node"])
    except (ValueError, TypeError, KeyError):
        raise Refused("the first line must be {\"cluster\": ..., \"node\": ...}") from None
    for name in names:
        if not (isinstance(name, str) and 0 < len(name) <= 64 and name[0] not in ".-"
                and all(c.isalnum() and c.isascii() or c in "._-" for c in name)):
            raise Refused("bad cluster or node name %r" % (name,))
    return names


def main(argv=None):
    opts = parse_args(list(sys.argv[1:] if argv is None else argv))
    cluster = opts.get("--cluster", "default")
    node = opts.get("--node", socket.gethostname())
    try:
        if opts.get("--from-socket"):
            cluster, node = _names_from_stdin()
        directory = prepare_dir(opts.get("--root", "~/.local/state/labq-node"), cluster, node)
    except (Refused, OSError) as e:
        sys.stdout.buffer.write((json.dumps({"ev": "refused", "error": str(e)}) + "\n").encode())
        sys.stdout.buffer.flush()
        raise SystemExit(3) from None
    containment = Containment.probe("labq-%s-%s" % (cluster, node),
                                    opts.get("--containment", "auto"))
    agent = Agent(directory, cluster, node, containment, bool(opts.get("--no-root-jobs")))
    agent.lock_fd = take_lock(agent.dir)
    runs = [n for n in os.listdir(agent.dir) if _is_key(n) and is_dir(agent.jobdir(n))]
    for rec in containment.leftovers(runs):
        cg_destroy(rec)
    agent.serve()


if __name__ == "__main__":
    main()
