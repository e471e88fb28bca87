"""Accounts and the shepherd: the process that owns one run from start to exit record."""
import errno
import gc
import os
import pwd
import select
import signal
import subprocess
import sys
import time

from .cgroups import cg_join, cg_kill, cg_leave, cg_oom, cg_remove, cg_signal, sweep_marker
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
# what a job starts with whatever the agent was started with (a nohup'd agent ignores SIGHUP)
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DRAIN_S = 2.0  # the longest the job's stderr is waited for once the job is gone


# -- the shepherd (runs in its own session, forked from the agent) --------------------------
def shepherd(jobdir, spec, grace_s, account, refusal):
    devnull = os.open(os.devnull, os.O_RDWR)
    # opened by the agent's account; the job only ever gets this descriptor, never the path
    log = open_nofollow(os.path.join(jobdir, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    cg = spec.get("cgroup")
    env = dict(spec["env"])
    if spec.get("marker"):
        env["LABQ_RUN_MARKER"] = spec["marker"]
    err = ErrCopier(jobdir)
    wake = _listen(jobdir)
    start = time.time()
    run_uid = account[1] if account else os.geteuid()
    try:
        pid = _start_job(spec, env, account, refusal, devnull, log, err.wfd)
    except NotStarted as e:
        err.forked()
        err.note(e.message)
        _finish(jobdir, spec, err, start, code=e.code)
        return
    err.forked()
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
    code = sig = None
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    _finish(jobdir, spec, err, start, code, sig, stop_reason)


def _finish(jobdir, spec, err, start, code, sig=None, stop_reason=None):
    cg = spec.get("cgroup")
    err.drain(DRAIN_S)  # its last words are in the log before its exit record
    oom = False
    if cg:
        oom = cg_oom(cg)
        cg_remove(cg)
    write_json(os.path.join(jobdir, "exit"),
               {"code": code, "signal": sig, "reason": stop_reason or ("oom" if oom else "exit"),
                "end": time.time(), "start": start})
    announce_end(*os.path.split(jobdir.rstrip("/")))


class NotStarted(Exception):
    """The job could not be started: what its log says, and the exit code it gets."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def _start_job(spec, env, account, refusal, devnull, log, err):
    """Starts the job and returns its pid. The job is spawned, not forked from this Python
    process: a fork would copy this process's pages one fault at a time and run Python in
    the copy before exec. So what the job must not start without is done here, around the
    spawn: its working directory is entered with its account's rights, and this process
    joins the run's cgroup for the moment of the spawn, so that the job is born inside it
    (nothing it forks ever ran outside), and leaves it at once."""
    if refusal:
        raise NotStarted(126, refusal)
    switch = account is not None and not _is_me(account)
    _enter_cwd(spec["cwd"], account if switch else None)
    cg = spec.get("cgroup")
    if cg:
        try:
            cg_join(cg, os.getpid())
        except OSError as e:
            _leave(cg)  # from the hierarchies it did join
            raise NotStarted(126, "labq: cannot enter the run's cgroup: %s" % e) from None
    try:
        if switch:
            return _spawn_as(account, spec["argv"], env, (devnull, log, err))
        return _spawn(spec["argv"], env, (devnull, log, err))
    except OSError as e:
        raise NotStarted(127 if e.errno == errno.ENOENT else 126, "labq: cannot run %r: %s"
                         % (spec["argv"][0], e.strerror)) from None
    except ValueError as e:  # a NUL byte in an argument or the environment, say
        raise NotStarted(126, "labq: cannot run %r: %s" % (spec["argv"][0], e)) from None
    finally:
        if cg:
            _leave(cg)


def _spawn(argv, env, fds):
    """posix_spawn: the child shares this process's memory until it execs (no copy, no
    faults), and no Python runs in it. Every descriptor of this process but the three
    given closes on exec."""
    if not hasattr(os, "POSIX_SPAWN_DUP2"):
        return _spawn_as(None, argv, env, fds)
    actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)]
    err = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    # the job's PATH, not this process's, as execvpe would: the first that runs
    for path in _candidates(argv[0], env):
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True,
                                  setsigdef=DEFAULT_SIGNALS, setsigmask=())
        except (FileNotFoundError, NotADirectoryError):
            pass
        except PermissionError as e:
            err = e
        except NotImplementedError:  # a C library without POSIX_SPAWN_SETSID (glibc < 2.26)
            return _spawn_as(None, argv, env, fds)
    raise err


def _candidates(name, env):
    if "/" in name:
        return [name]
    paths = (os.path.join(d, name) for d in os.get_exec_path(env))
    return (p for p in paths if os.path.exists(p))


def _spawn_as(account, argv, env, fds):
    """Another account's job (or any, where posix_spawn cannot make a session): forked all
    the same (the switch of account in the child rules out sharing memory), but still with
    no Python in the child."""
    for sig in DEFAULT_SIGNALS[2:]:  # restore_signals covers SIGPIPE and SIGXFSZ
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    kw = {}
    if account is not None and sys.version_info >= (3, 9):
        kw = {"user": account[1], "group": account[2], "extra_groups": account[3]}
    elif account is not None:
        kw = {"preexec_fn": lambda: _become(account)}
    try:
        job = subprocess.Popen(argv, env=env, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                               close_fds=True, start_new_session=True, **kw)
    except OSError as e:
        if e.filename is not None or account is None:
            raise
        # failed before exec: the switch of account
        raise NotStarted(126, "labq: cannot run as user %r on this node: %s"
                         % (account[0], e.strerror)) from None
    except subprocess.SubprocessError as e:
        raise NotStarted(126, "labq: cannot run as user %r on this node: %s"
                         % (account[0], e)) from None
    job.returncode = 0  # reaped here with waitpid, never through the Popen object
    return job.pid


def _leave(cg):
    try:
        cg_leave(cg)
    except OSError:
        # still inside the run's cgroup, whose killing would take this process too: end
        # without an exit record, and the agent's lost-run handling kills the whole run
        os._exit(1)


def _is_me(account):
    """Whether the account is this process's own identity already (a root job under a root
    agent): then nothing is switched, and the spawn can share this process's memory."""
    _, uid, gid, groups = account
    # the primary group in the list of the others or not: the same rights either way
    return (uid == os.getuid() == os.geteuid() and gid == os.getgid() == os.getegid()
            and set(groups) - {gid} == set(os.getgroups()) - {gid})


