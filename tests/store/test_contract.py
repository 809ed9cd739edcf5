"""The store contract: every backend passes these unchanged (fixture `store` in conftest)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aitrail.errors import BadRequest
from aitrail.schemas.canonical import canonical_json
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import LogSequencer, new_log
from aitrail.store.base import AnswerQuery, CostQuery, Outcome, RecordsRejected, Role
from tests.factories import completion, iso, retrieval


def test_write_is_idempotent_and_append_only(store):
    record = completion(trace=1)
    assert store.write([record]).written == 1
    altered = record.model_copy(update={"answer": "Refunds are never possible."})
    result = store.write([record, altered])
    assert (result.written, result.duplicates) == (0, 1)
    assert list(result.conflicts) == [record.record_id]  # same id, other content: never a silent success
    assert "answer differ" in result.conflicts[record.record_id]
    assert canonical_json(store.get("acme", record.record_id)) == canonical_json(record)


def test_a_resent_record_is_a_duplicate_whatever_its_ingestion(store):
    record = completion(trace=1, ingested_at="2026-11-24T07:30:01.000000000Z")
    assert store.write([record]).outcome(record.record_id) == Outcome.STORED
    resent = record.model_copy(update={
        "ingested_at": "2026-11-24T08:00:00.000000000Z", "kafka": {"topic": "t", "partition": 1, "offset": 9},
        "collector_version": "9.9",
    })
    result = store.write([resent])
    assert (result.written, result.duplicates, result.conflicts, result.rejected) == (0, 1, {}, {})
    assert result.outcome(record.record_id) == Outcome.DUPLICATE
    assert store.get("acme", record.record_id) == record  # not stored twice, the first copy kept


def test_a_record_the_store_refuses_is_rejected_and_the_others_stored(store):
    """A completion claiming 2^63 input tokens: beyond SQLite's INTEGER and OpenSearch's long."""
    first, bad, last = completion(trace=1), completion(trace=2, input_tokens=2**63), completion(trace=3)
    result = store.write([first, bad, last])
    assert (result.written, result.duplicates) == (2, 0)
    assert list(result.rejected) == [bad.record_id] and result.rejected[bad.record_id]
    assert [result.outcome(r.record_id) for r in (first, bad, last)] == [Outcome.STORED, Outcome.REJECTED, Outcome.STORED]
    assert store.get("acme", bad.record_id) is None
    assert store.get("acme", first.record_id) == first and store.get("acme", last.record_id) == last
    assert store.search_answers(AnswerQuery(tenant="acme")).count == 2


def test_a_record_that_cannot_be_encoded_is_rejected_not_the_batch(store):
    """A lone surrogate (a string no UTF-8 can carry) fails the record's canonical JSON."""
    good, bad = completion(trace=1), completion(trace=2, answer="half a pair: \ud800")
    result = store.write([bad, good])
    assert result.written == 1 and list(result.rejected) == [bad.record_id]
    assert "surrogates not allowed" in result.rejected[bad.record_id]
    assert store.get("acme", good.record_id) == good and store.get("acme", bad.record_id) is None


def test_a_sealed_batch_with_a_rejected_record_keeps_nothing(store):
    """A rejected record was given a leaf: nothing of the batch, nor its log update, is kept,
    so the sequencer can plan the others again."""
    log_id = "acme/local"
    records = [completion(trace=1), completion(trace=2, input_tokens=2**63), completion(trace=3)]
    plan = LogSequencer(new_log(log_id, "o/" + log_id), Signer.generate("o"), checkpoint_every=1).plan(
        records, lambda r: b"k" * 32
    )
    with pytest.raises(RecordsRejected) as caught:
        store.write(plan.records, [plan.update], expected={log_id: None})
    assert list(caught.value.rejected) == [records[1].record_id] and caught.value.retriable is False
    assert store.existing([r.record_id for r in records]) == {}
    assert store.log_state(log_id) is None and store.checkpoints(log_id) == []


