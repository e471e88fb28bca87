"""Moving a job's files between labqd and its node: staging before a run starts, copying its
results back when it ends, removing scratch directories, and the periodic pass that retries
copies, removes scratch once results are safe and applies retention.

Bytes go through the node's agent channel (labq.daemon.nodes.agent.transfer), a chunk per
request with a few requests in flight: memory stays at a few chunks whatever the file's size.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from labq.stagefiles import CHUNK
from labq.states import JobState

from .. import store as st
from ..jobfiles import JobFiles
from ..jobtable import JobTable
from .info import run_key
from .link import LinkClosed, NodeLink

log = logging.getLogger("labqd.files")
S = JobState
WINDOW = 4  # chunks in flight on a link: enough to keep a loopback link busy
REPLY_S = 120.0  # a chunk not answered by then: the link is taken as broken
TICK_S = 30.0


class TransferFailed(Exception):
    """The node could not stage or read a file; the message names it and says why."""


class FileMover:
    def __init__(self, cfg: Any, store: st.Store, jobs: JobTable, files: JobFiles,
                 links: dict[str, NodeLink]):
        self.cfg = cfg
        self.store = store
        self.jobs = jobs
        self.files = files
        self.links = links
        self.busy: set[int] = set()  # jobs whose results are being copied
        self.busy_lock = threading.Lock()
        self.stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="files", daemon=True).start()

    # -- staging ---------------------------------------------------------------------------
    def stage(self, link: NodeLink, job: dict, launch: Callable[[str], None]) -> None:
        """Send the job's staged files to a fresh scratch directory, then `launch(path)`
        (with the job lock held) if the run is still wanted; runs on a thread of its own."""
        threading.Thread(target=self._stage, args=(link, dict(job), launch), daemon=True,
                         name=f"stage-{job['id']}").start()

    def _stage(self, link: NodeLink, job: dict, launch: Callable[[str], None]) -> None:
        key = run_key(job)
        try:
            path = self._push(link, job, key)
        except LinkClosed as e:
            # the node went away: its run is requeued, or staged again when it returns
            log.warning("job %s: staging on %s stopped: %s", key, link.name, e)
            return
        except (TransferFailed, OSError) as e:
            with self.jobs.lock:
                cur = self._current(link, key)
                if cur is not None:
                    self.jobs.transition(cur, S.FAILED, "labqd", f"StageFailed: {e}",
                                         end_time=time.time())
            return
        with self.jobs.lock:
            cur = self._current(link, key)
            if cur is None:
                return
            why = self.jobs.cancel_requests.get(cur["id"])
            if why is not None:  # cancelled while its files were on their way
                self.jobs.transition(cur, S.CANCELLED, "labqd", why, end_time=time.time())
                return
            launch(path)

    def _current(self, link: NodeLink, key: str) -> dict | None:
        job_id, _, run = key.partition(".")
        job = self.jobs.active.get(int(job_id))
        if (job is None or job["state"] != S.RUNNING.value or job["node"] != link.name
                or job["restarts"] != int(run)):
            return None
        return job

    def _scratch_root(self, link: NodeLink) -> str:
        return link.cfg.scratch_root or f"{link.cfg.job_root}/scratch"

    def _push(self, link: NodeLink, job: dict, key: str) -> str:
        where = {"job": key, "uid": job["owner_uid"], "scratch_root": self._scratch_root(link)}
        path = _call(link, "stage_begin", **where)["path"]
        row = self.store.job_row(job["id"]) or {}
        self.store.set_files(job["id"], dict(row.get("files") or {}, scratch=path))
        for name, size, mode, source in self.files.staged(job["stage"]["token"]):
            with open(source, "rb") as f:
                chunks = ((off, f.read(CHUNK)) for off in range(0, max(size, 1), CHUNK))
                _windowed(link, "stage_put", (dict(
                    where, path=name, offset=off, mode=mode, last=off + len(data) >= size,
                    data=base64.b64encode(data).decode()) for off, data in chunks), None)
        return path

    # -- results ---------------------------------------------------------------------------
    def ended(self, link: NodeLink, job: dict) -> None:
        """A run ended: copy its results back (on a thread), keeping its end reason aside."""
        if not job.get("results"):
            return  # most jobs: no read of the row on every end
        row = self.store.job_row(job["id"])
        if row is None or not row.get("results"):
            return
        files = dict(row.get("files") or {}, state="pending", end_reason=row.get("reason"))
        self.store.set_files(row["id"], files)
        self.fetch(link, dict(row, files=files))

    def fetch(self, link: NodeLink, row: dict) -> None:
        with self.busy_lock:
            if row["id"] in self.busy:
                return
            self.busy.add(row["id"])
        threading.Thread(target=self._fetch_guarded, args=(link, row), daemon=True,
                         name=f"results-{row['id']}").start()

    def _fetch_guarded(self, link: NodeLink, row: dict) -> None:
        try:
            self._fetch(link, row)
        except Exception:
            log.exception("job %d: copying its results failed", row["id"])
        finally:
            with self.busy_lock:
                self.busy.discard(row["id"])

    def _fetch(self, link: NodeLink, row: dict) -> None:
        files = dict(row.get("files") or {})
        where = {"workdir": files.get("scratch") or row["cwd"], "uid": row["owner_uid"]}
        final, part = self.files.result_paths(row["id"])
        try:
            listing = _call(link, "results_list", globs=row["results"], **where)["files"]
            kept, note = _capped(listing, self.cfg.results_max_bytes)
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(mode=0o700)
            got = [[path, self._pull(link, where, path, size, part / str(i))]
                   for i, (path, size) in enumerate(kept)]
        except (LinkClosed, TransferFailed, OSError) as e:
            shutil.rmtree(part, ignore_errors=True)
            files.update(state="incomplete", note=str(e), tried=time.time(),
                         attempts=files.get("attempts", 0) + 1)
            self.store.set_files(row["id"], files, reason=f"ResultsIncomplete: {e}")
            log.warning("job %d: results incomplete: %s", row["id"], e)
            return
        with open(part / "manifest.json", "w") as f:
            json.dump({"files": got, "note": note}, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(part, final)  # whole, or not at all
        reason = files.pop("end_reason", row.get("reason"))
        files.update(state="complete", note=note, bytes=sum(g[1] for g in got), count=len(got))
        for k in ("tried", "attempts"):
            files.pop(k, None)
        self.store.set_files(row["id"], files, reason=reason)

    def _pull(self, link: NodeLink, where: dict, path: str, size: int, target: Any) -> int:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        end = [0]

        def write(req: dict, reply: dict) -> None:
            data = base64.b64decode(reply["data"])
            os.pwrite(fd, data, req["offset"])
            end[0] = max(end[0], req["offset"] + len(data))
        try:
            _windowed(link, "results_read", (dict(where, path=path, offset=off,
                                                  length=min(CHUNK, size - off))
                                             for off in range(0, size, CHUNK)), write)
            os.fsync(fd)
        finally:
            os.close(fd)
        return end[0]

    def node_up(self, link: NodeLink) -> None:
        """A node is back: copy what it still holds of ended jobs' results."""
        for row in self.store.results_due(link.name):
            self.fetch(link, row)

    # -- the periodic pass -----------------------------------------------------------------
    def _loop(self) -> None:
        # often enough for short settings to mean what they say
        every = max(1.0, min(TICK_S, self.cfg.node_keep_s / 2,
                             (self.cfg.retention_s or TICK_S * 2) / 2))
        while not self.stop.wait(every):
            try:
                self.tick(time.time())
            except Exception:
                log.exception("the files pass failed")

    def tick(self, now: float) -> None:
        for name, link in list(self.links.items()):
            if not link.connected:
                continue
            for row in self.store.results_due(name):
                f = row.get("files") or {}
                if now - f.get("tried", 0) >= min(3600, TICK_S * 2 ** f.get("attempts", 0)):
                    self.fetch(link, row)
        for row in self.store.scratch_due(now - self.cfg.node_keep_s):
            if (row["files"] or {}).get("state") not in ("pending", "incomplete") \
                    and self.remove_scratch(row):
                files = dict(row["files"])
                files.pop("scratch", None)
                self.store.set_files(row["id"], files)
        if self.cfg.retention_s:
            self.files.purge(now - self.cfg.retention_s, self.remove_scratch)
        # a staged copy serves requeues; once every job that names it has ended, it goes
        self.files.drop_uploads(now)

    def remove_scratch(self, row: dict) -> bool:
        link = self.links.get(row.get("node") or "")
        if link is None or not link.connected:
            return False
        try:
            _call(link, "scratch_remove", job=run_key(row), scratch_root=self._scratch_root(link))
        except (LinkClosed, TransferFailed) as e:
            log.warning("job %d: cannot remove its scratch directory: %s", row["id"], e)
            return False
        return True


