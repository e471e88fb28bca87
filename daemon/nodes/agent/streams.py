"""stdout and stderr kept apart inside a run's one log.

The job's stdout writes straight to `log`. Its stderr goes to a pipe that the shepherd copies
into the same log through a descriptor of its own, opened O_APPEND: that descriptor's position
right after a write is where the copied bytes end, so each copy's exact byte range is known
however the job's stdout interleaves, and goes to `stderr` as a "start end" line. The shepherd
holds an exclusive lock on `stderr` from the copy until its line is written, and the agent a
shared one while it reads the log and the lines, so no stderr bytes the agent reads lack
their line. A run without a `stderr` file (started before there was one) is all stdout.
"""
import fcntl
import os
import select
import stat
import time

from .files import open_nofollow

ERR_NAME = "stderr"
PIPE_READ = 1 << 16
PUMP_MAX = 1 << 20  # per wake-up, so a job that floods stderr cannot keep the shepherd busy


class ErrCopier:
    """In the shepherd: the job's stderr pipe and the copies of what comes through it."""

    def __init__(self, jobdir):
        # both ends close on exec: the job gets the write end only as its fd 2, and the read
        # end never leaves the shepherd
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.log = open_nofollow(os.path.join(jobdir, "log"), flags)
        self.ranges = open_nofollow(os.path.join(jobdir, ERR_NAME), flags)

    def forked(self):
        """In the shepherd once the job has its copy of the write end: only the job holds it,
        so the pipe ends when the job and all it started are gone."""
        os.close(self.wfd)
        self.wfd = None

    def fds(self):
        return [] if self.rfd is None else [self.rfd]

    def note(self, text):
        """A line of the shepherd's own on the job's stderr (why the job did not start)."""
        self._append((text + "\n").encode())

    def pump(self):
        """Copy what the pipe holds into the log; False once no writer is left."""
        got = 0
        while self.rfd is not None and got < PUMP_MAX:
            try:
                data = os.read(self.rfd, PIPE_READ)
            except (BlockingIOError, InterruptedError):
                return True
            if not data:
                os.close(self.rfd)
                self.rfd = None
                return False
            self._append(data)
            got += len(data)
        return self.rfd is not None

    def _append(self, data):
        try:
            fcntl.flock(self.ranges, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.log, view)
                    end = os.lseek(self.log, 0, os.SEEK_CUR)
                    os.write(self.ranges, b"%d %d\n" % (end - n, end))
                    view = view[n:]
            finally:
                fcntl.flock(self.ranges, fcntl.LOCK_UN)
        except OSError:
            # a full disk: the rest is dropped, as the job's own writes would be; the
            # shepherd carries on supervising
            pass

    def drain(self, timeout):
        """After the job: copy the rest, until the pipe's last writer is gone or `timeout`
        (a process that escaped the job's containment may hold it open for ever)."""
        deadline = time.time() + timeout
        while self.pump():
            left = deadline - time.time()
            if left <= 0:
                return
            try:
                select.select(self.fds(), [], [], left)
            except InterruptedError:
                pass


class RunLog:
    """In the agent: one run's log, read with the stderr ranges inside what is read."""

    def __init__(self, jobdir, log_path=None):
        # non-blocking, and only a plain file: a Slurm run's log is written by its owner,
        # who must not stall the agent with a FIFO in its place
        self.log = open_nofollow(log_path or os.path.join(jobdir, "log"),
                                 os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(self.log).st_mode):
            os.close(self.log)
            raise OSError("%s is not a plain file" % (log_path or "log"))
        try:
            self.err = open_nofollow(os.path.join(jobdir, ERR_NAME), os.O_RDONLY)
        except FileNotFoundError:
            self.err = None  # started before stderr was kept apart: all stdout
        self._reset()

    def _reset(self):
        self.pos = 0  # how far into `stderr` the lines are parsed
        self.buf = b""  # a line read only in part
        self.known = []  # parsed ranges that end past what was last read
        self.sent = 0  # where the last read ended

    def read(self, offset, size):
        """(bytes from offset, [[start, end], ...] of stderr within them), or None while
        the shepherd is copying stderr (read again soon)."""
        if self.err is None:
            return os.pread(self.log, size, offset), []
        if os.fstat(self.log).st_size <= offset:
            # nothing new (most turns, for most runs): one call, not the lock and two reads
            return b"", []
        try:
            fcntl.flock(self.err, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            data = os.pread(self.log, size, offset)
            end = offset + len(data)
            if offset < self.sent:
                self._reset()  # read again from further back (a new watch)
            self._load(end)
        finally:
            fcntl.flock(self.err, fcntl.LOCK_UN)
        self.sent = end
        out = [[max(s, offset), min(e, end)] for s, e in self.known if s < end and e > offset]
        self.known = [(s, e) for s, e in self.known if e > end]
        return data, out

    def _load(self, end):
        """Parse lines until one starts at or past `end` (they come in log order)."""
        while not self.known or self.known[-1][0] < end:
            chunk = os.pread(self.err, PIPE_READ, self.pos)
            if not chunk:
                return
            self.pos += len(chunk)
            lines = (self.buf + chunk).split(b"\n")
            self.buf = lines.pop()
            for line in lines:
                try:
                    s, e = (int(x) for x in line.split())
                except ValueError:
                    continue
                self.known.append((s, e))

    def close(self):
        for fd in (self.log, self.err):
            if fd is not None:
                os.close(fd)
