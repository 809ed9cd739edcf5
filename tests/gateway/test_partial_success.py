"""OTLP partial success where the gateway refuses part of a request: a span or log record too
large for one Kafka message is refused, the rest sent, and the answer says how many and why;
with nothing left, 413."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from aitrail.bus.base import Signal
from aitrail.errors import PayloadTooLarge
from aitrail.gateway.ingest import Refused, export_response, ingest_split_by_trace, with_refused
from aitrail.otlp import Checked
from aitrail.store.base import Principal, Role

MAX_MESSAGE = 4096
ACME = Principal(key_id="k", tenant="acme", role=Role.INGEST)


class RecordingBus:
    def __init__(self) -> None:
        self.published = []

    async def publish(self, messages) -> None:
        self.published.extend(messages)


def traces(*sizes: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for index, size in enumerate(sizes):
        span = spans.add()
        span.trace_id, span.span_id = bytes([index + 1]) * 16, bytes([index + 1]) * 8
        span.name = f"span {index}"
        span.attributes.add(key="payload").value.string_value = "x" * size
    return request


def published_span_names(bus: RecordingBus) -> list[str]:
    return sorted(
        span.name for message in bus.published
        for r in TracesData.FromString(message.payload).resource_spans for s in r.scope_spans for span in s.spans
    )


def test_an_oversized_span_is_refused_and_the_rest_sent():
    bus = RecordingBus()
    ingest = ingest_split_by_trace(bus, MAX_MESSAGE)
    refused = asyncio.run(ingest(Signal.TRACES, traces(10, MAX_MESSAGE * 2, 20), ACME))
    assert refused == Refused(1, refused.message) and "1 span refused" in refused.message
    assert f"over the message limit of {MAX_MESSAGE} bytes" in refused.message
    assert published_span_names(bus) == ["span 0", "span 2"]
    answer = export_response(Signal.TRACES, with_refused(Checked(3, 0, None), refused))
    assert answer.partial_success.rejected_spans == 1
    assert "over the message limit" in answer.partial_success.error_message


def test_refusals_add_to_what_the_receiver_rejected():
    checked = with_refused(Checked(3, 2, "2 span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes"),
                           Refused(1, "1 span refused: too large"))
    assert (checked.accepted, checked.rejected) == (2, 3)
    assert checked.error == "2 span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes; 1 span refused: too large"


def test_nothing_left_is_413():
    bus = RecordingBus()
    ingest = ingest_split_by_trace(bus, MAX_MESSAGE)
    with pytest.raises(PayloadTooLarge, match="nothing could be accepted: one span is"):
        asyncio.run(ingest(Signal.TRACES, traces(MAX_MESSAGE * 2), ACME))
    assert bus.published == []


def test_an_oversized_log_record_is_refused_and_counted_as_log_records():
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.add().body.string_value = "small"
    records.add().body.string_value = "y" * (MAX_MESSAGE * 2)
    bus = RecordingBus()
    refused = asyncio.run(ingest_split_by_trace(bus, MAX_MESSAGE)(Signal.LOGS, request, ACME))
    assert refused.count == 1 and "1 log record refused" in refused.message
    assert len(bus.published) == 1
    answer = export_response(Signal.LOGS, with_refused(Checked(2, 0, None), refused))
    assert answer.partial_success.rejected_log_records == 1


def test_full_success_has_no_partial_success_field():
    answer = export_response(Signal.TRACES, Checked(3, 0, None))
    assert not answer.HasField("partial_success")
