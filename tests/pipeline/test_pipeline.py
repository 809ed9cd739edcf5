"""The production pipeline against the real broker and node: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aitrail import sdk
from bench.data import build_requests
from tests.pipeline.conftest import produce, read_topic, wait_until
from tests.services import launcher

pytestmark = pytest.mark.services


def requests_of(traces: int, per_request: int = 100, seed: int = 1) -> tuple[list, int]:
    payloads, spans = build_requests(traces, per_request, seed=seed)
    return [ExportTraceServiceRequest.FromString(p) for p in payloads], spans


def span_count(payload: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(payload)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def all_consumed(pipeline) -> bool:
    """The collectors' group has committed every message of the topic."""

    async def check() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.kafka)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(f"g-{pipeline.topic}")
        finally:
            await admin.close()
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.kafka)
        await consumer.start()
        try:
            partitions = [TopicPartition(pipeline.topic, p) for p in range(6)]  # aitrail creates it with 6
            ends = await consumer.end_offsets(partitions)
        finally:
            try:
                await consumer.stop()
            except asyncio.CancelledError:  # aiokafka's group-less consumer on stop; harmless here
                pass
        return bool(ends) and all((committed.get(tp).offset if committed.get(tp) else 0) >= end for tp, end in ends.items())

    return asyncio.run(check())


def wait_stored_exactly(pipeline, expected: int, timeout: float = 180, tenant: str | None = "acme") -> None:
    wait_until(lambda: pipeline.stored(tenant)[0] >= expected, timeout, f"{expected} records stored")
    wait_until(lambda: all_consumed(pipeline), timeout, "every message committed")
    total, _ = pipeline.stored(tenant)
    assert total == expected
    assert pipeline.duplicates() == []
    report = pipeline.verify()  # and the Merkle logs neither forked nor lost a leaf
    assert "FAILED" not in report


def test_sdk_to_gateway_to_kafka_to_collector_to_opensearch_to_api(pipeline):
    pipeline.collector()
    gateway = pipeline.gateway()
    api = pipeline.api()
    ingest, auditor = pipeline.keys("acme", "ingest"), pipeline.keys("acme", "auditor")

    tracing = sdk.configure(
        service_name="support-bot", endpoint=f"http://127.0.0.1:{gateway.port}", api_key=ingest, set_global=False
    )
    with tracing.user("alice@example.com", roles=["customer"]), tracing.span("rag.answer"):
        with tracing.retrieval("refund policy", index="policies") as lookup:
            lookup.add_document("policy-7", version="3", content="Refunds within 30 days.", score=0.91,
                                acl_tags=["public"])
        with tracing.completion("gpt-4o-mini", provider="openai", messages=[
            {"role": "user", "content": "What is our refund policy for damaged items?"}
        ]) as call:
            call.response("Damaged items can be refunded within 30 days with a receipt.",
                          input_tokens=42, output_tokens=17)
    assert tracing.force_flush()
    tracing.shutdown()

    headers = {"Authorization": f"Bearer {auditor}"}
    base = f"http://127.0.0.1:{api.port}"

    def found():
        body = httpx.get(f"{base}/v1/answers", params={"q": "refund damaged"}, headers=headers, timeout=30).json()
        return body if body.get("count") else None

    body = wait_until(found, 120, "the answer through the API")
    (answer,) = body["data"]
    assert answer["answer"] == "Damaged items can be refunded within 30 days with a receipt."
    assert (answer["input_tokens"], answer["output_tokens"], answer["cost"]["amount"]) == (42, 17, "0.0000165000")

    def replayed():
        body = httpx.get(f"{base}/v1/traces/{answer['trace_id']}", headers=headers, timeout=30).json()
        kinds = {r["kind"] for r in body["records"]}
        return body if {"retrieval", "completion"} <= kinds and body["integrity"]["status"] == "verified" else None

    replay = wait_until(replayed, 60, "the whole trace, sealed and covered by a checkpoint")
    (lookup_view,) = [r for r in replay["records"] if r["kind"] == "retrieval"]
    assert lookup_view["documents"][0]["doc_id"] == "policy-7"
    assert lookup_view["kafka"]["topic"] == pipeline.topic
    other = pipeline.keys("globex", "auditor")
    assert httpx.get(f"{base}/v1/traces/{answer['trace_id']}", headers={"Authorization": f"Bearer {other}"},
                     timeout=30).status_code == 404


