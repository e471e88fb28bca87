"""The client's side of staged files and results: uploading what `stage=` names, chunk by
chunk, and saving a job's results as a zip archive or into a directory. Neither holds more
than a chunk of a file in memory, and what is saved appears under its name only once whole."""
from __future__ import annotations

import base64
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ValidationError
from .stagefiles import CHUNK, open_inside, stage_manifest

if TYPE_CHECKING:
    from .client import Client


def upload(q: Client, paths: list[str] | tuple[str, ...] | str) -> tuple[str, list[str]]:
    """Send the files `paths` name to labqd; the upload's token and the symlinks left out."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    files, skipped = stage_manifest([str(p) for p in paths])
    if not files:
        raise ValidationError("stage: nothing to send (no files under the paths given)",
                              {"field": "stage"})
    reply = q.stage_begin([[f.path, f.size, f.mode] for f in files])
    token = reply["token"]
    for index, f in enumerate(files):
        sent = 0
        with open(f.source, "rb") as src:
            while sent < f.size:
                data = src.read(min(CHUNK, f.size - sent))
                if not data:
                    raise ValidationError(f"stage: {f.source} shrank while it was sent",
                                          {"field": "stage", "path": f.source})
                q.stage_put(token, index, sent, data)
                sent += len(data)
    return token, skipped


def _chunks(q: Client, job_id: int, index: int, size: int) -> Any:
    offset = 0
    while offset < size:
        data = q.results_read(job_id, index, offset)
        if not data:
            break
        yield data
        offset += len(data)


def save_zip(q: Client, job_id: int, path: str | os.PathLike[str]) -> list[list[Any]]:
    """The job's results as one zip archive at `path`, written beside it and renamed."""
    listing = q.results(job_id)["files"]
    target = Path(path)
    part = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED, allowZip64=True,
                             compresslevel=1) as zf:
            for index, (name, size) in enumerate(listing):
                with zf.open(name, "w", force_zip64=size > (1 << 31)) as w:
                    for data in _chunks(q, job_id, index, size):
                        w.write(data)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return listing


def save_dir(q: Client, job_id: int, directory: str | os.PathLike[str]) -> list[list[Any]]:
    """The job's results as files under `directory` (made if missing). A name that would
    leave it ('..', an absolute path, a symlink planted in the directory) is refused."""
    listing = q.results(job_id)["files"]
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for index, (name, size) in enumerate(listing):
        try:
            fd = open_inside(root, name)
        except OSError as e:
            raise ValidationError(f"cannot write {name} under {root}: {e.strerror or e} (labq "
                                  "follows no symlinks there)", {"path": name}) from None
        with os.fdopen(fd, "wb") as out:
            for data in _chunks(q, job_id, index, size):
                out.write(data)
    return listing


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
