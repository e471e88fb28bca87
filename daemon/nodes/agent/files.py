"""File helpers that never follow a symlink, and the agent's own directory, checked."""
import json
import os
import stat

# -- files -----------------------------------------------------------------------------------
# Everything under the agent's directory is opened without following symlinks: the directory
# chain is checked at start to be the agent's own and closed to others, and O_NOFOLLOW keeps a
# link that appears anyway from turning a root agent's write or read into one elsewhere.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path, flags, mode=0o600):
    return os.open(path, flags | NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)


def write_json(path, data, durable=True):
    """Whole or not at all. `durable=False` for what a power cut makes moot anyway (a run's
    spec and pid die with its processes): fsync is a millisecond of every job's start."""
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_nofollow(tmp, flags)
    except FileExistsError:  # left by a writer that died mid-write
        os.unlink(tmp)
        fd = open_nofollow(tmp, flags)
    try:
        # dumps, not dump: its encoder is the C one, dump's is Python
        data = json.dumps(data).encode()
        while data:
            data = data[os.write(fd, data):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# plain reads and writes on the descriptor: a file object costs a few system calls more
# (fstat, lseek, ioctl) on each of the several records a job has
def write_text(path, text):
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def read_text(path, limit=1 << 20):
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        chunks = []
        while limit > 0:
            chunk = os.read(fd, min(limit, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


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


def is_run_key(name):
    """JOB.RUN, or JOB.RUN.RANK for a part of a job on several nodes."""
    parts = str(name).split(".")
    return len(parts) in (2, 3) and all(p.isdigit() for p in parts)
