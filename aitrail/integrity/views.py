"""Derived views checked against the sealed records.

What `GET /v1/answers`, `/v1/costs` and the document-ACL filters serve is not read from the
sealed records but from views derived from them: SQLite's `answers` table with its full-text
index `answers_fts`, `retrieved_docs` and `feedback`; OpenSearch's answers index. The records
table's own columns (tenant, trace, kind...) decide which tenant's or trace's reads a record
shows up in. Whoever can write the store can edit any of these without touching a record, so
:func:`verify_log` alone cannot see it.

:func:`verify_views` rebuilds every derived row from the stored record bodies, the way the
store's write path derives it, and names every row that is missing, extra or different. It
does not check the records themselves (that is :func:`~aitrail.integrity.verify.verify_log`'s
job): a record whose body was edited is reported there, and here too when a view was derived
from its original.

Memory stays flat on a store of any size: the expected rows and the stored ones go to a
private temporary SQLite file, sorted by the keys the bodies give, and are merged from there.
Verify a quiet store: a record written while the check runs can show up as a row without
its record, or the reverse.

The merge of a completion span with the content its instrumentation sent as a log event is
the store's (:func:`merge_answer`): a field takes the value of the span record when it has
one, else the first log-event fragment's that has one. The answers endpoint uses the same
rule to show each answer from its sealed records (:func:`answer_differences`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from itertools import groupby
from typing import Any

import orjson

from aitrail.schemas.record import AuditRecord, Kind, Origin
from aitrail.store.base import Answer, DerivedRow, StoredRecord, ViewReader
from aitrail.store.text import index_terms

__all__ = [
    "MERGED_FIELDS",
    "ViewFinding",
    "ViewFindingKind",
    "answer_differences",
    "answer_fragment",
    "from_e10",
    "merge_answer",
    "merged_answer",
    "sealed_order",
    "verify_views",
]

_PROGRESS_EVERY = 4096
_BATCH = 2000
_SHOWN = 60  # characters of a differing value shown in a finding
_TERMS_SHOWN = 8

MERGED_FIELDS = (
    "time", "day", "question", "answer", "provider", "model", "request_model", "input_tokens", "output_tokens",
    "cost_e10", "cost_currency", "service", "user", "feature", "terms",
)
"""Fields of an answer that merge span and log-event values (a backend keeps a subset:
SQLite has no `day`, OpenSearch no `terms`)."""

_ANSWER_KEY = ("tenant", "trace_id", "span_id")

# What the answers endpoint shows, and the field of the merged answer it comes from.
_SHOWN_FIELDS = (
    ("record_id", "record_id"), ("time", "time"), ("question", "question"), ("answer", "answer"),
    ("provider", "provider"), ("model", "model"), ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"), ("service", "service"), ("user", "user"),
)


class ViewFindingKind(StrEnum):
    MISSING = "missing"  # the records derive a row the view lacks
    EXTRA = "extra"  # the view has a row no record derives
    DIFFERS = "differs"  # the row exists with other values than the records derive
    UNREADABLE = "unreadable"  # a stored record body does not parse
    UNSEALED = "unsealed"  # a record in no Merkle log: no sequencer wrote it
    LAYOUT = "layout"  # the store's own structure (schema, indexes, triggers, analysers) was changed
    UNAUTHENTICATED = "unauthenticated"  # an API key, secret or dead-letter row whose row MAC fails (store.rowmac)


@dataclass(frozen=True, slots=True)
class ViewFinding:
    """One mismatch between a derived view and the sealed records. ``view`` is the table or
    index; ``record_id`` / ``trace_id`` / ``row`` say where, as far as known."""

    view: str
    kind: ViewFindingKind
    what: str
    record_id: str | None = None
    trace_id: str | None = None
    row: str | None = None

    def __str__(self) -> str:
        where = [f"view {self.view}"]
        if self.record_id is not None:
            where.append(f"record {self.record_id}")
        if self.trace_id is not None:
            where.append(f"trace {self.trace_id}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return f"[{self.kind}] {' '.join(where)}: {self.what}"


# --- the answers merge ------------------------------------------------------------------


def from_e10(value: int) -> Decimal:
    """A cost in 1e-10 units as the exact decimal the stores show (ten decimal places)."""
    return Decimal(value).scaleb(-10)


def answer_fragment(record: AuditRecord) -> dict[str, Any]:
    """What one completion record contributes to its answer (as the stores' write paths
    derive it: `_answer_row` in SQLite, `_answer_doc` in OpenSearch)."""
    cost = record.cost
    priced = cost is not None and cost.amount is not None
    text = " ".join(t for t in (record.question, record.answer) if t)
    return {
        "record_id": record.record_id, "origin": str(record.origin),
        "time": record.start_time, "day": record.start_time[:10] if record.start_time else None,
        "question": record.question, "answer": record.answer, "provider": record.provider,
        "model": record.response_model or record.request_model, "request_model": record.request_model,
        "input_tokens": record.input_tokens, "output_tokens": record.output_tokens,
        "cost_e10": int(cost.amount.scaleb(10)) if priced else None, "cost_currency": cost.currency if priced else None,
        "service": record.service, "user": record.user_pseudonym, "feature": record.feature,
        "terms": index_terms(text) if text else None,
    }


def merge_answer(fragments: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer that the fragments (:func:`answer_fragment`) of one span's completion
    records derive, given in arrival order: a field takes the span record's value when it has
    one, else the first log-event fragment's; the record id is the span's, else the first
    fragment's; `fragments` lists every record id. None for no fragments."""
    merged: dict[str, Any] = {}
    ids: list[str] = []
    for values in fragments:
        record_id = values["record_id"]
        span = values["origin"] == Origin.SPAN
        if span or "record_id" not in merged:
            merged["record_id"] = record_id
        merged["has_span"] = span or merged.get("has_span", False)
        for field in MERGED_FIELDS:
            value = values.get(field)
            if value is not None and (span or merged.get(field) is None):
                merged[field] = value
            else:
                merged.setdefault(field, None)
        ids.append(record_id)
    if not ids:
        return None
    merged["fragments"] = sorted(set(ids))
    return merged


