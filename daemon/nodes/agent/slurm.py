"""A Slurm pool: the agent on a cluster's login host hands each run to Slurm.

Why an agent mode and not a separate part of labqd: a login host is reached exactly like a
node (over SSH, or locally), and what labqd needs from it is what it needs from any node:
launch a run, list the runs it has (after a restart of either side), stream each run's log,
report its end, cancel it. So labqd's node link, its reconciliation by run key and its log
copies stay as they are; only what is under a run changes: `sbatch --parsable` instead of a
shepherd, Slurm's job id recorded in the run's directory, and one poller that asks Slurm
about all of this pool's jobs in one call every few seconds and turns Slurm's answers into
the same exit records a shepherd writes (and `slurm` events while a job waits or runs there).

A run's directory (<root>/<cluster>/<node>/<key>/): spec.json (what was sent), slurm.json
({"id": Slurm's job id}), exit (once ended), out/log (the job's output, written by Slurm as
the job's owner: out/ is the owner's, the rest the agent's).
"""
import os
import pwd
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time

from .ends import announce_end
from .files import Refused, is_dir, is_run_key, read_json, write_json
from .server import Agent, remove_run_dir

POLL_S = 2.0
MISSES = 3  # polls in which Slurm no longer knows a job before it counts as lost
# Slurm's end states, as the exit record's reason (None: the exit code decides)
ENDS = {"COMPLETED": None, "FAILED": None, "CANCELLED": "cancelled", "TIMEOUT": "timeout",
        "DEADLINE": "timeout", "NODE_FAIL": "lost", "BOOT_FAIL": "lost", "PREEMPTED": "lost",
        "OUT_OF_MEMORY": "oom", "SPECIAL_EXIT": None, "REVOKED": "cancelled"}


def slurm_time(text):
    """Epoch seconds of Slurm's local time stamp, or None for Unknown, N/A, None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, AttributeError):
        return None


def batch_script(argv):
    """The script sbatch reads on stdin: the job's argv, each word quoted for the shell."""
    return "#!/bin/sh\nexec %s\n" % " ".join(shlex.quote(a) for a in argv)