def test_records_by_id_reads_stored_bodies_of_any_tenant(store):
    acme, globex = completion("acme", trace=1), completion("globex", trace=2)
    store.write([acme, globex])
    assert store.records_by_id([acme.record_id, globex.record_id, "0" * 32]) == {
        acme.record_id: acme, globex.record_id: globex,
    }


def test_get_round_trips_every_field(store):
    record = retrieval(trace=2, parent=1, raw_attributes={"x.y": [1, 2], "nested": {"a": "b"}})
    store.write([record])
    assert store.get("acme", record.record_id) == record


def test_other_tenant_is_indistinguishable_from_missing(store):
    record = completion("acme", trace=3)
    store.write([record])
    assert store.get("globex", record.record_id) is None
    assert store.get("acme", "0" * 32) is None
    assert store.trace("globex", record.trace_id) == []
    assert store.search_answers(AnswerQuery(tenant="globex")).count == 0
    assert store.costs(CostQuery(tenant="globex")) == []


def test_trace_returns_records_in_time_order(store):
    answer = completion(trace=4, span=1, time=iso(24, 7, 30))
    lookup = retrieval(trace=4, span=2, start_time=iso(24, 7, 29))
    store.write([answer, lookup, completion(trace=5)])
    assert [r.record_id for r in store.trace("acme", answer.trace_id)] == [lookup.record_id, answer.record_id]


def test_answers_newest_first_with_total_count(store):
    store.write([completion(trace=10 + i, time=iso(24, 7, i)) for i in range(5)])
    page = store.search_answers(AnswerQuery(tenant="acme", limit=2))
    assert page.count == 5
    assert [a.time for a in page.answers] == [iso(24, 7, 4), iso(24, 7, 3)]
    second = store.search_answers(AnswerQuery(tenant="acme", limit=2, offset=2))
    assert [a.time for a in second.answers] == [iso(24, 7, 2), iso(24, 7, 1)]


def test_answers_time_window_is_inclusive(store):
    store.write([completion(trace=20 + m, time=iso(24, 7, m * 10)) for m in range(6)])
    page = store.search_answers(AnswerQuery(tenant="acme", start=iso(24, 7, 10), end=iso(24, 7, 30)))
    assert sorted(a.time for a in page.answers) == [iso(24, 7, 10), iso(24, 7, 20), iso(24, 7, 30)]


@pytest.mark.parametrize(
    ("question", "query"),
    [
        ("What is our refund policy for damaged items?", "refunds policy"),
        ("นโยบายการคืนเงินสำหรับสินค้าที่เสียหายคืออะไร", "การคืนเงิน"),
        ("返品ポリシーを教えてください", "返品ポリシー"),
        ("我们的退款政策是什么", "退款政策"),
    ],
    ids=["english", "thai", "japanese", "chinese"],
)
def test_answers_full_text_in_four_languages(store, question, query):
    wanted = completion(trace=30, question=question, answer="-")
    store.write([wanted, completion(trace=31, question="How do I reset my password?", answer="Use the portal.")])
    page = store.search_answers(AnswerQuery(tenant="acme", text=query))
    assert [a.trace_id for a in page.answers] == [wanted.trace_id]
    assert page.answers[0].question == question


def test_answers_text_matches_the_answer_too(store):
    store.write([completion(trace=32, answer="Damaged items are refunded within 30 days.")])
    assert store.search_answers(AnswerQuery(tenant="acme", text="damaged")).count == 1
    assert store.search_answers(AnswerQuery(tenant="acme", text="warranty")).count == 0


def test_answers_filters(store):
    store.write(
        [
            completion(trace=40, service="support-bot", user="u_alice", model="gpt-4o-mini"),
            completion(trace=41, service="hr-assistant", user="u_bob", model="claude-3-5-sonnet"),
        ]
    )
    by = lambda **kw: [a.trace_id for a in store.search_answers(AnswerQuery(tenant="acme", **kw)).answers]  # noqa: E731
    assert by(service="hr-assistant") == [f"{41:032x}"]
    assert by(user="u_alice") == [f"{40:032x}"]
    assert by(model="claude-3-5-sonnet") == [f"{41:032x}"]