def sealed_order(items: list, position: Callable[[Any], tuple[str | None, int | None]]) -> list:
    """The fragments of one answer in the order their log sealed them: by leaf index when
    every one is sealed into the same log (the store's own order cannot be trusted: a
    swapped row order would change which fragment's value wins), else as given (arrival)."""
    positions = [position(item) for item in items]
    logs = {log for log, _ in positions}
    if len(logs) == 1 and None not in logs and all(leaf is not None for _, leaf in positions):
        return [item for _, item in sorted(zip((leaf for _, leaf in positions), items, strict=True),
                                           key=lambda pair: pair[0])]
    return items


def merged_answer(records: Iterable[AuditRecord]) -> dict[str, Any] | None:
    """:func:`merge_answer` of the completion records of one span, in sealed order
    (:func:`sealed_order`; arrival order across logs)."""
    ordered = sealed_order(list(records), lambda r: (r.log_id, r.leaf_index))
    return merge_answer(answer_fragment(r) for r in ordered)


def answer_differences(expected: dict[str, Any], row: Answer) -> list[str]:
    """The fields in which an answers-endpoint row differs from the merged sealed answer."""
    differ = [name for name, field in _SHOWN_FIELDS if getattr(row, name) != expected.get(field)]
    cost_e10, currency = expected.get("cost_e10"), expected.get("cost_currency")
    if row.cost_amount != (None if cost_e10 is None else from_e10(cost_e10)) or row.cost_currency != currency:
        differ.append("cost")
    return differ


