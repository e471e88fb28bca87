"""Files in and out of a node: staged files into a run's scratch directory, results back out,
scratch directories removed.

labqd streams files through this channel in base64 chunks, one request per chunk, so neither
side holds more than a chunk; each request is answered before the next is sent, which is the
flow control. It goes through the agent rather than SFTP because a root agent can hand files
to the job's user, and because the local node and a systemd-started agent have no SSH at all.

Everything is opened relative to a directory descriptor and never through a symlink. A root
agent writes the staged files as root, handing each to the job's user, and reads back only
files the job's user owns: a symlink, a hard link or a renamed directory that a user plants
never turns the agent's access into theirs.
"""
import base64
import os
import pwd
import re
import shutil
import stat

from .files import NOFOLLOW, is_run_key

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# a FIFO swapped in for a file must fail the open, not hang the agent on it
FILE_FLAGS = NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
MAX_LIST = 100000  # result files listed per job
MAX_CHUNK = 4 << 20


class TransferError(Exception):
    """A file could not be staged or read; the message names it and says why."""


def _parts(rel):
    """A relative path's components, refused if it could leave its directory."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        raise TransferError("bad path %r" % (rel,))
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise TransferError("bad path %r" % (rel,))
    return parts


def _owner(uid):
    """(uid, gid) a root agent hands files to; None when the agent is not root."""
    if os.geteuid() != 0 or uid is None:
        return None
    try:
        return int(uid), pwd.getpwuid(int(uid)).pw_gid
    except KeyError:
        raise TransferError("uid %s has no account on this node" % uid) from None


# -- scratch directories -----------------------------------------------------------------------
def scratch_base(root, cluster, node):
    """<scratch_root>/<cluster>/<node>, made where missing: root's or the agent's own, and
    searchable (not listable) by others, so a job's user reaches their own directory in it."""
    euid = os.geteuid()
    path = os.path.abspath(os.path.expanduser(root))
    for part in ("", cluster, node):
        path = os.path.join(path, part) if part else path
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, euid):
            raise TransferError("scratch_root %s is not a directory of root or the agent" % path)
        if st.st_mode & 0o022:
            raise TransferError("scratch_root %s is writable by others" % path)
        if st.st_uid == euid and st.st_mode & 0o111 != 0o111:
            os.chmod(path, stat.S_IMODE(st.st_mode) | 0o111)
    return path


def _reachable(path):
    """The first directory on the way to `path` that other users cannot pass, or None."""
    cur = "/"
    for part in [p for p in path.split("/") if p]:
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & 0o001:
            return cur
    return None


