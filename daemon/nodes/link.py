"""One long-lived link per node to its agent: connect, hello, heartbeat, requests, events.

A link owns its transport (an SSH exec channel or a local pipe) and a reader thread. The daemon
core gets callbacks: `node_up(link, hello, jobs)`, `node_event(link, msg)`,
`node_down(link, why)`, `node_refused(link, why)`.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..clock import SYSTEM, Clock
from ..config import NodeConfig
from . import ssh
from .transport import (
    AGENT_BUNDLE,
    AgentRefused,
    PipeTransport,
    SocketTransport,
    SshTransport,
    Transport,
    agent_command,
    local_agent_argv,
)

log = logging.getLogger("labqd.nodes")


class LinkClosed(Exception):
    pass


class LinkEvents(Protocol):
    """What a link tells the daemon. Called on the link's own threads."""

    def node_up(self, link: NodeLink, hello: dict, jobs: list[dict]) -> None: ...

    def node_down(self, link: NodeLink, why: str) -> None: ...

    def node_refused(self, link: NodeLink, why: str) -> None: ...

    def node_event(self, link: NodeLink, msg: dict) -> None: ...

    def node_stats(self, link: NodeLink, reply: dict) -> None: ...


class NodeLink:
    def __init__(self, cfg: NodeConfig, cluster: str, core: LinkEvents, *, heartbeat_s: float,
                 timeout_s: float, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.clock = clock
        self.name = cfg.name
        self.cluster = cluster
        self.core = core
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.transport: Transport | None = None
        self.connected = False
        self.last_heard = 0.0
        self._next_id = 0
        self._pending: dict[int, Callable[[dict], None]] = {}
        # requests wait here for the link's writer thread: a caller (often holding the job
        # lock) never blocks on a stalled channel
        self._outbox: queue.SimpleQueue[dict | list[dict] | None] = queue.SimpleQueue()
        # a thread's requests kept back to go to the writer together: (thread, outbox, them)
        self._held: tuple[int, queue.SimpleQueue, list[dict]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # ask for an immediate reconnect
        self.refused: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"node-{self.name}", daemon=True)

    @property
    def host(self) -> str:
        return "local" if self.cfg.local else (self.cfg.host or "")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        t = self.transport
        if t is not None:
            try:
                t.close()
            except Exception:
                pass

    def retry_now(self) -> None:
        self.refused = None
        self._wake.set()

    # -- requests --------------------------------------------------------------------------
    def request(self, op: str, callback: Callable[[dict], None] | None = None, **kw: Any) -> bool:
        """Send one request; `callback(reply)` runs on the reader thread. False if down."""
        with self._lock:
            t = self.transport
            if t is None or not self.connected:
                return False
            self._next_id += 1
            rid = self._next_id
            if callback:
                self._pending[rid] = callback
            # encoded by the writer thread: the caller often holds the job lock
            # a request nobody waits on goes without an id: the agent does not answer it
            msg = dict(kw, op=op, id=rid) if callback else dict(kw, op=op)
            held = self._held
            if (held is not None and held[0] == threading.get_ident()
                    and held[1] is self._outbox):
                held[2].append(msg)
            else:
                self._outbox.put(msg)
        return True

    @contextmanager
    def together(self) -> Iterator[None]:
        """This thread's requests meanwhile reach the writer as one: it is woken once, and
        sends them in one write (a scheduler pass's launches)."""
        held: list[dict] = []
        with self._lock:
            mine = self._held is None  # else held already: these go one by one
            if mine:
                self._held = (threading.get_ident(), self._outbox, held)
        try:
            yield
        finally:
            if mine:
                with self._lock:
                    _, box, _ = self._held or (0, None, held)
                    self._held = None
                    if held and box is not None:
                        # to the connection they were made on: one that ended since has
                        # failed their callbacks already
                        box.put(held)

    def _write_loop(self, t, outbox: queue.SimpleQueue[dict | list[dict] | None]) -> None:
        """Send queued requests in order until the connection ends, all that are waiting in one
        write; a failed write closes the link, and the reader then fails what is pending."""
        while True:
            batch = [outbox.get()]
            while len(batch) < 256:
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch or self.transport is not t
            if None in batch:
                batch = batch[:batch.index(None)]
            msgs = [m for item in batch for m in (item if isinstance(item, list) else (item,))
                    if m]
            try:
                if msgs and self.transport is t:
                    t.write(b"".join((json.dumps(m) + "\n").encode() for m in msgs))
            except Exception as e:
                log.warning("node %s: send failed: %s", self.name, e)
                self._close_transport()
                return
            if stop:
                return

    def call(self, op: str, timeout: float = 30.0, **kw: Any) -> dict:
        done = threading.Event()
        box: dict = {}

        def cb(reply):
            box.update(reply)
            done.set()
        if not self.request(op, cb, **kw):
            raise LinkClosed(f"node {self.name} is not connected")
        if not done.wait(timeout):
            raise LinkClosed(f"node {self.name} did not answer {op} within {timeout} s")
        return box

    # -- connection loop -------------------------------------------------------------------
    def _open(self):
        args = ["--root", self.cfg.job_root, "--cluster", self.cluster, "--node", self.name]
        if self.cfg.kind == "slurm":
            args += ["--slurm", json.dumps(self.cfg.slurm_pool())]
        if self.cfg.local and self.cfg.agent_socket:
            return SocketTransport(self.cfg.agent_socket, {"cluster": self.cluster,
                                                           "node": self.name})
        if self.cfg.local:
            t: Transport = PipeTransport(local_agent_argv(args))
        else:
            target = ssh.resolve(self.cfg.host, port=self.cfg.port, user=self.cfg.user,
                                 identity_file=self.cfg.identity_file,
                                 known_hosts=self.cfg.known_hosts,
                                 ssh_config=self.cfg.ssh_config)
            client = ssh.connect(target, ssh_config=self.cfg.ssh_config)
            t = SshTransport(client, agent_command(self.cfg.python, args))
        t.write(AGENT_BUNDLE)
        return t

    def _handshake(self, t) -> tuple[dict, list[dict]]:
        hello = json.loads(t.readline() or b"null")
        if isinstance(hello, dict) and hello.get("ev") == "refused":
            # an admin has to fix the node (a job_root another user controls): no retry loop
            raise AgentRefused(f"the agent refused to start: {hello.get('error')}")
        if not isinstance(hello, dict) or hello.get("ev") != "hello":
            raise ssh.SshFailed(f"agent did not start (got {hello!r}); is python3 on the node?")
        t.write(b'{"op":"list","id":0}\n')
        reply = json.loads(t.readline() or b"null")
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise ssh.SshFailed(f"agent could not list its jobs: {reply!r}")
        return hello, reply["jobs"]

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if self.refused:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                t = self._open()
                self.transport = t
                if self._stop.is_set():
                    # stopped (node removed) while connecting: stop() found no transport
                    # to close, so this link would otherwise live on, unseen
                    self._close_transport()
                    break
                hello, jobs = self._handshake(t)
            except (ssh.HostKeyRefused, AgentRefused) as e:
                self.refused = str(e)
                self._close_transport()
                self._tell(self.core.node_refused, str(e))
                continue
            except Exception as e:
                self._close_transport()
                self._tell(self.core.node_down, f"connect failed: {e}")
                # exponential backoff with jitter, capped at 60 s
                self._wake.wait(backoff * random.uniform(0.7, 1.3))
                self._wake.clear()
                backoff = min(60.0, backoff * 2)
                continue
            backoff = 0.5
            self.last_heard = self.clock.monotonic()
            outbox: queue.SimpleQueue[dict | list[dict] | None] = queue.SimpleQueue()
            self._outbox = outbox  # nothing queued for an earlier connection is sent here
            threading.Thread(target=self._write_loop, args=(t, outbox), daemon=True,
                             name=f"node-{self.name}-writer").start()
            self.connected = True
            hb = threading.Thread(target=self._heartbeat, args=(t,), daemon=True)
            hb.start()
            try:
                self.core.node_up(self, hello, jobs)
                self._read(t)
                why = "link closed"
            except Exception as e:
                why = f"link broken: {e}"
            self.connected = False
            self._close_transport()
            with self._lock:
                pending, self._pending = self._pending, {}
                self._outbox.put(None)  # the writer ends
            for cb in pending.values():
                try:
                    cb({"ok": False, "code": "down", "error": why})
                except Exception:
                    log.exception("callback failed")
            if not self._stop.is_set():
                self._tell(self.core.node_down, why)
                self._wake.wait(0.2)
                self._wake.clear()

    def _tell(self, event: Callable[[NodeLink, str], None], why: str) -> None:
        """Report to the daemon; a failure there must not end this link's thread."""
        try:
            event(self, why)
        except Exception:
            log.exception("node %s: %s failed", self.name, event.__name__)

    def _close_transport(self) -> None:
        with self._lock:
            t, self.transport = self.transport, None
        if t is not None:
            try:
                t.kill()
            except Exception:
                pass

    def _read(self, t) -> None:
        while True:
            line = t.readline()
            if not line:
                return
            self.last_heard = self.clock.monotonic()
            msg = json.loads(line)
            if "re" in msg:
                with self._lock:
                    cb = self._pending.pop(msg["re"], None)
                if cb:
                    cb(msg)
            else:
                self.core.node_event(self, msg)

    def _heartbeat(self, t) -> None:
        """Ping on the agent channel; a silent link is closed so the reader loop ends."""
        n = 0
        while self.transport is t and self.connected and not self._stop.is_set():
            if self.clock.monotonic() - self.last_heard > self.timeout_s:
                log.warning("node %s: no answer for %.0f s, closing the link", self.name,
                            self.timeout_s)
                self._close_transport()
                return
            n += 1
            self.request("ping", lambda reply: self.core.node_stats(self, reply),
                         gpus=(n % 3 == 1))
            self._stop.wait(self.heartbeat_s)