def test_answer_fields(store):
    store.write([completion(trace=42, cost="0.0000165")])
    (answer,) = store.search_answers(AnswerQuery(tenant="acme")).answers
    assert answer.cost_amount == Decimal("0.0000165")
    assert (answer.cost_currency, answer.input_tokens, answer.output_tokens) == ("USD", 42, 17)
    assert (answer.model, answer.provider, answer.user, answer.service) == (
        "gpt-4o-mini", "openai", "u_alice", "support-bot",
    )


@pytest.mark.parametrize("log_first", [True, False])
def test_log_event_content_merges_into_its_span(store, log_first):
    span = completion(trace=50, question=None, answer=None, time=iso(24, 7, 30))
    event = completion(
        trace=50, origin="log", question="What is our refund policy?", answer="Within 30 days.",
        time=iso(24, 7, 31), cost=None, user=None,
    )
    for record in ([event, span] if log_first else [span, event]):
        store.write([record])
    page = store.search_answers(AnswerQuery(tenant="acme", text="refund", user="u_alice"))
    assert page.count == 1
    (answer,) = page.answers
    assert (answer.record_id, answer.time, answer.answer) == (span.record_id, iso(24, 7, 30), "Within 30 days.")
    assert answer.cost_amount == Decimal("0.0000165")
    assert {r.origin for r in store.trace("acme", span.trace_id)} == {"span", "log"}


def test_empty_query_text_is_refused(store):
    with pytest.raises(BadRequest):
        store.search_answers(AnswerQuery(tenant="acme", text="  ?! "))


def test_costs_grouped_and_exact(store):
    store.write(
        [
            completion(trace=60, model="gpt-4o-mini", cost="0.0000165"),
            completion(trace=61, model="gpt-4o-mini", cost="0.0000165"),
            completion(trace=62, model="mystery-1", cost=None),
            completion(trace=63, origin="log", model="gpt-4o-mini", cost="0.0000165"),  # repeats a span: not counted
        ]
    )
    rows = {r.group["model"]: r for r in store.costs(CostQuery(tenant="acme", group_by=("model",)))}
    assert rows["gpt-4o-mini"].cost == Decimal("0.000033")
    assert (rows["gpt-4o-mini"].calls, rows["gpt-4o-mini"].input_tokens) == (2, 84)
    assert (rows["mystery-1"].cost, rows["mystery-1"].unpriced_calls) == (Decimal(0), 1)
    with pytest.raises(BadRequest):
        store.costs(CostQuery(tenant="acme", group_by=("colour",)))


def test_costs_by_day_within_range(store):
    store.write([completion(trace=70, time=iso(23, 10)), completion(trace=71, time=iso(24, 10))])
    rows = store.costs(CostQuery(tenant="acme", start=iso(24, 0), group_by=("day",)))
    assert [(r.group["day"], r.calls) for r in rows] == [("2026-11-24", 1)]


def test_keys(store):
    key, info = store.create_key("acme", Role.AUDITOR)
    principal = store.authenticate(key)
    assert (principal.tenant, principal.role, principal.key_id) == ("acme", Role.AUDITOR, info.key_id)
    assert store.authenticate(key + "x") is None
    assert [k.key_id for k in store.list_keys("acme")] == [info.key_id]
    assert store.list_keys("globex") == []
    assert store.revoke_key(info.key_id) is True
    assert store.authenticate(key) is None
    assert store.revoke_key(info.key_id) is False


def test_secret_is_stable(store):
    assert store.secret("pseudonym") == store.secret("pseudonym")
    assert len(store.secret("pseudonym")) == 32


