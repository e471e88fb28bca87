"""labqd's own copy of every job's log, fed by the agent's stream, capped per job.

Followers read from this copy, so `labq logs` works after the node is gone, and one stream per
node serves any number of followers.
"""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

# a job's id, or "<id>.<rank>" for part `rank` > 0 of a gang (labq.daemon.gangs.log_key)
Key = int | str


class LogCopies:
    def __init__(self, directory: Path, cap_bytes: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cap = cap_bytes
        self.received: dict[Key, int] = {}  # job -> bytes of the node's log seen so far
        self.truncated: set[Key] = set()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def path(self, job: Key) -> Path:
        return self.dir / f"{job}.log"

    def _mark_path(self, job: Key) -> Path:
        return self.dir / f"{job}.truncated"

    def _base_path(self, job: Key) -> Path:
        return self.dir / f"{job}.base"

    def _size(self, job: Key) -> int:
        p = self.path(job)
        return p.stat().st_size if p.exists() else 0

    def _base(self, job: Key) -> int:
        """Where the current run's bytes start in the copy (after a requeue's mark)."""
        try:
            return int(self._base_path(job).read_text())
        except (OSError, ValueError):
            return 0

    def resume_offset(self, job: Key) -> int | None:
        """Where the node's stream should resume; None: from the node's end (copy is full)."""
        with self.lock:
            if job in self.truncated or self._mark_path(job).exists():
                self.truncated.add(job)
                return None
            if job not in self.received:
                self.received[job] = self._size(job) - self._base(job)
            return self.received[job]

    def new_run(self, job: Key, run: int, why: str) -> None:
        """A requeued job starts a new run: mark it in the copy; its node log starts at 0."""
        with self.lock:
            if job not in self.truncated:
                with open(self.path(job), "ab") as f:
                    f.write(f"\n[labq: run {run} ended: {why}; the job was requeued]\n"
                            .encode())
            self._base_path(job).write_text(str(self._size(job)))
            self.received[job] = 0
            self.truncated.discard(job)
            self._mark_path(job).unlink(missing_ok=True)
            self.changed.notify_all()

    def remove(self, job: Key) -> int:
        """Drop a job's copy, and its parts' if it ran on several nodes (retention); the bytes
        they took."""
        freed = 0
        with self.lock:
            keys = {job} | {p.name.split(".")[0] + "." + p.name.split(".")[1]
                            for p in self.dir.glob(f"{job}.*.log")}
            for key in keys:
                for p in (self.path(key), self._mark_path(key), self._base_path(key)):
                    try:
                        freed += p.stat().st_size
                        p.unlink()
                    except OSError:
                        pass
                self.received.pop(key, None)
                self.truncated.discard(key)
        return freed

    def reset(self, job: Key, offset: int) -> None:
        with self.lock:
            self.received[job] = offset

    def append(self, job: Key, offset: int, data: bytes, node: str, node_path: str) -> None:
        with self.lock:
            expected = self.received.get(job)
            if expected is None:
                expected = self._size(job) - self._base(job)
            if offset + len(data) <= expected:
                return  # already have it (a re-sent chunk after a reconnect)
            if offset < expected:
                data = data[expected - offset:]
                offset = expected
            self.received[job] = offset + len(data)
            if job in self.truncated:
                return
            with open(self.path(job), "ab") as f:
                room = self.cap - f.tell()
                if len(data) > room:
                    f.write(data[:max(0, room)])
                    f.write(f"\n[labq: log truncated at {self.cap} bytes; the full log is on "
                            f"node {node} in {node_path}]\n".encode())
                    self.truncated.add(job)
                    self._mark_path(job).write_text(str(self.received[job]))
                else:
                    f.write(data)
            self.changed.notify_all()

    def notify(self) -> None:
        with self.lock:
            self.changed.notify_all()

    def size(self, job: Key) -> int:
        return self._size(job)

    def read(self, job: Key, offset: int, max_bytes: int) -> bytes:
        try:
            with open(self.path(job), "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOVERFLOW):  # past what the file system holds
                return b""
            raise

    def wait(self, job: Key, offset: int, timeout: float) -> None:
        """Sleep until the copy grows past `offset` or anything notifies, at most `timeout`."""
        with self.lock:
            try:
                size = os.path.getsize(self.path(job))
            except OSError:
                size = 0
            if size <= offset:
                self.changed.wait(timeout)