def test_stock_collector_message_unkeyed_two_resources(pipeline):
    pipeline.collector()
    request = ExportTraceServiceRequest()
    for service in ("svc-a", "svc-b"):
        resource = request.resource_spans.add()
        resource.resource.attributes.add(key="service.name").value.string_value = service
        span = resource.scope_spans.add().spans.add(
            trace_id=bytes(range(16)), span_id=service.encode().ljust(8, b"0")[:8], name="chat gpt-4o-mini",
            start_time_unix_nano=1_795_000_000_000_000_000, end_time_unix_nano=1_795_000_001_000_000_000,
        )
        span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        span.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini"
    # one raw TracesData message, no key, no headers: what a stock collector's kafka exporter writes
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(pipeline.topic, request.SerializeToString())
        finally:
            await producer.stop()

    asyncio.run(send())
    wait_stored_exactly(pipeline, 2, tenant="stock")


def test_collector_killed_mid_stream_every_span_once(pipeline):
    requests, spans = requests_of(5000)
    assert spans == 10_000
    asyncio.run(produce(pipeline.kafka, pipeline.topic, requests))
    first = pipeline.collector()
    wait_until(lambda: pipeline.stored()[0] >= 1500, 180, "the first collector to store some records")
    first.kill9()
    stored_at_kill = pipeline.stored()[0]
    assert stored_at_kill < spans, "the stream must still be flowing when the collector dies"
    pipeline.collector()
    wait_stored_exactly(pipeline, spans)


def _group_members(pipeline) -> int:
    """Members of the collectors' consumer group, as the broker sees them."""

    async def describe() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.kafka)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([f"g-{pipeline.topic}"])
        finally:
            await admin.close()
        ((error_code, _group, _state, _protocol_type, _protocol, members),) = response.groups
        return len(members) if error_code == 0 else -1

    return asyncio.run(describe())


def test_opensearch_down_for_60_seconds_while_traffic_continues(pipeline, services):
    """The store away for 60 s while spans keep arriving: the collector pauses its partitions
    but keeps polling, so it stays in its group (no rebalance, no eviction after
    max_poll_interval_ms); when the store is back the partitions resume, every acknowledged
    span is stored exactly once, every offset is committed and the logs verify."""
    if not services.native:
        pytest.fail("this test stops OpenSearch and needs the native launcher (deploy/local)")
    first, spans = requests_of(600, seed=2)
    collector = pipeline.collector(AITRAIL_KAFKA__MAX_POLL_INTERVAL_MS="20000")
    asyncio.run(produce(pipeline.kafka, pipeline.topic, first))
    wait_until(lambda: pipeline.stored()[0] >= spans, 120, "the first spans stored")
    assert _group_members(pipeline) == 1
    launcher("down", "opensearch")
    try:
        down_at = time.monotonic()
        seed = 100
        while time.monotonic() - down_at < 60:  # the outage: traffic keeps flowing all along
            more, count = requests_of(40, seed=seed)
            asyncio.run(produce(pipeline.kafka, pipeline.topic, more))
            spans, seed = spans + count, seed + 1
            assert collector.alive(), collector.output()
            time.sleep(2)
        # 60 s is three times max_poll_interval_ms: a consumer that stopped polling was evicted
        assert _group_members(pipeline) == 1, "the collector left its group while the store was away"
        assert "partitions paused while the store is unavailable" in collector.output()
    finally:
        launcher("up", "opensearch")
    wait_stored_exactly(pipeline, spans, timeout=240)
    wait_until(lambda: "partitions resumed" in collector.output(), 60, "the partitions resumed")
    metrics = pipeline.metrics(collector)
    retries = [line for line in metrics.splitlines() if line.startswith("aitrail_store_retries_total")]
    assert retries and float(retries[0].split()[-1]) > 0