def _stored_differences(expected: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Every field of a stored answers row that differs from what the records derive."""
    out = []
    for field, stored in values.items():
        if field in _ANSWER_KEY:
            continue
        wanted = expected.get(field)
        if field == "fragments":
            stored = sorted(set(stored or []))
        if stored != wanted:
            out.append(f"{field} is {_show(stored)}, the records say {_show(wanted)}")
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


# --- verification -----------------------------------------------------------------------


_SCRATCH = """
CREATE TABLE seen (record_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE fragments (tenant TEXT, trace_id TEXT, span_id TEXT, late INTEGER, ord INTEGER, record_id TEXT,
                        body BLOB, log_id TEXT, leaf_index INTEGER);
CREATE TABLE answers_expected (tenant TEXT, trace_id TEXT, span_id TEXT, body BLOB);
CREATE TABLE answers_stored (tenant TEXT, trace_id TEXT, span_id TEXT, row TEXT, body BLOB);
CREATE TABLE docs_expected (record_id TEXT, tenant TEXT, trace_id TEXT, doc_id TEXT, acl_tags TEXT);
CREATE TABLE docs_stored (record_id TEXT, tenant TEXT, trace_id TEXT, doc_id TEXT, acl_tags TEXT, row TEXT);
CREATE TABLE feedback_expected (tenant TEXT, trace_id TEXT, score REAL, record_id TEXT);
CREATE TABLE feedback_stored (tenant TEXT, trace_id TEXT, score REAL, row TEXT);
"""


class _Scratch:
    """The private temporary database the check sorts and merges in (deleted on close)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)  # "": a temporary file, not memory
        self.db.executescript(_SCRATCH)

    def load(self, sql: str, rows: Iterable[tuple], progress: Callable[[int], None] | None = None) -> int:
        count = 0
        self.db.execute("BEGIN")
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            count += 1
            if len(batch) == _BATCH:
                self.db.executemany(sql, batch)
                batch.clear()
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress(count)
        self.db.executemany(sql, batch)
        self.db.execute("COMMIT")
        return count

    def close(self) -> None:
        self.db.close()


class _Check:
    def __init__(self, store: ViewReader, progress: Callable[[str, int], None] | None) -> None:
        self.store = store
        self.progress = progress
        self.findings: list[ViewFinding] = []
        self.scratch = _Scratch()
        self.records_view = "records"

    def tick(self, stage: str) -> Callable[[int], None] | None:
        return None if self.progress is None else (lambda done: self.progress(stage, done))  # type: ignore[misc]

    def find(self, view: str, kind: ViewFindingKind, what: str, **where: str | None) -> None:
        self.findings.append(ViewFinding(view, kind, what, **where))

    def load_stored(
        self, rows: Iterable[DerivedRow], view: str, sql: str, shape: Callable[[dict[str, Any], str], tuple]
    ) -> str:
        """Copy a stored view into the scratch database; returns its name as the store gives it."""
        names: list[str] = []

        def shaped() -> Iterator[tuple]:
            for derived in rows:
                if not names:
                    names.append(derived.view)
                yield shape(derived.values, derived.row)

        self.scratch.load(sql, shaped(), self.tick(view))
        return names[0] if names else view

    # -- the records: their columns, and what each derives ------------------------------

    def read_records(self) -> None:
        db = self.scratch.db
        db.execute("BEGIN")
        count = 0
        fragments, docs, feedback = [], [], []
        for stored in self.store.record_columns():
            count += 1
            self.records_view = stored.view
            record = self.columns(stored)
            if record is not None and db.execute(
                "INSERT OR IGNORE INTO seen (record_id) VALUES (?)", (record.record_id,)
            ).rowcount:  # a record stored twice (two OpenSearch indices) derives its rows once
                self.derive(record, stored.order, fragments, docs, feedback)
            if len(fragments) + len(docs) + len(feedback) >= _BATCH:
                self.flush(fragments, docs, feedback)
            if self.progress is not None and count % _PROGRESS_EVERY == 0:
                self.progress("records", count)
        self.flush(fragments, docs, feedback)
        db.execute("COMMIT")
        if self.progress is not None:
            self.progress("records", count)

    def columns(self, stored: StoredRecord) -> AuditRecord | None:
        record = stored.record
        if record is None:
            self.find(stored.view, ViewFindingKind.UNREADABLE, f"the stored body does not parse: {stored.error}",
                      record_id=stored.columns.get("record_id"), row=stored.row)
            return None
        if record.log_id is None or record.leaf_index is None:
            # Every record a sequencer writes is sealed; one that is not was put in the store
            # some other way (or written with integrity off) and proves nothing.
            self.find(stored.view, ViewFindingKind.UNSEALED,
                      "the record is in no Merkle log: no sequencer sealed it, nothing proves it",
                      record_id=record.record_id, trace_id=record.trace_id, row=stored.row)
        for column, value in stored.columns.items():
            sealed = getattr(record, column)
            if value != sealed:
                self.find(stored.view, ViewFindingKind.DIFFERS,
                          f"column {column} is {_show(value)}, the sealed record says {_show(sealed)}",
                          record_id=record.record_id, trace_id=record.trace_id, row=stored.row)
        return record

    @staticmethod
    def derive(record: AuditRecord, order: int | None, fragments: list, docs: list, feedback: list) -> None:
        """The rows the store's write path derives from one record."""
        if record.kind == Kind.COMPLETION and record.trace_id and record.span_id:
            fragments.append((record.tenant, record.trace_id, record.span_id, order is None, order, record.record_id,
                              orjson.dumps(answer_fragment(record)), record.log_id, record.leaf_index))
        elif record.kind == Kind.RETRIEVAL and record.trace_id:
            docs.extend((record.record_id, record.tenant, record.trace_id, d.doc_id, _tags(sorted(d.acl_tags)))
                        for d in record.documents)
        elif record.kind == Kind.FEEDBACK and record.trace_id:
            feedback.append((record.tenant, record.trace_id, record.score, record.record_id))

    def flush(self, fragments: list, docs: list, feedback: list) -> None:
        db = self.scratch.db
        db.executemany("INSERT INTO fragments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", fragments)
        db.executemany("INSERT INTO docs_expected VALUES (?, ?, ?, ?, ?)", docs)
        db.executemany("INSERT INTO feedback_expected VALUES (?, ?, ?, ?)", feedback)
        fragments.clear()
        docs.clear()
        feedback.clear()

    # -- answers ------------------------------------------------------------------------

    def answers(self) -> None:
        db = self.scratch.db
        db.execute("CREATE INDEX fragments_order ON fragments (tenant, trace_id, span_id, late, ord, record_id)")
        merged = (
            (*key, orjson.dumps(merge_answer(orjson.loads(r[6]) for r in sealed_order(list(rows), lambda r: r[7:9]))))
            for key, rows in groupby(
                db.execute("SELECT * FROM fragments ORDER BY tenant, trace_id, span_id, late, ord, record_id"),
                key=lambda r: r[:3],
            )
        )
        # Written while the fragments are read: another table of the same scratch database.
        self.scratch.load("INSERT INTO answers_expected VALUES (?, ?, ?, ?)", merged)
        view = self.load_stored(
            self.store.derived_answers(), "answers", "INSERT INTO answers_stored VALUES (?, ?, ?, ?, ?)",
            lambda v, row: (v.get("tenant"), v.get("trace_id"), v.get("span_id"), row, orjson.dumps(v, default=str)),
        )
        joined = db.execute(
            "SELECT 0, tenant, trace_id, span_id, NULL, body FROM answers_expected UNION ALL "
            "SELECT 1, tenant, trace_id, span_id, row, body FROM answers_stored "
            "ORDER BY 2, 3, 4, 1, 5"
        )
        for (tenant, trace_id, span_id), rows in groupby(joined, key=lambda r: r[1:4]):
            rows = list(rows)
            expected = orjson.loads(rows[0][5]) if rows[0][0] == 0 else None
            stored = [r for r in rows if r[0] == 1]
            where = f"tenant {tenant} span {span_id}"
            if expected is not None and not stored:
                self.find(view, ViewFindingKind.MISSING, f"no row for the sealed completion ({where})",
                          record_id=expected["record_id"], trace_id=trace_id)
                continue
            for n, row in enumerate(stored):
                values = orjson.loads(row[5])
                if expected is None or n > 0:
                    why = "no sealed completion record derives it" if expected is None else "a second row for the span"
                    self.find(view, ViewFindingKind.EXTRA, f"{why} ({where}, claims record {values.get('record_id')})",
                              record_id=values.get("record_id"), trace_id=trace_id, row=row[4])
                    continue
                differences = _stored_differences(expected, values)
                if differences:
                    self.find(view, ViewFindingKind.DIFFERS,
                              "derived row differs from the sealed records: " + "; ".join(differences),
                              record_id=expected["record_id"], trace_id=trace_id, row=row[4])

    # -- the full-text index (SQLite) ---------------------------------------------------

    def full_text(self) -> None:
        index = self.store.derived_terms()
        if index is None:
            return
        db = self.scratch.db
        db.execute(
            f"CREATE VIRTUAL TABLE fts_expected USING fts5 (terms, content = '', tokenize = '{index.tokenizer}')"
        )
        db.execute("CREATE INDEX answers_stored_key ON answers_stored (tenant, trace_id, span_id)")
        # Each stored answers row's full-text entry should hold the terms its sealed records derive.
        rows = db.execute(
            "SELECT CAST(s.row AS INTEGER), e.body FROM answers_stored s JOIN answers_expected e "
            "ON (e.tenant, e.trace_id, e.span_id) = (s.tenant, s.trace_id, s.span_id)"
        )
        self.scratch.load(
            "INSERT INTO fts_expected (rowid, terms) VALUES (?, ?)",
            ((row_id, terms) for row_id, body in rows if (terms := orjson.loads(body).get("terms")) is not None),
        )
        db.execute("CREATE VIRTUAL TABLE temp.fts_expected_instances USING fts5vocab(main, fts_expected, 'instance')")
        expected = db.execute("SELECT term, doc, col, offset FROM temp.fts_expected_instances ORDER BY term")
        missing: dict[int, list[str]] = {}
        extra: dict[int, list[str]] = {}
        for side, (term, doc, _col, _offset) in _merge_sorted(expected, index.instances, self.tick("answers_fts")):
            (missing if side < 0 else extra).setdefault(doc, []).append(term)
        for doc in sorted(set(missing) | set(extra)):
            found = db.execute(
                "SELECT trace_id, body FROM answers_stored WHERE row = ? LIMIT 1", (str(doc),)
            ).fetchone()
            record_id = orjson.loads(found[1]).get("record_id") if found else None
            parts = []
            if found is None:
                parts.append("belongs to no answers row (terms: " + _terms(extra.get(doc, [])) + ")")
            if missing.get(doc):
                parts.append("lacks terms the sealed record has: " + _terms(missing[doc]))
            if extra.get(doc) and found is not None:
                parts.append("has terms the sealed record lacks: " + _terms(extra[doc]))
            self.find(index.view, ViewFindingKind.DIFFERS if found else ViewFindingKind.EXTRA,
                      f"entry {doc} " + "; ".join(parts), record_id=record_id,
                      trace_id=found[0] if found else None, row=str(doc))

    # -- retrieved documents and feedback (SQLite) --------------------------------------

    def documents(self) -> None:
        rows = self.store.derived_documents()
        if rows is None:
            return
        view = self.load_stored(
            rows, "retrieved_docs", "INSERT INTO docs_stored VALUES (?, ?, ?, ?, ?, ?)",
            lambda v, row: (v["record_id"], v["tenant"], v["trace_id"], v["doc_id"], _tags(v["acl_tags"]), row),
        )
        joined = self.scratch.db.execute(
            "SELECT 0, record_id, tenant, trace_id, doc_id, acl_tags, NULL FROM docs_expected UNION ALL "
            "SELECT 1, record_id, tenant, trace_id, doc_id, acl_tags, row FROM docs_stored ORDER BY 2, 1, 5, 7"
        )
        for record_id, rows_of in groupby(joined, key=lambda r: r[1]):
            rows_of = list(rows_of)
            expected = Counter(r[2:6] for r in rows_of if r[0] == 0)
            stored = Counter(r[2:6] for r in rows_of if r[0] == 1)
            if expected == stored:
                continue
            trace_id = (rows_of[0][3])
            lacking, surplus = expected - stored, stored - expected
            parts = []
            for tenant, trace, doc_id, tags in sorted(lacking.elements(), key=str):
                same = [s for s in surplus if s[2] == doc_id]
                if same:
                    other = same[0]
                    surplus[other] -= 1
                    if surplus[other] <= 0:
                        del surplus[other]
                    changed = [f"{name} {got if name == 'acl_tags' else _show(got)} "
                               f"(sealed: {want if name == 'acl_tags' else _show(want)})"
                               for name, got, want in (("tenant", other[0], tenant), ("trace", other[1], trace),
                                                       ("acl_tags", other[3], tags))
                               if got != want]
                    parts.append(f"doc {doc_id} stored with " + ", ".join(changed))
                else:
                    parts.append(f"doc {doc_id} (acl_tags {orjson.loads(tags)}) is missing")
            for (tenant, trace, doc_id, tags), n in sorted(surplus.items(), key=str):
                parts.append(f"doc {doc_id} (acl_tags {tags}, tenant {tenant}, trace {trace}) is not in the sealed "
                             f"record" + (f" ({n} times)" if n > 1 else ""))
            kind = (ViewFindingKind.MISSING if not stored else ViewFindingKind.EXTRA if not expected
                    else ViewFindingKind.DIFFERS)
            self.find(view, kind, "; ".join(parts), record_id=record_id, trace_id=trace_id)

    def feedback(self) -> None:
        rows = self.store.derived_feedback()
        if rows is None:
            return
        view = self.load_stored(
            rows, "feedback", "INSERT INTO feedback_stored VALUES (?, ?, ?, ?)",
            lambda v, row: (v["tenant"], v["trace_id"], v["score"], row),
        )
        joined = self.scratch.db.execute(
            "SELECT 0, tenant, trace_id, score, record_id FROM feedback_expected UNION ALL "
            "SELECT 1, tenant, trace_id, score, row FROM feedback_stored ORDER BY 2, 3, 1, 4"
        )
        for (tenant, trace_id), rows_of in groupby(joined, key=lambda r: r[1:3]):
            rows_of = list(rows_of)
            expected = Counter(r[3] for r in rows_of if r[0] == 0)
            stored = Counter(r[3] for r in rows_of if r[0] == 1)
            if expected == stored:
                continue
            record_ids = sorted(r[4] for r in rows_of if r[0] == 0)
            kind = (ViewFindingKind.MISSING if not stored else ViewFindingKind.EXTRA if not expected
                    else ViewFindingKind.DIFFERS)
            self.find(view, kind, f"scores stored {sorted(stored.elements(), key=_nulls_first)} for tenant {tenant}, "
                                  f"the sealed feedback records say {sorted(expected.elements(), key=_nulls_first)}",
                      record_id=", ".join(record_ids) or None, trace_id=trace_id)

    def layout(self) -> None:
        """The store's own structure: an index rebuilt to lack rows, a swapped tokenizer or
        analyser, an added trigger would change what the views serve while every row checks."""
        problems = getattr(self.store, "layout_problems", None)
        for problem in problems() if problems is not None else ():
            self.find("layout", ViewFindingKind.LAYOUT, problem)

    def unauthenticated(self) -> None:
        """API keys, secrets and dead letters are in no Merkle log: their row MACs
        (aitrail.store.rowmac) say whether aitrail wrote them as they are."""
        rows = getattr(self.store, "unauthenticated_rows", None)
        for bad in rows() if rows is not None else ():
            self.find(bad.view, ViewFindingKind.UNAUTHENTICATED, bad.what, row=bad.row)

    def run(self) -> list[ViewFinding]:
        try:
            self.layout()
            self.unauthenticated()
            self.read_records()
            self.answers()
            self.full_text()
            self.documents()
            self.feedback()
        finally:
            self.scratch.close()
        return self.findings


def _merge_sorted(
    expected: Iterable[tuple], stored: Iterable[tuple], progress: Callable[[int], None] | None
) -> Iterator[tuple[int, tuple]]:
    """Walk two streams sorted alike; yield (-1, item) for items only `expected` has and
    (1, item) for those only `stored` has."""
    left, right = iter(expected), iter(stored)
    a, b = next(left, None), next(right, None)
    count = 0
    while a is not None or b is not None:
        count += 1
        if progress is not None and count % _PROGRESS_EVERY == 0:
            progress(count)
        if b is None or (a is not None and tuple(a) < tuple(b)):
            yield -1, tuple(a)
            a = next(left, None)
        elif a is None or tuple(b) < tuple(a):
            yield 1, tuple(b)
            b = next(right, None)
        else:
            a, b = next(left, None), next(right, None)


def _tags(value: Any) -> str:
    """ACL tags as compared: exactly the text SQLite's write path stores for the list
    (`json.dumps`), or the stored text as it is. Compared as text, not parsed: the document-
    ACL filters compare the text too (`'[ ]'` is not `'[]'` to them)."""
    return json.dumps(value) if isinstance(value, list) else str(value)


def _terms(terms: list[str]) -> str:
    unique = sorted(set(terms))
    return ", ".join(unique[:_TERMS_SHOWN]) + (f" and {len(unique) - _TERMS_SHOWN} more" if len(unique) > _TERMS_SHOWN else "")


def _nulls_first(score: float | None) -> tuple[bool, float]:
    return (score is not None, score or 0.0)


def verify_views(store: ViewReader, *, progress: Callable[[str, int], None] | None = None) -> list[ViewFinding]:
    """Rebuild every derived view of `store` from its stored records and return each row that
    is missing, extra or different, naming the view, the record and what differs; also each
    record whose store columns (tenant, kind, origin, trace, span, time, log, leaf; on
    OpenSearch the `_id`) disagree with its body. Read-only. An empty list: every view is
    what the records derive. ``progress(stage, done)`` is called every few thousand items."""
    return _Check(store, progress).run()
