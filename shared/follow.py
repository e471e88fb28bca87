"""Following a job to its end: where its output goes (the caller's files, byte for byte where
a file takes bytes), and what Ctrl-C does meanwhile."""
from __future__ import annotations

import codecs
import io
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client
    from .models import Job

# the node keeps both streams in one log and says where the stderr bytes are in it
STDOUT = "stdout"
STDERR = "stderr"


class Detached(KeyboardInterrupt):
    """A second Ctrl-C while a job was followed: the caller stopped waiting for it.

    A KeyboardInterrupt still, so a script that does not catch it stops as on any Ctrl-C;
    `job_id` says which job was left, and `cancelled` whether labqd took its cancel."""

    def __init__(self, job_id: int, cancelled: bool) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.cancelled = cancelled


class Sink:
    """One file that output is written to: bytes go to a binary file, or to the buffer
    under a text file (sys.stdout); text, decoded as UTF-8, to any other text file."""

    def __init__(self, file: IO[Any]) -> None:
        self.file = file
        self.binary: IO[bytes] | None = None
        if isinstance(file, (io.RawIOBase, io.BufferedIOBase)):
            self.binary = file
        elif isinstance(getattr(file, "buffer", None), io.BufferedIOBase):
            self.binary = file.buffer  # type: ignore[attr-defined]  # checked above
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if self.binary is not None:
            if self.binary is not self.file:
                self.file.flush()  # text already written to the file goes first
            self.binary.write(data)
            self.binary.flush()
        else:
            text = self.decoder.decode(data)
            if text:
                self.file.write(text)
                self.file.flush()

    def close(self) -> None:
        """Write what an incomplete UTF-8 sequence at the end held back (text files)."""
        if self.binary is None:
            tail = self.decoder.decode(b"", final=True)
            if tail:
                self.file.write(tail)
                self.file.flush()


class InterruptsRecorded:
    """While a job is being submitted, a Ctrl-C is noted instead of raised: raised half way
    through the submit, it would leave a job queued that the caller never learns the id of,
    and so cannot cancel. Only in the main thread, and only over Python's own handler."""

    def __init__(self) -> None:
        self.count = 0
        self._old: Any = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> InterruptsRecorded:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def attach(q: Client, job_id: int, *, stdout: IO[Any] | None, stderr: IO[Any] | None,
           offset: int, interrupted: bool, on_interrupt: Callable[[int], None] | None,
           poll: float) -> Job:
    """Client.attach: a job's output into the sinks until it has ended, Ctrl-C cancelling
    the job once and detaching the second time."""
    import sys
    sinks = {STDOUT: Sink(stdout or sys.stdout), STDERR: Sink(stderr or sys.stderr)}
    cancel_sent = cancel_taken = False
    while True:
        try:
            if interrupted and not cancel_sent:
                cancel_sent = True  # before the call: another Ctrl-C in it detaches
                if on_interrupt is not None:
                    on_interrupt(job_id)
                # the interrupted call may have stopped half way through its reply: the
                # client then sends the cancel over a fresh connection. No waiting for the
                # job to end in it: the job's last words come while it ends, as they are said
                q.cancel(job_id, reason="interrupted (Ctrl-C)", wait=False)
                cancel_taken = True
            for stream, data in _output(q, job_id, offset, poll):
                sinks[stream].write(data)
                offset += len(data)
            for sink in sinks.values():
                sink.close()
            return q.job(job_id)
        except KeyboardInterrupt:
            if interrupted:
                raise Detached(job_id, cancel_taken) from None
            interrupted = True


def _output(q: Client, job_id: int, offset: int, poll: float) -> Iterator[tuple[str, bytes]]:
    """(stream, bytes) until the job has ended."""
    return q.follow_streams(job_id, offset, poll)


def split_streams(data: bytes, spans: list[tuple[int, int]]) -> Iterator[tuple[str, bytes]]:
    """The pieces of a chunk, tagged by stream: `spans` are its stderr ranges, sorted and
    apart; the rest is stdout (all of it in a log from before the node kept them apart)."""
    at = 0
    for start, end in spans:
        if start > at:
            yield STDOUT, data[at:start]
        yield STDERR, data[start:end]
        at = end
    if at < len(data):
        yield STDOUT, data[at:]
