"""The OTLP receivers' own series on a process's `Metrics` registry (`/metrics`): failed export
requests by answer, and the ingest key cache. Created once per registry, on first use."""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge

from aitrail.metrics import Metrics


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.requests_failed = Counter(
            "aitrail_otlp_requests_failed",
            "OTLP export requests answered with a failure, by signal, HTTP status (the gRPC code's "
            "equivalent on 4317) and whether the sender was told to retry.",
            ["signal", "status", "retryable"], registry=r,
        )
        self.key_lookups = Counter(
            "aitrail_ingest_key_lookups",
            "Ingest key checks by outcome: cached, looked_up (in the store), stale (served from the "
            "cache past its TTL while the store is unreachable), unavailable (answered 503).",
            ["outcome"], registry=r,
        )
        self.keys_store_up = Gauge(
            "aitrail_ingest_keys_store_up", "1 while the last key lookup in the store succeeded, else 0.", registry=r,
        )


_BY_METRICS: weakref.WeakKeyDictionary[Metrics, GatewayMetrics] = weakref.WeakKeyDictionary()


def gateway_metrics(metrics: Metrics | None) -> GatewayMetrics | None:
    if metrics is None:
        return None
    found = _BY_METRICS.get(metrics)
    if found is None:
        found = _BY_METRICS[metrics] = GatewayMetrics(metrics)
    return found
