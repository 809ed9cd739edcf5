"""Derived views against the sealed records, on every backend: records sealed through the real
sequencing path, then a derived row edited, inserted or deleted behind the store's back the
way an administrator could; `verify_views` names the view and the record, and the answers
endpoint shows the sealed values with integrity failed."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from aitrail.collector.sequencing import Sequencing
from aitrail.errors import NotFound
from aitrail.integrity.note import Signer
from aitrail.integrity.views import ViewFindingKind, verify_views
from aitrail.query_api.service import QueryService
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord, record_id_for
from aitrail.store.base import CostQuery, Principal, Role
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion, iso, retrieval

SIGNER = Signer.generate("aitrail/test")
VERIFIER = SIGNER.verifier()
AUDITOR = Principal(key_id="test", tenant="acme", role=Role.AUDITOR)


def feedback(tenant: str, *, trace: int, score: float) -> AuditRecord:
    trace_id, span_id = f"{trace:032x}", f"{99:016x}"
    return AuditRecord(record_id=record_id_for(tenant, trace_id, span_id, "feedback"), kind="feedback", tenant=tenant,
                       trace_id=trace_id, span_id=span_id, start_time=iso(24, 7, 40), score=score)


def trace_id(n: int) -> str:
    return f"{n:032x}"


# Trace 100..105: completions (105 without a price); 106: a span whose content came as a
# log event; 100 and 101 retrieved documents with ACL tags; 100 and 102 have feedback.
def _records() -> list[AuditRecord]:
    records = [
        completion("acme", trace=100 + i, time=iso(24, 7, i), question=f"Question {i} about refunds?",
                   answer=f"Answer number {i}.", user=f"u_{i % 3}", cost=None if i == 5 else "0.0000165")
        for i in range(6)
    ]
    records += [
        completion("acme", trace=106, time=iso(24, 7, 6), question=None, answer=None, input_tokens=80),
        completion("acme", trace=106, origin="log", time=iso(24, 7, 6), question="Where is my parcel?",
                   answer="It ships tomorrow.", cost=None, user=None, service=None, input_tokens=None),
        retrieval("acme", trace=100, parent=1),
        retrieval("acme", trace=101, parent=1, documents=[
            {"doc_id": "salaries", "acl_tags": ["hr", "board-only"], "score": 0.8, "rank": 1},
            {"doc_id": "faq", "score": 0.5, "rank": 2},
        ]),
        feedback("acme", trace=100, score=1.0),
        feedback("acme", trace=102, score=-1.0),
        completion("globex", trace=200, time=iso(24, 7, 10), question="Globex secret plans?", answer="Not telling."),
    ]
    return records


def _seal(store, records) -> None:
    sequencing = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=4, checkpoint_interval_s=0)
    for first in range(0, len(records), 5):
        sequencing.write(records[first : first + 5])
    sequencing.tick()


class SqliteViews:
    """What someone with write access to the SQLite file can do to the derived tables."""

    answers_view, records_view = "answers", "records"

    def __init__(self, store: SqliteStore) -> None:
        self.conn = store._conn()
        self.conn.execute("DROP TRIGGER IF EXISTS records_append_only")

    def edit_answer(self, trace: str, **values) -> None:
        columns = {"cost": "cost_e10", "tokens": "input_tokens"}
        sets = ", ".join(f"{columns.get(k, k)} = ?" for k in values)
        self.conn.execute(f"UPDATE answers SET {sets} WHERE trace_id = ?", [*values.values(), trace])

    def answer_values(self, trace: str) -> dict:
        cursor = self.conn.execute("SELECT * FROM answers WHERE trace_id = ?", (trace,))
        return dict(zip([c[0] for c in cursor.description], cursor.fetchone(), strict=True))

    def insert_answer(self, values: dict) -> None:
        values = {k: v for k, v in values.items() if k != "id"}
        self.conn.execute(
            f"INSERT INTO answers ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})", list(values.values())
        )

    def delete_answer(self, trace: str) -> None:
        self.conn.execute("DELETE FROM answers WHERE trace_id = ?", (trace,))

    def delete_record(self, record_id: str) -> None:
        self.conn.execute("DELETE FROM records WHERE record_id = ?", (record_id,))

    def insert_record(self, record: AuditRecord, *, as_id: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO records (record_id, tenant, kind, origin, trace_id, span_id, start_time, log_id, leaf_index,"
            " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (as_id or record.record_id, record.tenant, record.kind, record.origin, record.trace_id, record.span_id,
             record.start_time, record.log_id, record.leaf_index, canonical_json(record)),
        )

    def rename_record(self, record: AuditRecord, new_id: str) -> None:
        self.conn.execute("UPDATE records SET record_id = ? WHERE record_id = ?", (new_id, record.record_id))

    def edit_record_column(self, record_id: str, column: str, value) -> None:
        self.conn.execute(f"UPDATE records SET {column} = ? WHERE record_id = ?", (value, record_id))


class OpenSearchViews:
    """What someone with write access to the cluster can do to the answers and records indices."""

    def __init__(self, store) -> None:
        self.store, self.client = store, store._client
        self.answers_view = store.answers_index

    def _answer_hit(self, trace: str) -> dict:
        hits = self.client.search(index=self.store.answers_index, body={"query": {"term": {"trace_id": trace}}})
        (hit,) = hits["hits"]["hits"]
        return hit

    def edit_answer(self, trace: str, **values) -> None:
        names = {"cost": "cost_e10", "tokens": "input_tokens"}
        doc = {names.get(k, k): v for k, v in values.items()}
        self.client.update(index=self.store.answers_index, id=self._answer_hit(trace)["_id"], body={"doc": doc},
                           params={"refresh": "true"})

    def answer_values(self, trace: str) -> dict:
        return dict(self._answer_hit(trace)["_source"])

    def insert_answer(self, values: dict) -> None:
        self.client.index(index=self.store.answers_index, id=uuid.uuid4().hex, body=values, params={"refresh": "true"})

    def delete_answer(self, trace: str) -> None:
        self.client.delete(index=self.store.answers_index, id=self._answer_hit(trace)["_id"],
                           params={"refresh": "true"})

    def _where(self, record_id: str) -> str:
        hits = self.client.search(index=self.store.records_pattern, body={"query": {"ids": {"values": [record_id]}}})
        return hits["hits"]["hits"][0]["_index"]

    def delete_record(self, record_id: str) -> None:
        self.client.delete(index=self._where(record_id), id=record_id, params={"refresh": "true"})

    def insert_record(self, record: AuditRecord, *, as_id: str | None = None) -> None:
        self.client.index(index=self.store.write_alias, id=as_id or record.record_id, body=canonical_json(record),
                          params={"refresh": "true"})

    def rename_record(self, record: AuditRecord, new_id: str) -> None:
        index = self._where(record.record_id)
        self.client.index(index=index, id=new_id, body=canonical_json(record), params={"refresh": "true"})
        self.client.delete(index=index, id=record.record_id, params={"refresh": "true"})

    @property
    def records_view(self) -> str:
        return self.store.first_index


TAMPERERS = {"sqlite": SqliteViews, "opensearch": OpenSearchViews}


@pytest.fixture
def sealed(store, request):
    records = _records()
    _seal(store, records)
    assert verify_views(store) == []
    by_trace = {}
    for r in records:
        if r.kind == "completion" and r.origin == "span":
            by_trace[r.trace_id] = r
    return store, TAMPERERS[request.node.callspec.params["store"]](store), by_trace


@pytest.fixture
def sqlite_sealed(tmp_path):
    """The views only SQLite keeps (full text, retrieved documents, feedback, record columns)."""
    store = SqliteStore(tmp_path / "aitrail.db")
    records = _records()
    _seal(store, records)
    assert verify_views(store) == []
    yield store, SqliteViews(store), records
    store.close()


def only(findings, view, record_id=None):
    found = [f for f in findings if f.view == view and (record_id is None or f.record_id == record_id)]
    assert found, [str(f) for f in findings]
    return found


def answers_of(store) -> dict[str, dict]:
    service = QueryService(store, pseudonymise=lambda raw: "u_" + raw, verifier=VERIFIER)
    return {a["trace_id"]: a for a in service.answers(AUDITOR, limit=50).model_dump(mode="json")["data"]}


# -- no findings on an untouched store ------------------------------------------------------


def test_untouched_store_has_no_findings(store):
    records = _records()
    _seal(store, records)
    findings = verify_views(store, progress=lambda stage, done: None)
    assert findings == []
    answers = answers_of(store)
    assert len(answers) == 7 and {a["integrity"]["status"] for a in answers.values()} == {"verified"}
    merged = answers[trace_id(106)]  # the span's usage, the log event's content
    assert (merged["question"], merged["answer"], merged["input_tokens"]) == (
        "Where is my parcel?", "It ships tomorrow.", 80)
    assert merged["record_id"] == record_id_for("acme", trace_id(106), f"{1:016x}", "completion")
    assert merged["cost"] == {"amount": "0.0000165000", "currency": "USD"}
    assert answers[trace_id(105)]["cost"] == {"amount": None, "currency": None}


# -- the answers view (both backends) -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("question", "What is the salary of the CEO?", "question"),
        ("answer", "Refunds are never possible.", "answer"),
        ("model", "gpt-4o", "model"),
        ("tokens", 99_999, "input_tokens"),
        ("cost", 165_000 * 100, "cost"),
        ("user", "u_mallory", "user"),
        ("service", "hr-bot", "service"),
        ("time", iso(25, 1, 0), "time"),
    ],
)
def test_edited_answer_is_named_and_served_from_the_records(sealed, field, value, shown):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(102)]
    before = answers_of(store)[victim.trace_id]
    assert before["integrity"]["status"] == "verified"
    tamper.edit_answer(victim.trace_id, **{field: value})

    (finding,) = only(verify_views(store), tamper.answers_view, victim.record_id)
    assert finding.kind == ViewFindingKind.DIFFERS and finding.trace_id == victim.trace_id
    assert f"{'cost_e10' if field == 'cost' else 'input_tokens' if field == 'tokens' else field} is" in finding.what

    after = answers_of(store)[victim.trace_id]
    assert {k: v for k, v in after.items() if k != "integrity"} == {k: v for k, v in before.items() if k != "integrity"}
    assert after["integrity"] == {
        "status": "failed", "reason": f"derived answers row differs from the sealed record: {shown}"}


def test_edited_cost_changes_costs_and_is_named(sealed):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(101)]
    total = store.cost_summary(CostQuery(tenant="acme")).cost
    tamper.edit_answer(victim.trace_id, cost=165_000 * 100)  # ×100
    assert store.cost_summary(CostQuery(tenant="acme")).cost > total  # the view served is wrong...
    (finding,) = only(verify_views(store), tamper.answers_view, victim.record_id)  # ...and named
    assert "cost_e10 is 16500000, the records say 165000" in finding.what


def test_inserted_answer_is_named(sealed):
    store, tamper, by_trace = sealed
    fake = tamper.answer_values(by_trace[trace_id(103)].trace_id)
    fake.update(trace_id=trace_id(999), record_id="f" * 32, question="A forged answer?", answer="Forged.")
    tamper.insert_answer(fake)
    (finding,) = only(verify_views(store), tamper.answers_view, "f" * 32)
    assert finding.kind == ViewFindingKind.EXTRA and finding.trace_id == trace_id(999)
    forged = answers_of(store)[trace_id(999)]  # served by the search, but not as if sealed
    assert forged["question"] is None and forged["answer"] is None
    assert forged["integrity"]["status"] == "failed" and "no sealed completion record" in forged["integrity"]["reason"]


def test_deleted_answer_is_named(sealed):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(104)]
    tamper.delete_answer(victim.trace_id)
    (finding,) = only(verify_views(store), tamper.answers_view, victim.record_id)
    assert finding.kind == ViewFindingKind.MISSING and finding.trace_id == victim.trace_id


def test_log_event_fragment_merge_is_checked(sealed):
    store, tamper, by_trace = sealed
    tamper.edit_answer(trace_id(106), question=None)  # the fragment's content dropped from the view
    (finding,) = only(verify_views(store), tamper.answers_view, by_trace[trace_id(106)].record_id)
    assert "question is None, the records say 'Where is my parcel?'" in finding.what
    shown = answers_of(store)[trace_id(106)]
    assert shown["question"] == "Where is my parcel?" and shown["integrity"]["status"] == "failed"


# -- the records' own columns (both backends: OpenSearch keeps the `_id` apart) -------------


def test_deleted_record_leaves_its_answer_unbacked(sealed):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(103)]
    tamper.delete_record(victim.record_id)
    (finding,) = only(verify_views(store), tamper.answers_view, victim.record_id)
    assert finding.kind == ViewFindingKind.EXTRA
    shown = answers_of(store)[victim.trace_id]
    assert shown["integrity"]["status"] == "failed" and shown["answer"] is None


def test_inserted_record_without_its_views_is_named(sealed):
    store, tamper, _ = sealed
    forged = completion("acme", trace=998, question="Planted?", answer="Planted.")
    tamper.insert_record(forged)
    (finding,) = only(verify_views(store), tamper.answers_view, forged.record_id)
    assert finding.kind == ViewFindingKind.MISSING


def test_record_stored_under_another_id_is_named(sealed):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(101)]
    tamper.rename_record(victim, "e" * 32)
    findings = verify_views(store)
    (finding,) = [f for f in findings if f.record_id == victim.record_id and "column record_id" in f.what]
    assert finding.view == tamper.records_view and finding.kind == ViewFindingKind.DIFFERS
    service = QueryService(store, pseudonymise=lambda raw: "u_" + raw, verifier=VERIFIER)
    with pytest.raises(NotFound, match="sealed as record " + victim.record_id):
        service.record(AUDITOR, "e" * 32)


def test_copy_of_a_record_under_another_id_is_named(sealed):
    store, tamper, by_trace = sealed
    victim = by_trace[trace_id(100)]
    tamper.insert_record(victim, as_id="d" * 32)  # the record as sent, before it was sealed
    findings = only(verify_views(store), tamper.records_view, victim.record_id)
    (finding,) = [f for f in findings if f.kind == ViewFindingKind.DIFFERS]
    assert "column record_id is 'dddd" in finding.what
    (unsealed,) = [f for f in findings if f.kind == ViewFindingKind.UNSEALED]
    assert "no Merkle log" in unsealed.what


# -- SQLite's own derived tables ------------------------------------------------------------


def test_full_text_entry_added_is_named(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    victim = records[2]
    row_id = tamper.answer_values(victim.trace_id)["id"]
    tamper.conn.execute("INSERT INTO answers_fts (rowid, terms) VALUES (?, 'salary bonus')", (row_id,))
    (finding,) = only(verify_views(store), "answers_fts", victim.record_id)
    assert finding.kind == ViewFindingKind.DIFFERS and "has terms the sealed record lacks: bonu, salari" in finding.what
    from aitrail.store.base import AnswerQuery

    assert store.search_answers(AnswerQuery(tenant="acme", text="salary")).count == 1  # what the view serves


def test_full_text_entry_removed_is_named(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    victim = records[3]
    values = tamper.answer_values(victim.trace_id)
    tamper.conn.execute("INSERT INTO answers_fts (answers_fts, rowid, terms) VALUES ('delete', ?, ?)",
                        (values["id"], values["terms"]))
    (finding,) = only(verify_views(store), "answers_fts", victim.record_id)
    assert "lacks terms the sealed record has" in finding.what and "refund" in finding.what


def test_full_text_entry_without_a_row_is_named(sqlite_sealed):
    store, tamper, _ = sqlite_sealed
    tamper.conn.execute("INSERT INTO answers_fts (rowid, terms) VALUES (4242, 'planted')")
    (finding,) = only(verify_views(store), "answers_fts")
    assert finding.kind == ViewFindingKind.EXTRA and finding.row == "4242"
    assert finding.what == "entry 4242 belongs to no answers row (terms: plant)"


def test_edited_terms_column_is_named_twice(sqlite_sealed):
    """The update trigger keeps the index in step with the edited column: both are named."""
    store, tamper, records = sqlite_sealed
    victim = records[1]
    tamper.edit_answer(victim.trace_id, terms="salary")
    findings = verify_views(store)
    assert "terms is 'salary'" in only(findings, "answers", victim.record_id)[0].what
    assert only(findings, "answers_fts", victim.record_id)


def _retrieval(records, trace: int) -> AuditRecord:
    return next(r for r in records if r.kind == "retrieval" and r.trace_id == trace_id(trace))


def test_edited_acl_tags_are_named(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    victim = _retrieval(records, 101)
    from aitrail.store.base import AnswerQuery

    assert store.search_answers(AnswerQuery(tenant="acme", exposed_to=("public",))).count == 2
    tamper.conn.execute("UPDATE retrieved_docs SET acl_tags = '[]' WHERE record_id = ? AND doc_id = 'salaries'",
                        (victim.record_id,))
    assert store.search_answers(AnswerQuery(tenant="acme", exposed_to=("public",))).count == 1
    (finding,) = only(verify_views(store), "retrieved_docs", victim.record_id)
    assert finding.kind == ViewFindingKind.DIFFERS and finding.trace_id == victim.trace_id
    assert 'doc salaries stored with acl_tags [] (sealed: ["board-only", "hr"])' in finding.what


def test_acl_tags_that_parse_alike_but_filter_otherwise_are_named(sqlite_sealed):
    """'[ ]' is the empty list to a JSON parser but not to the filters, which compare text:
    the unrestricted FAQ document then counts as restricted, for `exposed_to` and `visible_to`."""
    from aitrail.store.base import AnswerQuery

    store, tamper, records = sqlite_sealed
    victim = _retrieval(records, 101)
    # the salaries document opened to the public first, so only the FAQ's tags decide
    tamper.conn.execute("UPDATE retrieved_docs SET acl_tags = '[\"public\"]' WHERE record_id = ? AND doc_id = 'salaries'",
                        (victim.record_id,))
    before = store.search_answers(AnswerQuery(tenant="acme", visible_to=("public",))).count
    tamper.conn.execute("UPDATE retrieved_docs SET acl_tags = '[ ]' WHERE record_id = ? AND doc_id = 'faq'",
                        (victim.record_id,))
    assert store.search_answers(AnswerQuery(tenant="acme", visible_to=("public",))).count == before - 1
    (finding,) = only(verify_views(store), "retrieved_docs", victim.record_id)
    assert "doc faq stored with acl_tags [ ] (sealed: [])" in finding.what


def test_inserted_and_deleted_documents_are_named(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    kept, dropped = _retrieval(records, 101), _retrieval(records, 100)
    tamper.conn.execute("INSERT INTO retrieved_docs (tenant, trace_id, record_id, doc_id, acl_tags) "
                        "VALUES ('acme', ?, ?, 'planted', '[\"x\"]')", (kept.trace_id, kept.record_id))
    tamper.conn.execute("DELETE FROM retrieved_docs WHERE record_id = ?", (dropped.record_id,))
    findings = verify_views(store)
    (extra,) = only(findings, "retrieved_docs", kept.record_id)
    assert "doc planted" in extra.what and "not in the sealed record" in extra.what
    (missing,) = only(findings, "retrieved_docs", dropped.record_id)
    assert missing.kind == ViewFindingKind.MISSING and "doc policy-7" in missing.what and "doc board-1" in missing.what


def test_feedback_edits_are_named(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    liked = next(r for r in records if r.kind == "feedback" and r.score == 1.0)
    useful = store.cost_summary(CostQuery(tenant="acme")).useful_traces
    tamper.conn.execute("UPDATE feedback SET score = 1.0 WHERE trace_id = ?", (trace_id(102),))  # edit
    tamper.conn.execute("INSERT INTO feedback (tenant, trace_id, score) VALUES ('acme', ?, 1.0)", (trace_id(103),))
    tamper.conn.execute("DELETE FROM feedback WHERE trace_id = ?", (liked.trace_id,))  # delete
    assert store.cost_summary(CostQuery(tenant="acme")).useful_traces == useful + 1
    findings = {f.trace_id: f for f in only(verify_views(store), "feedback")}
    assert findings[trace_id(102)].kind == ViewFindingKind.DIFFERS
    assert "scores stored [1.0]" in findings[trace_id(102)].what and "say [-1.0]" in findings[trace_id(102)].what
    assert findings[trace_id(103)].kind == ViewFindingKind.EXTRA and findings[trace_id(103)].record_id is None
    assert findings[liked.trace_id].kind == ViewFindingKind.MISSING and findings[liked.trace_id].record_id == liked.record_id


@pytest.mark.parametrize(
    ("column", "value"),
    [("tenant", "globex"), ("trace_id", trace_id(200)), ("kind", "tool"), ("origin", "log"), ("span_id", "f" * 16),
     ("start_time", iso(1, 1)), ("log_id", "other"), ("leaf_index", 999)],
)
def test_edited_record_column_is_named(sqlite_sealed, column, value):
    store, tamper, records = sqlite_sealed
    victim = store.get("acme", records[4].record_id)  # as sealed: with its log and leaf
    sealed = getattr(victim, column)
    tamper.edit_record_column(victim.record_id, column, value)
    (finding,) = [f for f in verify_views(store) if f.view == "records"]
    assert (finding.record_id, finding.kind) == (victim.record_id, ViewFindingKind.DIFFERS)
    assert finding.what == f"column {column} is {value!r}, the sealed record says {sealed!r}"


def test_record_moved_into_another_tenant_is_not_served(sqlite_sealed):
    """Editing the tenant and trace columns moves acme's record into globex's trace: globex
    neither sees it nor learns anything of it; the replay fails integrity."""
    store, tamper, records = sqlite_sealed
    moved = records[0]
    tamper.edit_record_column(moved.record_id, "tenant", "globex")
    tamper.edit_record_column(moved.record_id, "trace_id", trace_id(200))
    service = QueryService(store, pseudonymise=lambda raw: "u_" + raw, verifier=VERIFIER)
    globex = Principal(key_id="g", tenant="globex", role=Role.AUDITOR)
    replay = service.trace(globex, trace_id(200))
    assert [r["record_id"] for r in replay.records] == [records[-1].record_id]
    assert replay.integrity["status"] == "failed" and moved.record_id not in json.dumps(replay.integrity)
    assert "another tenant's or trace's" in replay.integrity["reason"]
    with pytest.raises(NotFound, match=f"^no record {moved.record_id}$"):
        service.record(globex, moved.record_id)
    findings = [f for f in verify_views(store) if f.view == "records"]
    assert {f.what.split(" is ")[0] for f in findings} == {"column tenant", "column trace_id"}


def test_record_moved_into_another_trace_of_the_tenant(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    moved = _retrieval(records, 101)
    tamper.edit_record_column(moved.record_id, "trace_id", trace_id(103))
    service = QueryService(store, pseudonymise=lambda raw: "u_" + raw, verifier=VERIFIER)
    replay = service.trace(AUDITOR, trace_id(103))
    assert moved.record_id not in [r["record_id"] for r in replay.records]
    assert replay.integrity["status"] == "failed"
    assert replay.integrity["records"][moved.record_id]["status"] == "failed"


def test_answer_cost_on_the_page_comes_from_the_record(sqlite_sealed):
    store, tamper, records = sqlite_sealed
    victim = records[0]
    tamper.edit_answer(victim.trace_id, cost=1, cost_currency="EUR")
    shown = answers_of(store)[victim.trace_id]
    assert shown["cost"] == {"amount": "0.0000165000", "currency": "USD"}
    assert Decimal(shown["cost"]["amount"]) == victim.cost.amount
    assert shown["integrity"]["reason"] == "derived answers row differs from the sealed record: cost"
