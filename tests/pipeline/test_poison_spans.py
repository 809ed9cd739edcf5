"""Poison spans between ordinary ones on the real broker and node: a span with a 40 KB
attribute, a span that starts in the year 2300 (beyond OpenSearch's date_nanos), a trace
sent twice as it was (duplicates) and a trace sent again with another answer (a conflict).
However the normaliser treats the first two (refuse, or shorten to fit), every span of every
acknowledged message ends stored exactly once or dead-lettered with a reason, every offset
is committed, and every Merkle log verifies. Counted at the end, span by span."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from aitrail.bus.kafka import (
    OUTCOME_HEADER, REASON_HEADER, RECORD_HEADER, SIGNAL_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER, TENANT_HEADER,
)
from aitrail.otlp import split_by_trace
from aitrail.schemas.record import record_id_for
from bench.data import _kv, build_requests
from tests.pipeline.conftest import wait_until
from tests.pipeline.test_pipeline import all_consumed

pytestmark = pytest.mark.services

YEAR_2300_NS = 10_413_792_000 * 10**9  # 2300-01-01T00:00:00Z


def _spans(data) -> list:
    return [s for rs in data.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _chat(data):
    return next(s for s in _spans(data) if s.name.startswith("chat"))


def _messages() -> list[tuple[bytes, str]]:
    """(TracesData, what it is): ordinary traces with the poison ones in between, one
    message per trace."""
    payloads, _ = build_requests(24, 24, seed=21)
    ordinary = [data for _, data in split_by_trace(ExportTraceServiceRequest.FromString(payloads[0]), 900_000)]
    payloads, _ = build_requests(2, 2, seed=22)
    big, late = (data for _, data in split_by_trace(ExportTraceServiceRequest.FromString(payloads[0]), 900_000))
    _chat(big).attributes.append(_kv("app.blob", "x" * 40_000))
    chat = _chat(late)
    chat.start_time_unix_nano, chat.end_time_unix_nano = YEAR_2300_NS, YEAR_2300_NS + 10**9
    forged = TracesData.FromString(ordinary[3].SerializeToString())
    for attribute in _chat(forged).attributes:
        if attribute.key == "gen_ai.output.messages":
            attribute.value.string_value = '[{"role": "assistant", "parts": [{"type": "text", "content": "forged"}]}]'
    out = [(d.SerializeToString(), "ordinary") for d in ordinary[:8]]
    out.append((big.SerializeToString(), "40 KB attribute"))
    out += [(d.SerializeToString(), "ordinary") for d in ordinary[8:16]]
    out.append((late.SerializeToString(), "starts in 2300"))
    out.append((ordinary[2].SerializeToString(), "sent again"))
    out.append((forged.SerializeToString(), "sent again with another answer"))
    out += [(d.SerializeToString(), "ordinary") for d in ordinary[16:]]
    return out


async def _produce(bootstrap: str, topic: str, messages) -> list[int]:
    """All on partition 0, in order, so the poison sits between ordinary messages. Offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        offsets = []
        for value, _what in messages:
            sent = await producer.send_and_wait(
                topic, value, partition=0,
                headers=[(TENANT_HEADER, b"acme"), (SIGNAL_HEADER, b"traces")],
            )
            offsets.append(sent.offset)
        return offsets
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str) -> list:
    """Every message of the topic, up to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out = []
        for _ in range(120):  # bounded: 60 s
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(batch)
        return out
    finally:
        try:
            await consumer.stop()
        except asyncio.CancelledError:  # aiokafka's group-less consumer on stop; harmless here
            pass


def _stored_spans(pipeline) -> dict[tuple[str, str], int]:
    client = pipeline.client()
    index = f"{pipeline.prefix}-records-*"
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"size": 10_000, "_source": ["trace_id", "span_id"], "query": {"match_all": {}}})
    counts: dict[tuple[str, str], int] = {}
    for hit in hits["hits"]["hits"]:
        key = (hit["_source"]["trace_id"], hit["_source"]["span_id"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_poison_spans_between_ordinary_ones_end_stored_once_or_dead_lettered(pipeline):
    collector = pipeline.collector()
    messages = _messages()
    offsets = asyncio.run(_produce(pipeline.kafka, pipeline.topic, messages))
    wait_until(lambda: all_consumed(pipeline), 180, "every message committed")  # offsets committed past the poison

    spans: dict[tuple[str, str], list[int]] = {}  # (trace, span) -> the offsets of its messages
    for (value, _what), offset in zip(messages, offsets, strict=True):
        for span in _spans(TracesData.FromString(value)):
            spans.setdefault((span.trace_id.hex(), span.span_id.hex()), []).append(offset)
    record_spans = {
        record_id_for("acme", trace, span, kind): (trace, span)
        for trace, span in spans for kind in ("retrieval", "completion")
    }

    letters = asyncio.run(_read_all(pipeline.kafka, pipeline.dlq))
    dead: dict[tuple[str, str], list[tuple[str | None, int]]] = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers[REASON_HEADER], headers  # every dead letter says why
        assert headers[SOURCE_TOPIC_HEADER] == pipeline.topic and headers[SOURCE_PARTITION_HEADER] == "0"
        source_offset = int(headers[SOURCE_OFFSET_HEADER])
        outcome = headers.get(OUTCOME_HEADER)
        if outcome in ("rejected", "conflict"):  # one record of the message
            assert headers[RECORD_HEADER] in record_spans, headers
            span = record_spans[headers[RECORD_HEADER]]
            assert source_offset in spans[span]  # the source position is one of the span's own messages
            assert headers[REASON_HEADER].startswith(f"{outcome}: record {headers[RECORD_HEADER]}")
            dead.setdefault(span, []).append((outcome, source_offset))
        else:  # the whole message set aside by the normaliser
            for span in _spans(TracesData.FromString(letter.value)):
                dead.setdefault((span.trace_id.hex(), span.span_id.hex()), []).append((outcome, source_offset))

    stored = _stored_spans(pipeline)
    assert set(stored) <= set(spans)
    assert all(count == 1 for count in stored.values()), {k: n for k, n in stored.items() if n != 1}
    lost = [span for span in spans if span not in stored and span not in dead]
    assert lost == [], f"{len(lost)} acknowledged spans neither stored nor dead-lettered"

    def of(what: str) -> set[tuple[str, str]]:
        return {span for span, at in spans.items() if any(messages[offsets.index(o)][1] == what for o in at)}

    assert of("ordinary") <= set(stored)  # the poison did not take its neighbours down
    # Sent again as it was: duplicates, acknowledged, not stored twice (counted above), no dead letter.
    assert of("sent again") <= set(stored)
    assert not any(o == offsets[[w for _, w in messages].index("sent again")] for v in dead.values() for _, o in v)
    # Sent again with another answer: the completion is a conflict, dead-lettered from the
    # second message; the first answer stays; its unchanged retrieval is a duplicate.
    forged_at = offsets[[w for _, w in messages].index("sent again with another answer")]
    conflicts = [span for span, v in dead.items() if ("conflict", forged_at) in v]
    assert len(conflicts) == 1 and conflicts[0] in stored
    assert [o for v in dead.values() for _, o in v].count(forged_at) == 1

    assert f"aitrail_dead_letters_total {float(len(letters))}" in pipeline.metrics(collector)
    assert "FAILED" not in pipeline.verify()  # no leaf was taken by a record that is not stored
