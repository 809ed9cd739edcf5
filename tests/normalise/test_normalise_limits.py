"""What the stores cannot hold: times beyond `date_nanos` (the span is refused, to be
dead-lettered), strings too long for a `flat_object` term (shortened, the whole value's hash
and length kept), more documents than a record holds (issue 9). The store tests write such
records to both backends (`store` fixture) and find them again."""

from __future__ import annotations

import hashlib
import json
import uuid

import orjson
import pytest
from aitrail.collector.genai_content import to_document
from aitrail.collector.limits import FLAT_BUDGET, MAX_DOCUMENTS, MAX_KEY_PATH, fit_flat, fit_record
from aitrail.bus.base import BusMessage, Signal
from aitrail.collector.normalise import MAX_TIME_NS, SpansRefused, normalise_logs, normalise_traces
from aitrail.collector.pipeline import Pipeline
from aitrail.errors import InvalidInput
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord
from aitrail.schemas.timefmt import ns_to_iso
from aitrail.store.base import AnswerQuery
from normalise_builders import INGESTED, T0, log_record, logs, new_ids, span, traces

YEAR_2300 = 10_413_792_000 * 10**9  # 2300-01-01T00:00:00Z
BIG = 40 * 1024
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}


def _one(*spans):
    records = normalise_traces(traces(*spans), "acme", ingested_at=INGESTED)
    assert len(records) == 1
    return records[0]


def _whole(value: str) -> dict:
    data = value.encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "utf8_length": len(data)}


# --- times ------------------------------------------------------------------------------
# Refused: the span goes to the dead letters with the reason, the others of its request are
# stored (the collector's side of this contract is in the pipeline test below).

LATE = "2300-01-01T00:00:00.000000000Z"


def _refused(call):
    with pytest.raises(SpansRefused) as caught:
        call()
    return caught.value


def test_start_after_2262_is_refused_and_the_other_spans_kept():
    trace_id, late_id = new_ids()
    _, ok_id = new_ids()
    refused = _refused(lambda: normalise_traces(traces(
        span(CHAT, trace_id=trace_id, span_id=ok_id, start=T0),
        span(CHAT, name="chat gpt-4o-mini", trace_id=trace_id, span_id=late_id, start=YEAR_2300, events=[
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "x", "gen_ai.evaluation.score.value": 1.0})]),
    ), "acme", ingested_at=INGESTED))
    assert isinstance(refused, InvalidInput) and not refused.retriable
    assert refused.refused == [
        f"span {trace_id.hex()}/{late_id.hex()} 'chat gpt-4o-mini': start time {LATE} is after "
        "2262-04-11T23:47:16.854775807Z, the last instant the store holds"]
    assert [r.span_id for r in refused.records] == [ok_id.hex()]  # the late span's evaluation went with it
    assert refused.message == "1 refused: " + refused.refused[0] + "; the request's 1 other records are stored"


def test_an_end_time_out_of_range_is_refused():
    refused = _refused(lambda: normalise_traces(traces(span(CHAT, start=T0, duration_ns=YEAR_2300)), "acme",
                                                ingested_at=INGESTED))
    (reason,) = refused.refused
    assert f"end time {ns_to_iso(T0 + YEAR_2300)} is after" in reason and refused.records == []
    assert refused.message == "1 refused: " + reason


