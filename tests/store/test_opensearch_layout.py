"""OpenSearch-only behaviour of the store: index layout, rollover, bulk outcomes, analysers.
The shared behaviour is in test_contract.py."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from aitrail.errors import Unavailable
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import ForkError, LogSequencer, LogUpdate, new_log
from aitrail.integrity.verify import verify_log
from aitrail.schemas.generate import index_template
from aitrail.schemas.record import AuditRecord
from aitrail.settings import OpenSearchSettings
from aitrail.store.base import AnswerQuery, CostQuery, Outcome, RecordQuery, RecordsRejected, Role, WriteResult
from aitrail.store.keys import hash_key
from aitrail.store.opensearch import OpenSearchStore, answer_id
from tests.conftest import _opensearch
from tests.factories import completion, iso, retrieval


@pytest.fixture
def os_store(request):
    store = _opensearch(request)
    yield store
    store.close()


@pytest.fixture
def rolling_store(request):
    store = _opensearch(request, rollover_max_docs=1)
    yield store
    store.close()


def _strings(value):
    """Settings as OpenSearch returns them: every leaf a string."""
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_installed_template_is_the_generated_one(os_store):
    (installed,) = os_store._client.indices.get_index_template(name=f"{os_store.prefix}-records")["index_templates"]
    template, generated = installed["index_template"], index_template(os_store.prefix)
    assert template["index_patterns"] == [f"{os_store.prefix}-records-*"]
    assert (template["priority"], template["_meta"]) == (generated["priority"], generated["_meta"])
    assert template["template"]["mappings"] == generated["template"]["mappings"]
    expected = dict(generated["template"]["settings"]["index"], refresh_interval="100ms")  # the fixture's
    assert template["template"]["settings"]["index"] == _strings(expected)


def test_first_index_holds_the_write_alias(os_store):
    aliases = os_store._client.indices.get_alias(name=os_store.write_alias)
    first = f"{os_store.prefix}-records-000001"
    assert aliases == {first: {"aliases": {os_store.write_alias: {"is_write_index": True}}}}
    os_store.ensure_layout()  # idempotent
    assert os_store.records_indices() == [f"{os_store.prefix}-records-000001"]


def test_layout_upgrades_the_write_index_mapping(os_store):
    client, first = os_store._client, f"{os_store.prefix}-records-000001"
    write_alias = {os_store.write_alias: {"is_write_index": True}}
    older = os_store.records_template()["template"]["mappings"]
    del older["properties"]["agent_name"]  # as written by a version before the field existed
    client.indices.delete(index=first)
    client.indices.create(index=first, body={"mappings": older, "aliases": write_alias})
    os_store.ensure_layout()
    assert "agent_name" in client.indices.get_mapping(index=first)[first]["mappings"]["properties"]
    assert os_store.write([completion(trace=1, agent_name="planner")]).written == 1

    client.indices.delete(index=first)
    older["properties"]["agent_name"] = {"type": "long"}  # cannot become keyword in place
    client.indices.create(index=first, body={"mappings": older, "aliases": write_alias})
    os_store.ensure_layout()
    os_store.ensure_layout()  # rolls over once, not at every start
    assert os_store.records_indices() == [first, f"{os_store.prefix}-records-000002"]
    assert os_store.write([completion(trace=2, agent_name="planner")]).written == 1


def test_rollover_keeps_every_record_readable(rolling_store):
    store = rolling_store
    span = completion(trace=1, question=None, answer=None)
    lookup = retrieval(trace=1, span=2)
    store.write([span, lookup])

    rolled = store.rollover()
    assert (rolled.rolled_over, rolled.old_index, rolled.new_index) == (
        True, f"{store.prefix}-records-000001", f"{store.prefix}-records-000002",
    )
    assert rolled.conditions["[max_docs: 1]"] is True
    aliases = store._client.indices.get_alias(name=store.write_alias)
    assert {i: a["aliases"][store.write_alias].get("is_write_index") for i, a in aliases.items()} == {
        f"{store.prefix}-records-000001": False, f"{store.prefix}-records-000002": True,
    }

    event = completion(trace=1, origin="log", question="What is our refund policy?", answer="Within 30 days.")
    other = completion(trace=2)
    assert store.write([event, other]).written == 2
    assert store.records_indices() == [f"{store.prefix}-records-000001", f"{store.prefix}-records-000002"]
    assert store.get("acme", span.record_id) == span
    assert store.get("acme", other.record_id) == other
    trace = store.trace("acme", span.trace_id)
    assert {r.record_id for r in trace} == {span.record_id, lookup.record_id, event.record_id}
    page = store.search_answers(AnswerQuery(tenant="acme", text="refund"))
    assert page.count == 2
    merged = next(a for a in page.answers if a.trace_id == span.trace_id)
    assert (merged.record_id, merged.answer) == (span.record_id, "Within 30 days.")
    assert store.count("acme") == 4


def test_rollover_waits_for_its_conditions(os_store):
    os_store.write([completion(trace=1)])
    assert os_store.rollover().rolled_over is False  # 7 days / 50 GB not reached
    assert os_store.rollover(force=True).rolled_over is True


def test_existing_id_counts_as_duplicate_in_every_index(os_store):
    first, second = completion(trace=1), completion(trace=2)
    assert os_store.write([first]) == WriteResult(1, 0)
    assert os_store.write([first, second, second]) == WriteResult(1, 2)
    assert os_store.write([first, second]) == WriteResult(0, 2)
    os_store.rollover(force=True)  # `create` in the new write index cannot see the old one
    assert os_store.write([first, second, completion(trace=3)]) == WriteResult(1, 2)
    assert os_store.count() == 3


def test_a_record_the_mapping_refuses_is_rejected_and_the_rest_stored(os_store):
    good, bad = completion(trace=1), retrieval(trace=2, start_time="last tuesday")
    result = os_store.write([good, bad])
    assert (result.written, result.duplicates) == (1, 0)
    assert list(result.rejected) == [bad.record_id] and "start_time" in result.rejected[bad.record_id]
    assert result.outcome(bad.record_id) == Outcome.REJECTED and result.outcome(good.record_id) == Outcome.STORED
    assert os_store.get("acme", bad.record_id) is None
    assert os_store.get("acme", good.record_id) == good  # the rest of the batch is stored
    assert os_store.search_answers(AnswerQuery(tenant="acme")).count == 1


def test_a_start_time_beyond_date_nanos_is_rejected_by_opensearch_itself(os_store):
    """date_nanos ends in 2262: a span claiming the year 2300 is a value OpenSearch cannot index."""
    good, late = completion(trace=1), completion(trace=2, time="2300-01-01T00:00:00.000000000Z")
    result = os_store.write([good, late])
    assert result.written == 1 and list(result.rejected) == [late.record_id]
    assert "start_time" in result.rejected[late.record_id]
    assert os_store.existing([good.record_id, late.record_id]).keys() == {good.record_id}


def test_a_rejection_in_a_sealed_batch_withdraws_what_the_write_created(os_store):
    log_id = "acme/t.spans.0"
    records = [completion(trace=1), completion(trace=2, time="2300-01-01T00:00:00.000000000Z"), completion(trace=3)]
    plan = LogSequencer(new_log(log_id, "o/" + log_id), Signer.generate("o"), checkpoint_every=2).plan(
        records, lambda r: b"k" * 32
    )
    with pytest.raises(RecordsRejected) as caught:
        os_store.write(plan.records, [plan.update], expected={log_id: None})
    assert list(caught.value.rejected) == [records[1].record_id]
    assert os_store.existing([r.record_id for r in records]) == {}  # the others withdrawn: their leaves are free
    assert os_store.log_state(log_id) is None and os_store.checkpoints(log_id) == []


def test_unreachable_cluster_is_retriable():
    store = OpenSearchStore.from_settings(OpenSearchSettings(url="http://127.0.0.1:9"), ensure_layout=False)
    try:
        with pytest.raises(Unavailable) as caught:
            store.write([completion(trace=1)])
        assert caught.value.retriable is True
        assert store.ping() is False
        with pytest.raises(Unavailable):
            store.search_answers(AnswerQuery(tenant="acme"))
    finally:
        store.close()
    with pytest.raises(Unavailable):
        OpenSearchStore.from_settings(OpenSearchSettings(url="http://127.0.0.1:9"))


def test_multilingual_analysers_are_used(os_store):
    thai = "นโยบายการคืนเงินสำหรับสินค้าที่เสียหายคืออะไร"
    os_store.write([completion(trace=1, question=thai, answer="-")])
    client = os_store._client
    for index in (os_store.answers_index, os_store.write_alias):
        tokens = client.indices.analyze(index=index, body={"field": "question.thai", "text": thai})["tokens"]
        assert [t["token"] for t in tokens] == ["นโยบาย", "คืน", "เงิน", "สำหรับ", "สินค้า", "เสียหาย"]

    def hits(field, text, index=os_store.answers_index):
        body = {"query": {"match": {field: {"query": text, "operator": "and"}}}}
        return client.search(index=index, body=body)["hits"]["total"]["value"]

    assert hits("question.thai", "คืนเงิน") == 1
    assert hits("question.thai", "คืนเงิน", index=os_store.records_pattern) == 1
    assert hits("question", "คืนเงิน") == 0  # the standard tokenizer keeps a Thai run whole
    assert hits("question.cjk", "คืนเงิน") == 0


def test_replay_repairs_an_answer_lost_between_the_two_bulks(os_store):
    record = completion(trace=1)
    os_store.write([record])
    client = os_store._client
    client.delete(index=os_store.answers_index, id=answer_id("acme", record.trace_id, record.span_id), refresh=True)
    assert os_store.search_answers(AnswerQuery(tenant="acme")).count == 0
    altered = os_store.write([record.model_copy(update={"answer": "altered"})])
    assert list(altered.conflicts) == [record.record_id] and "answer" in altered.conflicts[record.record_id]
    assert os_store.search_answers(AnswerQuery(tenant="acme")).count == 0  # a conflict repairs nothing
    resent = record.model_copy(update={"ingested_at": "2026-11-25T00:00:00.000000000Z"})  # the same span again
    assert os_store.write([resent]).duplicates == 1
    (answer,) = os_store.search_answers(AnswerQuery(tenant="acme")).answers
    assert answer.answer == record.answer  # rebuilt from the stored record
    doc = client.get(index=os_store.answers_index, id=answer_id("acme", record.trace_id, record.span_id))
    assert doc["_source"]["fragments"] == [record.record_id]
    assert os_store.write([record]).duplicates == 1
    assert client.get(index=os_store.answers_index, id=doc["_id"])["_version"] == doc["_version"]  # a no-op


def test_costs_stay_exact_beyond_double_precision(os_store):
    os_store.write([completion(trace=1, cost="500000.0000000001"), completion(trace=2, cost="500000.0000000000")])
    (row,) = os_store.costs(CostQuery(tenant="acme", group_by=()))
    assert (row.calls, row.cost, row.currency) == (2, Decimal("1000000.0000000001"), "USD")
    (row,) = os_store.costs(CostQuery(tenant="acme", group_by=("model", "day")))
    assert (row.group, row.cost) == ({"model": "gpt-4o-mini", "day": "2026-11-24"}, Decimal("1000000.0000000001"))


def test_costs_group_missing_values(os_store):
    os_store.write([completion(trace=1, service="a"), completion(trace=2, service=None)])
    rows = os_store.costs(CostQuery(tenant="acme", group_by=("service",)))
    assert [(r.group["service"], r.calls) for r in rows] == [(None, 1), ("a", 1)]  # nulls first, as SQLite


def test_trace_and_costs_read_every_page(os_store, monkeypatch):
    monkeypatch.setattr("aitrail.store.opensearch._PAGE", 2)
    monkeypatch.setattr("aitrail.store.opensearch._GROUPS_PAGE", 2)
    records = [completion(trace=1, span=s, time=iso(24, 7, 30 - s), service=f"s{s}") for s in range(1, 6)]
    os_store.write(records)
    assert [r.span_id for r in os_store.trace("acme", records[0].trace_id)] == [r.span_id for r in reversed(records)]
    rows = os_store.costs(CostQuery(tenant="acme", group_by=("service",)))
    assert [(r.group["service"], r.calls) for r in rows] == [(f"s{s}", 1) for s in range(1, 6)]


def test_pages_may_end_on_a_missing_time(os_store, monkeypatch):
    """A missing time sorts as the epoch, not as `missing: _last` (Long.MIN_VALUE), which
    OpenSearch 2.19 cannot format when a page of a longer result ends on it (a 500)."""
    monkeypatch.setattr("aitrail.store.opensearch._PAGE", 2)
    timed = [completion(trace=1, span=s, time=iso(24, 7, s)) for s in (1, 2)]
    untimed = [completion(trace=1, span=s).model_copy(update={"start_time": None}) for s in (3, 4, 5)]
    os_store.write(timed + untimed)
    untimed_ids = sorted((r.record_id for r in untimed), reverse=True)
    newest_first = [r.record_id for r in reversed(timed)] + untimed_ids
    page = os_store.search_answers(AnswerQuery(tenant="acme", limit=3))  # ends on an untimed one
    assert [a.record_id for a in page.answers] == newest_first[:3]
    rest = os_store.search_answers(AnswerQuery(tenant="acme", limit=3, after=("", page.answers[-1].record_id)))
    assert ([a.record_id for a in rest.answers], rest.count) == (newest_first[3:], 5)
    records = os_store.list_records(RecordQuery(tenant="acme", kind="completion", limit=4))  # pages of 2
    assert [r.record_id for r in records] == newest_first[:4]
    assert [r.record_id for r in os_store.trace("acme", timed[0].trace_id)] == untimed_ids[::-1] + [
        r.record_id for r in timed
    ]


def test_trace_sets_read_every_page(os_store, monkeypatch):
    monkeypatch.setattr("aitrail.store.opensearch._KEYS_PAGE", 2)
    monkeypatch.setattr("aitrail.store.opensearch._MAX_TERMS", 2)  # several `terms` chunks
    secret = [{"doc_id": "minutes", "acl_tags": ["board"]}]
    os_store.write(
        [completion(trace=t, cost="0.25") for t in range(1, 8)]
        + [retrieval(trace=t, documents=secret) for t in range(1, 6)]
        + [AuditRecord(record_id=f"{t:032x}", kind="feedback", tenant="acme", trace_id=f"{t:032x}",
                       span_id=f"{9:016x}", start_time=iso(24, 12), score=1.0)
           for t in (1, 2, 3, 9)]  # trace 9 has feedback but no completion
    )
    exposed = os_store.search_answers(AnswerQuery(tenant="acme", exposed_to=("public",), limit=50))
    assert sorted(int(a.trace_id, 16) for a in exposed.answers) == [1, 2, 3, 4, 5]
    visible = os_store.search_answers(AnswerQuery(tenant="acme", visible_to=("public",), limit=50))
    assert sorted(int(a.trace_id, 16) for a in visible.answers) == [6, 7]
    summary = os_store.cost_summary(CostQuery(tenant="acme"))
    assert (summary.cost, summary.traces, summary.useful_traces) == (Decimal("1.75"), 7, 3)


def test_keys_store_only_a_hash(os_store):
    key, info = os_store.create_key("acme", Role.INGEST)
    doc = os_store._client.get(index=os_store.keys_index, id=info.key_id)["_source"]
    assert doc["key_hash"] == hash_key(key) and key not in str(doc)
    assert os_store.authenticate(f"atk_{info.key_id}_wrong") is None
    assert os_store.authenticate("not-a-key") is None


# -- Merkle logs (LogStore and write's `updates`); on both backends, for parity -------------

SIGNER = Signer.from_skey("PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ")


def _sequence(store, n: int, batch: int, log_id: str = "p0"):
    clock = [1_000_000.0]
    sequencer = LogSequencer(
        new_log(log_id, f"aitrail.local/test/{log_id}"), SIGNER, checkpoint_every=32, clock=lambda: clock[0]
    )
    plans = []
    for start in range(0, n, batch):
        records = [
            completion(trace=1000 + i, answer=f"answer {i}") if i % 3 else retrieval(trace=1000 + i)
            for i in range(start, min(n, start + batch))
        ]
        plan = sequencer.plan(records, lambda record: b"subject key")
        assert store.write(plan.records, [plan.update]) == WriteResult(len(records), 0)
        sequencer.commit(plan)
        plans.append(plan)
        clock[0] += 0.6
    return sequencer, plans


def test_merkle_logs_round_trip(store):
    sequencer, plans = _sequence(store, n=70, batch=25)
    assert store.log_ids() == ["p0"]
    assert store.log_state("p0") == sequencer.state
    assert (store.log_size("p0"), store.log_state("p1"), store.log_size("p1")) == (70, None, 0)
    checkpoints = [cp for plan in plans for cp in plan.update.checkpoints]
    assert store.checkpoints("p0") == checkpoints
    assert store.latest_checkpoint("p0") == checkpoints[-1]
    assert [r.leaf_index for r in store.records_in_log("p0")] == list(range(70))
    nodes = {(level, index): digest for plan in plans for level, index, digest in plan.update.nodes}
    assert store.nodes("p0", [*nodes, (9, 9)]) == nodes
    report = verify_log(store, SIGNER.verifier(), "p0")
    assert report.ok, report.failures
    assert report.verified_size == checkpoints[-1].size


def test_merkle_log_replay_is_a_no_op_and_a_fork_writes_nothing(store):
    _, (plan,) = _sequence(store, n=40, batch=40)
    assert store.write(plan.records, [plan.update]) == WriteResult(0, 40)
    forged = replace(plan.update.checkpoints[-1], root_hash=b"\0" * 32)
    newcomer = completion(trace=4242)
    with pytest.raises(ForkError):
        store.write([newcomer], [LogUpdate("p0", plan.update.state, [], [forged])])
    assert store.get("acme", newcomer.record_id) is None
    assert store.checkpoints("p0") == plan.update.checkpoints
    stored = plan.records[0].record_id
    assert store.existing([newcomer.record_id, stored, stored]) == {stored: ("p0", 0)}
    assert store.write([], []) == WriteResult(0, 0)


def test_existing_sees_records_not_yet_searchable(request):
    store = _opensearch(request, refresh_interval="-1")
    store.refresh = False
    try:
        record = completion(trace=1)
        store.write([record])
        assert store.get("acme", record.record_id) is None  # not refreshed: search cannot see it
        assert store.existing([record.record_id, "0" * 32]) == {record.record_id: (None, None)}
        assert store.write([record]) == WriteResult(0, 1)
    finally:
        store.close()