def _call(link: NodeLink, op: str, **kw: Any) -> dict:
    r = link.call(op, timeout=REPLY_S, **kw)
    if r.get("code") == "down":
        raise LinkClosed(r.get("error") or "the link closed")
    if not r.get("ok"):
        raise TransferFailed(r.get("error") or f"{op} failed")
    return r


def _windowed(link: NodeLink, op: str, requests: Any,
              on_reply: Callable[[dict, dict], None] | None) -> None:
    """Send `requests` in order with at most WINDOW unanswered; the agent answers in order,
    so `on_reply(request, reply)` sees them in order too (on the link's reader thread)."""
    window = threading.Semaphore(WINDOW)
    failed: list[dict] = []

    def answer(req: dict) -> Callable[[dict], None]:
        def cb(reply: dict) -> None:
            try:
                if not reply.get("ok"):
                    failed.append(reply)
                elif on_reply is not None and not failed:
                    on_reply(req, reply)
            except Exception as e:  # a full disk here must fail the copy, not the link
                failed.append({"ok": False, "error": f"labqd: {e}"})
            finally:
                window.release()
        return cb
    for req in requests:
        if not window.acquire(timeout=REPLY_S):
            raise LinkClosed(f"node {link.name} did not answer {op} within {REPLY_S:.0f} s")
        if failed:
            window.release()
            break
        if not link.request(op, answer(req), **req):
            raise LinkClosed(f"node {link.name} is not connected")
    for _ in range(WINDOW):
        if not window.acquire(timeout=REPLY_S):
            raise LinkClosed(f"node {link.name} did not answer {op} within {REPLY_S:.0f} s")
    if failed:
        if failed[0].get("code") == "down":
            raise LinkClosed(failed[0].get("error") or "the link closed")
        raise TransferFailed(failed[0].get("error") or f"{op} failed")


def _capped(listing: list[list[Any]], cap: int) -> tuple[list[list[Any]], str | None]:
    """The files that fit in `cap` bytes, in listing order, and a note on what was left."""
    kept, total, left, left_bytes = [], 0, 0, 0
    for path, size in listing:
        if total + size <= cap:
            kept.append([path, size])
            total += size
        else:
            left += 1
            left_bytes += size
    if not left:
        return kept, None
    return kept, (f"{left} file(s) of {left_bytes} bytes were not copied: results are capped "
                  f"at {cap} bytes per job (daemon.results_max)")
