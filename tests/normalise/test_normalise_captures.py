"""The four real captures (tests/fixtures/otlp-captures, copied from ../shared/fixtures): one
openai chat call instrumented by each package, each mapped to the same facts."""

from __future__ import annotations

import pytest
from aitrail.collector.normalise import normalise_logs, normalise_traces
from aitrail.schemas.canonical import canonical_json, record_from_json
from normalise_builders import (
    CAPTURES,
    INGESTED,
    SHARED_CAPTURES,
    load_logs,
    load_traces,
)

QUESTION = "What is our refund policy for damaged items?"
ANSWER = "Damaged items can be refunded within 30 days with a receipt."
SYSTEM = "You answer customer policy questions."

SPAN_CAPTURES = {
    "otelv2-span": "gen_ai",
    "openinference": "openinference",
    "openllmetry": "openllmetry",
}


def _the_facts(record, service: str) -> None:
    assert record.kind == "completion"
    assert record.question == QUESTION
    assert record.answer == ANSWER
    assert record.input_tokens == 42
    assert record.output_tokens == 17
    assert record.response_model == "gpt-4o-mini-2024-07-18"
    assert record.request_model == "gpt-4o-mini"
    assert record.provider == "openai"
    assert record.service == service
    assert record.environment == "prod"
    assert record.request_params["temperature"] == 0.2
    assert record.system_instructions == SYSTEM
    assert [m.role for m in record.input_messages] == ["system", "user"]
    assert [m.role for m in record.output_messages] == ["assistant"]
    assert record.finish_reasons == ["stop"]
    assert len(record.trace_id) == 32 and len(record.span_id) == 16
    assert record.start_time.endswith("Z") and len(record.start_time) == 30
    assert record.ingested_at == INGESTED


@pytest.mark.parametrize("folder", sorted(SPAN_CAPTURES))
def test_span_capture_gives_one_completion_with_the_facts(folder):
    (record,) = normalise_traces(load_traces(CAPTURES / folder / "00-traces.pb"), "acme", ingested_at=INGESTED)
    _the_facts(record, f"support-bot-{folder}")
    assert record.semconv == SPAN_CAPTURES[folder]
    assert record.origin == "span"
    assert record.duration_ms == record.latency_ms and 0 < record.duration_ms < 1000
    assert record.end_time > record.start_time
    assert record.raw_attributes["resource.telemetry.sdk.version"] == "1.45.2"
    assert record.raw_attributes["scope.name"]
    assert record_from_json(canonical_json(record)) == record


def test_openinference_keeps_the_request_and_response_bodies_raw():
    (record,) = normalise_traces(load_traces(CAPTURES / "openinference" / "00-traces.pb"), "acme",
                                 ingested_at=INGESTED)
    assert QUESTION in record.raw_attributes["input.value"]
    assert record.raw_attributes["llm.token_count.total"] == 59
    assert "llm.input_messages.0.message.role" not in record.raw_attributes  # mapped, not duplicated


def test_otelv2_events_span_alone_has_no_content():
    (record,) = normalise_traces(load_traces(CAPTURES / "otelv2-events" / "01-traces.pb"), "acme",
                                 ingested_at=INGESTED)
    assert record.kind == "completion" and record.origin == "span" and record.semconv == "gen_ai"
    assert record.question is None and record.answer is None and record.input_messages == []
    assert (record.input_tokens, record.output_tokens) == (42, 17)
    assert record.response_model == "gpt-4o-mini-2024-07-18"


def test_otelv2_events_log_alone_carries_the_content_for_the_same_span():
    (span_record,) = normalise_traces(load_traces(CAPTURES / "otelv2-events" / "01-traces.pb"), "acme",
                                      ingested_at=INGESTED)
    (record,) = normalise_logs(load_logs(CAPTURES / "otelv2-events" / "00-logs.pb"), "acme", ingested_at=INGESTED)
    _the_facts(record, "support-bot-otelv2-events")
    assert record.origin == "log" and record.semconv == "gen_ai"
    assert (record.trace_id, record.span_id) == (span_record.trace_id, span_record.span_id)
    assert record.record_id != span_record.record_id
    assert record.cost is None  # the span record carries the cost
    assert record.start_time == "2026-11-25T16:30:52.365672665Z"  # observed time: the event had no time


def test_log_records_are_priced_never():
    calls = []

    def pricer(*args, **kwargs):
        calls.append(args)
        raise AssertionError("must not be called")

    (record,) = normalise_logs(load_logs(CAPTURES / "otelv2-events" / "00-logs.pb"), "acme",
                               ingested_at=INGESTED, pricer=pricer)
    assert record.cost is None and calls == []


@pytest.mark.skipif(not SHARED_CAPTURES.is_dir(), reason="../shared not beside the clone")
def test_repository_copies_match_the_shared_captures():
    for path in sorted(SHARED_CAPTURES.glob("*/*.pb")):
        copy = CAPTURES / path.parent.name / path.name
        assert copy.read_bytes() == path.read_bytes(), copy


def test_traces_data_and_logs_data_are_accepted_too():
    from opentelemetry.proto.logs.v1.logs_pb2 import LogsData
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    request = load_traces(CAPTURES / "otelv2-span" / "00-traces.pb")
    data = TracesData(resource_spans=request.resource_spans)
    assert normalise_traces(data, "acme", ingested_at=INGESTED) == normalise_traces(request, "acme",
                                                                                     ingested_at=INGESTED)
    log_request = load_logs(CAPTURES / "otelv2-events" / "00-logs.pb")
    log_data = LogsData(resource_logs=log_request.resource_logs)
    assert normalise_logs(log_data, "acme", ingested_at=INGESTED) == normalise_logs(log_request, "acme",
                                                                                    ingested_at=INGESTED)
