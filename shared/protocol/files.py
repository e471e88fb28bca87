"""labq.protocol's requests for files: staging a job's inputs before its submit, reading its
results after it ends, and purging old files. Imported by labq.protocol, which is where users
and labqd find them.

File bytes cross as base64 inside the JSON request, a chunk (1 MiB) per request, so every
request keeps the one shape and the frame bound that all others have."""
from __future__ import annotations

import base64
import binascii
from typing import Any, Self, TypedDict

from ..spec import MAX_INT
from ..stagefiles import (
    CHUNK,
    MAX_FILE_BYTES,
    MAX_STAGE_FILES,
    check_relpath,
    check_token,
)
from .args import arg_error, check_id, check_int, check_number
from .base import Op, Request


class StageReply(TypedDict):
    token: str
    files: int
    bytes: int


class ResultsReply(TypedDict):
    id: int
    state: str  # none, pending, complete, incomplete, purged
    files: list[list[Any]]  # [[path, size], ...]
    bytes: int
    note: str | None  # what the cap cut, or why the copy is incomplete
    purged: float | None


class PurgeReply(TypedDict):
    jobs: int
    bytes: int


class StageBeginRequest(Request, op=Op.STAGE_BEGIN, reply=StageReply):
    """Announce the files of a submit to come: [[path, size, mode], ...]. The answer's token
    names them in stage_put and then in the submit's `stage`."""
    files: list[list[Any]]

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        files = args.get("files")
        if type(files) is not list or not 1 <= len(files) <= MAX_STAGE_FILES:
            raise arg_error("files", f"must list 1 to {MAX_STAGE_FILES} files")
        seen = set()
        for f in files:
            if (type(f) is not list or len(f) != 3 or type(f[1]) is not int
                    or type(f[2]) is not int or not 0 <= f[1] <= MAX_FILE_BYTES
                    or not 0 <= f[2] <= 0o7777):
                raise arg_error("files", "each entry is [path, size, mode]")
            path = check_relpath("files", f[0])
            if path in seen or any(p in seen for p in _parents(path)):
                raise arg_error("files", f"{path!r} is given twice or under a file")
            seen.add(path)
        return cls(files=files)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class StagePutRequest(Request, op=Op.STAGE_PUT, reply=dict):
    """One chunk of file `index` of an upload, at `offset` (chunks come in order)."""
    token: str
    index: int
    offset: int
    data: str  # base64

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        data = args.get("data")
        if type(data) is not str or len(data) > 2 * CHUNK:
            raise arg_error("data", f"must be base64 of at most {CHUNK} bytes")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise arg_error("data", "is not base64") from None
        return cls(token=check_token("token", args.get("token")),
                   index=check_int(args, "index", 0, MAX_STAGE_FILES - 1),
                   offset=check_int(args, "offset", 0, MAX_FILE_BYTES), data=data)


class ResultsRequest(Request, op=Op.RESULTS, reply=ResultsReply):
    """A job's results: their state and [path, size] of each file (the owner and admins)."""
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args))


class ResultsReadRequest(Request, op=Op.RESULTS_READ, reply=dict):
    """Bytes of result file `index` (as `results` lists them) from `offset`: {data, size}."""
    id: int
    index: int
    offset: int = 0
    max_bytes: int = CHUNK

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_id(args), index=check_int(args, "index", 0, MAX_STAGE_FILES),
                   offset=check_int(args, "offset", 0, MAX_INT),
                   max_bytes=check_int(args, "max_bytes", 1, CHUNK)
                   if "max_bytes" in args else CHUNK)


class PurgeRequest(Request, op=Op.PURGE, reply=PurgeReply):
    """Admins: remove the log copies, results and node scratch directories of jobs that
    ended before `before` (Unix time); the jobs' rows and events stay."""
    before: float

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        if "before" not in args:
            raise arg_error("before", "is required: a Unix time")
        return cls(before=check_number(args, "before", 0.0, 0.0, 1e11))
