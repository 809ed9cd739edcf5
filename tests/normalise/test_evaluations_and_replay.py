"""Evaluation records get ids of their own, and replay shows every record of a trace:
evaluations of one span apart, parent cycles included (issue 9)."""

from __future__ import annotations

from aitrail.collector.normalise import normalise_logs, normalise_traces
from aitrail.query_api.replay import causal_order, merge_fragments
from aitrail.schemas.record import AuditRecord, record_id_for
from normalise_builders import INGESTED, T0, log_record, logs, new_ids, span, traces

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}


def _evaluation(trace_id: bytes, span_id: bytes, name: str | None, score: float, time: int):
    attrs = {"gen_ai.evaluation.score.value": score}
    if name is not None:
        attrs["gen_ai.evaluation.name"] = name
    return log_record("gen_ai.evaluation.result", attrs, trace_id=trace_id, span_id=span_id, time=time)


def _logs(*records):
    return normalise_logs(logs(*records), "acme", ingested_at=INGESTED)


# --- ids --------------------------------------------------------------------------------


def test_two_evaluation_log_records_for_one_span_get_two_ids():
    trace_id, span_id = new_ids()
    one, two = _logs(_evaluation(trace_id, span_id, "faithfulness", 0.9, T0),
                     _evaluation(trace_id, span_id, "faithfulness", 0.2, T0 + 1_000_000))
    assert one.record_id != two.record_id and (one.score, two.score) == (0.9, 0.2)
    assert one.record_id == record_id_for("acme", trace_id.hex(), span_id.hex(), f"evaluation:faithfulness@{T0}", "log")


def test_evaluations_sent_in_separate_requests_stay_apart():
    trace_id, span_id = new_ids()
    (first,) = _logs(_evaluation(trace_id, span_id, "faithfulness", 0.9, T0))
    (second,) = _logs(_evaluation(trace_id, span_id, "faithfulness", 0.2, T0 + 5))
    (nameless,) = _logs(_evaluation(trace_id, span_id, None, 0.5, T0 + 9))
    assert len({first.record_id, second.record_id, nameless.record_id}) == 3


def test_same_name_and_time_in_one_request_are_told_apart_by_position():
    trace_id, span_id = new_ids()
    records = _logs(_evaluation(trace_id, span_id, "relevance", 0.9, T0), _evaluation(trace_id, span_id, "relevance", 0.1, T0))
    assert len({r.record_id for r in records}) == 2


def test_a_replayed_request_gives_the_same_ids():
    trace_id, span_id = new_ids()
    batch = [_evaluation(trace_id, span_id, "relevance", 0.9, T0), _evaluation(trace_id, span_id, "relevance", 0.1, T0),
             _evaluation(trace_id, span_id, "faithfulness", 0.2, T0)]
    assert [r.record_id for r in _logs(*batch)] == [r.record_id for r in _logs(*batch)]


def test_evaluations_without_a_time_are_told_apart_by_what_they_say():
    trace_id, span_id = new_ids()

    def timeless(score):
        lr = _evaluation(trace_id, span_id, "faithfulness", score, 0)
        lr.observed_time_unix_nano = 0
        return lr

    (first,) = _logs(timeless(0.9))
    (second,) = _logs(timeless(0.2))
    (again,) = _logs(timeless(0.2))
    assert first.record_id != second.record_id and second.record_id == again.record_id
    assert first.start_time is None and (first.score, second.score) == (0.9, 0.2)


def test_evaluation_span_events_keep_their_ids():
    trace_id, span_id = new_ids()
    sp = span(CHAT, trace_id=trace_id, span_id=span_id, events=[
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9}),
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.3}),
    ])
    _, first, second = normalise_traces(traces(sp), "acme", ingested_at=INGESTED)
    assert first.record_id == record_id_for("acme", trace_id.hex(), span_id.hex(), "evaluation:relevance", "span")
    assert second.record_id == record_id_for("acme", trace_id.hex(), span_id.hex(), "evaluation:relevance:1", "span")


# --- replay -----------------------------------------------------------------------------