def sbatch_argv(req, pool, log, comment):
    """`sbatch` for one run: labq's spec as Slurm's options; the script comes on stdin."""
    s = req.get("slurm") or {}
    argv = ["sbatch", "--parsable", "--job-name=" + (s.get("name") or req["job"]),
            "--chdir=" + req["cwd"], "--output=" + log, "--open-mode=append",
            "--export=ALL", "--comment=" + comment,
            "--cpus-per-task=%d" % max(1, int(s.get("cpus") or 1)),
            "--requeue" if s.get("requeue", True) else "--no-requeue"]
    for key in ("partition", "account", "qos"):
        if pool.get(key):
            argv.append("--%s=%s" % (key, pool[key]))
    if req.get("memory_mb"):
        argv.append("--mem=%dM" % int(req["memory_mb"]))
    if req.get("time_limit_s"):
        # Slurm counts whole minutes
        argv.append("--time=%d" % max(1, -(-int(req["time_limit_s"]) // 60)))
    gpus = int(s.get("gpus") or 0)
    if gpus:
        kind = gpu_kind(s.get("gpu_type"), pool.get("gpu_types") or [])
        argv.append("--gres=gpu:%s%d" % (kind + ":" if kind else "", gpus))
    if req.get("early_signal"):
        argv.append("--signal=%d@%d" % tuple(req["early_signal"]))
    argv.extend(pool.get("sbatch_args") or [])
    return argv


def gpu_kind(wanted, offered):
    """The pool's spelling of the GPU type a job asked for (labq matches a substring)."""
    if not wanted:
        return None
    for kind in offered:
        if wanted.lower() in kind.lower():
            return kind
    return wanted


def slurm_version():
    """Slurm's version on this host; Refused where its commands cannot run (not installed,
    no slurm.conf): an admin has to set the login host up."""
    try:
        r = subprocess.run(["sinfo", "--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise Refused("Slurm's sinfo cannot run on this host: %s" % e) from None
    if r.returncode != 0:
        raise Refused("Slurm's sinfo --version failed: %s" % r.stderr.strip()[:300])
    return r.stdout.strip()


def as_owner(uid):
    """subprocess arguments that run a command as `uid` with its groups, for a root agent;
    the groups are looked up here, not in the child (a fork of a threaded program must not
    take locks the other threads may hold)."""
    pw = pwd.getpwuid(uid)
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    if sys.version_info >= (3, 9):
        return {"user": uid, "group": pw.pw_gid, "extra_groups": groups}

    def switch():
        os.setgroups(groups)
        os.setgid(pw.pw_gid)
        os.setuid(uid)
    return {"preexec_fn": switch}


class SlurmAgent(Agent):
    def __init__(self, directory, cluster, node, pool, containment=None, no_root_jobs=False):
        Agent.__init__(self, directory, cluster, node, containment, no_root_jobs)
        self.pool = pool
        self.poll_s = float(pool.get("poll_s") or POLL_S)
        self.slurm_lock = threading.Lock()
        self.known = {}  # run key -> {"id", "misses"}: runs that Slurm has and have not ended
        self.told = {}  # run key -> the last (state, reason, start, estimate) sent to labqd
        self.poke = threading.Event()
        self.launches = queue.Queue()  # (request, owner uid) for the launcher thread
        self.cancelled = {}  # run key -> True: cancelled before its sbatch answered
        if os.geteuid() == 0:
            # the owners' Slurm steps open their out/ directories: they pass through here
            # (<job_root>/<cluster>/<node>, all the agent's own)
            for d in (self.dir, os.path.dirname(self.dir),
                      os.path.dirname(os.path.dirname(self.dir))):
                os.chmod(d, 0o711)
        for key in os.listdir(self.dir):
            if is_run_key(key) and is_dir(self.jobdir(key)):
                self._adopt(key)

    def _adopt(self, key):
        rec = read_json(os.path.join(self.jobdir(key), "slurm.json"))
        done = read_json(os.path.join(self.jobdir(key), "exit")) is not None
        if rec and not done:
            self.known[key] = {"id": str(rec["id"]), "misses": 0}

    def log_path(self, key):
        return os.path.join(self.jobdir(key), "out", "log")

    def run(self, argv, env=None, uid=None, stdin=None):
        env = dict(env if env is not None else os.environ)
        for name in ("SLURM_CONF", "PATH"):  # how this host reaches its cluster
            if os.environ.get(name) and name not in env:
                env[name] = os.environ[name]
        who = as_owner(uid) if uid is not None and os.geteuid() == 0 and uid != 0 else {}
        # Slurm's commands as this host's PATH finds them, not the job's
        argv = [shutil.which(argv[0]) or argv[0]] + list(argv[1:])
        return subprocess.run(argv, env=env, input=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                              cwd="/", **who)

    def describe(self):
        return {"slurm": {"version": slurm_version()}}

    # requests --------------------------------------------------------------------------
    def op_launch(self, req):
        """Checked and its directory made at once (a second launch of the run fails here);
        sbatch then runs on the launcher thread, which answers: a controller slow to answer
        must not hold up the pings and cancels behind it."""
        key = req["job"]
        jobdir = self.jobdir(key)
        uid = req.get("uid")
        euid = os.geteuid()
        if uid is not None and euid != 0 and int(uid) != euid and not req.get("shared"):
            return {"ok": False, "code": "account",
                    "error": "this pool's agent runs as uid %d: it sends only that account's "
                             "jobs to Slurm, not uid %d's" % (euid, int(uid))}
        owner = int(uid) if uid is not None and euid == 0 else None
        if owner == 0 and self.no_root_jobs:
            return {"ok": False, "code": "account", "error": "this pool runs no job as root"}
        try:
            gid = None if owner is None else pwd.getpwuid(owner).pw_gid
        except KeyError:
            return {"ok": False, "code": "account",
                    "error": "uid %d has no account on this login host" % owner}
        try:
            os.mkdir(jobdir, 0o711)
        except FileExistsError:
            return {"ok": False, "code": "exists", "error": "job %s already launched here" % key}
        os.chmod(jobdir, 0o711)  # whatever the umask: the owner's Slurm step passes through
        out = os.path.join(jobdir, "out")
        os.mkdir(out, 0o700)
        if owner is not None:
            os.chown(out, owner, gid)
        self.launches.put((req, owner))
        return None

    def launcher(self):
        while True:
            req, owner = self.launches.get()
            try:
                reply = self.submit(req, owner)
            except Exception as e:
                remove_run_dir(self.jobdir(req["job"]))
                reply = {"ok": False, "code": "error", "error": "%s: %s" % (type(e).__name__, e)}
            reply["re"] = req.get("id")
            self.send(reply)

    def submit(self, req, owner):
        key = req["job"]
        jobdir = self.jobdir(key)
        with self.slurm_lock:
            if self.cancelled.pop(key, None):  # cancelled before it went out
                return self._end_unsent(key)
        comment = "labq:%s/%s/%s" % (self.cluster, self.node, key)
        argv = sbatch_argv(req, self.pool, os.path.join(jobdir, "out", "log"), comment)
        write_json(os.path.join(jobdir, "spec.json"), {"sbatch": argv, "uid": owner})
        env = {k: v for k, v in req["env"].items() if k != "CUDA_VISIBLE_DEVICES"}
        try:
            r = self.run(argv, env, owner, stdin=batch_script(req["argv"]))
        except subprocess.TimeoutExpired:
            # the controller may have taken it all the same: never sent twice
            rec = self._find_by_comment(key, [])
            if rec is None:
                remove_run_dir(jobdir)
                return {"ok": False, "code": "error", "error": "sbatch did not answer"}
            r = subprocess.CompletedProcess(argv, 0, rec["id"], "")
        if r.returncode != 0:
            remove_run_dir(jobdir)
            return {"ok": False, "code": "error",
                    "error": "sbatch: " + (r.stderr.strip() or "exit %d" % r.returncode)[:500]}
        slurm_id = r.stdout.strip().split(";")[0]
        write_json(os.path.join(jobdir, "slurm.json"), {"id": slurm_id})
        with self.slurm_lock:
            self.known[key] = {"id": slurm_id, "misses": 0}
            cancel = self.cancelled.pop(key, None)
        with self.watch_lock:
            self.watched[key] = 0
        if cancel:  # asked while sbatch was on its way
            self.run(["scancel", slurm_id])
        self.poke.set()
        return {"ok": True, "slurm_id": slurm_id}

    def _end_unsent(self, key):
        write_json(os.path.join(self.jobdir(key), "exit"),
                   {"code": None, "signal": None, "reason": "cancelled", "end": time.time()})
        with self.watch_lock:
            self.watched[key] = 0
        announce_end(self.dir, key)
        return {"ok": True}

    def op_list(self, req):
        reply = Agent.op_list(self, req)
        lost = [j for j in reply["jobs"] if j["exit"] is None]
        ids = {}
        listing = []  # Slurm's jobs with their comments, asked for once
        for j in lost:
            rec = read_json(os.path.join(self.jobdir(j["job"]), "slurm.json"))
            if rec is None:
                rec = self._find_by_comment(j["job"], listing)
            if rec is not None:
                ids[j["job"]] = str(rec["id"])
        for j in reply["jobs"]:
            j["slurm_id"] = ids.get(j["job"])
            j["started"] = j["exit"] is not None or j["job"] in ids
        return reply

    def _find_by_comment(self, key, listing):
        """Slurm's id of a run whose sbatch answered but whose id was never written (the
        agent died in between): found by the comment every run carries, never sent twice."""
        if not listing:
            listing.append(self.run(["squeue", "-h", "-t", "all", "-o", "%i|%k"]).stdout)
        want = "labq:%s/%s/%s" % (self.cluster, self.node, key)
        for line in listing[0].splitlines():
            sid, _, comment = line.partition("|")
            if comment.strip() == want:
                rec = {"id": sid.strip()}
                write_json(os.path.join(self.jobdir(key), "slurm.json"), rec)
                with self.slurm_lock:
                    self.known[key] = {"id": rec["id"], "misses": 0}
                return rec
        return None

    def op_watch(self, req):
        with self.slurm_lock:
            self.told.pop(req["job"], None)  # labqd hears the current state again
        self.poke.set()
        return Agent.op_watch(self, req)

    def op_cancel(self, req):
        key = req["job"]
        with self.slurm_lock:
            info = self.known.get(key)
            if info is None and is_dir(self.jobdir(key)):
                # its sbatch is queued or on its way: the launcher cancels it
                self.cancelled[key] = True
                return {"ok": True}
        if info is None:
            return {"ok": False, "code": "unknown", "error": "no Slurm job for %s" % key}
        # scancel: SIGTERM to the job, SIGKILL after the cluster's KillWait
        r = self.run(["scancel", info["id"]])
        if r.returncode != 0:
            return {"ok": False, "code": "error", "error": "scancel: " + r.stderr.strip()}
        self.poke.set()
        return {"ok": True}

    def op_forget(self, req):
        with self.slurm_lock:
            self.known.pop(req["job"], None)
            self.told.pop(req["job"], None)
        with self.watch_lock:
            self.watched.pop(req["job"], None)
            self.exit_sent.discard(req["job"])
        remove_run_dir(self.jobdir(req["job"]))
        return {"ok": True}

    def op_ping(self, req):
        reply = Agent.op_ping(self, req)
        if req.get("gpus"):
            reply["pool"] = self.pool_state()
        return reply

    def pool_state(self):
        """The partition as `sinfo` sees it: nodes and GPUs up and allocated."""
        argv = ["sinfo", "-h", "-N", "-O", "NodeHost:|,StateCompact:|,Gres:|,GresUsed:"]
        if self.pool.get("partition"):
            argv[2:2] = ["-p", self.pool["partition"]]
        r = self.run(argv)
        if r.returncode != 0:
            return {"error": r.stderr.strip()[:300]}
        nodes = {}
        for line in r.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 4:
                nodes[parts[0]] = parts[1:]
        out = {"nodes": len(nodes), "nodes_up": 0, "nodes_alloc": 0, "gpus": 0, "gpus_alloc": 0}
        for state, gres, used in nodes.values():
            up = not any(w in state for w in ("down", "drain", "fail", "unk"))
            out["nodes_up"] += up
            out["nodes_alloc"] += state.startswith(("alloc", "mix"))
            if up:
                out["gpus"] += gres_count(gres)
                out["gpus_alloc"] += gres_count(used)
        return out

    # the poller ------------------------------------------------------------------------
    def serve(self):
        threading.Thread(target=self.poll_loop, daemon=True).start()
        threading.Thread(target=self.launcher, daemon=True).start()
        Agent.serve(self)

    def poll_loop(self):
        while True:
            self.poke.wait(self.poll_s)
            self.poke.clear()
            try:
                self.poll_once()
            except Exception as e:  # a bad answer from Slurm must not end the poller
                self.send({"ev": "warning", "error": "slurm poll: %s: %s"
                           % (type(e).__name__, e)})

    def poll_once(self):
        with self.slurm_lock:
            runs = dict((k, v["id"]) for k, v in self.known.items())
        if not runs:
            return
        r = self.run(["squeue", "-h", "-t", "all", "--jobs=" + ",".join(sorted(set(
            runs.values()))), "-o", "%i|%T|%r|%S|%e"])
        if r.returncode != 0 and "Invalid job id" not in r.stderr:
            return  # the controller did not answer: nothing is known, nothing is lost
        rows = {}
        for line in r.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 5:
                rows[parts[0].strip()] = [p.strip() for p in parts]
        for key, sid in runs.items():
            row = rows.get(sid)
            state = row[1].split()[0] if row else None
            if state == "COMPLETED":  # exit code 0 by definition: no scontrol per job
                self._ended(key, sid, {"JobState": state, "ExitCode": "0:0",
                                       "StartTime": row[3], "EndTime": row[4]})
            elif state is None or state in ENDS:
                self._ended(key, sid)
            else:
                self._tell(key, sid, state, row[2], slurm_time(row[3]))

    def _tell(self, key, sid, state, reason, start):
        running = state in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED")
        msg = (state, reason, start if running else None, None if running else start)
        with self.slurm_lock:
            if key in self.known:
                self.known[key]["misses"] = 0
            if self.told.get(key) == msg:
                return
            self.told[key] = msg
        self.send({"ev": "slurm", "job": key, "id": sid, "state": state, "reason": reason,
                   "start": msg[2], "estimate": msg[3]})

    def _ended(self, key, sid, info=None):
        info = info or self.job_info(sid)
        if info is None:
            with self.slurm_lock:
                rec = self.known.get(key)
                if rec is None:
                    return
                rec["misses"] += 1
                if rec["misses"] < MISSES:
                    return
            ex = {"code": None, "signal": None, "reason": "lost", "end": time.time(),
                  "slurm_state": "unknown to Slurm"}
        else:
            ex = exit_record(info)
            if ex is None:
                return  # still being torn down
        jobdir = self.jobdir(key)
        if not is_dir(jobdir):
            return
        ex["slurm_id"] = sid
        write_json(os.path.join(jobdir, "exit"), ex)
        with self.slurm_lock:
            self.known.pop(key, None)
        announce_end(self.dir, key)

    def job_info(self, sid):
        """Slurm's record of one job: `scontrol show job` while the controller keeps it
        (MinJobAge), else `sacct` where the cluster keeps accounting."""
        r = self.run(["scontrol", "-o", "show", "job", sid])
        if r.returncode == 0 and "JobState=" in r.stdout:
            return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
        if not shutil.which("sacct"):
            return None
        r = self.run(["sacct", "-n", "-P", "-X", "-j", sid, "-o",
                      "State,ExitCode,Start,End"])
        line = r.stdout.strip().splitlines()[:1] if r.returncode == 0 else []
        parts = line[0].split("|") if line else []
        if len(parts) < 4:
            return None
        return {"JobState": parts[0].split()[0], "ExitCode": parts[1], "StartTime": parts[2],
                "EndTime": parts[3]}


def exit_record(info):
    """A shepherd's exit record from Slurm's view of an ended job (None: not ended yet)."""
    state = info.get("JobState", "")
    if state not in ENDS:
        return None
    code, _, sig = info.get("ExitCode", "0:0").partition(":")
    try:
        code, sig = int(code), int(sig or 0)
    except ValueError:
        code, sig = None, 0
    reason = ENDS[state]
    if state == "FAILED" and sig:
        code = None
    return {"code": code, "signal": sig or None, "reason": reason, "slurm_state": state,
            "start": slurm_time(info.get("StartTime")),
            "end": slurm_time(info.get("EndTime")) or time.time()}


def gres_count(text):
    """GPUs in a `sinfo` Gres field such as gpu:a100:4(S:0-1),gpu:v100:2."""
    n = 0
    for part in text.split(","):
        bits = part.split("(")[0].split(":")
        if bits[0] == "gpu" and bits[-1].isdigit():
            n += int(bits[-1])
    return n