def test_answers_cursor_pages_through_everything_once(store):
    store.write([completion(trace=200 + i, time=iso(24, 10, i // 2)) for i in range(7)])  # ties in time
    seen, after = [], None
    for _ in range(10):
        page = store.search_answers(AnswerQuery(tenant="acme", limit=3, after=after))
        seen += [a.record_id for a in page.answers]
        if len(page.answers) < 3:
            break
        last = page.answers[-1]
        after = (last.time, last.record_id)
    assert len(seen) == len(set(seen)) == 7
    assert page.count == 7  # every page counts all matches


def test_document_acls(store):
    """What could a contractor have been shown, and which answers used what it may not see."""
    store.write(
        [
            completion(trace=300, question="What is the bonus policy?"),
            retrieval(trace=300, documents=[
                {"doc_id": "handbook", "acl_tags": ["public"]},
                {"doc_id": "board-minutes", "acl_tags": ["board-only"]},
            ]),
            completion(trace=301, question="When is the office open?"),
            retrieval(trace=301, documents=[{"doc_id": "faq", "acl_tags": []}, {"doc_id": "hours", "acl_tags": ["public", "staff"]}]),
            completion(trace=302, question="No retrieval at all"),
        ]
    )
    ids = lambda page: sorted(a.trace_id[-3:] for a in page.answers)  # noqa: E731
    contractor = ("public", "contractor")
    assert ids(store.search_answers(AnswerQuery(tenant="acme", visible_to=contractor))) == [f"{301:03x}", f"{302:03x}"]
    assert ids(store.search_answers(AnswerQuery(tenant="acme", exposed_to=contractor))) == [f"{300:03x}"]
    assert ids(store.search_answers(AnswerQuery(tenant="acme", exposed_to=("board-only",)))) == [f"{300:03x}", f"{301:03x}"]
    assert store.search_answers(AnswerQuery(tenant="acme", exposed_to=("board-only", "public"))).count == 0
    assert store.search_answers(AnswerQuery(tenant="globex", exposed_to=contractor)).count == 0


def test_cost_summary_counts_useful_actions(store):
    from aitrail.schemas.record import AuditRecord, record_id_for

    def feedback(trace: int, score: float) -> AuditRecord:
        trace_id = f"{trace:032x}"
        return AuditRecord(record_id=record_id_for("acme", trace_id, f"{99:016x}", "feedback"), kind="feedback",
                           tenant="acme", trace_id=trace_id, span_id=f"{99:016x}", start_time=iso(24, 12), score=score)

    store.write([completion(trace=400 + i, cost="0.001") for i in range(4)] + [feedback(400, 1.0), feedback(401, -1.0)])
    summary = store.cost_summary(CostQuery(tenant="acme"))
    assert (summary.cost, summary.currency, summary.traces, summary.useful_traces) == (Decimal("0.004"), "USD", 4, 1)
    assert store.cost_summary(CostQuery(tenant="globex")).traces == 0


def test_list_records_of_a_kind_newest_first_with_cursor(store):
    from aitrail.integrity.system import system_record
    from aitrail.store.base import RecordQuery

    reads = [system_record("access", "acme", {"endpoint": "/v1/answers", "n": i}, at=iso(24, 13, i)) for i in range(5)]
    store.write(reads + [system_record("access", "globex", {"n": 9}, at=iso(24, 13, 9)), completion(trace=500)])
    first = store.list_records(RecordQuery(tenant="acme", kind="access", limit=3))
    assert [r.details["n"] for r in first] == [4, 3, 2]
    rest = store.list_records(RecordQuery(tenant="acme", kind="access", limit=3,
                                          after=(first[-1].start_time, first[-1].record_id)))
    assert [r.details["n"] for r in rest] == [1, 0]
    window = store.list_records(RecordQuery(tenant="acme", kind="access", start=iso(24, 13, 1), end=iso(24, 13, 2)))
    assert [r.details["n"] for r in window] == [2, 1]


def test_answers_text_within_a_time_window(store):
    store.write(
        [completion(trace=600 + i, time=iso(24, 6 + i, 0), question=q, answer="-")
         for i, q in enumerate(["refund policy?", "password reset?", "refund for damage?", "refund later?"])]
    )
    page = store.search_answers(AnswerQuery(tenant="acme", text="refund", start=iso(24, 6, 30), end=iso(24, 8, 30)))
    assert [a.trace_id for a in page.answers] == [f"{602:032x}"] and page.count == 1
    empty = store.search_answers(AnswerQuery(tenant="acme", text="refund", start=iso(25, 0), end=iso(25, 1)))
    assert empty.count == 0 and empty.answers == []
