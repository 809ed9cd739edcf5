"""Whatever a sender puts under the keys we map, normalising never raises and the record
serialises: bad input must not dead-letter a whole export for one odd attribute."""

from __future__ import annotations

import json

from aitrail.collector.normalise import (
    _SIMPLE,
    _SPECIAL,
    normalise_logs,
    normalise_traces,
)
from aitrail.schemas.canonical import canonical_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from normalise_builders import INGESTED, log_record, logs, new_ids, span, traces

KEYS = sorted(set(_SIMPLE) | set(_SPECIAL) | {
    "gen_ai.prompt.0.content", "gen_ai.prompt.0.role", "gen_ai.completion.0.tool_calls.0.name",
    "llm.input_messages.0.message.contents.0.message_content.text", "llm.output_messages.1.message.role",
    "retrieval.documents.0.document.metadata", "retrieval.documents.x.document.id", "reranker.output_documents.0.document.score",
    "embedding.embeddings.0.embedding.vector", "gen_ai.prompt.².content", "llm.input_messages.00.message.role",
    "traceloop.association.properties.user_id", "enduser.id",
    "client.address", "aitrail.feedback.score", "gen_ai.request.temperature", "llm.prompts",
})

scalars = st.one_of(st.none(), st.text(max_size=20), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["role", "content", "parts", "type", "id", "score", "metadata", "message", "tool_calls", "text"]),
        inner, max_size=4)), max_leaves=10)
json_text = values.map(lambda v: json.dumps(v))
attr_values = st.one_of(values, json_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), attr_values, min_size=1, max_size=8),
       st.lists(st.tuples(st.sampled_from(["gen_ai.user.message", "gen_ai.choice", "exception",
                                           "gen_ai.client.inference.operation.details", "db.query.result",
                                           "gen_ai.evaluation.result"]),
                          st.dictionaries(st.sampled_from(KEYS + ["content", "message", "gen_ai.event.content"]),
                                          attr_values, max_size=3)), max_size=3))
def test_any_attribute_values_normalise(attrs, events):
    attrs = {k: v for k, v in attrs.items() if v is not None}
    records = normalise_traces(traces(span(attrs, events=events)), "acme", ingested_at=INGESTED)
    for record in records:
        canonical_json(record)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["gen_ai.client.inference.operation.details", "gen_ai.user.message", "gen_ai.choice",
                        "gen_ai.evaluation.result", "gen_ai.unknown"]),
       st.dictionaries(st.sampled_from(KEYS), attr_values, max_size=6), values)
def test_any_log_event_normalises(name, attrs, body):
    trace_id, span_id = new_ids()
    attrs = {k: v for k, v in attrs.items() if v is not None}
    for record in normalise_logs(logs(log_record(name, attrs, body=body, trace_id=trace_id, span_id=span_id)),
                                 "acme", ingested_at=INGESTED):
        canonical_json(record)
