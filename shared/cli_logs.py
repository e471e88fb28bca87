"""`labq logs`: a job's output, whole or followed, both streams or one, a gang's part."""
from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .cli_format import parse_ids

if TYPE_CHECKING:
    import argparse

    from .client import Client


def cmd_logs(q: Client, a: argparse.Namespace) -> int:
    job_id = parse_ids([a.id])[0]
    only = "stdout" if a.stdout else "stderr" if a.stderr else None
    out = sys.stdout.buffer
    offset = 0
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for stream, data in _log_pieces(q, job_id, a.follow, only is not None, a.part):
        if only in (None, stream):
            if a.json:  # one JSON object per chunk: {"id", "offset", "data"}
                print(json.dumps({"id": job_id, "offset": offset,
                                  "data": decoder.decode(data)}), flush=True)
            else:
                out.write(data)
                if a.follow:
                    out.flush()
        offset += len(data)
    out.flush()
    return 0


def _log_pieces(q: Client, job_id: int, follow: bool, split: bool,
                part: int = 0) -> Iterator[tuple[str, bytes]]:
    """A job's log (part `part`'s of a gang) in chunks, tagged by stream where `split` asks
    for it (else "stdout")."""
    if follow:
        yield from (q.follow_streams(job_id, part=part) if split
                    else (("stdout", chunk) for chunk in q.follow_bytes(job_id, part=part)))
        return
    from .follow import split_streams
    offset = 0
    while True:
        if split:
            data, offset, _done, spans = q.read_streams(job_id, offset, part=part)
        else:
            (data, offset, _done), spans = q.read_log(job_id, offset, part=part), []
        if not data:
            return
        yield from split_streams(data, spans)
