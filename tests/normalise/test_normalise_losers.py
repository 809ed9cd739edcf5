"""Nothing in a span is thrown away: where two values compete for one field, or the mapping
does not read a value, the one that loses is kept in `raw_attributes` (issue 9). One test
per loss the issue lists."""

from __future__ import annotations

import json

from aitrail.collector.normalise import normalise_logs, normalise_traces
from aitrail.schemas.canonical import canonical_json
from normalise_builders import INGESTED, T0, log_record, logs, new_ids, span, traces

Q = "What is our refund policy for damaged items?"
A = "Damaged items can be refunded within 30 days with a receipt."
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}


def one(*spans):
    records = normalise_traces(traces(*spans), "acme", ingested_at=INGESTED)
    assert len(records) == 1, records
    canonical_json(records[0])  # and it serialises
    return records[0]


# --- a second value for one name --------------------------------------------------------


def test_second_request_parameter_of_the_same_name_is_kept():
    record = one(span({**CHAT, "gen_ai.request.seed": 7, "gen_ai.openai.request.seed": 8,
                       "gen_ai.request.stream": True, "llm.is_streaming": True}))
    assert record.request_params == {"seed": 7, "stream": True}
    assert record.raw_attributes["gen_ai.openai.request.seed"] == 8
    assert "llm.is_streaming" not in record.raw_attributes  # same value: nothing lost


def test_invocation_parameter_beside_an_attribute_of_the_same_name_is_kept():
    record = one(span({
        "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.top_k": 5,
        "llm.invocation_parameters": json.dumps({"top_k": 40, "temperature": 0.1, "frequency_penalty": 0}),
        "llm.frequency_penalty": 0,
    }))
    assert record.request_params == {"top_k": 5, "frequency_penalty": 0, "temperature": 0.1}
    assert record.raw_attributes["llm.invocation_parameters.top_k"] == 40
    assert "llm.invocation_parameters.frequency_penalty" not in record.raw_attributes


def test_second_finish_reason_attribute_is_kept():
    record = one(span({**CHAT, "gen_ai.response.finish_reasons": ["stop"], "llm.finish_reason": "length",
                       "gen_ai.response.finish_reason": "stop"}))
    assert record.finish_reasons == ["stop"]
    assert record.raw_attributes["llm.finish_reason"] == "length"
    assert "gen_ai.response.finish_reason" not in record.raw_attributes  # says the same


# --- event attributes that differ from the span's ---------------------------------------


def test_details_event_attribute_that_differs_from_the_span_is_kept():
    record = one(span(CHAT | {"gen_ai.usage.input_tokens": 42}, events=[
        ("gen_ai.client.inference.operation.details", {
            "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 42, "gen_ai.response.id": "chatcmpl-1",
        }),
    ]))
    assert record.request_model == "gpt-4o-mini" and record.response_id == "chatcmpl-1"  # the span's win
    (entry,) = record.raw_attributes["event.gen_ai.client.inference.operation.details"]
    assert entry["attributes"] == {"gen_ai.request.model": "gpt-4o"}
    assert entry["time"] == "2026-11-25T16:30:50.000001000Z"


def test_message_event_attribute_that_differs_from_the_span_is_kept():
    record = one(span({"gen_ai.operation.name": "chat", "gen_ai.system": "openai"}, events=[
        ("gen_ai.user.message", {"gen_ai.system": "azure.ai.openai", "content": Q}),
    ]))
    assert record.provider == "openai" and record.question == Q
    (entry,) = record.raw_attributes["event.gen_ai.user.message"]
    assert entry["attributes"] == {"gen_ai.system": "azure.ai.openai"}


def test_log_events_about_one_span_keep_the_later_differing_value():
    trace_id, span_id = new_ids()
    ids = {"trace_id": trace_id, "span_id": span_id}
    (record,) = normalise_logs(logs(
        log_record("gen_ai.user.message", {"gen_ai.system": "openai"}, body={"content": Q}, time=T0, **ids),
        log_record("gen_ai.choice", {"gen_ai.system": "anthropic"}, time=T0 + 1, body={
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": A}}, **ids),
    ), "acme", ingested_at=INGESTED)
    assert record.provider == "openai" and record.answer == A
    (entry,) = record.raw_attributes["event.gen_ai.choice"]
    assert entry["attributes"] == {"gen_ai.system": "anthropic"}  # index 0 is its position: not repeated


# --- tool-call type ---------------------------------------------------------------------


def test_tool_call_type_is_kept():
    record = one(span({**CHAT, "gen_ai.input.messages": json.dumps([
        {"role": "user", "content": Q},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "kb_search", "arguments": "{}", "strict": True}},
            {"id": "call_2", "type": "custom", "name": "grep", "input": "refund"},
        ]},
    ])}))
    assert record.input_messages[1].tool_calls == [
        {"id": "call_1", "type": "function", "name": "kb_search", "arguments": "{}", "function": {"strict": True}},
        {"id": "call_2", "type": "custom", "name": "grep", "arguments": "refund"},
    ]


