"""How a run's end reaches the agent at once, and a cancel reaches the shepherd at once.

The shepherd tells the agent "run KEY has an exit record" with one datagram on the agent's
socket in its directory; the agent then reads the record from the run's directory, so a
datagram from anyone else can only make it look early. An agent that is not running misses
the datagram and finds the record on its next scan (the safety net, also after a restart).

The agent tells a shepherd "look at your cancel file" with one byte on the run's `wake` FIFO,
which only the agent's account can open.
"""
import hashlib
import os
import socket

SOCK_NAME = "ends.sock"
MAX_PATH = 100  # sun_path is 108 bytes


def ends_address(directory):
    path = os.path.join(directory, SOCK_NAME)
    if len(path.encode()) < MAX_PATH:
        return path
    # too long for a path: an abstract name derived from the directory (a squatter on it
    # only costs the agent its fast path; the scan still finds every end)
    return "\0labq-ends-" + hashlib.sha256(directory.encode()).hexdigest()[:32]


def open_ends_socket(directory):
    """The agent's end socket, or None where it cannot be made (then it scans only)."""
    addr = ends_address(directory)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if not addr.startswith("\0"):
            try:
                os.unlink(addr)
            except FileNotFoundError:
                pass
        s.bind(addr)
        s.setblocking(False)
        return s
    except OSError:
        s.close()
        return None


def read_ends(sock):
    """Run keys whose end was announced since the last read."""
    keys = set()
    while True:
        try:
            data = sock.recv(256)
        except (BlockingIOError, InterruptedError):
            return keys
        except OSError:
            return keys
        if data:
            keys.add(data.decode("ascii", "replace"))


def announce_end(directory, key):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(key.encode(), ends_address(directory))
    except OSError:
        pass  # no agent now: the next one scans
    finally:
        s.close()


class Announcer:
    """The agent's own datagrams to its monitor (a new run to follow, a watch to look at):
    one socket for all of them, not one per datagram."""

    def __init__(self, directory):
        self.addr = ends_address(directory)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def __call__(self, key):
        try:
            self.sock.sendto(key.encode(), self.addr)
        except OSError:
            pass  # no monitor socket: it scans


def make_wake_fifo(jobdir):
    """The shepherd's end of its wake FIFO, opened read-write so it never sees EOF."""
    path = os.path.join(jobdir, "wake")
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None


def wake_shepherd(jobdir):
    try:
        fd = os.open(os.path.join(jobdir, "wake"),
                     os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return  # no shepherd reading (ENXIO), or none yet: it reads the cancel file anyway
    try:
        os.write(fd, b"!")
    except OSError:
        pass  # the pipe is full: a wake is pending already
    finally:
        os.close(fd)
