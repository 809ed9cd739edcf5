"""Ingest does not depend on the store: `aitrail gateway` with OpenSearch unreachable.

The gateway runs in-process against the real Kafka broker, and reaches the real OpenSearch
node only through a loopback TCP proxy this test starts and cuts (never the shared node
itself). It shows: the gateway starts while the store is unreachable; /readyz says what is
degraded; keys it knows are acknowledged while the store is away (also while it hangs), and
their spans reach Kafka; unknown keys get 503 + Retry-After, never 401; a key revoked while
the store was away is refused within the TTL once the store is back."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aitrail.bus.kafka import ensure_topics
from aitrail.scaleout import gateway
from aitrail.settings import IngestSettings, KafkaSettings, OpenSearchSettings, Settings
from aitrail.store.base import Role
from aitrail.store.opensearch import OpenSearchStore
from tests.conftest import drop_opensearch_layout
from tests.gateway.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services

TTL_S = 2.0
PROTOBUF = "application/x-protobuf"


class GatewayThread:
    """`aitrail gateway` (scaleout.gateway) in a background thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with gateway(self.settings) as ports:
                self.http = f"http://127.0.0.1:{ports.otlp_http}"
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self._error = exc
            self._ready.set()

    def start(self) -> GatewayThread:
        self._thread.start()
        assert self._ready.wait(90), "the gateway did not start within 90 s"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(90)
        assert not self._thread.is_alive(), "the gateway did not stop within 90 s"
        if self._error is not None:
            raise self._error


@pytest.fixture
def setup(services, tmp_path):
    tag = uuid.uuid4().hex[:8]
    prefix, topic = f"gw{tag}", f"gw{tag}.spans"
    real = OpenSearchStore.from_settings(OpenSearchSettings(url=services.opensearch, index_prefix=prefix))
    kafka = KafkaSettings(bootstrap_servers=services.kafka, topic=topic, dlq_topic=topic + ".dlq", partitions=1)
    asyncio.run(ensure_topics(kafka))
    target = urlsplit(services.opensearch)
    proxy = TcpProxy(target.hostname, target.port, mode="refuse")  # OpenSearch unreachable from the start
    settings = Settings(
        data_dir=tmp_path / "data", host="127.0.0.1", otlp_http_port=0, otlp_grpc_port=0, kafka=kafka,
        opensearch=OpenSearchSettings(url=proxy.url, index_prefix=prefix),
        ingest=IngestSettings(key_cache_ttl_s=TTL_S, key_cache_negative_ttl_s=0.5, key_cache_max_stale_s=600,
                              key_lookup_wait_s=1.0, key_store_retry_s=0.2),
    )
    yield real, proxy, settings
    proxy.close()
    real.close()
    drop_opensearch_layout(services.opensearch, prefix)


def spans_request(name: str) -> tuple[ExportTraceServiceRequest, str]:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = uuid.uuid4().bytes, uuid.uuid4().bytes[:8]
    span.name, span.start_time_unix_nano = name, time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1000
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    return request, span.trace_id.hex()


