"""Accounts and the shepherd: the process that owns one run from start to exit record."""
import errno
import os
import pwd
import select
import signal
import time

from .cgroups import cg_join, cg_kill, cg_oom, cg_remove, cg_signal, sweep_marker
from .ends import announce_end, make_wake_fifo
from .files import open_nofollow, read_text, write_json
from .streams import ErrCopier


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


SAFETY_S = 5.0
DRAIN_S = 2.0  # the longest the job's stderr is waited for once the job is gone


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
    err = ErrCopier(jobdir)
    wake = _listen(jobdir)
    pid = os.fork()
    if pid == 0:
        _exec_job(spec, env, account, refusal, devnull, log, err.wfd)
    err.forked()
    start = time.time()
    run_uid = account[1] if account else os.geteuid()
    write_json(os.path.join(jobdir, "pid"), {"pid": pid, "pgid": pid, "start": start,
                                             "shepherd": os.getpid(), "uid": run_uid},
               durable=False)

    def kill_all():
        killpg_quiet(pid, signal.SIGKILL)
        if cg:
            cg_kill(cg)
        elif spec.get("marker"):
            sweep_marker(spec["marker"], run_uid)

    status, stop_reason = _supervise(pid, jobdir, spec, start, grace_s, kill_all, wake, err)
    # the job's leader is gone; whatever it started, detached or not, goes with it
    kill_all()
    err.drain(DRAIN_S)  # its last words are in the log before its exit record
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
    announce_end(*os.path.split(jobdir.rstrip("/")))


def _exec_job(spec, env, account, refusal, devnull, log, err):
    """In the forked child: become the job (never returns)."""
    cg = spec.get("cgroup")
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
        os.dup2(err, 2)
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


def _listen(jobdir):
    """What wakes the shepherd: SIGCHLD (through a wakeup pipe) and the agent's FIFO."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, not SIG_IGN: waitpid must see
    signal.set_wakeup_fd(w)
    fds = [r]
    fifo = make_wake_fifo(jobdir)
    if fifo is not None:
        fds.append(fifo)
    return fds


def _drain(fds):
    for fd in fds:
        try:
            while os.read(fd, 512):
                pass
        except OSError:
            pass


def _supervise(pid, jobdir, spec, start, grace_s, kill_all, wake, err):
    """Wait for the job without polling: the job's end, a cancel, the time limit or the end of
    the grace period wakes it. A wait never lasts more than SAFETY_S, a net under all three."""
    limit = spec.get("time_limit_s")
    deadline = start + limit if limit else None
    # --signal SIG@SECS: SIG goes to the job SECS before its time limit, and before the
    # SIGTERM of a preemption, so that it can save its work
    early = spec.get("early_signal")
    sig_at = max(start, deadline - early[1]) if early and deadline is not None else None
    stop_reason, kill_at, term_at = None, None, None
    early_due = bool(early)  # not sent yet
    cancel_path = os.path.join(jobdir, "cancel")
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            return st, stop_reason
        now = time.time()
        if sig_at is not None and stop_reason is None and now >= sig_at:
            killpg_quiet(pid, early[0])
            sig_at, early_due = None, False
        if stop_reason is None:
            if os.path.lexists(cancel_path):
                try:
                    stop_reason = read_text(cancel_path, 64).strip() or "cancel"
                except OSError:
                    stop_reason = "cancel"
            elif deadline is not None and now >= deadline:
                stop_reason = "timeout"
            if stop_reason == "preempt" and early_due:
                # the early signal, then a grace period to save work before the SIGTERM
                killpg_quiet(pid, early[0])
                sig_at, early_due = None, False
                term_at, kill_at = now + grace_s, now + 2 * grace_s
            elif stop_reason:
                killpg_quiet(pid, signal.SIGTERM)
                if spec.get("cgroup"):
                    cg_signal(spec["cgroup"], signal.SIGTERM)
                kill_at = now + grace_s
        elif term_at is not None and now >= term_at:
            killpg_quiet(pid, signal.SIGTERM)
            if spec.get("cgroup"):
                cg_signal(spec["cgroup"], signal.SIGTERM)
            term_at = None
        elif kill_at is not None and now >= kill_at:
            kill_all()
            kill_at = None
        timeout = SAFETY_S
        for t in (deadline if stop_reason is None else None, kill_at, term_at,
                  sig_at if stop_reason is None else None):
            if t is not None:
                timeout = min(timeout, max(0.0, t - now))
        try:
            select.select(wake + err.fds(), [], [], timeout)
        except InterruptedError:
            pass
        _drain(wake)
        err.pump()


def killpg_quiet(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def spawn_shepherd(jobdir, spec, grace_s, no_root_jobs=False):
    """Forks the run's shepherd and returns its pid, for the agent to reap. The shepherd leads
    a session of its own, so nothing aimed at the agent's SSH session reaches it, and init
    adopts it if the agent ends first. (A second fork, to hand it to init at once, cost a
    millisecond of every job's start.)"""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        shepherd(jobdir, spec, grace_s, no_root_jobs)
    except BaseException:
        pass
    os._exit(0)