def test_kafka_restart_gateway_503_then_nothing_acknowledged_lost(pipeline, services):
    if not services.native:
        pytest.fail("this test restarts Kafka and needs the native launcher (deploy/local)")
    pipeline.collector()
    gateway = pipeline.gateway()
    ingest = pipeline.keys("acme", "ingest")
    payloads, _ = build_requests(600, 20, seed=4)
    url = f"http://127.0.0.1:{gateway.port}/v1/traces"
    headers = {"Authorization": f"Bearer {ingest}", "Content-Type": "application/x-protobuf"}
    acknowledged, saw_503 = 0, 0
    restart = threading.Timer(15, launcher, ("up", "kafka"))
    with httpx.Client(headers=headers, timeout=60) as client:
        for index, payload in enumerate(payloads):
            if index == len(payloads) // 3:
                launcher("down", "kafka")
                restart.start()  # the broker is back 15 s later; meanwhile the sender retries
            deadline = time.monotonic() + 180
            while True:  # an OTLP exporter's retry loop: 503 + Retry-After → try again
                response = client.post(url, content=payload)
                if response.status_code == 200:
                    acknowledged += span_count(payload)
                    break
                assert response.status_code == 503, response.text
                assert "Retry-After" in response.headers
                saw_503 += 1
                assert time.monotonic() < deadline, "the gateway never recovered"
                time.sleep(1)
    restart.join()
    assert saw_503 > 0, "Kafka was down: the gateway must have answered 503 at least once"
    wait_stored_exactly(pipeline, acknowledged, timeout=240)


def test_poison_message_goes_to_the_dead_letter_topic(pipeline):
    pipeline.collector()
    requests, spans = requests_of(50, seed=5)

    async def send() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=pipeline.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(pipeline.topic, b"\x0a\xff\xff\xff not otlp at all", key=b"poison",
                                         headers=[("aitrail-tenant", b"acme")])
        finally:
            await producer.stop()
        await produce(pipeline.kafka, pipeline.topic, requests)

    asyncio.run(send())
    wait_stored_exactly(pipeline, spans)
    (dead,) = asyncio.run(read_topic(pipeline.kafka, pipeline.dlq, expected=1))
    headers = {k: v.decode() for k, v in dead.headers}
    assert dead.value == b"\x0a\xff\xff\xff not otlp at all"
    assert "not a valid OTLP" in headers["aitrail-dlq-reason"]
    assert headers["aitrail-source-topic"] == pipeline.topic
    assert int(headers["aitrail-source-partition"]) in range(6)
    assert headers["aitrail-source-offset"].isdigit()


def test_two_collectors_share_six_partitions_and_take_over(pipeline):
    first, second = pipeline.collector(), pipeline.collector()
    requests, spans = requests_of(1500, seed=6)
    asyncio.run(produce(pipeline.kafka, pipeline.topic, requests))
    wait_stored_exactly(pipeline, spans)

    def partitions(process) -> set[str]:
        text = pipeline.metrics(process)
        return {line.split('partition="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("aitrail_consumer_lag{") and f'topic="{pipeline.topic}"' in line}

    owned_first = wait_until(lambda: partitions(first), 60, "the first collector's partitions")
    owned_second = wait_until(lambda: partitions(second), 60, "the second collector's partitions")
    assert owned_first and owned_second and not owned_first & owned_second
    assert owned_first | owned_second == {str(p) for p in range(6)}

    first.kill9()
    more, more_spans = requests_of(1500, seed=7)
    asyncio.run(produce(pipeline.kafka, pipeline.topic, more))
    wait_stored_exactly(pipeline, spans + more_spans, timeout=240)
    wait_until(lambda: partitions(second) == {str(p) for p in range(6)}, 120, "the survivor owning all partitions")


def test_collector_rolls_the_records_index_over_without_duplicates(pipeline):
    process = pipeline.start("collector", AITRAIL_COLLECTOR__HTTP_PORT="0", AITRAIL_OPENSEARCH__ROLLOVER_MAX_DOCS="300",
                             AITRAIL_OPENSEARCH__ROLLOVER_CHECK_S="1")
    first, spans_first = requests_of(250, seed=8)
    asyncio.run(produce(pipeline.kafka, pipeline.topic, first))
    wait_until(lambda: pipeline.stored()[0] >= spans_first, 180, "the first records stored")

    def indices() -> list[str]:
        return sorted(pipeline.client().indices.get(index=f"{pipeline.prefix}-records-*"))

    wait_until(lambda: len(indices()) >= 2, 120, "a rollover to a second records index")
    second, spans_second = requests_of(250, seed=9)
    asyncio.run(produce(pipeline.kafka, pipeline.topic, second + first))  # `first` again: replays are no-ops
    wait_stored_exactly(pipeline, spans_first + spans_second)
    assert process.alive(), process.output()
