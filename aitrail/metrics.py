"""Prometheus metrics, one registry per process (no global state at import time).

Metrics are for the installation's operators, never for tenants: `/metrics` (the API's, the
gateway's on its OTLP port, the collector's) answers only an admin key or token of the
operator tenant (`operator_tenant`, see `require_operator`), and no metric carries a tenant
label unless `metrics.tenant_labels` is on, so a scrape says nothing about any one tenant.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aitrail.errors import Forbidden
from aitrail.store.base import Principal, Role

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "require_operator"]


class Metrics:
    """`tenant_labels`: label the received spans by tenant (`metrics.tenant_labels`); off by
    default, so no series tells one tenant's traffic apart from another's."""

    def __init__(self, *, tenant_labels: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.tenant_labels = tenant_labels
        r = self.registry
        self.items_in = Counter(
            "aitrail_otlp_items_received", "Spans and log records accepted by the OTLP receivers.",
            ["signal", "tenant"] if tenant_labels else ["signal"], registry=r,
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
        self.background_errors = Counter(
            "aitrail_background_errors", "Failures of background tasks (they log, count and carry on).", ["task"],
            registry=r,
        )
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
        labels = (str(signal), tenant) if self.tenant_labels else (str(signal),)
        self.items_in.labels(*labels).inc(accepted)
        if rejected:
            self.items_rejected.labels(str(signal)).inc(rejected)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def require_operator(authenticate: Callable[[str | None], Principal], operator_tenant: str,
                     authorization: str | None) -> Principal:
    """The caller of `/metrics` if it holds an admin key or token of the operator tenant;
    Unauthorized (no valid credential) or Forbidden otherwise. The message never names the
    operator tenant: a tenant's admin learns only that metrics are not theirs to read."""
    principal = authenticate(authorization)
    if principal.role != Role.ADMIN or principal.tenant != operator_tenant:
        raise Forbidden(
            "metrics are for the installation's operators: they need an admin key of the operator tenant "
            "(setting operator_tenant)"
        )
    return principal
