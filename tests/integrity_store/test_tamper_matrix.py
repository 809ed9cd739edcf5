"""The tamper matrix: an insider with full write access to the store (the SQLite file, the
OpenSearch indices) tries to make the trail say something else. Every attempt must make
`aitrail verify` exit 1 and name what was changed. Both backends, the product's own settings
(keys and checkpoint mirror outside the data folder), the real sequencing path.

Attacks: edit, insert, delete, reorder, truncate the tail, roll back to a backup, re-sign with
a key of one's own, fake erasure — on the records (content, cost, time, model, user, ACL tags,
feedback) and on every table or index derived from them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aitrail.cli import main
from aitrail.collector.sequencing import Sequencing, open_sequencing
from aitrail.integrity.leaf import erase, recompute
from aitrail.integrity.note import Signer
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord
from aitrail.settings import load_settings
from aitrail.store.sqlite import _UPSERT_ANSWER, SqliteStore, _answer_row
from tests.conftest import drop_opensearch_layout
from tests.factories import completion, iso, retrieval
from aitrail.schemas.record import record_id_for


def feedback(tenant: str, *, trace: int, score: float) -> AuditRecord:
    trace_id, span_id = f"{trace:032x}", f"{9:016x}"
    return AuditRecord.model_validate(dict(
        record_id=record_id_for(tenant, trace_id, span_id, "feedback"), kind="feedback", tenant=tenant,
        trace_id=trace_id, span_id=span_id, start_time=iso(24, 8, 0), score=score,
    ))


# --- raw access to each backend, as an insider has it -------------------------------------


class SqliteInsider:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.conn = store._conn()

    def _unlock(self) -> None:  # the append-only trigger is no obstacle to whoever holds the file
        self.conn.execute("DROP TRIGGER IF EXISTS records_append_only")

    def records(self) -> list[AuditRecord]:
        from aitrail.schemas.canonical import record_from_json

        return [record_from_json(b) for (b,) in self.conn.execute("SELECT body FROM records ORDER BY seq")]

    def replace(self, record: AuditRecord) -> None:
        self._unlock()
        self.conn.execute(
            "UPDATE records SET body = ?, log_id = ?, leaf_index = ? WHERE record_id = ?",
            (canonical_json(record), record.log_id, record.leaf_index, record.record_id),
        )

    def delete(self, record_id: str) -> None:
        self._unlock()
        self.conn.execute("DELETE FROM records WHERE record_id = ?", (record_id,))

    def insert(self, record: AuditRecord) -> None:
        self._unlock()
        self.conn.execute(
            "INSERT INTO records (record_id, tenant, kind, origin, trace_id, span_id, start_time, log_id, leaf_index,"
            " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.record_id, record.tenant, record.kind, record.origin, record.trace_id, record.span_id,
             record.start_time, record.log_id, record.leaf_index, canonical_json(record)),
        )

    def drop_log_tail(self, log_id: str, keep: int, state: dict[str, Any]) -> None:
        self._unlock()
        self.conn.execute("DELETE FROM records WHERE log_id = ? AND leaf_index >= ?", (log_id, keep))
        self.conn.execute("DELETE FROM checkpoints WHERE log_id = ? AND size > ?", (log_id, keep))
        self.conn.execute("DELETE FROM merkle_nodes WHERE log_id = ? AND (idx + 1) << level > ?", (log_id, keep))
        self.conn.execute("UPDATE logs SET state = ? WHERE log_id = ?", (json.dumps(state), log_id))

    def replace_log(self, log_id: str, records: list[AuditRecord], updates) -> None:
        """Throw the log away and store another one in its place."""
        self._unlock()
        for table in ("checkpoints", "merkle_nodes", "logs"):
            self.conn.execute(f"DELETE FROM {table} WHERE log_id = ?", (log_id,))
        self.conn.execute("DELETE FROM records WHERE log_id = ?", (log_id,))
        self.conn.execute("DELETE FROM answers")
        self.conn.execute("DELETE FROM retrieved_docs")
        self.conn.execute("DELETE FROM feedback")
        self.store.write(records, updates)

    def wipe(self) -> None:
        self._unlock()
        for table in ("records", "answers", "retrieved_docs", "feedback", "logs", "merkle_nodes", "checkpoints"):
            self.conn.execute(f"DELETE FROM {table}")

    def snapshot(self):
        """A backup of the whole database file (SQLite's online backup API)."""
        import sqlite3

        copy = sqlite3.connect(":memory:")
        self.conn.backup(copy)
        return copy

    def restore(self, backup) -> None:
        self._unlock()
        backup.backup(self.conn)

    def set_signed_at(self, log_id: str, signed_at: str) -> None:
        self.sql("UPDATE checkpoints SET signed_at = ? WHERE log_id = ?", signed_at, log_id)

    # derived views
    def sql(self, statement: str, *params: Any) -> None:
        self._unlock()
        self.conn.execute(statement, params)


class OpenSearchInsider:
    def __init__(self, store) -> None:
        self.store, self.client = store, store._client

    def _refresh(self) -> None:
        self.client.indices.refresh(index=f"{self.store.prefix}-*")

    def records(self) -> list[AuditRecord]:
        self._refresh()
        hits = self.client.search(index=self.store.records_pattern, body={"query": {"match_all": {}}, "size": 10000})
        return [AuditRecord.model_validate(h["_source"]) for h in hits["hits"]["hits"]]

    def _where(self, record_id: str) -> str:
        self._refresh()
        hits = self.client.search(index=self.store.records_pattern, body={"query": {"ids": {"values": [record_id]}}})
        return hits["hits"]["hits"][0]["_index"]

    def replace(self, record: AuditRecord) -> None:
        self.client.index(index=self._where(record.record_id), id=record.record_id, body=canonical_json(record),
                          params={"refresh": "true"})

    def delete(self, record_id: str) -> None:
        self.client.delete(index=self._where(record_id), id=record_id, params={"refresh": "true"})

    def insert(self, record: AuditRecord) -> None:
        self.client.index(index=self.store.write_alias, id=record.record_id, body=canonical_json(record),
                          params={"refresh": "true"})

    def _delete_where(self, index: str, query: dict[str, Any]) -> None:
        self.client.delete_by_query(index=index, body={"query": query}, params={"refresh": "true", "conflicts": "proceed"})

    def drop_log_tail(self, log_id: str, keep: int, state: dict[str, Any]) -> None:
        self._delete_where(self.store.records_pattern, {"bool": {"filter": [
            {"term": {"log_id": log_id}}, {"range": {"leaf_index": {"gte": keep}}}]}})
        self._delete_where(self.store.checkpoints_index, {"bool": {"filter": [
            {"term": {"log_id": log_id}}, {"range": {"size": {"gt": keep}}}]}})
        self.client.index(index=self.store.logs_index, id=log_id, body=state, params={"refresh": "true"})

    def replace_log(self, log_id: str, records: list[AuditRecord], updates) -> None:
        for index in (self.store.checkpoints_index, self.store.nodes_index, self.store.records_pattern):
            self._delete_where(index, {"term": {"log_id": log_id}})
        self.client.delete(index=self.store.logs_index, id=log_id, params={"refresh": "true", "ignore": 404})
        self._delete_where(self.store.answers_index, {"match_all": {}})
        self.store.write(records, updates)
        self._refresh()

    def set_signed_at(self, log_id: str, signed_at: str) -> None:
        self.client.update_by_query(index=self.store.checkpoints_index, body={
            "query": {"term": {"log_id": log_id}},
            "script": {"source": "ctx._source.signed_at = params.t", "params": {"t": signed_at}},
        }, params={"refresh": "true", "conflicts": "proceed"})

    def wipe(self) -> None:
        for index in (self.store.records_pattern, self.store.answers_index, self.store.logs_index,
                      self.store.nodes_index, self.store.checkpoints_index):
            self._delete_where(index, {"match_all": {}})

    def _indices(self) -> list[str]:
        return [self.store.records_pattern, self.store.answers_index, self.store.logs_index,
                self.store.nodes_index, self.store.checkpoints_index]

    def snapshot(self) -> list[tuple[str, str, dict[str, Any]]]:
        from opensearchpy.helpers import scan

        self._refresh()
        return [(h["_index"], h["_id"], h["_source"]) for index in self._indices()
                for h in scan(self.client, index=index, query={"query": {"match_all": {}}})]

    def restore(self, snapshot: list[tuple[str, str, dict[str, Any]]]) -> None:
        from opensearchpy.helpers import bulk

        for index in self._indices():
            self._delete_where(index, {"match_all": {}})
        bulk(self.client, ({"_index": i, "_id": d, "_source": src} for i, d, src in snapshot), refresh=True)

    def answer_doc(self, record: AuditRecord) -> tuple[str, dict[str, Any]]:
        from aitrail.store.opensearch import answer_id

        doc_id = answer_id(record.tenant, record.trace_id, record.span_id)
        return doc_id, self.client.get(index=self.store.answers_index, id=doc_id)["_source"]

    def put_answer(self, doc_id: str, source: dict[str, Any]) -> None:
        self.client.index(index=self.store.answers_index, id=doc_id, body=source, params={"refresh": "true"})


# --- one sealed trail per backend ----------------------------------------------------------


@dataclass
class Trail:
    backend: str
    data: Path
    store: Any
    insider: Any
    records: dict[str, AuditRecord]  # as stored (sealed), by record id
    completions: list[AuditRecord]
    retrievals: list[AuditRecord]
    feedbacks: list[AuditRecord]
    settings: Any

    def verify(self, *args: str) -> tuple[int, str]:
        return _run_verify(self, *args)

    def log_of(self, record: AuditRecord) -> str:
        return self.records[record.record_id].log_id


_CAPTURE: dict[str, Any] = {}


def _run_verify(trail: Trail, *args: str) -> tuple[int, str]:
    capsys = _CAPTURE["capsys"]
    capsys.readouterr()
    code = main(["verify", "--data-dir", str(trail.data), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _build(store, settings, sequencing: Sequencing) -> tuple[list, list, list]:
    completions, retrievals, feedbacks = [], [], []
    for i in range(12):
        trace = 500 + i
        retrievals.append(retrieval("acme", trace=trace, span=2, parent=1))
        completions.append(completion("acme", trace=trace, time=iso(24, 7, i), answer=f"Answer number {i}.",
                                      user=f"u_{i % 3}", parent_span_id=f"{2:016x}"))
        if i % 3 == 0:
            feedbacks.append(feedback("acme", trace=trace, score=1.0 if i % 2 == 0 else -1.0))
    fragment = completion("acme", trace=500, origin="log", question="What is our refund policy?",
                          answer="Answer number 0.", time=iso(24, 7, 0))
    other = [completion("globex", trace=900 + i, time=iso(24, 9, i), answer=f"Globex {i}.") for i in range(4)]
    everything = [*retrievals, *completions, fragment, *feedbacks, *other]
    for first in range(0, len(everything), 5):
        sequencing.write(everything[first : first + 5])
    sequencing.tick()
    return completions, retrievals, feedbacks


@pytest.fixture(params=["sqlite", "opensearch"])
def trail(request, tmp_path, monkeypatch, capsys) -> Trail:
    _CAPTURE["capsys"] = capsys
    data = tmp_path / "data"
    if request.param == "opensearch":
        from aitrail.settings import OpenSearchSettings
        from aitrail.store.opensearch import OpenSearchStore

        url = request.getfixturevalue("services").opensearch
        prefix = f"m{uuid.uuid4().hex[:8]}"
        request.addfinalizer(lambda: drop_opensearch_layout(url, prefix))
        monkeypatch.setenv("AITRAIL_OPENSEARCH__URL", url)
        monkeypatch.setenv("AITRAIL_OPENSEARCH__INDEX_PREFIX", prefix)
        store = OpenSearchStore.from_settings(
            OpenSearchSettings(url=url, index_prefix=prefix, refresh_interval="100ms"), refresh="wait_for"
        )
        insider_type: Callable = OpenSearchInsider
    else:
        store = SqliteStore.in_dir(data)
        insider_type = SqliteInsider
    settings = load_settings(None, data_dir=data, integrity={"checkpoint_every": 4, "checkpoint_interval_ms": 1})
    sequencing = open_sequencing(settings, store, create_key=True)
    completions, retrievals, feedbacks = _build(store, settings, sequencing)
    insider = insider_type(store)
    records = {r.record_id: r for r in insider.records()}
    trail = Trail(request.param, data, store, insider, records, completions, retrievals, feedbacks, settings)
    code, out = trail.verify()
    assert code == 0, out
    yield trail
    store.close()


def sealed(trail: Trail, record: AuditRecord) -> AuditRecord:
    return trail.records[record.record_id]


def expect_named(trail: Trail, *names: str) -> str:
    code, out = trail.verify()
    assert code == 1, out
    assert any(name in out for name in names), f"none of {names} named in:\n{out}"
    return out


# --- the records themselves ------------------------------------------------------------------

RECORD_EDITS = {
    "content": lambda r: {"answer": "Refunds are never possible."},
    "cost": lambda r: {"cost": {"amount": Decimal("1.5"), "currency": "USD", "price_table_version": "t"}},
    "time": lambda r: {"start_time": iso(25, 1, 0)},
    "model": lambda r: {"response_model": "gpt-4o"},
    "user": lambda r: {"user_pseudonym": "u_somebody_else"},
}


@pytest.mark.parametrize("field", sorted(RECORD_EDITS))
def test_edit_a_completion(trail, field):
    victim = sealed(trail, trail.completions[5])
    trail.insider.replace(AuditRecord.model_validate({**victim.model_dump(), **RECORD_EDITS[field](victim)}))
    expect_named(trail, victim.record_id)


def test_edit_a_completion_and_its_leaf_hash(trail):
    victim = sealed(trail, trail.completions[6])
    forged = victim.model_copy(update={"response_model": "gpt-4o"})
    trail.insider.replace(forged.model_copy(update={"leaf_hash": recompute(forged).leaf_hash.hex()}))
    expect_named(trail, victim.record_id, trail.log_of(victim))


def test_edit_acl_tags(trail):
    victim = sealed(trail, trail.retrievals[3])
    documents = [d.model_copy(update={"acl_tags": ["public"]}) for d in victim.documents]
    trail.insider.replace(victim.model_copy(update={"documents": documents}))
    expect_named(trail, victim.record_id)


def test_edit_feedback(trail):
    victim = sealed(trail, trail.feedbacks[1])
    trail.insider.replace(victim.model_copy(update={"score": 1.0 if victim.score < 0 else -1.0}))
    expect_named(trail, victim.record_id)


def test_insert_a_forged_record(trail):
    holder = sealed(trail, trail.completions[2])
    forged = completion("acme", trace=999, answer="A forged answer.", time=iso(24, 7, 2)).model_copy(update={
        "log_id": holder.log_id, "leaf_index": holder.leaf_index, "leaf_hash": holder.leaf_hash,
        "content_commitment": holder.content_commitment, "content_salt": holder.content_salt,
    })
    trail.insider.insert(forged)
    expect_named(trail, forged.record_id)


def test_insert_an_unsealed_record(trail):
    forged = completion("acme", trace=998, answer="Nobody sealed me.", time=iso(24, 7, 3))
    trail.insider.insert(forged)
    expect_named(trail, forged.record_id)


def test_delete_a_record(trail):
    victim = sealed(trail, trail.completions[4])
    trail.insider.delete(victim.record_id)
    expect_named(trail, victim.record_id, f"leaf {victim.leaf_index} missing")


def test_reorder_two_records(trail):
    a, b = sealed(trail, trail.completions[1]), sealed(trail, trail.completions[8])
    trail.insider.replace(a.model_copy(update={"leaf_index": b.leaf_index}))
    trail.insider.replace(b.model_copy(update={"leaf_index": a.leaf_index}))
    out = expect_named(trail, a.record_id)
    assert b.record_id in out


def test_fake_erasure(trail):
    """Content stripped and marked erased, with no sealed erasure record: tampering."""
    victim = sealed(trail, trail.completions[7])
    trail.insider.replace(erase(victim, iso(26, 0, 0)))
    expect_named(trail, victim.record_id)


def _seal_an_erasure_of(trail: Trail, victim: AuditRecord, at: str) -> AuditRecord:
    """A real sealed erasure record for `victim`, appended to its log after it."""
    from aitrail.integrity.system import system_record

    cover = system_record("erasure", victim.tenant, {"record_ids": [victim.record_id], "reason": "test"}, at=at)
    sequencing = open_sequencing(trail.settings, trail.store, create_key=False)
    sequencing.write([cover])
    sequencing.tick()
    return cover


def test_erased_at_moved_before_its_erasure_record(trail):
    """A real erasure (a sealed erasure record, then the content removed) verifies; the same
    record with `erased_at` moved to before its sealed reason does not."""
    victim = sealed(trail, trail.completions[6])
    cover = _seal_an_erasure_of(trail, victim, iso(26, 0, 0))
    trail.insider.replace(erase(victim, iso(26, 0, 5)))
    _, out = trail.verify()  # (the insider left the derived rows: those are named, the erasure is not)
    assert "1 erased" in out and "is before the" not in out and "no sealed erasure" not in out, out
    trail.insider.replace(erase(victim, iso(25, 23, 0)))
    out = expect_named(trail, victim.record_id)
    assert f"is before the erasure record {cover.record_id}" in out, out


def test_erased_at_set_on_a_record_that_kept_its_content(trail):
    """`erased_at` on a record whose content and salt are still there: the API would show an
    erasure that never happened."""
    victim = sealed(trail, trail.completions[4])
    trail.insider.replace(victim.model_copy(update={"erased_at": iso(26, 0, 0)}))
    out = expect_named(trail, victim.record_id)
    assert "erased_at set on a record that still has its content" in out, out


# --- the log as a whole --------------------------------------------------------------------


def _acme_log(trail: Trail) -> str:
    return trail.log_of(trail.completions[0])


def test_truncate_the_tail(trail):
    log_id = _acme_log(trail)
    state = trail.store.log_state(log_id)
    keep = 8
    from aitrail.integrity import merkle
    from aitrail.integrity.sequencer import LogState

    leaves = [bytes.fromhex(r.leaf_hash) for r in sorted(
        (r for r in trail.records.values() if r.log_id == log_id), key=lambda r: r.leaf_index)][:keep]
    rng = merkle.CompactRange()
    rng.extend(leaves)
    older = LogState(log_id=log_id, origin=state.origin, size=keep, compact_range=rng.to_bytes(),
                     last_checkpoint_size=keep, last_checkpoint_at=state.last_checkpoint_at)
    trail.insider.drop_log_tail(log_id, keep, older.to_dict())
    expect_named(trail, log_id)


def test_roll_back_to_a_backup(trail):
    """A backup taken earlier is restored after more records were sealed (and mirrored)."""
    backup = trail.insider.snapshot()
    sequencing = open_sequencing(trail.settings, trail.store, create_key=False)
    sequencing.write([completion("acme", trace=700 + i, time=iso(24, 10, i)) for i in range(6)])
    sequencing.tick()
    code, out = trail.verify()
    assert code == 0, out
    trail.insider.restore(backup)
    expect_named(trail, _acme_log(trail))


def test_wipe_everything(trail):
    trail.insider.wipe()
    expect_named(trail, _acme_log(trail))


def test_checkpoint_times_edited(trail):
    """`signed_at` is not in the signed note: the store's copy is checked against the mirror's
    (which `/v1/checkpoints/latest` shows is what an auditor would compare)."""
    log_id = _acme_log(trail)
    trail.insider.set_signed_at(log_id, "2020-01-01T00:00:00.000000000Z")
    out = expect_named(trail, log_id)
    assert "signed at" in out and "2020-01-01T00:00:00.000000000Z" in out, out


def test_re_sign_with_a_key_of_ones_own(trail):
    """No signing key is to be found in the data folder; a key of one's own (with the real
    key's name) re-signs a rebuilt log in which one answer is edited, replacing records, nodes,
    checkpoints and state. Verified against the real key and the mirror: named."""
    from aitrail.integrity.sequencer import LogSequencer, new_log

    for root, _, names in os.walk(trail.data):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert b"PRIVATE+KEY" not in f.read()
    log_id = _acme_log(trail)
    origin = trail.store.log_state(log_id).origin
    forger = Signer.generate(origin[: -len(log_id) - 1])
    originals = sorted((r for r in trail.records.values() if r.log_id == log_id), key=lambda r: r.leaf_index)
    rebuilt = []
    for r in originals:
        plain = r.model_copy(update={"log_id": None, "leaf_index": None, "leaf_hash": None,
                                     "content_commitment": None, "content_salt": None})
        if r.record_id == trail.completions[3].record_id:
            plain = plain.model_copy(update={"answer": "We never refund anything."})
        rebuilt.append(plain)
    sequencer = LogSequencer(new_log(log_id, origin), forger, checkpoint_every=4, checkpoint_interval_s=0)
    plan = sequencer.plan(rebuilt, lambda r: b"k" * 32)
    trail.insider.replace_log(log_id, plan.records, [plan.update])
    expect_named(trail, log_id)


# --- derived views: what the API serves beside the records ----------------------------------


SQLITE = pytest.mark.parametrize("trail", ["sqlite"], indirect=True)
OPENSEARCH = pytest.mark.parametrize("trail", ["opensearch"], indirect=True)


SQLITE_ANSWER_EDITS = {
    "answer": ("answer", "We never refund anything."),
    "question": ("question", "What is the weather?"),
    "cost": ("cost_e10", "cost_e10 * 100"),
    "model": ("model", "gpt-4o"),
    "user": ("user", "u_nobody"),
    "time": ("time", "2026-11-25T00:00:00.000000000Z"),
    "tokens": ("output_tokens", "output_tokens + 1000"),
}


@SQLITE
@pytest.mark.parametrize("field", sorted(SQLITE_ANSWER_EDITS))
def test_sqlite_answers_row_edited(trail, field):
    insider = trail.insider
    column, value = SQLITE_ANSWER_EDITS[field]
    victim = trail.completions[5]
    expression = value if column in value else "?"
    params = () if column in value else (value,)
    insider.sql(f"UPDATE answers SET {column} = {expression} WHERE record_id = ?", *params, victim.record_id)
    expect_named(trail, victim.record_id)


@SQLITE
def test_sqlite_answers_row_deleted_and_inserted(trail):
    insider = trail.insider
    victim = trail.completions[9]
    insider.sql("DELETE FROM answers WHERE record_id = ?", victim.record_id)
    expect_named(trail, victim.record_id)


@SQLITE
def test_sqlite_answers_row_invented(trail):
    insider = trail.insider
    insider.sql(
        "INSERT INTO answers (tenant, trace_id, span_id, record_id, has_span, time, question, answer, terms) "
        "VALUES ('acme', ?, ?, ?, 1, ?, 'q', 'An invented answer', 'an invented answer')",
        f"{4242:032x}", f"{1:016x}", "f" * 32, iso(24, 7, 0),
    )
    expect_named(trail, "f" * 32, f"{4242:032x}")


@SQLITE
def test_sqlite_full_text_terms(trail):
    insider = trail.insider
    victim = trail.completions[2]
    (row,) = insider.conn.execute("SELECT id FROM answers WHERE record_id = ?", (victim.record_id,)).fetchall()
    insider.sql("INSERT INTO answers_fts (rowid, terms) VALUES (?, 'salary')", row[0])
    expect_named(trail, victim.record_id, "answers_fts")


@SQLITE
def test_sqlite_acl_tags(trail):
    insider = trail.insider
    victim = trail.retrievals[4]
    insider.sql("UPDATE retrieved_docs SET acl_tags = '[]' WHERE record_id = ?", victim.record_id)
    expect_named(trail, victim.record_id)


@SQLITE
def test_sqlite_feedback(trail):
    insider = trail.insider
    victim = trail.feedbacks[1]
    insider.sql("UPDATE feedback SET score = 5 WHERE trace_id = ?", victim.trace_id)
    expect_named(trail, victim.record_id, victim.trace_id)


@SQLITE
def test_sqlite_record_moved_to_another_tenant_by_its_column(trail):
    insider = trail.insider
    victim = trail.completions[10]
    insider.sql("UPDATE records SET tenant = 'globex' WHERE record_id = ?", victim.record_id)
    expect_named(trail, victim.record_id)


@SQLITE
def test_sqlite_merkle_node_edited(trail):
    insider = trail.insider
    victim = sealed(trail, trail.completions[1])
    insider.sql("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE log_id = ? AND level = 0 AND idx = ?",
                victim.log_id, victim.leaf_index)
    expect_named(trail, victim.log_id, victim.record_id)


OPENSEARCH_ANSWER_EDITS = {
    "answer": lambda d: {"answer": "We never refund anything."},
    "cost": lambda d: {"cost_e10": (d.get("cost_e10") or 1) * 100},
    "model": lambda d: {"model": "gpt-4o"},
    "user": lambda d: {"user": "u_nobody"},
    "time": lambda d: {"time": "2026-11-25T00:00:00.000000000Z"},
}


@OPENSEARCH
@pytest.mark.parametrize("field", sorted(OPENSEARCH_ANSWER_EDITS))
def test_opensearch_answers_document_edited(trail, field):
    victim = trail.completions[5]
    doc_id, source = trail.insider.answer_doc(victim)
    trail.insider.put_answer(doc_id, {**source, **OPENSEARCH_ANSWER_EDITS[field](source)})
    expect_named(trail, victim.record_id)


@OPENSEARCH
def test_opensearch_answers_document_deleted(trail):
    victim = trail.completions[9]
    doc_id, _ = trail.insider.answer_doc(victim)
    trail.insider.client.delete(index=trail.store.answers_index, id=doc_id, params={"refresh": "true"})
    expect_named(trail, victim.record_id)


# --- the SQLite file's own structure ---------------------------------------------------------


def _rewrite_schema(insider, name: str, sql: str) -> None:
    """What an insider with the file can do to a declaration (SQLite's writable_schema)."""
    conn = insider.conn
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql, name))
    conn.execute(f"PRAGMA schema_version = {version + 1}")
    conn.execute("PRAGMA writable_schema = OFF")


@SQLITE
def test_sqlite_index_rebuilt_without_a_row(trail):
    """A partial index rebuilt, its declaration put back: a trace's replay loses a record."""
    insider = trail.insider
    victim = sealed(trail, trail.retrievals[0])
    original = insider.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'records_trace'").fetchone()[0]
    _rewrite_schema(insider, "records_trace", original + f" WHERE record_id != '{victim.record_id}'")
    insider.conn.execute("REINDEX records_trace")
    _rewrite_schema(insider, "records_trace", original)
    reader = SqliteStore.in_dir(trail.data)
    try:
        assert victim.record_id not in {r.record_id for r in reader.trace(victim.tenant, victim.trace_id)}
    finally:
        reader.close()
    out = expect_named(trail, "records_trace")
    assert "FAILED view [layout]" in out and "integrity_check" in out


@SQLITE
def test_sqlite_full_text_tokenizer_swapped(trail):
    insider = trail.insider
    original = insider.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'answers_fts'").fetchone()[0]
    _rewrite_schema(insider, "answers_fts", original.replace("porter unicode61", "unicode61"))
    out = expect_named(trail, "answers_fts")
    assert "table answers_fts was changed" in out


@SQLITE
def test_sqlite_trigger_added_or_dropped(trail):
    insider = trail.insider
    insider.sql("CREATE TRIGGER quiet AFTER INSERT ON answers BEGIN UPDATE answers SET answer = 'ok' "
                "WHERE id = new.id; END")
    insider.sql("DROP TRIGGER answers_fts_insert")
    out = expect_named(trail, "quiet")
    assert "trigger quiet is not part of the store's layout" in out
    assert "trigger answers_fts_insert is missing" in out


@SQLITE
def test_sqlite_fragment_order_swapped(trail):
    """Which fragment's value an answer shows is decided by the order the log sealed them,
    not by the rows' order in the table."""
    insider = trail.insider
    sequencing = open_sequencing(trail.settings, trail.store, create_key=True)
    first, second = (
        completion("acme", trace=600, origin="log", time=iso(24, 8, 0), answer=answer, record_id=f"{n:032x}")
        for n, answer in ((61, "Yes, the refund is approved."), (62, "No, the refund is denied."))
    )
    sequencing.write([first])
    sequencing.write([second])
    sequencing.tick()
    assert _run_verify(trail)[0] == 0
    rows = {rid: seq for rid, seq in insider.conn.execute(
        "SELECT record_id, seq FROM records WHERE record_id IN (?, ?)", (first.record_id, second.record_id))}
    insider.sql("UPDATE records SET seq = -1 WHERE record_id = ?", first.record_id)
    insider.sql("UPDATE records SET seq = ? WHERE record_id = ?", rows[first.record_id], second.record_id)
    insider.sql("UPDATE records SET seq = ? WHERE record_id = ?", rows[second.record_id], first.record_id)
    # the answers row derived again, as the write path would from the rows in their new order
    row_id, terms = insider.conn.execute("SELECT id, terms FROM answers WHERE trace_id = ?", (first.trace_id,)).fetchone()
    insider.sql("INSERT INTO answers_fts (answers_fts, rowid, terms) VALUES ('delete', ?, ?)", row_id, terms)
    insider.sql("DELETE FROM answers WHERE id = ?", row_id)
    now = {r.record_id: r for r in insider.records()}
    for record in (second, first):
        insider.sql(_UPSERT_ANSWER, *_answer_row(now[record.record_id]))
    insider.sql("CREATE TRIGGER records_append_only BEFORE UPDATE ON records "
                "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END")
    out = expect_named(trail, first.trace_id, first.record_id, second.record_id)
    assert "FAILED view [differs] view answers" in out and "[layout]" not in out


@SQLITE
@pytest.mark.parametrize("how", ["deleted", "not a hash"])
def test_sqlite_merkle_node_deleted_or_mangled(trail, how):
    insider = trail.insider
    victim = sealed(trail, trail.completions[2])
    if how == "deleted":
        insider.sql("DELETE FROM merkle_nodes WHERE log_id = ? AND level = 0 AND idx = ?", victim.log_id,
                    victim.leaf_index)
    else:
        insider.sql("UPDATE merkle_nodes SET hash = X'00' WHERE log_id = ? AND level = 0 AND idx = ?",
                    victim.log_id, victim.leaf_index)
    out = expect_named(trail, victim.log_id)
    assert "[node_mismatch]" in out


@OPENSEARCH
def test_opensearch_answers_index_rebuilt_with_another_analyser(trail):
    """Every document as before, but `answer` analysed otherwise: searches for a stemmed word
    ("refunds" for "refund") miss. The index's mapping is checked against the code's."""
    import copy

    from aitrail.store import opensearch as layout

    client, index = trail.insider.client, trail.store.answers_index
    spare = f"{index}-spare"
    client.reindex(body={"source": {"index": index}, "dest": {"index": spare}}, params={"refresh": "true"})
    mapping = copy.deepcopy(layout._ANSWERS_MAPPING)
    mapping["properties"]["answer"]["analyzer"] = "whitespace"
    client.indices.delete(index=index)
    client.indices.create(index=index, body={"mappings": mapping})
    client.reindex(body={"source": {"index": spare}, "dest": {"index": index}}, params={"refresh": "true"})
    client.indices.delete(index=spare)
    out = expect_named(trail, index)
    assert "FAILED view [layout]" in out and 'answer: analyzer is "whitespace"' in out