def test_an_evaluation_event_out_of_range_refuses_its_span():
    sp = span(CHAT, events=[("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "x"})])
    sp.events[0].time_unix_nano = YEAR_2300
    (reason,) = _refused(lambda: normalise_traces(traces(sp), "acme", ingested_at=INGESTED)).refused
    assert reason.startswith("gen_ai.evaluation.result event of span ") and f"time {LATE} is after" in reason


def test_the_last_instant_date_nanos_holds_is_kept():
    record = _one(span(CHAT, start=MAX_TIME_NS - 10, duration_ns=10))
    assert record.end_time == "2262-04-11T23:47:16.854775807Z" == ns_to_iso(MAX_TIME_NS)


def test_log_records_after_2262_are_refused_the_others_kept():
    trace_id, span_id = new_ids()
    _, other_span = new_ids()
    refused = _refused(lambda: normalise_logs(logs(
        log_record("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "x", "gen_ai.evaluation.score.value": 1.0},
                   trace_id=trace_id, span_id=span_id, time=YEAR_2300),
        log_record("gen_ai.user.message", {}, body={"content": "refunds?"}, trace_id=trace_id, span_id=span_id,
                   time=YEAR_2300),
        log_record("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "x", "gen_ai.evaluation.score.value": 0.5},
                   trace_id=trace_id, span_id=other_span, time=T0),
    ), "acme", ingested_at=INGESTED))
    ids = f"{trace_id.hex()}/{span_id.hex()}"
    assert refused.refused == [
        f"gen_ai.evaluation.result log record of span {ids}: time {LATE} is after 2262-04-11T23:47:16.854775807Z, "
        "the last instant the store holds",
        f"GenAI log records of span {ids}: time {LATE} is after 2262-04-11T23:47:16.854775807Z, "
        "the last instant the store holds",
    ]
    assert [r.score for r in refused.records] == [0.5]


def test_many_refusals_name_a_few_and_count_the_rest():
    refused = _refused(lambda: normalise_traces(traces(*(span(CHAT, start=YEAR_2300) for _ in range(5))), "acme",
                                                ingested_at=INGESTED))
    assert len(refused.refused) == 5 and refused.message.startswith("5 refused: ")
    assert refused.message.endswith("; and 2 more") and refused.message.count(" is after ") == 3


def test_the_collector_dead_letters_the_refused_and_stores_the_rest():
    """Pipeline contract: a message with refused spans is dead-lettered with the reason, its
    other spans are stored, and the other messages of the batch are untouched."""
    late_trace, late_span = new_ids()
    ok_trace, ok_span = new_ids()
    mixed = traces(span(CHAT, trace_id=late_trace, span_id=late_span, start=YEAR_2300),
                   span(CHAT, trace_id=late_trace, parent=late_span, start=T0))
    fine = traces(span(CHAT, trace_id=ok_trace, span_id=ok_span))
    messages = [BusMessage(Signal.TRACES, m.SerializeToString(), tenant="acme") for m in (mixed, fine)]
    result = Pipeline(default_tenant="acme", pricer=None, pseudonymise=lambda u: "u_" + u).normalise(messages)
    ((message, reason),) = result.dead
    assert message is messages[0]
    assert reason.startswith(f"1 refused: span {late_trace.hex()}/{late_span.hex()} 'span': start time {LATE}")
    assert reason.endswith("; the request's 1 other records are stored")
    assert sorted((r.trace_id, r.parent_span_id) for r in result.records) == sorted(
        [(late_trace.hex(), late_span.hex()), (ok_trace.hex(), None)])


# --- long values ------------------------------------------------------------------------


def test_raw_attribute_over_the_limit_is_truncated_with_hash_and_length():
    value = "é" * BIG  # 80 KB of UTF-8
    record = _one(span({**CHAT, "app.request_body": value, "app.small": "kept"}))
    kept = record.raw_attributes["app.request_body"]
    assert kept == {"truncated": kept["truncated"], **_whole(value)}
    assert value.startswith(kept["truncated"]) and len(kept["truncated"]) > 15_000
    assert len(b"raw_attributes.app.request_body.truncated=" + kept["truncated"].encode()) <= FLAT_BUDGET
    assert record.raw_attributes["app.small"] == "kept"


def test_a_value_that_fits_is_untouched():
    value = "x" * (FLAT_BUDGET - len("raw_attributes.k") - 1)
    record = _one(span({**CHAT, "k": value}))
    assert record.raw_attributes["k"] == value


def test_long_strings_inside_structured_values_lists_and_messages():
    long = "a" * BIG
    record = _one(span({
        **CHAT,
        "app.nested": {"inner": {"deep": long, "short": "s"}, "list": ["ok", long]},
        "gen_ai.input.messages": [{"role": "user", "parts": [
            {"type": "text", "content": "What is on this image?"},
            {"type": "blob", "modality": "image", "content": long}]}],
        "gen_ai.output.messages": [{"role": "assistant", "parts": [
            {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"code": long}}]}],
        "llm.prompt_template.variables": json.dumps({"context": long}),
    }))
    nested = record.raw_attributes["app.nested"]
    assert nested["inner"]["deep"]["utf8_length"] == BIG and nested["inner"]["short"] == "s"
    assert nested["list"][0] == "ok" and nested["list"][1]["sha256"] == _whole(long)["sha256"]
    (user,) = record.input_messages
    assert user.content == "What is on this image?" and user.parts[1]["content"]["utf8_length"] == BIG
    assert record.output_messages[0].tool_calls[0]["arguments"]["code"]["utf8_length"] == BIG
    assert record.template_variables["context"]["utf8_length"] == BIG
    canonical_json(record)


def test_free_text_is_never_shortened():
    long = "refund " * 8000
    record = _one(span({**CHAT, "gen_ai.input.messages": json.dumps([{"role": "user", "content": long}])}))
    assert record.question == long and record.input_messages[0].content == long


def test_a_key_too_long_is_replaced_keeping_its_hash_and_length():
    key = "k" * (MAX_KEY_PATH + 10)
    record = _one(span({**CHAT, key: "v"}))
    (name,) = [k for k in record.raw_attributes if k.startswith("aitrail.long_key.")]
    assert name == "aitrail.long_key." + hashlib.sha256(key.encode()).hexdigest()[:32]
    entry = record.raw_attributes[name]
    assert entry["value"] == "v" and entry["key"]["utf8_length"] == len(key) and key.startswith(entry["key"]["truncated"])


def test_fit_flat_returns_the_same_object_when_everything_fits():
    obj = {"a": "b", "n": 1, "v": [0.1] * 2000, "d": {"x": ["y"]}}
    assert fit_flat(obj, 14) is obj
    rec = {"raw_attributes": obj, "input_messages": [{"role": "user", "parts": [{"type": "x"}]}]}
    fit_record(rec)
    assert rec["raw_attributes"] is obj


def test_fitting_never_changes_the_input():
    shared = {"deep": "z" * BIG}
    obj = {"a": shared}
    fitted = fit_flat(obj, 14)
    assert fitted is not obj and obj["a"] is shared and shared["deep"] == "z" * BIG


# --- on both stores ---------------------------------------------------------------------


def test_records_beyond_the_limits_are_stored_and_found(store):
    """The real node rejected such records before ("immense term in field raw_attributes._value");
    the last instant `date_nanos` holds is stored as sent."""
    long = "x" * BIG
    trace_id, span_id = new_ids()
    records = normalise_traces(traces(
        span({**CHAT, "gen_ai.input.messages": json.dumps([{"role": "user", "content": "refund in 2300?"}]),
              "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "yes"}])},
             trace_id=trace_id, span_id=span_id, start=MAX_TIME_NS - 250_000_000),
        span({
            **CHAT, "app.body": long, "app.nested": {"deep": long}, "user.profile": "é" * BIG,
            long[:100]: "key of 100", "k" * (MAX_KEY_PATH + 1): "very long key",
            "gen_ai.input.messages": [{"role": "user", "parts": [
                {"type": "text", "content": "what is on the receipt?"},
                {"type": "blob", "modality": "image", "content": long}]}],
            "gen_ai.output.messages": [{"role": "assistant", "parts": [
                {"type": "text", "content": "a refund " + long},
                {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"code": long}}]}],
            "llm.prompt_template.variables": json.dumps({"context": long}),
            "gen_ai.retrieval.documents": json.dumps([{"id": "d1", "content": long, "metadata": {"page": long}}]),
        }, trace_id=trace_id, parent=span_id, start=T0),
    ), "acme", ingested_at=INGESTED)
    assert len(records) == 2
    assert store.write(records).written == 2
    for record in records:
        assert store.get("acme", record.record_id) == record
    assert sorted(r.record_id for r in store.trace("acme", trace_id.hex())) == sorted(r.record_id for r in records)
    late, big = records
    assert late.end_time == "2262-04-11T23:47:16.854775807Z" and big.start_time == "2026-11-25T16:30:50.000000000Z"
    found = store.search_answers(AnswerQuery(tenant="acme", text="receipt"))
    assert [a.trace_id for a in found.answers] == [trace_id.hex()]


@pytest.mark.parametrize("field", ["question", "answer"])
def test_long_free_text_is_stored_and_searchable(store, field):
    trace_id, _ = new_ids()
    long = "x" * BIG + " refund"  # one 40 KB token, then a word
    messages = {"question": ("gen_ai.input.messages", "user"), "answer": ("gen_ai.output.messages", "assistant")}
    key, role = messages[field]
    (record,) = normalise_traces(traces(span({**CHAT, key: json.dumps([{"role": role, "content": long}])},
                                             trace_id=trace_id)), "acme", ingested_at=INGESTED)
    assert getattr(record, field) == long
    store.write([record])
    assert store.get("acme", record.record_id) == record
    assert [a.trace_id for a in store.search_answers(AnswerQuery(tenant="acme", text="refund")).answers] == [
        trace_id.hex()]


# --- the limits themselves, on the real node --------------------------------------------


@pytest.fixture
def records_index(services):
    """An index with the records mapping (schemas/opensearch-template.v1.json), removed after."""
    from aitrail.schemas.generate import index_template
    from opensearchpy import OpenSearch

    client = OpenSearch([services.opensearch])
    name = f"t{uuid.uuid4().hex[:8]}-limits"
    template = index_template()["template"]
    client.indices.create(index=name, body={"mappings": template["mappings"]})
    yield client, name
    client.indices.delete(index=name, params={"ignore": 404})
    client.close()


def _index(client, index: str, record) -> tuple[int, str]:
    response = client.index(index=index, body=canonical_json(record), params={"ignore": 400})
    if "error" in response:
        return response["status"], response["error"]["reason"]
    return 201, ""


def test_opensearch_refuses_what_the_normaliser_shortens(records_index):
    """Pins the limits on the node itself: a term beyond 32,766 bytes and a time past
    `date_nanos` are refused as sent; the normaliser's output for such spans is taken, or the
    span refused."""
    client, index = records_index
    base = {"record_id": "0" * 32, "kind": "completion", "tenant": "acme"}
    too_long = AuditRecord.model_validate({**base, "raw_attributes": {"app.body": "x" * 32_766}})
    status, reason = _index(client, index, too_long)
    assert status == 400 and ("immense term" in reason or "too large" in reason)
    late = AuditRecord.model_validate({**base, "start_time": ns_to_iso(MAX_TIME_NS + 1)})
    status, reason = _index(client, index, late)
    assert status == 400 and "date_nanos" in reason
    at_budget = AuditRecord.model_validate(
        {**base, "raw_attributes": {"k": "x" * (FLAT_BUDGET - len("raw_attributes.k") - 1)}})
    assert _index(client, index, at_budget) == (201, "")
    last = AuditRecord.model_validate({**base, "record_id": "1" * 32, "start_time": ns_to_iso(MAX_TIME_NS)})
    assert _index(client, index, last) == (201, "")
    with pytest.raises(SpansRefused):
        normalise_traces(traces(span(CHAT, start=MAX_TIME_NS + 1)), "acme", ingested_at=INGESTED)
    for record in normalise_traces(traces(
        span({**CHAT, "app.body": "x" * 32_766}, start=MAX_TIME_NS - 250_000_000),
        span({**CHAT, "output_messages_like": {"deep": {"deeper": "é" * 20_000}}}),
    ), "acme", ingested_at=INGESTED):
        assert _index(client, index, record) == (201, "")


def _many_documents(n: int):
    docs = [{"id": f"d{i}", "content": f"chunk {i}"} for i in range(n)]
    return span({"gen_ai.operation.name": "retrieval", "gen_ai.retrieval.query.text": "refunds",
                 "gen_ai.retrieval.documents": json.dumps(docs)})


def test_documents_beyond_what_a_record_holds_are_counted_and_hashed():
    record = _one(_many_documents(MAX_DOCUMENTS + 2))
    assert len(record.documents) == MAX_DOCUMENTS and record.documents[-1].doc_id == f"d{MAX_DOCUMENTS - 1}"
    rest = [to_document({"id": f"d{i}", "content": f"chunk {i}"}, i) for i in (MAX_DOCUMENTS, MAX_DOCUMENTS + 1)]
    note = record.raw_attributes["aitrail.documents_truncated"]
    assert note == {"kept": MAX_DOCUMENTS, "count": MAX_DOCUMENTS + 2,
                    "sha256": hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest()}
    assert "aitrail.documents_truncated" not in _one(_many_documents(MAX_DOCUMENTS)).raw_attributes


def test_a_retrieval_of_more_documents_than_a_record_holds_is_stored(store):
    (record,) = normalise_traces(traces(_many_documents(MAX_DOCUMENTS + 1)), "acme", ingested_at=INGESTED)
    assert store.write([record]).written == 1
    stored = store.get("acme", record.record_id)
    assert len(stored.documents) == MAX_DOCUMENTS and stored.raw_attributes["aitrail.documents_truncated"]["count"] == (
        MAX_DOCUMENTS + 1)
