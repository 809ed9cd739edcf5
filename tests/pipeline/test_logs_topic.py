"""The collector reads the OTLP logs topic a stock OpenTelemetry Collector writes
(`kafka.logs_topic`) and joins its GenAI content events to the spans, as for OTLP/HTTP logs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from aitrail.bus.base import Signal
from aitrail.bus.kafka import SIGNAL_HEADER, TENANT_HEADER, message_from_record
from aitrail.errors import ConfigError
from aitrail.settings import load_settings
from tests.conftest import REPO
from tests.pipeline.conftest import wait_until

CAPTURES = REPO / "tests" / "fixtures" / "otlp-captures" / "otelv2-events"
LOGS = (CAPTURES / "00-logs.pb").read_bytes()  # the content: event gen_ai.client.inference.operation.details
TRACES = (CAPTURES / "01-traces.pb").read_bytes()  # the span: model, usage, no content
TRACE_ID = "5b055e8b33a01f4a83ace21db07e8fd2"
QUESTION = "What is our refund policy for damaged items?"
ANSWER = "Damaged items can be refunded within 30 days with a receipt."


def _record(topic_headers: list[tuple[str, bytes]] | None):
    return SimpleNamespace(headers=topic_headers, value=LOGS, key=None, partition=0, offset=3, timestamp=1)


def test_a_record_of_the_logs_topic_without_a_signal_header_is_logs():
    assert message_from_record(_record(None), "otlp_logs", "otlp_logs").signal == Signal.LOGS
    assert message_from_record(_record(None), "otlp_spans", "otlp_logs").signal == Signal.TRACES
    assert message_from_record(_record(None), "otlp_logs", None).signal == Signal.TRACES  # no logs topic read
    # The gateway's own messages say what they are, wherever they are.
    declared = [(SIGNAL_HEADER, b"traces"), (TENANT_HEADER, b"acme")]
    message = message_from_record(_record(declared), "otlp_logs", "otlp_logs")
    assert message.signal == Signal.TRACES and message.tenant == "acme"
    message = message_from_record(_record([(SIGNAL_HEADER, b"logs")]), "aitrail.spans.v1", "otlp_logs")
    assert message.signal == Signal.LOGS and message.tenant is None  # None: the collector's default tenant


def test_the_logs_topic_must_differ_from_the_others(monkeypatch):
    monkeypatch.setenv("AITRAIL_KAFKA__LOGS_TOPIC", "aitrail.spans.v1")
    with pytest.raises(ConfigError, match="kafka.logs_topic"):
        load_settings(None)
    monkeypatch.setenv("AITRAIL_KAFKA__LOGS_TOPIC", "")
    assert load_settings(None).kafka.logs_topic == ""


async def _produce_as_a_stock_collector(bootstrap: str, logs_topic: str, spans_topic: str) -> None:
    """What the OpenTelemetry Collector's kafka exporter writes (`encoding: otlp_proto`): the
    Export*ServiceRequest bytes, no aitrail headers, no key. The content event comes first, as
    the instrumentation sends it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(logs_topic, LOGS)
        await producer.send_and_wait(spans_topic, TRACES)
    finally:
        await producer.stop()


@pytest.mark.services
def test_stock_collector_logs_topic_joins_the_content_to_the_span(pipeline):
    logs_topic = pipeline.topic.replace(".spans", ".logs")  # this test's own, never the shared otlp_logs
    env = {"AITRAIL_KAFKA__LOGS_TOPIC": logs_topic}
    collector = pipeline.collector(**env)
    api = pipeline.api()
    key = pipeline.keys("stock", "auditor")  # no tenant header: collector.default_tenant (`stock` here)
    asyncio.run(_produce_as_a_stock_collector(pipeline.kafka, logs_topic, pipeline.topic))

    def joined():
        response = httpx.get(f"http://127.0.0.1:{api.port}/v1/answers", params={"q": "refund"}, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return data if data and data[0]["answer"] and data[0]["model"] else None

    (answer,) = wait_until(joined, 120, "the answer joined from the logs and spans topics")
    assert answer["trace_id"] == TRACE_ID
    assert answer["question"] == QUESTION and answer["answer"] == ANSWER  # from the log event
    assert answer["model"] == "gpt-4o-mini-2024-07-18"  # from the span
    assert (answer["input_tokens"], answer["output_tokens"]) == (42, 17)

    # Each stored from its own topic, sealed into that topic's partition log of tenant `stock`.
    client = pipeline.client()
    client.indices.refresh(index=f"{pipeline.prefix}-records-*")
    hits = client.search(index=f"{pipeline.prefix}-records-*", body={
        "size": 10, "query": {"term": {"trace_id": TRACE_ID}}})["hits"]["hits"]
    by_topic = {hit["_source"]["kafka"]["topic"]: hit["_source"] for hit in hits}
    assert set(by_topic) == {pipeline.topic, logs_topic}
    assert by_topic[logs_topic]["origin"] == "log" and by_topic[logs_topic]["tenant"] == "stock"
    assert by_topic[logs_topic]["log_id"].startswith(f"stock/{logs_topic}.")
    assert collector.alive()
    pipeline.verify()


@pytest.mark.services
def test_a_dead_letter_of_the_logs_topic_is_replayed_onto_the_logs_topic(pipeline):
    logs_topic = pipeline.topic.replace(".spans", ".logs")
    env = pipeline.env(AITRAIL_KAFKA__LOGS_TOPIC=logs_topic)
    pipeline.collector(AITRAIL_KAFKA__LOGS_TOPIC=logs_topic)

    async def poison() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(logs_topic, b"\x0a\xff\xff\xff not otlp logs")
        finally:
            await producer.stop()

    asyncio.run(poison())

    def dlq(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aitrail.cli", "dlq", *argv], env=env, capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    def listed():
        result = dlq("list", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["data"]

    (dead,) = wait_until(listed, 60, "the dead letter of the logs topic")
    assert dead["source"]["topic"] == logs_topic and dead["signal"] == "logs" and dead["tenant"] == "stock"
    result = dlq("replay", "--wait", "90")
    assert result.returncode == 1, result.stdout + result.stderr  # still not OTLP: dead again
    assert f"{dead['id']}: failed again as dead letter" in result.stdout
    (again,) = listed()
    assert again["replay_of"] == dead["id"] and again["source"]["topic"] == logs_topic  # replayed where it came from
    assert again["signal"] == "logs" and "not a valid OTLP" in again["reason"]