class Transfers:
    def __init__(self, cluster, node):
        self.cluster = cluster
        self.node = node

    def _scratch(self, req):
        key = req.get("job")
        if not is_run_key(key):
            raise TransferError("bad job key %r" % (key,))
        return os.path.join(scratch_base(req["scratch_root"], self.cluster, self.node), key)

    def op_stage_begin(self, req):
        """A fresh scratch directory for a run, owned by its user; what an earlier attempt
        left there is removed first."""
        path = self._scratch(req)
        owner = _owner(req.get("uid"))
        if owner is not None and owner[0] != 0:
            blocked = _reachable(os.path.dirname(path))
            if blocked:
                raise TransferError("the job's user cannot reach %s: %s is closed to other "
                                    "users; set the node's scratch_root to a directory they "
                                    "can pass" % (path, blocked))
        base, key = os.path.split(path)
        for name in os.listdir(base):  # what this or an earlier run of the job left
            if is_run_key(name) and name.partition(".")[0] == key.partition(".")[0]:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        os.mkdir(path, 0o700)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        return {"ok": True, "path": path}

    def op_stage_put(self, req):
        """One chunk of one staged file at `offset`; directories on its way are made."""
        parts = _parts(req.get("path"))
        owner = _owner(req.get("uid"))
        data = base64.b64decode(req.get("data") or "")
        offset = int(req.get("offset", 0))
        dfd = os.open(self._scratch(req), DIR_FLAGS)
        try:
            for p in parts[:-1]:
                nxt = _subdir(dfd, p, owner, create=True)
                os.close(dfd)
                dfd = nxt
            flags = os.O_WRONLY | FILE_FLAGS
            if offset == 0:
                flags |= os.O_CREAT | os.O_EXCL
            fd = os.open(parts[-1], flags, 0o600, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size != offset:
                    raise TransferError("%s changed while it was staged" % req["path"])
                if owner is not None and offset == 0:
                    os.fchown(fd, *owner)
                os.pwrite(fd, data, offset)
                if req.get("last"):
                    os.fchmod(fd, int(req.get("mode", 0o644)) & 0o755)
            finally:
                os.close(fd)
        except OSError as e:
            raise TransferError("%s: %s" % (req["path"], e.strerror or e)) from None
        finally:
            os.close(dfd)
        return {"ok": True, "offset": offset + len(data)}

    def op_scratch_remove(self, req):
        path = self._scratch(req)
        shutil.rmtree(path, ignore_errors=True)
        return {"ok": True, "removed": not os.path.lexists(path)}

    # -- results ---------------------------------------------------------------------------
    def op_results_list(self, req):
        """[path, size] of the regular files under `workdir` that match a glob; symlinks are
        neither followed nor listed, and a root agent lists only the job user's files."""
        patterns = [glob_regex(g) for g in req.get("globs") or []]
        uid = req.get("uid") if os.geteuid() == 0 else None
        try:
            top = os.open(req["workdir"], DIR_FLAGS & ~NOFOLLOW)
        except OSError as e:
            raise TransferError("workdir %s: %s" % (req["workdir"], e.strerror)) from None
        found = []
        _walk(top, "", patterns, uid, found)
        return {"ok": True, "files": found}

    def op_results_read(self, req):
        parts = _parts(req.get("path"))
        uid = req.get("uid") if os.geteuid() == 0 else None
        length = min(int(req.get("length", 1 << 20)), MAX_CHUNK)
        try:
            dfd = os.open(req["workdir"], DIR_FLAGS & ~NOFOLLOW)
            try:
                for p in parts[:-1]:
                    nxt = _subdir(dfd, p, None, create=False)
                    os.close(dfd)
                    dfd = nxt
                fd = os.open(parts[-1], os.O_RDONLY | FILE_FLAGS, dir_fd=dfd)
            finally:
                os.close(dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != int(uid)):
                    raise TransferError("%s is not a file of the job's user" % req["path"])
                data = os.pread(fd, length, int(req.get("offset", 0)))
            finally:
                os.close(fd)
        except OSError as e:
            raise TransferError("%s: %s" % (req["path"], e.strerror or e)) from None
        return {"ok": True, "data": base64.b64encode(data).decode(), "size": st.st_size}


def _subdir(dfd, name, owner, create):
    """The directory `name` in `dfd` (made if asked), opened without following a link."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            pass
    return os.open(name, DIR_FLAGS, dir_fd=dfd)


def _walk(dfd, prefix, patterns, uid, found):
    try:
        with os.scandir(dfd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if len(found) >= MAX_LIST:
                return
            rel = prefix + e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(e.name, DIR_FLAGS, dir_fd=dfd)
                except OSError:
                    continue
                _walk(sub, rel + "/", patterns, uid, found)
            elif (stat.S_ISREG(st.st_mode) and (uid is None or st.st_uid == int(uid))
                  and any(p.match(rel) for p in patterns)):
                found.append([rel, st.st_size])
    finally:
        os.close(dfd)


def glob_regex(pattern):
    """A compiled glob: `*` and `?` within one path component, `**` across components
    (`out/**` is everything under out/, `**/*.pt` any .pt file at any depth)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)
