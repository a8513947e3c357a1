"""The node's Prometheus metrics (``/metrics``, issue 16): one collector that reads the
node's own counters and its ``node.info`` figures when scraped, in a registry of the
node's own (not prometheus_client's global one), so nothing is updated twice and a
counter is exactly the number the node keeps (monotonic since the node started).

Names follow Prometheus' conventions: ``sector_`` prefix, ``_total`` on counters,
units in names (``_bytes``, ``_seconds``, ``_ratio``), labels of low cardinality (op
names come from the handler table; an unknown op counts as "unknown").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _worker(info: dict[str, Any], name: str) -> dict[str, Any]:
    for w in info.get("workers") or []:
        if isinstance(w, dict) and w.get("name") == name:
            return w
    return {}


class NodeCollector(Collector):
    """``node``: a started ``sector.node.server.Node``; ``info``: its latest
    ``node.info`` (set by the scrape just before collecting: gathering it reads the
    metadata store in a thread, which a synchronous collector cannot await)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.info: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        node, info = self.node, self.info
        ops = node.server.ops
        req = CounterMetricFamily(
            "sector_requests", "RPC requests served, by op and outcome", labels=["op", "outcome"]
        )
        for (op, outcome), n in sorted(ops.outcomes.items()):
            req.add_metric([op, outcome], n)
        yield req
        lat = HistogramMetricFamily(
            "sector_request_duration_seconds", "RPC request latency, by op", labels=["op"]
        )
        for op in sorted(ops.latency):
            o = ops.latency[op]
            lat.add_metric([op], ops.cumulative(op), sum_value=o.total)
        yield lat
        bulk = node.transfer.stats
        b = CounterMetricFamily(
            "sector_bulk_bytes", "blob bytes received and sent", labels=["direction"]
        )
        b.add_metric(["in"], bulk["bytes_in"])
        b.add_metric(["out"], bulk["bytes_out"])
        yield b
        t = CounterMetricFamily(
            "sector_blob_transfers", "blob puts and gets served", labels=["kind"]
        )
        t.add_metric(["put"], bulk["puts"])
        t.add_metric(["get"], bulk["gets"])
        yield t
        yield _counter(
            "sector_connections", "connections accepted", node.server.stats["connections"]
        )
        yield _counter(
            "sector_protocol_errors",
            "malformed frames received",
            node.server.stats["protocol_errors"],
        )
        yield _gauge("sector_stored_bytes", "bytes of blobs stored here", node.blobs.used)
        yield _gauge("sector_free_bytes", "bytes this node may still store", node.blobs.free())
        yield _gauge("sector_blobs", "blobs (replicas) stored here", node.blobs.count)
        yield _gauge("sector_files", "files whose record this node owns", info.get("files", 0))
        yield _gauge(
            "sector_under_replicated_files",
            "owned files with fewer live replicas than their target",
            info.get("under_replicated", 0),
        )
        yield from self._repair()
        yield from self._scrub()
        yield from self._sphere()
        now = time.monotonic()
        ring = [m for m in node.members.reachable(now) if m.state in ("up", "draining")]
        yield _gauge("sector_ring_nodes", "reachable members serving the ring", len(ring))
        yield _gauge(
            "sector_gossip_members",
            "members in this node's gossip view",
            len(node.members.entries()),
        )

    def _repair(self) -> Iterator[Metric]:
        r = self.node.repair.status()
        yield _gauge("sector_repair_queue", "files queued for repair", r["queue"])
        yield _gauge("sector_repair_in_flight", "files being repaired now", r["in_flight"])
        yield _counter("sector_repair_bytes", "bytes copied by repair", r["bytes"])
        rep = CounterMetricFamily("sector_repairs", "repairs finished", labels=["outcome"])
        rep.add_metric(["done"], r["done"])
        rep.add_metric(["failed"], r["failed"])
        yield rep

    def _scrub(self) -> Iterator[Metric]:
        s = self.node.scrub.status()
        yield _gauge(
            "sector_scrub_progress_ratio",
            "share of the current scrub pass done",
            s["progress"] / 100,
        )
        yield _counter("sector_scrub_bytes", "bytes re-hashed by scrub", s["bytes"])
        yield _counter("sector_scrub_blobs", "blobs verified by scrub", s["verified"])
        yield _counter("sector_scrub_corruptions", "corrupt copies scrub found", s["corrupt"])
        yield _counter("sector_scrub_passes", "scrub passes finished", s["passes"])

    def _sphere(self) -> Iterator[Metric]:
        sph = self.node.sphere
        st = sph.stats
        yield _gauge("sector_sphere_engines", "Sphere processing engines", sph.engines)
        yield _gauge("sector_sphere_engines_busy", "engines running a task now", sph.pool.busy)
        yield _counter(
            "sector_sphere_segments_run", "segment attempts started here", st["attempts"]
        )
        yield _counter(
            "sector_sphere_segments_failed", "segment attempts that failed", st["failed"]
        )
        yield _counter(
            "sector_sphere_segments_speculated",
            "attempts started here as backups of a straggling attempt",
            st["speculative"],
        )
        yield _counter(
            "sector_sphere_segments_cancelled",
            "attempts stopped because another copy of the segment won (speculation)",
            st["cancelled"],
        )
        sh = sph.shuffle.stats
        yield _counter("sector_sphere_shuffle_pushed_bytes", "shuffle bytes sent", sh["pushed"])
        yield _counter(
            "sector_sphere_shuffle_received_bytes", "shuffle bytes received", sh["received"]
        )
        jobs = GaugeMetricFamily("sector_sphere_jobs", "Sphere jobs held here", labels=["state"])
        running = sum(
            1 for j in sph.jobs.values() if any(t.state == "running" for t in j.attempts.values())
        )
        cancelled = sum(1 for j in sph.jobs.values() if j.stopped is not None)
        jobs.add_metric(["running"], running)
        jobs.add_metric(["idle"], len(sph.jobs) - running - cancelled)
        jobs.add_metric(["cancelled"], cancelled)
        yield jobs


class NodeMetrics:
    def __init__(self, node: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = NodeCollector(node)
        self.registry.register(self.collector)

    def render(self, info: dict[str, Any]) -> bytes:
        self.collector.info = info
        return generate_latest(self.registry)