def _enter_cwd(cwd, account):
    """The job's working directory, entered here with its account's rights (a home on NFS
    may be closed to root), for the job to inherit."""
    if account is None:
        _chdir(cwd)
        return
    saved = os.getgroups(), os.getegid(), os.geteuid()
    try:
        os.setgroups(account[3])
        os.setegid(account[2])
        os.seteuid(account[1])
    except OSError as e:
        _restore(saved)
        raise NotStarted(126, "labq: cannot run as user %r on this node: %s"
                         % (account[0], e.strerror)) from None
    try:
        _chdir(cwd)
    finally:
        _restore(saved)


def _restore(saved):
    groups, egid, euid = saved
    os.seteuid(euid)  # first: the rest needs the rights back
    os.setegid(egid)
    if sorted(os.getgroups()) != sorted(groups):  # never changed where there was no right to
        os.setgroups(groups)


def _chdir(cwd):
    try:
        os.chdir(cwd)
    except OSError as e:
        raise NotStarted(1, "labq: cannot enter working directory %r: %s"
                         % (cwd, e.strerror)) from None


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
    # looked up before the fork: in the shepherd, every page it touches is a copy to make
    refusal, account = None, None
    try:
        account = resolve_account(spec, no_root_jobs)
    except Refusal as e:
        refusal = str(e)
    except Exception as e:
        refusal = "labq: cannot look up the job's account: %s" % e
    pid = os.fork()
    if pid:
        return pid
    try:
        # a collection would visit, and so copy, every page of objects the agent made
        gc.disable()
        os.setsid()
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        shepherd(jobdir, spec, grace_s, account, refusal)
    except BaseException:
        pass
    os._exit(0)
