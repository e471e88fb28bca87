"""Prometheus metrics ([metrics] listen): counts kept as things happen, and the queue's and the
nodes' state read at scrape time, so a scrape costs one pass over the active jobs and nodes
and nothing is counted twice.

Served by prometheus-client's own HTTP server on its own address (usually 127.0.0.1 or a
monitoring network): it shows counts by group and node, no commands, users' environments or
job names.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily

from labq.states import FINAL, JobState

from .nodes import noderequests

log = logging.getLogger("labqd.metrics")
WAIT_BUCKETS = (1, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
                3 * 86400, 7 * 86400)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                10, 30, 60)


class Metrics:
    def __init__(self, core: Any):
        self.core = core
        self.servers: list[Any] = []  # the GuardedServers, for their connection counts
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submits = PromCounter("labq_submits",
                                   "Jobs queued (a batch counts the rows it queued)", registry=r)
        self.ends = PromCounter("labq_job_ends", "Jobs that ended, by final state", ["state"],
                                registry=r)
        self.queue_wait = Histogram("labq_queue_wait_seconds", "Time from submit to start",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.scheduler_pass = Histogram("labq_scheduler_pass_seconds",
                                        "Duration of a scheduler pass", buckets=FAST_BUCKETS,
                                        registry=r)
        self.latency = Histogram("labq_request_seconds", "Time labqd took to answer a request",
                                 ["op"], buckets=FAST_BUCKETS, registry=r)
        r.register(_StateCollector(self))

    # -- events ------------------------------------------------------------------------------
    def submitted(self, n: int) -> None:
        self.submits.inc(n)

    def request(self, op: str, seconds: float) -> None:
        self.latency.labels(op).observe(seconds)

    def scheduled(self, seconds: float) -> None:
        self.scheduler_pass.observe(seconds)

    def changed(self, job: dict, dst: JobState, now: float) -> None:
        """A job's transition (JobTable's observer, called with its lock held)."""
        if dst == JobState.RUNNING and job.get("submit_time"):
            self.queue_wait.observe(max(0.0, now - job["submit_time"]))
        elif dst in FINAL:
            self.ends.labels(dst.value).inc()

    def serve(self, host: str, port: int) -> Any:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.http = server
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return server


class _StateCollector:
    """The queue by state and group, GPUs per node and type, nodes up, connections."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        core = self.m.core
        jobs = GaugeMetricFamily("labq_jobs", "Active jobs by state and group",
                                 labels=["state", "group"])
        with core.jobs.lock:
            counts = Counter((j["state"], j["group"]) for j in core.jobs.active.values())
        nodes = noderequests.node_list(core.nodes)
        for state in (JobState.PENDING, JobState.HELD, JobState.RUNNING):
            for (s, g), n in sorted(counts.items()):
                if s == state.value:
                    jobs.add_metric([s, g or ""], n)
        yield jobs
        yield from _node_families(nodes)
        conns = GaugeMetricFamily("labq_connections", "Open client connections",
                                  labels=["transport"])
        for server in self.m.servers:
            with server.count_lock:
                conns.add_metric([server.transport], sum(server.per_uid.values()))
        yield conns


def _node_families(nodes: list[dict]) -> Any:
    up = GaugeMetricFamily("labq_node_up", "1 when labqd reaches the node", labels=["node"])
    gpus = GaugeMetricFamily("labq_gpus", "GPUs per node and type: total, allocated to jobs, "
                             "and used (busy by their utilization)",
                             labels=["node", "type", "kind"])
    for n in nodes:
        up.add_metric([n["name"]], 1 if n["state"] == "up" else 0)
        by_type: dict[str, list[int]] = {}
        for g in n.get("gpus") or []:
            t = by_type.setdefault(g.get("type") or "", [0, 0, 0])
            t[0] += 1
            t[1] += g.get("job") is not None
            t[2] += bool(g.get("utilization"))
        for gtype, (total, alloc, used) in sorted(by_type.items()):
            gpus.add_metric([n["name"], gtype, "total"], total)
            gpus.add_metric([n["name"], gtype, "allocated"], alloc)
            gpus.add_metric([n["name"], gtype, "used"], used)
    yield up
    yield gpus
