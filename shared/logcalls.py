"""Part of the client: reading and following a job's log, which labqd sends in pieces with
where its stderr is in them."""
from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import protocol
from .calls import sends
from .errors import DaemonUnavailable, InternalError, from_wire
from .protocol import Op

# how Client words a call that labqd's RPyC refused, which an older labqd does for arguments
# it does not take
REFUSED = "labqd refused the call"


class LogCalls:
    """Mixed into Client, which makes the calls."""

    _four_args = False  # labqd answers read_log without stderr ranges (an older one)

    if TYPE_CHECKING:
        def _remote(self, method: str, *args: Any) -> Any: ...

        def reconnect(self, within: float = 30.0) -> None: ...

    @sends(Op.READ_LOG)
    def read_log(self, job_id: int, offset: int = 0, wait: float = 0.0,
                 max_bytes: int = 1 << 20, part: int = 0) -> tuple[bytes, int, bool]:
        """Bytes from `offset` (negative: that many bytes before the end); the offset after
        them; whether the log is complete (job ended). stdout and stderr come interleaved;
        `read_streams` says which bytes are which. `part`: a gang's part K's log."""
        data, new_offset, done, _spans = self._read_log(protocol.ReadLogRequest(
            id=job_id, offset=offset, wait=wait, max_bytes=max_bytes, part=part))
        return data, new_offset, done

    def read_streams(self, job_id: int, offset: int = 0, wait: float = 0.0,
                     max_bytes: int = 1 << 20, part: int = 0
                     ) -> tuple[bytes, int, bool, list[tuple[int, int]]]:
        """As `read_log`, and where the job's stderr is in the bytes: sorted (start, end)
        pairs relative to them; the rest is stdout. A labqd too old to say has none."""
        req = protocol.ReadLogRequest(id=job_id, offset=offset, wait=wait,
                                      max_bytes=max_bytes, streams=not self._four_args,
                                      part=part)
        try:
            return self._read_log(req)
        except InternalError as e:
            # a labqd from before takes four arguments: RPyC refuses a fifth as a call it
            # cannot make, which is not an error the request itself got
            if not req.streams or part or not e.message.startswith(REFUSED):
                raise
        result = self._read_log(protocol.ReadLogRequest(id=job_id, offset=offset, wait=wait,
                                                        max_bytes=max_bytes))
        self._four_args = True
        return result

    def _read_log(self, req: protocol.ReadLogRequest
                  ) -> tuple[bytes, int, bool, list[tuple[int, int]]]:
        reply = self._remote("read_log", *req.to_args())
        data, new_offset, done, error = reply[:4]
        if error:
            raise from_wire(json.loads(error))
        data = bytes(data)
        packed = reply[4] if len(reply) > 4 else b""
        spans = protocol.unpack_spans(packed, len(data)) if type(packed) is bytes else []
        return data, int(new_offset), bool(done), spans

    def logs(self, job_id: int, part: int = 0) -> str:
        chunks, offset = [], 0
        while True:
            data, offset, done = self.read_log(job_id, offset, part=part)
            chunks.append(data)
            if not data:
                break
        return b"".join(chunks).decode("utf-8", "replace")

    def follow_bytes(self, job_id: int, offset: int = 0, poll: float = 5.0,
                     reconnect_within: float = 60.0, part: int = 0) -> Iterator[bytes]:
        """Log bytes as they come; rides out a labqd restart of up to `reconnect_within` s."""
        for data, _spans in self._follow(job_id, offset, poll, reconnect_within, False, part):
            yield data

    def follow_streams(self, job_id: int, offset: int = 0, poll: float = 5.0,
                       reconnect_within: float = 60.0,
                       part: int = 0) -> Iterator[tuple[str, bytes]]:
        """As `follow_bytes`, in pieces tagged "stdout" or "stderr" by the stream that
        wrote them."""
        from .follow import split_streams
        for data, spans in self._follow(job_id, offset, poll, reconnect_within, True, part):
            yield from split_streams(data, spans)

    def _follow(self, job_id: int, offset: int, poll: float, reconnect_within: float,
                streams: bool, part: int = 0) -> Iterator[tuple[bytes, list[tuple[int, int]]]]:
        while True:
            try:
                if streams:
                    data, offset, done, spans = self.read_streams(job_id, offset, wait=poll,
                                                                  part=part)
                else:
                    data, offset, done = self.read_log(job_id, offset, wait=poll, part=part)
                    spans = []
            except DaemonUnavailable:
                if reconnect_within <= 0:
                    raise
                self.reconnect(reconnect_within)
                continue
            if data:
                yield data, spans
            elif done:
                return

    def follow(self, job_id: int, offset: int = 0) -> Iterator[str]:
        """Yield the log as text while the job runs; end when the job has ended."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for data in self.follow_bytes(job_id, offset):
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
