"""Hand-built spans, shaped as each convention / library emits them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pytest
from aitrail.collector.normalise import default_pseudonymise, normalise_traces
from aitrail.schemas.canonical import canonical_json
from normalise_builders import INGESTED, T0, span, traces

Q = "What is our refund policy for damaged items?"
A = "Damaged items can be refunded within 30 days with a receipt."
SYSTEM = "You answer customer policy questions."


def one(*spans, **kwargs):
    records = normalise_traces(traces(*spans, **kwargs.pop("traces", {})), "acme", ingested_at=INGESTED, **kwargs)
    assert len(records) == 1, records
    return records[0]


# --- completions: the older forms -------------------------------------------------------


def test_openllmetry_indexed_prompt_and_completion():
    record = one(span({
        "llm.request.type": "chat",
        "gen_ai.system": "OpenAI",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 256,
        "llm.headers": "None",
        "llm.is_streaming": False,
        "gen_ai.openai.api_base": "https://api.openai.com/v1/",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": SYSTEM,
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": Q,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-1",
        "llm.usage.total_tokens": 59,
        "gen_ai.usage.completion_tokens": 17,
        "gen_ai.usage.prompt_tokens": 42,
        "gen_ai.usage.cache_read_input_tokens": 8,
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": A,
    }, name="openai.chat"), traces={"scope": "opentelemetry.instrumentation.openai.v1"})
    assert record.semconv == "openllmetry"
    assert record.kind == "completion" and record.operation == "chat"
    assert record.provider == "openai"
    assert (record.question, record.answer, record.system_instructions) == (Q, A, SYSTEM)
    assert (record.input_tokens, record.output_tokens, record.cached_input_tokens) == (42, 17, 8)
    assert record.request_params == {"temperature": 0.2, "max_tokens": 256, "stream": False}
    assert record.output_messages[0].finish_reason == "stop"
    assert record.finish_reasons == ["stop"]
    assert record.raw_attributes["llm.usage.total_tokens"] == 59
    assert record.raw_attributes["llm.headers"] == "None"
    assert not any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in record.raw_attributes)


def test_legacy_gen_ai_indexed_with_tool_calls():
    record = one(span({
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": "Where is order A-1?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.id": "call_1",
        "gen_ai.completion.0.tool_calls.0.name": "lookup_order",
        "gen_ai.completion.0.tool_calls.0.arguments": '{"order_id": "A-1"}',
        "gen_ai.completion.0.tool_calls.0.weird": "kept",
    }))
    assert record.semconv == "gen_ai.legacy"
    assert record.kind == "completion"
    assert record.question == "Where is order A-1?"
    assert record.answer is None
    (msg,) = record.output_messages
    assert msg.tool_calls == [{"id": "call_1", "name": "lookup_order", "arguments": '{"order_id": "A-1"}'}]
    assert record.finish_reasons == ["tool_calls"]
    assert record.raw_attributes["gen_ai.completion.0.tool_calls.0.weird"] == "kept"


def test_per_message_span_events():
    record = one(span(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "az.ai.inference",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.usage.input_tokens": 42,
            "gen_ai.usage.output_tokens": 17,
        },
        name="chat gpt-4o-mini",
        events=[
            ("gen_ai.system.message", {"gen_ai.system": "az.ai.inference",
                                       "gen_ai.event.content": json.dumps({"role": "system", "content": SYSTEM})}),
            ("gen_ai.user.message", {"gen_ai.system": "az.ai.inference",
                                     "gen_ai.event.content": json.dumps({"role": "user", "content": Q})}),
            ("gen_ai.choice", {"gen_ai.system": "az.ai.inference", "gen_ai.event.content": json.dumps(
                {"finish_reason": "stop", "index": 0, "message": {"content": A}})}),
        ],
    ))
    assert record.semconv == "gen_ai.legacy"
    assert record.provider == "az.ai.inference"
    assert (record.question, record.answer, record.system_instructions) == (Q, A, SYSTEM)
    assert record.output_messages[0].role == "assistant"
    assert record.output_messages[0].finish_reason == "stop"
    assert not any(k.startswith("event.") for k in record.raw_attributes)


def test_per_message_span_events_with_structured_attributes():
    record = one(span(
        {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini"},
        events=[
            ("gen_ai.user.message", {"content": Q}),
            ("gen_ai.assistant.message", {"content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "kb_search", "arguments": "{}"}}]}),
            ("gen_ai.tool.message", {"content": "30 days", "id": "call_1"}),
            ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": A}}),
        ],
    ))
    assert [m.role for m in record.input_messages] == ["user", "assistant", "tool"]
    assert record.input_messages[1].tool_calls == [{"id": "call_1", "type": "function", "name": "kb_search",
                                                     "arguments": "{}"}]
    assert record.input_messages[2].tool_call_id == "call_1"
    assert record.question == Q and record.answer == A


def test_inference_details_span_event_with_structured_content():
    record = one(span(
        {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
         "gen_ai.request.model": "claude-sonnet-4", "gen_ai.usage.input_tokens": 42},
        events=[("gen_ai.client.inference.operation.details", {
            "gen_ai.operation.name": "chat",
            "gen_ai.system_instructions": [{"type": "text", "content": SYSTEM}],
            "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": Q}]}],
            "gen_ai.output.messages": [{"role": "assistant", "finish_reason": "end_turn", "parts": [
                {"type": "reasoning", "content": "policy lookup"}, {"type": "text", "content": A}]}],
            "gen_ai.usage.input_tokens": 40,  # the span's own value wins
        })],
    ))
    assert record.semconv == "gen_ai"
    assert record.provider == "anthropic"
    assert record.system_instructions == SYSTEM
    assert (record.question, record.answer) == (Q, A)
    assert record.input_tokens == 42
    (out,) = record.output_messages
    assert out.parts[0] == {"type": "reasoning", "content": "policy lookup"}  # kept, not in the answer
    assert out.finish_reason == "end_turn"


def test_messages_as_json_text_with_tool_call_parts():
    record = one(span({
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.input.messages": json.dumps([
            {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_V", "name": "get_weather",
                                             "arguments": {"location": "Paris"}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_V", "response": "rainy, 57°F"}]},
        ]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "text", "content": "It is rainy."}], "finish_reason": "stop"}]),
    }))
    assert record.question == "Weather in Paris?"
    assert record.input_messages[1].tool_calls == [{"id": "call_V", "name": "get_weather",
                                                     "arguments": {"location": "Paris"}}]
    assert record.input_messages[2].tool_call_id == "call_V"
    assert record.input_messages[2].content == "rainy, 57°F"
    assert record.answer == "It is rainy."


def test_truncated_message_json_is_kept_raw():
    record = one(span({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "Wha',
    }))
    assert record.input_messages == []
    assert record.raw_attributes["gen_ai.input.messages"].startswith('[{"role"')


# --- retrieval ------------------------------------------------------------------------------

DOCS = [
    ("kb-refunds#3", 0.91, "Damaged items: refund within 30 days with a receipt.",
     {"source": "s3://kb/refunds.md", "version": "v7", "acl_tags": ["support", "public"], "chunk_id": "3"}),
    ("kb-refunds#4", 0.83, "Refunds go back to the original payment method.", {"source": "s3://kb/refunds.md"}),
    ("kb-shipping#1", 0.42, "We ship within 2 days.", {"file_path": "/kb/shipping.md", "title": "Shipping"}),
]


def test_openinference_retriever_with_three_documents():
    attrs = {"openinference.span.kind": "RETRIEVER", "input.value": "refund policy damaged items"}
    for i, (doc_id, score, content, meta) in enumerate(DOCS):
        attrs[f"retrieval.documents.{i}.document.id"] = doc_id
        attrs[f"retrieval.documents.{i}.document.score"] = score
        attrs[f"retrieval.documents.{i}.document.content"] = content
        attrs[f"retrieval.documents.{i}.document.metadata"] = json.dumps(meta)
    record = one(span(attrs, name="VectorStoreRetriever"))
    assert record.kind == "retrieval" and record.semconv == "openinference"
    assert record.query_text == record.question == "refund policy damaged items"
    assert [d.doc_id for d in record.documents] == ["kb-refunds#3", "kb-refunds#4", "kb-shipping#1"]
    assert [d.rank for d in record.documents] == [1, 2, 3]
    assert [d.score for d in record.documents] == [0.91, 0.83, 0.42]
    first, _, third = record.documents
    assert first.source_uri == "s3://kb/refunds.md" and first.doc_version == "v7" and first.chunk_id == "3"
    assert first.acl_tags == ["support", "public"]
    assert first.snippet == DOCS[0][2]
    assert first.content_sha256 == hashlib.sha256(DOCS[0][2].encode()).hexdigest()
    assert third.source_uri == "/kb/shipping.md" and third.metadata["title"] == "Shipping"
    assert not any(k.startswith("retrieval.documents") for k in record.raw_attributes)


def test_openinference_reranker():
    attrs = {
        "openinference.span.kind": "RERANKER",
        "reranker.query": "refund damaged",
        "reranker.model_name": "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "reranker.top_k": 2,
    }
    for i, (doc_id, _, content, _) in enumerate(DOCS):
        attrs[f"reranker.input_documents.{i}.document.id"] = doc_id
        attrs[f"reranker.input_documents.{i}.document.content"] = content
    for i, (doc_id, score, content, _) in enumerate([DOCS[1], DOCS[0]]):
        attrs[f"reranker.output_documents.{i}.document.id"] = doc_id
        attrs[f"reranker.output_documents.{i}.document.score"] = score
        attrs[f"reranker.output_documents.{i}.document.content"] = content
    record = one(span(attrs, name="CohereRerank"))
    assert record.kind == "retrieval" and record.operation == "reranker"
    assert record.query_text == "refund damaged" and record.top_k == 2
    assert record.request_model == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert [(d.doc_id, d.rank) for d in record.documents] == [("kb-refunds#4", 1), ("kb-refunds#3", 2)]
    assert record.raw_attributes["reranker.input_documents.2.document.id"] == "kb-shipping#1"


def test_gen_ai_retrieval_operation():
    record = one(span({
        "gen_ai.operation.name": "retrieval",
        "gen_ai.provider.name": "openai",
        "gen_ai.data_source.id": "vs_refunds",
        "gen_ai.retrieval.query.text": "refund policy",
        "gen_ai.retrieval.top_k": 5,
        "gen_ai.retrieval.documents": [{"id": "doc_123", "score": 0.95}, {"id": "doc_456", "score": 0.87}],
    }, name="retrieval vs_refunds"))
    assert record.kind == "retrieval" and record.semconv == "gen_ai"
    assert (record.index_name, record.query_text, record.top_k) == ("vs_refunds", "refund policy", 5)
    assert [(d.doc_id, d.score, d.rank) for d in record.documents] == [("doc_123", 0.95, 1), ("doc_456", 0.87, 2)]


def test_aitrail_sdk_retrieval_span():
    docs = [
        {"doc_id": "refunds.md", "chunk_id": "refunds.md#2", "source_uri": "https://kb/refunds.md",
         "doc_version": "2026-10-01", "content_sha256": "ab" * 32, "score": 0.9, "rank": 1,
         "acl_tags": ["support"], "snippet": "Damaged items…"},
        {"doc_id": "faq.md", "score": 0.7, "rank": 2},
    ]
    record = one(span({
        "aitrail.retrieval.query": Q,
        "aitrail.retrieval.index": "kb-prod",
        "aitrail.retrieval.top_k": 2,
        "aitrail.retrieval.documents": json.dumps(docs),
        "aitrail.feature": "support-chat",
    }, name="retrieve"))
    assert record.kind == "retrieval" and record.semconv == "aitrail"
    assert (record.question, record.index_name, record.top_k, record.feature) == (Q, "kb-prod", 2, "support-chat")
    first = record.documents[0].model_dump(exclude_none=True)
    assert first == {**docs[0]}
    assert record.documents[1].doc_id == "faq.md" and record.documents[1].rank == 2


def test_traceloop_vector_store_span_with_result_events():
    record = one(span(
        {"db.system": "chroma", "db.operation": "query", "db.chroma.query.n_results": 2,
         "traceloop.workflow.name": "answer_question"},
        name="chroma.query",
        events=[
            ("db.query.result", {"db.query.result.id": "d1", "db.query.result.distance": 0.12,
                                 "db.query.result.document": "Damaged items…",
                                 "db.query.result.metadata": '{"source": "refunds.md"}'}),
            ("db.query.result", {"db.query.result.id": "d2", "db.query.result.distance": 0.3}),
        ],
    ))
    assert record.kind == "retrieval" and record.semconv == "openllmetry"
    assert record.workflow_name == "answer_question"
    assert [(d.doc_id, d.rank) for d in record.documents] == [("d1", 1), ("d2", 2)]
    assert record.documents[0].source_uri == "refunds.md"
    assert record.documents[0].metadata["distance"] == 0.12
    assert record.raw_attributes["db.system"] == "chroma"


# --- tools and agents -----------------------------------------------------------------------


def test_openinference_tool():
    record = one(span({
        "openinference.span.kind": "TOOL",
        "tool.name": "lookup_order",
        "tool.description": "Finds an order",
        "tool.parameters": '{"type": "object", "properties": {"order_id": {"type": "string"}}}',
        "input.value": '{"order_id": "A-1"}',
        "input.mime_type": "application/json",
        "output.value": '{"status": "shipped"}',
    }, name="lookup_order"))
    assert record.kind == "tool" and record.operation == "tool"
    assert (record.tool_name, record.tool_arguments, record.tool_result) == (
        "lookup_order", '{"order_id": "A-1"}', '{"status": "shipped"}')
    assert record.raw_attributes["tool.description"] == "Finds an order"
    assert "input.value" not in record.raw_attributes
    assert record.raw_attributes["input.mime_type"] == "application/json"


@pytest.mark.parametrize("oi_kind", ["AGENT", "CHAIN"])
def test_openinference_agent_and_chain(oi_kind):
    record = one(span({
        "openinference.span.kind": oi_kind,
        "agent.name": "support-agent",
        "input.value": Q,
        "output.value": A,
        "session.id": "sess-9",
        "metadata": '{"tier": "gold"}',
        "tag.tags": ["beta", "eu"],
        "graph.node.id": "n1",
    }, name="AgentExecutor"))
    assert record.kind == "agent" and record.operation == oi_kind.lower()
    assert record.agent_name == "support-agent" and record.session_id == "sess-9"
    assert record.raw_attributes["input.value"] == Q
    assert record.raw_attributes["tag.tags"] == ["beta", "eu"]
    assert record.raw_attributes["metadata"] == '{"tier": "gold"}'
    assert record.question is None  # only completions and retrievals carry question/answer


@pytest.mark.parametrize(("tl_kind", "kind"), [("workflow", "agent"), ("task", "agent"), ("agent", "agent"),
                                               ("tool", "tool")])
def test_traceloop_workflow_task_agent_tool(tl_kind, kind):
    record = one(span({
        "traceloop.span.kind": tl_kind,
        "traceloop.entity.name": "lookup_order",
        "traceloop.entity.path": "answer_question",
        "traceloop.workflow.name": "answer_question",
        "traceloop.entity.input": '{"args": [], "kwargs": {"order_id": "A-1"}}',
        "traceloop.entity.output": '"shipped"',
        "traceloop.association.properties.session_id": "sess-1",
        "traceloop.association.properties.tier": "gold",
    }, name=f"lookup_order.{tl_kind}"))
    assert record.kind == kind and record.semconv == "openllmetry" and record.operation == tl_kind
    assert record.workflow_name == "answer_question"
    assert record.session_id == "sess-1"
    assert record.raw_attributes["traceloop.association.properties.tier"] == "gold"
    assert record.raw_attributes["traceloop.entity.path"] == "answer_question"
    if kind == "tool":
        assert record.tool_name == "lookup_order"
        assert record.tool_arguments == '{"args": [], "kwargs": {"order_id": "A-1"}}'
        assert record.tool_result == '"shipped"'
        assert "traceloop.entity.input" not in record.raw_attributes
    else:
        assert record.raw_attributes["traceloop.entity.input"].startswith('{"args"')
    if tl_kind == "agent":
        assert record.agent_name == "lookup_order"


def test_gen_ai_execute_tool():
    record = one(span({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "call_mszuSIzqtI65i1wAUOE8w5H4",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.arguments": {"location": "Paris"},
        "gen_ai.tool.call.result": '{"conditions": "rainy"}',
    }, name="execute_tool get_weather"))
    assert record.kind == "tool" and record.semconv == "gen_ai"
    assert record.tool_name == "get_weather" and record.tool_call_id == "call_mszuSIzqtI65i1wAUOE8w5H4"
    assert json.loads(record.tool_arguments) == {"location": "Paris"}
    assert record.tool_result == '{"conditions": "rainy"}'
    assert record.raw_attributes["gen_ai.tool.type"] == "function"


@pytest.mark.parametrize("op", ["invoke_agent", "create_agent", "invoke_workflow"])
def test_gen_ai_agent_operations(op):
    record = one(span({"gen_ai.operation.name": op, "gen_ai.provider.name": "openai",
                       "gen_ai.agent.name": "Math Tutor", "gen_ai.agent.id": "asst_1",
                       "gen_ai.usage.input_tokens": 500}))
    assert record.kind == "agent" and record.operation == op
    assert (record.agent_name, record.agent_id) == ("Math Tutor", "asst_1")


def test_agent_spans_are_not_priced():
    record = one(span({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o",
                       "gen_ai.usage.input_tokens": 500}), pricer=FakePricer())
    assert record.cost is None


# --- prompt, evaluation, feedback -----------------------------------------------------------


def test_aitrail_prompt_render_span():
    record = one(span({
        "aitrail.prompt.template_id": "refund-answer",
        "aitrail.prompt.template_version": "7",
        "aitrail.prompt.template_variables": json.dumps({"question": Q, "tone": "friendly"}),
        "gen_ai.input.messages": json.dumps([{"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
                                             {"role": "user", "parts": [{"type": "text", "content": Q}]}]),
    }, name="prompt refund-answer"))
    assert record.kind == "prompt" and record.semconv == "aitrail"
    assert (record.template_id, record.template_version) == ("refund-answer", "7")
    assert record.template_variables == {"question": Q, "tone": "friendly"}
    assert record.question == Q and record.system_instructions == SYSTEM


def test_openinference_prompt_template_on_llm_span():
    record = one(span({
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "llm.prompt_template.template": "Answer {question}",
        "llm.prompt_template.version": "v3",
        "llm.prompt_template.variables": '{"question": "refunds?"}',
        "prompt.id": "pr_1",
    }))
    assert (record.template_text, record.template_version, record.template_id) == ("Answer {question}", "v3",
                                                                                  "pr_1")
    assert record.template_variables == {"question": "refunds?"}


def test_gen_ai_evaluation_event_gives_its_own_record():
    records = normalise_traces(traces(span(
        {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.id": "chatcmpl-1"},
        events=[
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": 4.0,
                                          "gen_ai.evaluation.score.label": "relevant",
                                          "gen_ai.evaluation.explanation": "on topic",
                                          "gen_ai.response.id": "chatcmpl-1"}),
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Groundedness",
                                          "gen_ai.evaluation.score.value": 0.5}),
        ],
    )), "acme", ingested_at=INGESTED)
    completion, relevance, groundedness = records
    assert completion.kind == "completion"
    assert relevance.kind == groundedness.kind == "evaluation"
    assert (relevance.evaluation_name, relevance.score, relevance.label, relevance.evaluation_explanation) == (
        "Relevance", 4.0, "relevant", "on topic")
    assert relevance.span_id == completion.span_id and relevance.semconv == "gen_ai"
    assert len({completion.record_id, relevance.record_id, groundedness.record_id}) == 3


def test_openinference_evaluator():
    record = one(span({"openinference.span.kind": "EVALUATOR", "evaluation.name": "hallucination",
                       "evaluation.score": 0.0, "evaluation.label": "factual"}))
    assert record.kind == "evaluation" and (record.evaluation_name, record.score, record.label) == (
        "hallucination", 0.0, "factual")


def test_aitrail_feedback():
    record = one(span({"aitrail.feedback.score": 1, "aitrail.feedback.label": "thumbs_up",
                       "aitrail.feedback.comment": "great", "enduser.id": "alice@example.com"}, name="feedback"))
    assert record.kind == "feedback" and record.semconv == "aitrail"
    assert (record.score, record.label) == (1.0, "thumbs_up")
    assert record.raw_attributes["aitrail.feedback.comment"] == "great"
    assert record.user_pseudonym == default_pseudonymise("alice@example.com")


def test_openinference_embedding():
    record = one(span({
        "openinference.span.kind": "EMBEDDING",
        "embedding.model_name": "text-embedding-3-small",
        "embedding.embeddings.0.embedding.text": Q,
        "embedding.embeddings.0.embedding.vector": [0.1, 0.2, 0.3],
        "llm.token_count.prompt": 9,
    }))
    assert record.kind == "completion" and record.operation == "embedding"
    assert record.request_model == "text-embedding-3-small" and record.input_tokens == 9
    assert record.question == Q
    assert record.raw_attributes["embedding.embeddings.0.embedding.vector"] == [0.1, 0.2, 0.3]


def test_openinference_llm_without_structured_messages_reads_the_bodies():
    record = one(span({
        "openinference.span.kind": "LLM",
        "llm.system": "openai",
        "input.value": json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": Q}]}),
        "input.mime_type": "application/json",
        "output.value": json.dumps({"id": "chatcmpl-7", "model": "gpt-4o-mini-2024-07-18", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": A}}]}),
        "output.mime_type": "application/json",
    }))
    assert (record.question, record.answer) == (Q, A)
    assert (record.response_id, record.response_model) == ("chatcmpl-7", "gpt-4o-mini-2024-07-18")
    assert record.finish_reasons == ["stop"]


# --- outcome, skipping, raw attributes, actor, cost -----------------------------------------


def test_error_span():
    record = one(span(
        {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
         "error.type": "openai.RateLimitError"},
        status=2, status_message="Error code: 429 - rate limit",
        events=[("exception", {"exception.type": "openai.RateLimitError", "exception.message": "429",
                               "exception.stacktrace": "Traceback …", "exception.escaped": False})],
    ))
    assert record.status == "error"
    assert record.error_type == "openai.RateLimitError"
    assert record.error_message == "Error code: 429 - rate limit"
    (exc,) = record.raw_attributes["event.exception"]
    assert exc["attributes"]["exception.stacktrace"] == "Traceback …"
    assert exc["time"].endswith("Z")


def test_error_from_exception_event_only():
    record = one(span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}, status=2,
                      events=[("exception", {"exception.type": "TimeoutError", "exception.message": "timed out"})]))
    assert (record.status, record.error_type, record.error_message) == ("error", "TimeoutError", "timed out")


def test_ok_status():
    record = one(span({"gen_ai.operation.name": "chat"}, status=1))
    assert record.status == "ok" and record.error_type is None


def test_plain_http_and_db_spans_give_no_record():
    http = span({"http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
                 "http.response.status_code": 200, "server.address": "api.openai.com"}, name="POST")
    db = span({"db.system": "postgresql", "db.statement": "select 1"}, name="SELECT")
    plain_chroma = span({"db.system": "chroma", "db.operation": "query"}, name="chroma.query")
    genai = span({"gen_ai.operation.name": "chat"}, name="chat")
    records = normalise_traces(traces(http, db, plain_chroma, genai), "acme", ingested_at=INGESTED)
    assert [r.span_name for r in records] == ["chat"]


def test_a_plain_server_span_that_says_who_asked_is_a_context_record():
    """Web frameworks put the user on the request's SERVER span only: kept as a `context`
    record (ids, times, attributes, no content) so that the records under it can inherit the
    user and session in whatever batch they arrive. Plain spans of other kinds that an SDK
    stamped with the user (a database call, an SDK wrapper span at the root) stay unrecorded."""
    trace_id = b"\x07" * 16
    server = span({"http.request.method": "POST", "url.path": "/chat", "http.response.status_code": 200,
                   "user.id": "dana@example.com", "session.id": "s-42"},
                  name="POST /chat", trace_id=trace_id, span_id=b"\x01" * 8, parent=b"\x09" * 8)
    server.kind = server.SPAN_KIND_SERVER  # its parent is remote (the browser's span)
    root = span({"enduser.id": "erin"}, name="rag.answer", span_id=b"\x02" * 8)  # a trace's root, INTERNAL
    root.kind = root.SPAN_KIND_INTERNAL
    stamped = span({"db.system": "postgresql", "db.statement": "select 1", "enduser.id": "dana@example.com"},
                   name="SELECT", trace_id=trace_id, span_id=b"\x03" * 8, parent=b"\x01" * 8)
    chat = span({"gen_ai.operation.name": "chat", "user.id": "dana@example.com"}, name="chat",
                trace_id=trace_id, span_id=b"\x04" * 8, parent=b"\x01" * 8)
    records = normalise_traces(traces(server, root, stamped, chat), "acme", ingested_at=INGESTED)
    assert [(r.span_name, r.kind) for r in records] == [("POST /chat", "context"), ("chat", "completion")]
    context = records[0]
    assert context.user_pseudonym == default_pseudonymise("dana@example.com") == records[1].user_pseudonym
    assert (context.session_id, context.semconv, context.operation) == ("s-42", "otel", None)
    assert (context.trace_id, context.span_id, context.parent_span_id) == ("07" * 16, "01" * 8, "09" * 8)
    assert context.raw_attributes["http.request.method"] == "POST"
    assert context.raw_attributes["url.path"] == "/chat"
    assert "user.id" not in context.raw_attributes and "dana@example.com" not in str(canonical_json(context))
    assert context.question is None and context.answer is None and context.cost is None
    assert len({r.record_id for r in records}) == 2


def test_unmapped_attributes_resource_scope_links_and_events_are_kept():
    sp = span(
        {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "server.address": "api.openai.com",
         "server.port": 443, "openai.response.service_tier": "default", "custom.flags": [1, 2],
         "custom.map": {"a": 1, "b": [True, None]}, "custom.bytes": b"\x00\x01",
         "gen_ai.usage.input_tokens": 42, "llm.token_count.prompt": 40},
        events=[("gen_ai.content.chunk", {"i": 1}), ("my.event", {"x": "y"}), ("my.event", {"x": "z"})],
    )
    link = sp.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    link.attributes.add(key="link.kind", value={"string_value": "retry"})
    record = one(sp, traces={"resource": {"service.name": "bot", "deployment.environment": "staging",
                                          "host.name": "web-1"}})
    raw = record.raw_attributes
    assert (record.service, record.environment) == ("bot", "staging")
    assert raw["server.address"] == "api.openai.com" and raw["server.port"] == 443
    assert raw["openai.response.service_tier"] == "default"
    assert raw["custom.flags"] == [1, 2]
    assert raw["custom.map"] == {"a": 1, "b": [True, None]}
    assert raw["custom.bytes"] == "AAE="
    assert raw["resource.host.name"] == "web-1"
    assert "resource.service.name" not in raw and "resource.deployment.environment" not in raw
    assert raw["scope.name"] == "tests" and raw["scope.version"] == "1.0"
    assert raw["links"] == [{"trace_id": "01" * 16, "span_id": "02" * 8, "attributes": {"link.kind": "retry"}}]
    assert [e["attributes"]["x"] for e in raw["event.my.event"]] == ["y", "z"]
    assert raw["event.gen_ai.content.chunk"][0]["attributes"] == {"i": 1}
    assert record.input_tokens == 42 and raw["llm.token_count.prompt"] == 40  # disagreeing alias kept
    assert "gen_ai.usage.input_tokens" not in raw and "gen_ai.operation.name" not in raw


RAW_USER = "alice.raw-id@example.com"
RAW_IP = "203.0.113.77"


def test_raw_user_id_and_ip_are_never_in_the_record():
    record = one(span({
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o-mini",
        "user.id": RAW_USER,
        "enduser.id": RAW_USER,
        "session.id": "sess-1",
        "client.address": RAW_IP,
        "llm.invocation_parameters": json.dumps({"model": "gpt-4o-mini", "temperature": 0.2, "user": RAW_USER}),
        "input.value": json.dumps({"model": "gpt-4o-mini", "user": RAW_USER,
                                   "messages": [{"role": "user", "content": Q}]}),
        "input.mime_type": "application/json",
        "metadata": json.dumps({"requested_by": RAW_USER}),
        "tag.tags": [f"user:{RAW_USER}"],
        "traceloop.association.properties.user_id": RAW_USER,
    }))
    data = canonical_json(record)
    assert RAW_USER.encode() not in data
    assert RAW_IP.encode() not in data
    assert record.user_pseudonym == default_pseudonymise(RAW_USER)
    assert record.client_ip_hash == default_pseudonymise(RAW_IP)
    assert record.request_params == {"temperature": 0.2}
    assert record.question == Q
    assert default_pseudonymise(RAW_USER) in record.raw_attributes["input.value"]


@pytest.mark.parametrize("key", ["enduser.id", "user.id", "gen_ai.user", "llm.user",
                                 "traceloop.association.properties.user_id", "traceloop.association.properties.userId"])
def test_each_user_id_key_is_pseudonymised(key):
    record = one(span({"gen_ai.operation.name": "chat", key: RAW_USER}))
    assert record.user_pseudonym == default_pseudonymise(RAW_USER)
    assert RAW_USER.encode() not in canonical_json(record)


def test_keyed_pseudonymiser_and_roles():
    record = one(span({"gen_ai.operation.name": "chat", "enduser.id": "bob", "aitrail.user.roles": ["agent", "eu"]}),
                 pseudonymise=lambda raw: "p_" + raw[::-1])
    assert record.user_pseudonym == "p_bob" and record.user_roles == ["agent", "eu"]


@dataclass
class FakeCost:
    amount: Decimal | None
    currency: str | None
    price_table_version: str
    priced_by: str | None
    reason: str | None


class FakePricer:
    def __init__(self):
        self.calls = []

    def __call__(self, provider, model, input_tokens, output_tokens, cached_input_tokens, at):
        self.calls.append((provider, model, input_tokens, output_tokens, cached_input_tokens, at))
        return FakeCost(Decimal("0.0000165"), "USD", "2026-11-01", f"{provider}/{model}", None)


def test_cost_from_the_pricer():
    pricer = FakePricer()
    record = one(span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                       "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                       "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 17,
                       "gen_ai.usage.cache_read.input_tokens": 10}), pricer=pricer)
    ((provider, model, i, o, c, at),) = pricer.calls
    assert (provider, model, i, o, c) == ("openai", "gpt-4o-mini-2024-07-18", 42, 17, 10)
    assert isinstance(at, datetime) and at.tzinfo is not None and int(at.timestamp()) == T0 // 10**9
    assert record.cost.amount == Decimal("0.0000165") and record.cost.currency == "USD"
    assert record.cost.priced_by == "openai/gpt-4o-mini-2024-07-18"
    assert b'"amount":"0.0000165"' in canonical_json(record)


def test_no_pricer_no_cost_and_a_failing_pricer_does_not_fail_the_span():
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    assert one(span(attrs)).cost is None

    def broken(*args, **kwargs):
        raise RuntimeError("price table missing")

    record = one(span(attrs), pricer=broken)
    assert record.cost.amount is None and "price table missing" in record.cost.reason


def test_real_compute_cost_as_pricer():
    from aitrail.collector.cost import compute_cost

    record = one(span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                       "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.usage.input_tokens": 42,
                       "gen_ai.usage.output_tokens": 17}), pricer=compute_cost)
    assert record.cost is not None and record.cost.price_table_version
    assert (record.cost.amount is None) == (record.cost.reason is not None)


def test_record_ids_are_deterministic_and_per_tenant():
    sp = span({"gen_ai.operation.name": "chat"})
    a = normalise_traces(traces(sp), "acme", ingested_at=INGESTED)[0]
    b = normalise_traces(traces(sp), "acme", ingested_at="2030-01-01T00:00:00.000000000Z")[0]
    c = normalise_traces(traces(sp), "other", ingested_at=INGESTED)[0]
    assert a.record_id == b.record_id != c.record_id


def test_openinference_contents_and_tool_calls():
    record = one(span({
        "openinference.span.kind": "LLM",
        "llm.provider": "openai",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.contents.0.message_content.type": "text",
        "llm.input_messages.0.message.contents.0.message_content.text": "What is in this photo?",
        "llm.input_messages.0.message.contents.1.message_content.type": "image",
        "llm.input_messages.0.message.contents.1.message_content.image.image.url": "https://x/y.png",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_9",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "describe",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"detail": "high"}',
        "llm.output_messages.0.message.tool_calls.0.tool_call.reasoning_signature": "sig",
        "llm.tools.0.tool.json_schema": '{"type": "function"}',
    }))
    (user,) = record.input_messages
    assert user.content == "What is in this photo?"
    assert user.parts[1] == {"type": "image", "image.image.url": "https://x/y.png"}
    (out,) = record.output_messages
    assert out.tool_calls == [{"id": "call_9", "name": "describe", "arguments": '{"detail": "high"}'}]
    raw = record.raw_attributes
    assert raw["llm.output_messages.0.message.tool_calls.0.tool_call.reasoning_signature"] == "sig"
    assert raw["llm.tools.0.tool.json_schema"] == '{"type": "function"}'
    assert record.provider == "openai" and record.question == "What is in this photo?" and record.answer is None