def post(gw: GatewayThread, key: str, name: str = "chat gpt-4o-mini") -> tuple[httpx.Response, str]:
    request, trace_id = spans_request(name)
    response = httpx.post(gw.http + "/v1/traces", content=request.SerializeToString(), timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": PROTOBUF})
    return response, trace_id


def readyz(gw: GatewayThread) -> tuple[int, dict]:
    response = httpx.get(gw.http + "/readyz", timeout=30)
    return response.status_code, response.json()


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric(gw: GatewayThread, admin: str, series: str) -> float:
    text = httpx.get(gw.http + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    assert text.status_code == 200, text.text
    for line in text.text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_retryable_unavailable(response: httpx.Response, message: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    status = status_pb2.Status.FromString(response.content)
    assert status.code == 14 and message in status.message, status  # UNAVAILABLE


async def keys_in_topic(bootstrap: str, topic: str, wanted: set[str], timeout: float = 60) -> set[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while not wanted <= seen and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen |= {record.key.decode() for record in records if record.key}
        return seen
    finally:
        await consumer.stop()


def test_the_gateway_takes_spans_while_opensearch_is_unreachable(setup, services):
    real, proxy, settings = setup
    known, _ = real.create_key("acme", Role.INGEST)
    revoked_later, revoked_info = real.create_key("acme", Role.INGEST)
    never_seen, _ = real.create_key("acme", Role.INGEST)
    admin, _ = real.create_key(settings.operator_tenant, Role.ADMIN)

    gw = GatewayThread(settings).start()  # starts although OpenSearch cannot be reached
    try:
        status, body = readyz(gw)
        assert status == 200 and body["status"] == "degraded" and body["kafka"] == "ok", body
        assert body["keys_store"].startswith("unavailable: not open: OpenSearch"), body
        response, _ = post(gw, known)  # a valid key the gateway could not check yet: retry, not 401
        assert_retryable_unavailable(response, "cannot check the key now: the key store is not open yet")

        proxy.set_mode("forward")
        wait_for(lambda: readyz(gw) == (200, {"status": "ready", "kafka": "ok", "keys_store": "ok"}), "readyz ready")
        acknowledged = set()
        for key in (known, revoked_later):
            response, trace_id = post(gw, key)
            assert response.status_code == 200, response.text
            acknowledged.add(trace_id)
        assert metric(gw, admin, "aitrail_ingest_keys_store_up") == 1.0  # the admin key is cached too

        proxy.set_mode("refuse")
        wait_for(lambda: readyz(gw)[1]["status"] == "degraded", "readyz degraded")
        assert readyz(gw)[1]["keys_store"].startswith("unavailable:")
        assert real.revoke_key(revoked_info.key_id)  # revoked while the gateway cannot see the store

        def acknowledged_from_the_stale_cache() -> bool:
            response, trace_id = post(gw, known)
            assert response.status_code == 200, response.text  # every request while the store is away
            acknowledged.add(trace_id)
            return metric(gw, admin, 'aitrail_ingest_key_lookups_total{outcome="stale"}') > 0

        wait_for(acknowledged_from_the_stale_cache, "a known key acknowledged past its TTL")
        assert metric(gw, admin, "aitrail_ingest_keys_store_up") == 0.0
        response, _ = post(gw, never_seen)
        assert_retryable_unavailable(response, "cannot check the key now: OpenSearch")

        proxy.set_mode("blackhole")  # a store that accepts connections and never answers
        response, trace_id = post(gw, known)
        assert response.status_code == 200, response.text
        acknowledged.add(trace_id)
        response, _ = post(gw, never_seen)
        assert_retryable_unavailable(response, "cannot check the key now")

        seen = asyncio.run(keys_in_topic(services.kafka, settings.kafka.topic, acknowledged))
        assert acknowledged <= seen, f"acknowledged but not in Kafka: {acknowledged - seen}"

        proxy.set_mode("forward")
        wait_for(lambda: readyz(gw) == (200, {"status": "ready", "kafka": "ok", "keys_store": "ok"}),
                 "readyz ready again")
        # the revocation is honoured within the TTL of the store's return: the first request may
        # still be answered from the cache while its lookup runs, the next ones are refused
        wait_for(lambda: post(gw, revoked_later)[0].status_code == 401, "the revoked key refused", timeout=TTL_S + 30)
        refused, _ = post(gw, revoked_later)
        status = status_pb2.Status.FromString(refused.content)
        assert refused.status_code == 401 and status.message == "unknown or revoked key"
        assert post(gw, known)[0].status_code == 200
        assert post(gw, never_seen)[0].status_code == 200
    finally:
        proxy.set_mode("refuse")  # closes connections a blackholed lookup may still hold
        gw.stop()