def test_tool_call_type_from_a_per_message_event_is_kept():
    record = one(span(CHAT, events=[("gen_ai.assistant.message", {"tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "kb_search", "arguments": "{}"}}]})]))
    assert record.input_messages[0].tool_calls[0]["type"] == "function"


# --- message fields other than name and finish_reason -----------------------------------


def test_message_fields_beyond_the_record_model_are_kept():
    record = one(span({**CHAT, "gen_ai.output.messages": json.dumps([
        {"role": "assistant", "parts": [{"type": "text", "content": A}], "finish_reason": "stop", "name": "bot",
         "id": "msg_1", "status": "completed"},
    ]), "gen_ai.input.messages": json.dumps([
        {"role": "user", "content": Q, "id": "in_1"},
        {"role": "assistant", "content": "earlier", "refusal": "no can do", "audio": {"id": "aud_1"}},
        42,
    ])}))
    (out,) = record.output_messages
    assert (out.content, out.finish_reason, out.name) == (A, "stop", "bot")
    raw = record.raw_attributes
    assert raw["gen_ai.output.messages.0.id"] == "msg_1"
    assert raw["gen_ai.output.messages.0.status"] == "completed"
    assert raw["gen_ai.input.messages.0.id"] == "in_1"
    assert raw["gen_ai.input.messages.1.refusal"] == "no can do"
    assert raw["gen_ai.input.messages.1.audio"] == {"id": "aud_1"}
    assert raw["gen_ai.input.messages.2"] == 42  # not a message at all: kept as sent
    assert "gen_ai.input.messages" not in raw  # read: only its leftovers stay


def test_choice_fields_are_kept():
    record = one(span({**CHAT, "gen_ai.output.messages": json.dumps([
        {"index": 1, "finish_reason": "stop", "logprobs": {"content": []},
         "message": {"role": "assistant", "content": A, "refusal": None, "annotations": [{"type": "url"}]}},
    ])}))
    assert record.answer == A and record.output_messages[0].finish_reason == "stop"
    raw = record.raw_attributes
    assert raw["gen_ai.output.messages.0.index"] == 1  # not its position: kept
    assert raw["gen_ai.output.messages.0.logprobs"] == {"content": []}
    assert raw["gen_ai.output.messages.0.message.annotations"] == [{"type": "url"}]


def test_text_part_with_more_than_its_text_keeps_the_parts():
    record = one(span({**CHAT, "gen_ai.input.messages": [
        {"role": "user", "parts": [{"type": "text", "content": Q, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "and returns?", "cache_control": {"type": "ephemeral"}}]},
    ]}))
    first, second = record.input_messages
    assert first.content == Q and first.parts == [{"type": "text", "content": Q, "cache_control": {"type": "ephemeral"}}]
    assert second.content == "and returns?" and second.parts[0]["cache_control"] == {"type": "ephemeral"}


def test_message_event_body_fields_are_kept():
    trace_id, span_id = new_ids()
    (record,) = normalise_logs(logs(
        log_record("gen_ai.user.message", {"gen_ai.system": "openai", "role": "user"},
                   body={"content": Q, "id": "m_1"}, trace_id=trace_id, span_id=span_id),
    ), "acme", ingested_at=INGESTED)
    assert record.question == Q
    (entry,) = record.raw_attributes["event.gen_ai.user.message"]
    assert entry["attributes"] == {"body": {"id": "m_1"}, "role": "user"}


# --- non-text system-instruction parts --------------------------------------------------


def test_system_instruction_parts_that_are_not_text_are_kept():
    instructions = [{"type": "text", "content": "You answer policy questions."},
                    {"type": "image", "uri": "https://x/logo.png"}]
    record = one(span({**CHAT, "gen_ai.system_instructions": json.dumps(instructions)}))
    assert record.system_instructions == "You answer policy questions."
    assert json.loads(record.raw_attributes["gen_ai.system_instructions"]) == instructions


def test_plain_text_system_instructions_are_not_repeated():
    record = one(span({**CHAT, "gen_ai.system_instructions": [{"type": "text", "content": "Be brief."}]}))
    assert record.system_instructions == "Be brief." and "gen_ai.system_instructions" not in record.raw_attributes


# --- retrieval documents on a span of another kind --------------------------------------


def test_openinference_documents_on_a_chain_span_are_kept():
    record = one(span({
        "openinference.span.kind": "CHAIN", "input.value": Q,
        "retrieval.documents.0.document.id": "kb-12", "retrieval.documents.0.document.content": "30 days.",
        "retrieval.documents.0.document.metadata": json.dumps({"acl_tags": ["support"]}),
    }))
    assert record.kind == "agent"
    (doc,) = record.documents
    assert (doc.doc_id, doc.snippet, doc.acl_tags) == ("kb-12", "30 days.", ["support"])


def test_gen_ai_documents_on_a_chat_span_are_kept():
    record = one(span({**CHAT, "gen_ai.retrieval.documents": json.dumps([{"id": "d1", "content": "policy"}])}))
    assert record.kind == "completion"
    assert [(d.doc_id, d.snippet) for d in record.documents] == [("d1", "policy")]


def test_vector_store_result_event_on_a_chat_span_is_kept():
    record = one(span(CHAT, events=[("db.query.result", {"db.query.result.id": "v1", "id": "other",
                                                          "db.query.result.document": "text"})]))
    (doc,) = record.documents
    assert doc.snippet == "text"
    assert doc.doc_id == "other" and doc.metadata == {"db.query.result.id": "v1"}  # both ids kept
