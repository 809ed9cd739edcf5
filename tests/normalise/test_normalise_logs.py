"""GenAI events sent as OTLP log records."""

from __future__ import annotations

from aitrail.collector.normalise import normalise_logs, normalise_traces
from aitrail.schemas.record import record_id_for
from normalise_builders import INGESTED, T0, log_record, logs, new_ids, span, traces

Q = "What is our refund policy for damaged items?"
A = "Damaged items can be refunded within 30 days with a receipt."
SYSTEM = "You answer customer policy questions."


def _details(trace_id: bytes, span_id: bytes, **kwargs):
    return log_record("gen_ai.client.inference.operation.details", {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 42,
        "gen_ai.usage.output_tokens": 17,
        "gen_ai.input.messages": [{"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
                                  {"role": "user", "parts": [{"type": "text", "content": Q}]}],
        "gen_ai.output.messages": [{"role": "assistant", "finish_reason": "stop",
                                    "parts": [{"type": "text", "content": A}]}],
    }, trace_id=trace_id, span_id=span_id, **kwargs)


def test_details_event_gives_a_log_record_for_the_span():
    trace_id, span_id = new_ids()
    (record,) = normalise_logs(logs(_details(trace_id, span_id)), "acme", ingested_at=INGESTED)
    assert record.origin == "log" and record.kind == "completion" and record.semconv == "gen_ai"
    assert (record.trace_id, record.span_id) == (trace_id.hex(), span_id.hex())
    assert record.record_id == record_id_for("acme", trace_id.hex(), span_id.hex(), "completion", "log")
    assert (record.question, record.answer, record.system_instructions) == (Q, A, SYSTEM)
    assert (record.input_tokens, record.output_tokens) == (42, 17)
    assert record.cost is None
    assert record.start_time == "2026-11-25T16:30:50.000000000Z"
    assert record.end_time is None and record.duration_ms is None


def test_event_name_in_the_attributes_of_older_sdks():
    trace_id, span_id = new_ids()
    (record,) = normalise_logs(logs(_details(trace_id, span_id, event_name_as_attribute=True)), "acme",
                               ingested_at=INGESTED)
    assert record.question == Q and "event.name" not in record.raw_attributes


def test_per_message_log_events_with_content_in_the_body_merge_into_one_record():
    trace_id, span_id = new_ids()
    common = {"trace_id": trace_id, "span_id": span_id, "event_name_as_attribute": True}
    batch = logs(
        log_record("gen_ai.system.message", {"gen_ai.system": "openai"}, body={"content": SYSTEM}, time=T0, **common),
        log_record("gen_ai.user.message", {"gen_ai.system": "openai"}, body={"content": Q}, time=T0 + 1, **common),
        log_record("gen_ai.choice", {"gen_ai.system": "openai"}, time=T0 + 2, body={
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": A}}, **common),
        log_record("app.log", {"logger": "x"}, body="a plain application log line", **common),
    )
    (record,) = normalise_logs(batch, "acme", ingested_at=INGESTED)
    assert record.semconv == "gen_ai.legacy" and record.kind == "completion" and record.provider == "openai"
    assert (record.question, record.answer, record.system_instructions) == (Q, A, SYSTEM)
    assert record.finish_reasons == ["stop"]
    assert record.start_time == "2026-11-25T16:30:50.000000000Z"
    # a later export with the rest of the events must not collide with this one
    assert record.record_id == record_id_for("acme", trace_id.hex(), span_id.hex(), f"completion@{T0}", "log")


def test_tool_message_event_keeps_the_call_id():
    trace_id, span_id = new_ids()
    (record,) = normalise_logs(logs(
        log_record("gen_ai.tool.message", {"gen_ai.system": "openai"}, body={"content": "rainy", "id": "call_1"},
                   trace_id=trace_id, span_id=span_id),
    ), "acme", ingested_at=INGESTED)
    assert record.input_messages[0].role == "tool" and record.input_messages[0].tool_call_id == "call_1"


def test_span_and_log_records_of_one_call_share_ids_not_record_ids():
    trace_id, span_id = new_ids()
    (from_span,) = normalise_traces(traces(span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"},
                                                trace_id=trace_id, span_id=span_id)), "acme", ingested_at=INGESTED)
    (from_log,) = normalise_logs(logs(_details(trace_id, span_id)), "acme", ingested_at=INGESTED)
    assert (from_span.trace_id, from_span.span_id) == (from_log.trace_id, from_log.span_id)
    assert from_span.record_id != from_log.record_id


def test_evaluation_log_event():
    trace_id, span_id = new_ids()
    (record,) = normalise_logs(logs(log_record("gen_ai.evaluation.result", {
        "gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": 0.9,
        "gen_ai.evaluation.score.label": "relevant", "gen_ai.response.id": "chatcmpl-1",
    }, trace_id=trace_id, span_id=span_id)), "acme", ingested_at=INGESTED)
    assert record.kind == "evaluation" and record.origin == "log"
    assert (record.evaluation_name, record.score, record.label, record.response_id) == (
        "Relevance", 0.9, "relevant", "chatcmpl-1")
    assert record.span_id == span_id.hex()


def test_non_genai_logs_are_skipped():
    batch = logs(log_record("app.started", {"x": 1}), log_record("", {"msg": "hello"}, body="hello"))
    assert normalise_logs(batch, "acme", ingested_at=INGESTED) == []


def test_events_without_span_context_stay_apart():
    batch = logs(_details(b"", b"", time=T0), _details(b"", b"", time=T0 + 1))
    records = normalise_logs(batch, "acme", ingested_at=INGESTED)
    assert len(records) == 2 and len({r.record_id for r in records}) == 2
    assert all(r.trace_id is None and r.span_id is None for r in records)


def test_error_type_on_a_log_event_marks_it_failed():
    trace_id, span_id = new_ids()
    lr = log_record("gen_ai.client.inference.operation.details",
                    {"gen_ai.operation.name": "chat", "error.type": "timeout"}, trace_id=trace_id, span_id=span_id)
    (record,) = normalise_logs(logs(lr), "acme", ingested_at=INGESTED)
    assert record.status == "error" and record.error_type == "timeout"