def test_replay_shows_each_evaluation_of_a_span():
    trace_id, span_id = new_ids()
    records = normalise_traces(traces(span(CHAT, trace_id=trace_id, span_id=span_id, events=[
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9}),
    ])), "acme", ingested_at=INGESTED)
    records += _logs(_evaluation(trace_id, span_id, "faithfulness", 0.2, T0 + 10_000),
                     _evaluation(trace_id, span_id, "faithfulness", 0.7, T0 + 20_000))
    views = merge_fragments(records)
    assert len(views) == 4 and sorted(rid for v in views for rid in v["fragments"]) == sorted(
        r.record_id for r in records)
    assert views[0]["kind"] == "completion"  # the span first, then what was said about it
    assert [(v.get("evaluation_name"), v["score"]) for v in views[1:]] == [
        ("relevance", 0.9), ("faithfulness", 0.2), ("faithfulness", 0.7)]


def test_log_content_still_merges_into_its_span():
    trace_id, span_id = new_ids()
    (span_record,) = normalise_traces(traces(span(CHAT, trace_id=trace_id, span_id=span_id)), "acme",
                                      ingested_at=INGESTED)
    (log_record_,) = _logs(log_record("gen_ai.client.inference.operation.details", {
        "gen_ai.operation.name": "chat", "gen_ai.output.messages": [{"role": "assistant", "content": "30 days."}],
    }, trace_id=trace_id, span_id=span_id))
    (view,) = merge_fragments([log_record_, span_record])
    assert view["fragments"] == [span_record.record_id, log_record_.record_id] and view["answer"] == "30 days."


def _record(span_id: str, parent: str | None, start: int, kind: str = "agent", **extra) -> AuditRecord:
    return AuditRecord.model_validate({
        "record_id": record_id_for("acme", "t" * 32, span_id, kind), "kind": kind, "tenant": "acme",
        "trace_id": "t" * 32, "span_id": span_id, "parent_span_id": parent,
        "start_time": f"2026-11-25T16:30:{start:02d}.000000000Z", **extra,
    })


def test_a_parent_cycle_still_shows_every_record():
    a, b = _record("a" * 16, "b" * 16, 1), _record("b" * 16, "a" * 16, 2)
    child = _record("c" * 16, "b" * 16, 3, kind="completion")
    views = merge_fragments([child, b, a])
    assert [v["span_id"] for v in views] == ["a" * 16, "b" * 16, "c" * 16]  # the earliest starts the cycle


def test_a_cycle_beside_an_ordinary_tree():
    root, leaf = _record("1" * 16, None, 5), _record("2" * 16, "1" * 16, 6)
    self_parent = _record("3" * 16, "3" * 16, 0)
    x, y = _record("4" * 16, "5" * 16, 8), _record("5" * 16, "4" * 16, 7)
    views = merge_fragments([x, leaf, y, root, self_parent])
    assert [v["span_id"][0] for v in views] == ["3", "1", "2", "5", "4"]


def test_causal_order_keeps_two_span_records_of_one_span():
    first = _record("a" * 16, None, 1, kind="completion", answer="one")
    second = _record("a" * 16, None, 2, kind="completion", answer="two").model_copy(update={"record_id": "f" * 32})
    views = merge_fragments([first, second])
    assert [v["answer"] for v in views] == ["one", "two"]


def test_causal_order_of_plain_views():
    views = [{"record_id": "2", "span_id": "s2", "parent_span_id": "s1", "start_time": "b"},
             {"record_id": "1", "span_id": "s1", "start_time": "a"},
             {"record_id": "3"}]
    assert [v["record_id"] for v in causal_order(views)] == ["3", "1", "2"]


def test_every_evaluation_of_a_span_is_stored_and_replayed(store):
    """The bug as seen: the second evaluation log record of a span was a duplicate of the first
    and dropped; redelivering the same requests writes nothing new."""
    trace_id, span_id = new_ids()
    records = normalise_traces(traces(span(CHAT, trace_id=trace_id, span_id=span_id)), "acme", ingested_at=INGESTED)
    first = _logs(_evaluation(trace_id, span_id, "faithfulness", 0.9, T0 + 10_000))
    second = _logs(_evaluation(trace_id, span_id, "faithfulness", 0.2, T0 + 20_000))
    assert store.write(records + first + second).written == 3
    again = store.write(_logs(_evaluation(trace_id, span_id, "faithfulness", 0.2, T0 + 20_000)))
    assert (again.written, again.duplicates) == (0, 1)
    views = merge_fragments(store.trace("acme", trace_id.hex()))
    assert [(v["kind"], v.get("score")) for v in views] == [("completion", None), ("evaluation", 0.9),
                                                            ("evaluation", 0.2)]
