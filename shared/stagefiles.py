"""Staged files and results as paths: the checks labqd and clients share (relative paths that
cannot leave their directory, result globs, upload tokens), the client's walk of what
`--stage` names, and writing results into a directory without escaping it.

Standard library only: users' scripts import it through `labq`.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .spec import CONTROL_CHARS

MAX_GLOBS = 64
MAX_GLOB_BYTES = 1024
MAX_PATH_BYTES = 4096
MAX_STAGE_FILES = 100_000
MAX_FILE_BYTES = 1 << 50
CHUNK = 1 << 20  # bytes of a file per request, either way
TOKEN = re.compile(r"[0-9a-f]{32}")


def _bad(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field}: {message}", {"field": field})


def check_relpath(field: str, v: Any) -> str:
    """A relative path of plain components: no '..', no '.', no empty part, not absolute."""
    if type(v) is not str or not v or len(v.encode("utf-8", "replace")) > MAX_PATH_BYTES:
        raise _bad(field, f"must be a relative path of 1 to {MAX_PATH_BYTES} bytes")
    if v.startswith("/") or CONTROL_CHARS.search(v) or "\\" in v:
        raise _bad(field, f"{v[:200]!r} must be relative, without control characters or '\\'")
    if any(p in ("", ".", "..") for p in v.split("/")):
        raise _bad(field, f"{v[:200]!r} must not hold '..', '.' or empty components")
    return v


def check_globs(v: Any) -> list[str] | None:
    """`--results` globs: relative to the job's working directory, never above it."""
    if v is None or v == []:
        return None
    if type(v) is not list or len(v) > MAX_GLOBS:
        raise _bad("results", f"must be a list of at most {MAX_GLOBS} globs")
    for g in v:
        if type(g) is not str or len(g.encode("utf-8", "replace")) > MAX_GLOB_BYTES:
            raise _bad("results", f"each glob is a string of at most {MAX_GLOB_BYTES} bytes")
        check_relpath("results", g)
    return list(v)


def check_token(field: str, v: Any) -> str:
    if type(v) is not str or not TOKEN.fullmatch(v):
        raise _bad(field, "must be a staging token, as stage_begin answers")
    return v


def files_fields(data: dict[str, Any], out: dict[str, Any]) -> None:
    """A submit's `stage` (a token of files uploaded with stage_begin/stage_put) and
    `results` (globs fetched when the job ends)."""
    stage = data.get("stage")
    out["stage"] = None if stage is None else check_token("stage", stage)
    out["results"] = check_globs(data.get("results"))


# -- the client's side ------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedFile:
    source: str  # the local path read
    path: str  # where it lands, relative to the job's working directory
    size: int
    mode: int


def stage_manifest(paths: list[str]) -> tuple[list[StagedFile], list[str]]:
    """The files `--stage PATH...` sends, each under its base name, directories recursively;
    and the symlinks inside directories that are left out. A symlink named directly is
    refused: labq never follows one."""
    files: list[StagedFile] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for given in paths:
        name = os.path.basename(os.path.normpath(os.path.abspath(given)))
        try:
            st = os.lstat(given)
        except OSError as e:
            raise _bad("stage", f"{given}: {e.strerror or e}") from None
        if stat.S_ISLNK(st.st_mode):
            raise _bad("stage", f"{given} is a symlink; labq stages files and directories, "
                       "and follows no symlinks")
        if not name or name in seen:
            raise _bad("stage", f"{given}: two staged paths would both land as {name!r}")
        seen.add(name)
        check_relpath("stage", name)
        if stat.S_ISREG(st.st_mode):
            files.append(StagedFile(given, name, st.st_size, stat.S_IMODE(st.st_mode)))
        elif stat.S_ISDIR(st.st_mode):
            _walk_dir(given, name, files, skipped)
        else:
            raise _bad("stage", f"{given} is neither a file nor a directory")
        if len(files) > MAX_STAGE_FILES:
            raise _bad("stage", f"more than {MAX_STAGE_FILES} files")
    return files, skipped


def _walk_dir(top: str, name: str, files: list[StagedFile], skipped: list[str]) -> None:
    for d, dirs, names in os.walk(top, followlinks=False):
        rel = os.path.relpath(d, top)
        base = name if rel == "." else f"{name}/{rel}"
        for n in sorted(dirs):
            if os.path.islink(os.path.join(d, n)):
                skipped.append(f"{base}/{n}")
        dirs[:] = sorted(n for n in dirs if not os.path.islink(os.path.join(d, n)))
        for n in sorted(names):
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                files.append(StagedFile(p, check_relpath("stage", f"{base}/{n}"), st.st_size,
                                        stat.S_IMODE(st.st_mode)))
            else:
                skipped.append(f"{base}/{n}")


def open_inside(root: Path, rel: str) -> int:
    """A new file `rel` under `root`, for writing, made without following any symlink on the
    way: a results archive whose names hold '..' or whose directory holds a planted link
    cannot write outside `root` (zip-slip)."""
    parts = check_relpath("path", rel).split("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
    dfd = os.open(root, flags)
    try:
        for p in parts[:-1]:
            try:
                os.mkdir(p, 0o755, dir_fd=dfd)
            except FileExistsError:
                pass
            nxt = os.open(p, flags, dir_fd=dfd)
            os.close(dfd)
            dfd = nxt
        return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                       | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
