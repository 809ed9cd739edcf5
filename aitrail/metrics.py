"""Prometheus metrics, one registry per process (no global state at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.items_in = Counter(
            "aitrail_otlp_items_received", "Spans and log records accepted by the OTLP receivers.",
            ["signal", "tenant"], registry=r,
        )
        self.items_rejected = Counter(
            "aitrail_otlp_items_rejected", "Spans rejected in a partial success.", ["signal"], registry=r
        )
        self.records_written = Counter("aitrail_records_written", "Records newly stored.", registry=r)
        self.records_duplicate = Counter(
            "aitrail_records_duplicate", "Records already stored (replays after a restart).", registry=r
        )
        self.dead_letters = Counter("aitrail_dead_letters", "Messages set aside with a reason.", registry=r)
        self.store_retries = Counter("aitrail_store_retries", "Store writes retried after a failure.", registry=r)
        self.write_seconds = Histogram(
            "aitrail_store_write_seconds", "Latency of one batch write to the store.", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.consumer_lag = Gauge(
            "aitrail_consumer_lag", "Messages behind the end of each partition.", ["topic", "partition"], registry=r
        )
        self.api_requests = Counter(
            "aitrail_api_requests", "Query API requests.", ["endpoint", "status"], registry=r
        )

    def received(self, signal: str, tenant: str, accepted: int, rejected: int) -> None:
        self.items_in.labels(str(signal), tenant).inc(accepted)
        if rejected:
            self.items_rejected.labels(str(signal)).inc(rejected)

    def render(self) -> bytes:
        return generate_latest(self.registry)
