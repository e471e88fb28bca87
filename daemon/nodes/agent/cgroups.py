"""Containment: one cgroup per run (v2, else v1), else a marker in the environment."""
import errno
import os
import re
import signal
import time

from .files import is_run_key

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

    def __init__(self, kind="none", note="", parents=None, homes=None):
        self.kind, self.note, self.parents = kind, note, parents or {}
        # the agent's own cgroup(s), where a shepherd goes back to once its job is spawned
        self.homes = homes or {}

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
                    parent, home = cls._v2_parent(t, t == mnt, label, top)
                    return cls("cgroup2", "cgroup2 memory+pids under %s" % parent,
                               {"": parent}, {"": home})
                except OSError as e:
                    notes.append("cgroup2 at %s: %s" % (t, e.strerror or e))
        return None

    @staticmethod
    def _v2_parent(top, is_root, label, home):
        """The parent of runs under `top`, and the agent's cgroup once it is made."""
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
                home = os.path.join(top, "labq-agent")
                _mkdir_cg(home)
                _cg_write(os.path.join(home, "cgroup.procs"), os.getpid())
            _cg_write(ctl, " ".join("+" + c for c in WANT_V2))
        parent = os.path.join(top, label)
        _mkdir_cg(parent)
        _check_writable(parent)
        sub = os.path.join(parent, "cgroup.subtree_control")
        if not all(c in _cg_read(sub).split() for c in WANT_V2):
            _cg_write(sub, " ".join("+" + c for c in WANT_V2))
        return parent, home

    @classmethod
    def _probe_v1(cls, label, notes):
        own = _own_cgroups()
        mounts = [m for m in _cgroup_mounts() if m[0] == "cgroup"]
        parents, homes = {}, {}
        for ctrl in ("memory", "pids", "freezer"):
            found = [m for m in mounts if ctrl in m[3]]
            top = _in_mount(found[0][1], found[0][2], own.get(ctrl, "/")) if found else None
            if top is None:
                notes.append("cgroup1: no %s hierarchy" % ctrl)
                return None
            parents[ctrl] = os.path.join(top, label)
            homes[ctrl] = top
        try:
            for d in sorted(set(parents.values())):
                _mkdir_cg(d)
                _check_writable(d)
        except OSError as e:
            notes.append("cgroup1: %s: %s" % (e.filename or d, e.strerror))
            return None
        return cls("cgroup1", "cgroup1 memory, pids and freezer under %s"
                   % os.path.dirname(parents["memory"]), parents, homes)

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
                names.update(n for n in os.listdir(parent) if is_run_key(n))
            except OSError:
                pass
        return [self.record(name) for name in sorted(names - set(known))]

    def record(self, key):
        if self.kind == "cgroup2":
            d = os.path.join(self.parents[""], key)
            return {"kind": "cgroup2", "dirs": [d], "memory": d, "freezer": d,
                    "home": [self.homes[""]]}
        rec = {"kind": "cgroup1", "home": sorted(set(self.homes.values())),
               "memory": os.path.join(self.parents["memory"], key),
               "pids": os.path.join(self.parents["pids"], key),
               "freezer": os.path.join(self.parents["freezer"], key)}
        rec["dirs"] = sorted(set((rec["memory"], rec["pids"], rec["freezer"])))
        return rec


def cg_join(rec, pid):
    """Moves `pid` into the run's cgroup. A single-threaded process that moves itself on v1
    writes "0" to `tasks`: the kernel then skips the lock that every whole-process move waits
    an RCU grace period for (5-15 ms, most of a short job's start)."""
    self_move = rec.get("kind") == "cgroup1" and pid == os.getpid()
    for d in rec["dirs"]:
        if self_move:
            _cg_write(os.path.join(d, "tasks"), 0)
        else:
            _cg_write(os.path.join(d, "cgroup.procs"), pid)


def cg_leave(rec):
    """Moves this process from the run's cgroup back to the agent's own, where it came from."""
    if not rec.get("home"):
        raise OSError(errno.ENOENT, "the run's cgroup record names no way back")
    if rec.get("kind") == "cgroup1":
        for d in rec["home"]:
            _cg_write(os.path.join(d, "tasks"), 0)
    else:
        for d in rec["home"]:
            _cg_write(os.path.join(d, "cgroup.procs"), os.getpid())


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
