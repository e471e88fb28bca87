"""labqd's own copy of every job's log, fed by the agent's stream, capped per job.

Followers read from this copy, so `labq logs` works after the node is gone, and one stream per
node serves any number of followers. `N.log` holds stdout and stderr as they came; `N.err`
says which bytes of it are stderr: sorted, non-overlapping (start, end) records of 16 bytes,
so a reader finds the ones inside what it reads by bisection. labqd's own notes in the copy
(a requeue's mark, the truncation note) count as stderr.
"""
from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

RANGE = struct.Struct("<QQ")
Spans = list[tuple[int, int]]
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

    def _err_path(self, job: Key) -> Path:
        return self.dir / f"{job}.err"

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
                    mark = f"\n[labq: run {run} ended: {why}; the job was requeued]\n".encode()
                    at = f.tell()
                    self._add_spans(job, at, [(at, at + len(mark))])
                    f.write(mark)
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
                for p in (self.path(key), self._mark_path(key), self._base_path(key),
                          self._err_path(key)):
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

    def append(self, job: Key, offset: int, data: bytes, node: str, node_path: str,
               err: Iterable[tuple[int, int]] = ()) -> None:
        """The node's bytes from `offset`, with `err` the stderr ranges among them (in the
        node log's offsets)."""
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
                at = f.tell()
                # the ranges count against the cap too: output that switches streams every
                # few bytes would otherwise grow them to several times the log
                ranges = list(err)
                room = self.cap - at - self._err_bytes(job) - RANGE.size * len(ranges)
                kept = data if len(data) <= room else data[:max(0, room)]
                shift = at - offset
                spans = [(max(s, offset) + shift, min(e, offset + len(kept)) + shift)
                         for s, e in ranges if s < offset + len(kept) and e > offset]
                note = b""
                if len(kept) < len(data):
                    note = (f"\n[labq: log truncated at {self.cap} bytes; the full log is on "
                            f"node {node} in {node_path}]\n".encode())
                    spans.append((at + len(kept), at + len(kept) + len(note)))
                # the ranges first: a reader that finds bytes always finds their ranges
                self._add_spans(job, at, spans)
                f.write(kept + note)
                if note:
                    self.truncated.add(job)
                    self._mark_path(job).write_text(str(self.received[job]))
            self.changed.notify_all()

    def _err_bytes(self, job: Key) -> int:
        try:
            return self._err_path(job).stat().st_size
        except OSError:
            return 0

    def _add_spans(self, job: Key, size: int, spans: Spans) -> None:
        """Add stderr ranges for bytes about to be written at `size`, merging touching ones.
        Records at or past `size` (ranges written before a crash that lost their bytes) go."""
        path = self._err_path(job)
        try:
            f = open(path, "r+b")
        except FileNotFoundError:
            if not spans:
                return
            f = open(path, "w+b")
        with f:
            whole = f.seek(0, os.SEEK_END)
            n = whole // RANGE.size
            keep: Spans = []
            while n:
                f.seek((n - 1) * RANGE.size)
                s, e = RANGE.unpack(f.read(RANGE.size))
                n -= 1
                if s < size:
                    keep = [(s, min(e, size))]
                    break
            if not spans and keep and keep[0][1] == e and (n + 1) * RANGE.size == whole:
                return  # nothing to add, nothing to mend: the usual case
            for s, e in spans:
                if s >= e:
                    continue
                if keep and keep[-1][1] == s:
                    keep[-1] = (keep[-1][0], e)
                else:
                    keep.append((s, e))
            f.seek(n * RANGE.size)
            f.write(b"".join(RANGE.pack(s, e) for s, e in keep))
            f.truncate()

    def err_spans(self, job: Key, start: int, end: int, limit: int = 1 << 62) -> Spans:
        """The stderr ranges within bytes [start, end) of the copy, clipped to them; the
        first `limit` of them."""
        with self.lock:  # append rewrites the last record in place
            try:
                f = open(self._err_path(job), "rb")
            except FileNotFoundError:
                return []
            with f:
                def record(i: int) -> tuple[int, int]:
                    f.seek(i * RANGE.size)
                    s, e = RANGE.unpack(f.read(RANGE.size))
                    return s, e
                lo, hi = 0, f.seek(0, os.SEEK_END) // RANGE.size
                count = hi
                while lo < hi:  # the first record that ends past `start`
                    mid = (lo + hi) // 2
                    if record(mid)[1] <= start:
                        lo = mid + 1
                    else:
                        hi = mid
                out: Spans = []
                f.seek(lo * RANGE.size)
                while lo < count:
                    block = f.read(min(count - lo, 4096) * RANGE.size)
                    lo += len(block) // RANGE.size
                    for s, e in RANGE.iter_unpack(block):
                        if s >= end or len(out) >= limit:
                            return out
                        out.append((max(s, start), min(e, end)))
                    if not block:
                        break
                return out

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
