"""labqd's parts, made and wired once: the job table, the node registry, fair share,
notifications.

Each part owns its state and offers a narrow interface; request handlers and the scheduler
receive the parts they need. They share one lock, the job table's, because a job's state and
its node's resources change together.
"""
from __future__ import annotations

import threading
from typing import Any

from . import store as st
from .clock import SYSTEM, Clock
from .config import Config
from .fairctl import FairShare
from .jobfiles import JobFiles
from .jobtable import JobTable
from .logcopy import LogCopies
from .nodes.filemove import FileMover
from .nodes.registry import NodeRegistry
from .notices import Notices
from .ratelimit import Rate
from .tokens import Tokens


class Core:
    def __init__(self, cfg: Config, store: st.Store, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.wake = threading.Event()  # something changed: the scheduler should run
        logs = LogCopies(cfg.state_dir / "logs", cfg.log_copy_max_bytes)
        self.jobs = JobTable(cfg, store, logs, self.wake, clock)
        self.fair = FairShare(cfg, store, self.jobs, self.wake)
        self.nodes = NodeRegistry(cfg, store, self.jobs, self.wake, clock)
        self.jobs.runs = self.nodes
        self.jobs.node_sizes = self.nodes.gpu_counts
        self.notices = Notices(cfg, store, clock)
        self.jobs.notifier = self.notices
        self.tokens = Tokens(cfg, store, clock)
        # submits per user per minute (limits.submit_rate), over every transport
        self.submit_rate = Rate.parse(cfg.limits.get("submit_rate"), clock)
        self.metrics: Any = None  # labq.daemon.metrics.Metrics when [metrics] listen is set
        self.files = JobFiles(cfg, store, logs)
        self.jobs.files = self.files
        self.moves = FileMover(cfg, store, self.jobs, self.files, self.nodes.links)
        self.nodes.files = self.moves

    def start(self) -> None:
        self.notices.start()
        self.nodes.start()
        self.moves.start()

    def stop(self) -> None:
        self.jobs.stopping = True
        self.moves.stop.set()
        self.nodes.stop()
        self.notices.stop()
        self.wake.set()
        with self.jobs.changed:  # waiters see the stop at once
            self.jobs.wake_waits()
