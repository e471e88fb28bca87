"""Staged files and results on labqd's side: uploads from clients, the results kept per job,
who may read them, the limits, and retention.

Under the state directory (labqd's own, closed to others):
- `stage/<token>/`: one upload, `manifest.json` ({uid, files: [[path, size, mode]]}) and
  each file's bytes as `<index>`, appended in order. A job names its upload's token; jobs of
  an array share one.
- `results/<job>/`: `manifest.json` ({files: [[path, size]], note}) and each file as
  `<index>`. It is written as `results/<job>.part/` and renamed whole once every file is in,
  so a copy cut short (labqd killed, node gone) is never presented as complete.
Moving the bytes to and from nodes is labq.daemon.nodes.filemove's part.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from labq.errors import InvalidState, NotFound, PermissionDenied, QuotaExceeded, ValidationError
from labq.stagefiles import CHUNK

from . import store as st
from .config import Config
from .identity import Caller
from .logcopy import LogCopies

log = logging.getLogger("labqd.files")
UPLOAD_MAX_AGE_S = 86400  # an upload no job has claimed by then is removed


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class JobFiles:
    def __init__(self, cfg: Config, store: st.Store, logs: LogCopies):
        self.cfg = cfg
        self.store = store
        self.logs = logs
        self.stage_dir = cfg.state_dir / "stage"
        self.results_dir = cfg.state_dir / "results"
        for d in (self.stage_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        for part in self.results_dir.glob("*.part"):  # copies a stopped labqd left half done
            shutil.rmtree(part, ignore_errors=True)

    # -- uploads ---------------------------------------------------------------------------
    def _limit_mb(self, name: str) -> int | None:
        v = self.cfg.limits.get(name)
        return None if v is None else int(v)

    def begin(self, caller: Caller, files: list[list[Any]]) -> dict:
        total = sum(f[1] for f in files)
        most = self._limit_mb("job_max_stage")
        if most is not None and total > most << 20:
            raise QuotaExceeded(f"the staged files take {total} bytes; a job may stage at most "
                                f"{most} MiB (limits.job_max_stage); nothing was sent",
                                {"limit": "job_max_stage", "value": most << 20})
        token = secrets.token_hex(16)
        d = self.stage_dir / token
        d.mkdir(mode=0o700)
        _write_json(d / "manifest.json", {"uid": caller.uid, "files": files,
                                          "created": time.time()})
        return {"token": token, "files": len(files), "bytes": total}

    def _upload(self, caller: Caller, token: str) -> dict:
        m = _read_json(self.stage_dir / token / "manifest.json")
        # another user's upload is answered as none at all: tokens are not for guessing
        if not isinstance(m, dict) or m.get("uid") != caller.uid:
            raise NotFound(f"no upload {token} of {caller.user}; start one with stage_begin",
                           {"token": token})
        return m

    def put(self, caller: Caller, token: str, index: int, offset: int, data64: str) -> dict:
        m = self._upload(caller, token)
        if index >= len(m["files"]):
            raise ValidationError(f"index: the upload has {len(m['files'])} files",
                                  {"field": "index"})
        path, size, _mode = m["files"][index]
        data = base64.b64decode(data64)
        if offset + len(data) > size:
            raise ValidationError(f"{path}: more bytes than the {size} announced; the file "
                                  "changed while it was sent", {"field": "data", "path": path})
        target = self.stage_dir / token / str(index)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            have = os.fstat(fd).st_size
            if have != offset:
                raise InvalidState(f"{path}: labqd has {have} bytes of it; send from there",
                                   {"offset": have, "path": path})
            os.write(fd, data)
        finally:
            os.close(fd)
        return {"offset": offset + len(data)}

    def check_spec(self, caller: Caller, spec: dict) -> None:
        """At submit: the upload a spec names is the caller's and complete (its token becomes
        {token, files, bytes}); results fit the caller's storage limit."""
        if spec.get("results"):
            most = self._limit_mb("user_max_storage")
            if most is not None:
                used = self.store.results_bytes(caller.uid)
                if used >= most << 20:
                    raise QuotaExceeded(
                        f"{caller.user}'s kept results take {used} bytes, the most allowed is "
                        f"{most} MiB (limits.user_max_storage); remove old jobs' results "
                        "(ask an admin to `labq purge`) first; nothing was queued",
                        {"limit": "user_max_storage", "value": used})
        token = spec.get("stage")
        if token is None or isinstance(token, dict):
            return
        m = self._upload(caller, token)
        for i, (path, size, _mode) in enumerate(m["files"]):
            p = self.stage_dir / token / str(i)
            have = p.stat().st_size if p.exists() else 0
            if have != size:
                raise ValidationError(f"stage: {path} has {have} of its {size} bytes; finish "
                                      "the upload first", {"field": "stage", "path": path})
        spec["stage"] = {"token": token, "files": len(m["files"]),
                         "bytes": sum(f[1] for f in m["files"])}

    def staged(self, token: str) -> list[tuple[str, int, int, Path]]:
        """(path, size, mode, where its bytes are) of each file of an upload."""
        m = _read_json(self.stage_dir / token / "manifest.json") or {"files": []}
        return [(p, s, mode, self.stage_dir / token / str(i))
                for i, (p, s, mode) in enumerate(m["files"])]

    # -- results ---------------------------------------------------------------------------
    def result_paths(self, job_id: int) -> tuple[Path, Path]:
        """Where a job's results are kept, and where a copy is built."""
        return self.results_dir / str(job_id), self.results_dir / f"{job_id}.part"

    def results(self, caller: Caller, row: dict) -> dict:
        _may_read(caller, row)
        files = row.get("files") or {}
        out = {"id": row["id"], "files": [], "bytes": 0, "note": files.get("note"),
               "purged": row.get("purged_time")}
        if row.get("purged_time") is not None:
            return dict(out, state="purged")
        if not row.get("results"):
            return dict(out, state="none")
        m = _read_json(self.result_paths(row["id"])[0] / "manifest.json")
        if m is None:
            return dict(out, state=files.get("state") or "pending")
        return dict(out, state=files.get("state") or "complete", files=m["files"],
                    bytes=sum(f[1] for f in m["files"]), note=m.get("note"))

    def read(self, caller: Caller, row: dict, index: int, offset: int, max_bytes: int) -> dict:
        _may_read(caller, row)
        final = self.result_paths(row["id"])[0]
        m = _read_json(final / "manifest.json")
        if m is None or row.get("purged_time") is not None:
            raise NotFound(f"job {row['id']} has no results kept", {"id": row["id"]})
        if index >= len(m["files"]):
            raise ValidationError(f"index: job {row['id']} has {len(m['files'])} result files",
                                  {"field": "index"})
        with open(final / str(index), "rb") as f:
            f.seek(offset)
            data = f.read(min(max_bytes, CHUNK))
        return {"data": base64.b64encode(data).decode(), "size": m["files"][index][1]}

    # -- retention -------------------------------------------------------------------------
    def purge(self, before: float, remove_scratch: Any) -> dict:
        """Remove log copies, results and (through `remove_scratch(row) -> bool`) node scratch
        directories of jobs that ended before `before`; rows and events stay."""
        jobs = freed = 0
        now = time.time()
        for row in self.store.purgeable(before):
            final, part = self.result_paths(row["id"])
            freed += _tree_size(final) + self.logs.remove(row["id"])
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(part, ignore_errors=True)
            files = dict(row.get("files") or {}, state="purged")
            if files.get("scratch") and remove_scratch(row):
                files.pop("scratch")
            self.store.set_files(row["id"], files, purged_time=now)
            jobs += 1
        return {"jobs": jobs, "bytes": freed + self.drop_uploads(before)}

    def drop_uploads(self, before: float) -> int:
        """Remove uploads whose jobs all ended before `before`, and uploads no job named
        within a day; the bytes freed."""
        freed, now = 0, time.time()
        keep = self.store.stage_tokens_in_use(before)
        claimed = self.store.stage_tokens_in_use(0.0)
        for d in self.stage_dir.iterdir():
            created = (_read_json(d / "manifest.json") or {}).get("created", 0)
            # an upload no job names yet may be a submit on its way: it gets a day
            if d.name in keep or (d.name not in claimed and created >= now - UPLOAD_MAX_AGE_S):
                continue
            freed += _tree_size(d)
            shutil.rmtree(d, ignore_errors=True)
        return freed


def _may_read(caller: Caller, row: dict) -> None:
    if not caller.may_touch(row):
        raise PermissionDenied(f"job {row['id']} belongs to {row['owner']}; only they and "
                               "admins may read its results",
                               {"id": row["id"], "owner": row["owner"]})


def _tree_size(path: Path) -> int:
    total = 0
    for d, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except OSError:
                pass
    return total
