"""The storage seam. Both backends (`SqliteStore`, `OpenSearchStore`) implement it and pass the
same contract suite (tests/store/test_contract.py).

Records are append-only: there is no update path. Writes are idempotent by `record_id`, so a
writer that crashed after the store acknowledged but before its caller committed can simply
write the same batch again.

Tenancy: every read takes the caller's tenant and applies it inside the query itself. A record
of another tenant is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from aitrail.errors import InvalidInput, Unavailable
from aitrail.integrity.sequencer import LogState, LogUpdate, SignedCheckpoint
from aitrail.schemas.record import AuditRecord

from .context import SpanContext


class Outcome(StrEnum):
    """What a write did with one record."""

    STORED = "stored"  # new, now durable
    DUPLICATE = "duplicate"  # already stored with this record_id and the same content: success, nothing changed
    REJECTED = "rejected"  # the store refuses to hold it (its reason in `WriteResult.rejected`): dead-letter it
    CONFLICT = "conflict"  # this record_id is stored with other content: dead-letter it, never a silent success
    # A retriable failure is not an outcome of one record: the write raises a retriable
    # `AitrailError` and the whole batch is written again.


@dataclass(frozen=True)
class WriteResult:
    written: int
    duplicates: int  # already stored with the same record_id and the same content
    # Records not stored, by record_id, with the store's reason.
    rejected: Mapping[str, str] = field(default_factory=dict)
    conflicts: Mapping[str, str] = field(default_factory=dict)
    # Which records were duplicates (not compared: the counts say how many).
    duplicate_ids: frozenset[str] = field(default_factory=frozenset, compare=False)

    def outcome(self, record_id: str) -> Outcome:
        """The outcome of one record of the batch written. A record id given twice in one batch
        is the outcome of its first copy; a later copy with other content is in `conflicts`."""
        if record_id in self.rejected:
            return Outcome.REJECTED
        if record_id in self.conflicts:
            return Outcome.CONFLICT
        return Outcome.DUPLICATE if record_id in self.duplicate_ids else Outcome.STORED

    @property
    def refused(self) -> dict[str, tuple[Outcome, str]]:
        """Every record not stored, by record_id: (REJECTED or CONFLICT, reason)."""
        out = {rid: (Outcome.REJECTED, why) for rid, why in self.rejected.items()}
        out.update({rid: (Outcome.CONFLICT, why) for rid, why in self.conflicts.items()})
        return out


class RecordsRejected(InvalidInput):
    """The store refuses some records of a batch written with Merkle-log updates: they were
    sealed into leaves they cannot occupy, so nothing of the batch is kept (SQLite: the
    transaction rolled back; OpenSearch: the records this write created withdrawn before any
    log update). The sequencer plans the batch again without them."""

    code = "rejected"

    def __init__(self, rejected: Mapping[str, str], total: int) -> None:
        super().__init__(
            f"the store rejected {len(rejected)} of {total} records: "
            + "; ".join(f"record {rid}: {why}" for rid, why in sorted(rejected.items()))
        )
        self.rejected = dict(rejected)


# Fields a re-sent record may differ in and still be the same record: where and when this
# ingestion happened, and what sealing added. Everything else is the record's content.
_NOT_CONTENT = frozenset({
    "ingested_at", "kafka", "collector_version", "cost",
    "log_id", "leaf_index", "leaf_hash", "content_commitment", "content_salt",
})


def same_content(stored: AuditRecord, new: AuditRecord) -> bool:
    """True when `new` (same record_id) is a re-send of `stored`: a duplicate. False is a
    conflict. Ingestion provenance, sealing fields and the cost (priced at ingestion, from a
    price table that may have changed) are not compared; a stored record whose content was
    erased is the same record by definition (its subject's content is never stored again)."""
    if stored.erased_at is not None:
        return True
    return stored.model_dump(mode="json", exclude=_NOT_CONTENT) == new.model_dump(mode="json", exclude=_NOT_CONTENT)


def conflict_reason(stored: AuditRecord, new: AuditRecord) -> str:
    """Which fields differ, for the dead letter of a conflicting record."""
    a, b = stored.model_dump(mode="json", exclude=_NOT_CONTENT), new.model_dump(mode="json", exclude=_NOT_CONTENT)
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    where = f" (sealed in {stored.log_id} at leaf {stored.leaf_index})" if stored.log_id is not None else ""
    return f"record_id {new.record_id} is already stored{where} with other content: {', '.join(fields)} differ"


@dataclass(frozen=True)
class AnswerQuery:
    tenant: str
    text: str | None = None
    start: str | None = None  # ISO time, inclusive
    end: str | None = None  # ISO time, inclusive
    user: str | None = None  # pseudonym
    service: str | None = None
    model: str | None = None  # request or response model
    limit: int = 20
    offset: int = 0
    after: tuple[str, str] | None = None  # cursor: (time, record_id) of the last answer of the previous page
    # Document ACLs. A retrieved document admits a principal holding `tags` when its acl_tags
    # are empty or share a tag with them.
    visible_to: tuple[str, ...] | None = None  # only answers whose retrieved documents all admit these tags
    exposed_to: tuple[str, ...] | None = None  # only answers that used a document NOT admitting these tags


@dataclass
class Answer:
    """One completion as the answers endpoint shows it: the span record merged with the
    content its instrumentation sent as a log event, if any."""

    record_id: str
    trace_id: str
    span_id: str
    time: str | None
    question: str | None
    answer: str | None
    provider: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_amount: Decimal | None
    cost_currency: str | None
    service: str | None
    user: str | None


@dataclass
class AnswerPage:
    answers: list[Answer]
    count: int  # all matches, not only this page


@dataclass(frozen=True)
class CostQuery:
    tenant: str
    start: str | None = None
    end: str | None = None
    group_by: tuple[str, ...] = ("model",)  # any of COST_GROUPS


COST_GROUPS = ("tenant", "service", "model", "user", "feature", "provider", "day")


@dataclass
class CostSummary:
    cost: Decimal
    currency: str | None
    traces: int  # traces with at least one completion in the range
    useful_traces: int  # of those, traces with positive feedback (a feedback record scoring > 0)


@dataclass(frozen=True)
class RecordQuery:
    tenant: str
    kind: str
    start: str | None = None
    end: str | None = None
    limit: int = 50
    after: tuple[str, str] | None = None  # cursor: (start_time, record_id) of the last record seen


@dataclass
class CostRow:
    group: dict[str, str | None]
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    currency: str | None
    unpriced_calls: int  # completions whose model had no price


class Role(StrEnum):
    INGEST = "ingest"
    AUDITOR = "auditor"
    ANALYST = "analyst"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    role: Role


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    role: Role
    created_at: str
    revoked_at: str | None = None


@dataclass
class DeadLetter:
    reason: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRecord:
    """A record as the store holds it: the sealed body, and the store's own copies of body
    fields it filters and sorts by (which an operator could edit without touching the body)."""

    view: str  # where the store keeps records: SQLite `records`, OpenSearch the records index
    row: str  # which row or document: SQLite `seq`, OpenSearch `<index>/<_id>`
    columns: dict[str, Any]  # those copies by field name (SQLite: the records table's columns; OpenSearch: `record_id` = `_id`)
    record: AuditRecord | None  # the body; None when it does not parse (`error` says why)
    error: str | None = None
    order: int | None = None  # arrival position where the store knows it (SQLite `seq`; OpenSearch the leaf index)


@dataclass(frozen=True)
class DerivedRow:
    """One row (SQLite) or document (OpenSearch) of a derived view, as stored."""

    view: str  # table or index name
    row: str  # rowid or `_id`
    values: dict[str, Any]  # by field name; every field the view keeps, None when absent


@dataclass(frozen=True)
class FullTextIndex:
    """A full-text index kept apart from the rows it indexes (SQLite's contentless FTS5 over
    `answers.terms`), as the instances of its terms."""

    view: str
    tokenizer: str  # the FTS5 `tokenize` argument it was built with, to rebuild it elsewhere
    instances: Iterator[tuple[str, int, str, int]]  # (term, rowid of the answers row, column, offset), term order


class FencedError(Unavailable):
    """Another sequencer advanced a log since this writer read its state (a collector that
    lost its partition, frozen and resumed): the stale write is refused, that log's state is
    left as the other writer stored it. Retriable, so the batch is not committed; the writer
    drops what it cached of the log and, if it still owns the partition, plans again from
    the stored state."""

    code = "fenced"

    def __init__(self, message: str, log_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.log_ids = list(log_ids)


def state_to_write(
    log_id: str, stored: LogState | None, new: LogState, expected: Mapping[str, LogState | None]
) -> bool:
    """The compare of `RecordWriter.write`'s compare-and-set, for one log: True when `new` is
    to be written over `stored`, False when the log already holds it (a replay); FencedError
    when `new` does not extend the state it was planned from (or, without an expectation,
    would rewind the log)."""
    if stored == new:
        return False
    if log_id in expected:
        base = expected[log_id]
        if stored == base or (base is None and stored.size == 0):
            return True
        raise FencedError(
            f"log {log_id} was advanced by another sequencer to size {stored.size if stored else 0}; "
            f"this write, planned from size {base.size if base else 0}, is refused (fenced)", [log_id]
        )
    if stored is not None and stored.size > new.size:
        raise FencedError(f"log {log_id} holds {stored.size} leaves; refusing to rewind it to {new.size}", [log_id])
    return True


class RecordWriter(Protocol):
    def write(
        self,
        records: Sequence[AuditRecord],
        updates: Sequence[LogUpdate] = (),
        *,
        expected: Mapping[str, LogState | None] | None = None,
    ) -> WriteResult:
        """Store `records`, and with them the Merkle-log `updates` their sequencing produced
        (new log state, tree nodes, signed checkpoints). Returns only once all of it is
        durable (SQLite: one transaction, fully fsync'd; OpenSearch: the records' bulk
        acknowledged first, then the updates).

        Per record, the result says (`WriteResult.outcome`): stored; duplicate (its
        `record_id` is already stored with the same content, `same_content`: left untouched,
        a success); conflict (stored with other content: left untouched, the new one is not
        stored, `conflicts` says which fields differ); rejected (the store cannot hold it, a
        value its schema refuses: not stored, `rejected` gives the store's reason). The
        caller dead-letters conflicts and rejections and may then acknowledge the batch.
        Without `updates`, a rejection does not stop the other records. With `updates` the
        records are sealed, and a rejected one took a leaf it cannot fill: then nothing of
        the batch is kept and `RecordsRejected` names every rejected record, so that the
        sequencer plans the batch again without them.

        Idempotent: nodes and checkpoints
        already stored with the same value are no-ops, and so is writing a state the log
        already has. A checkpoint stored for the same log and size with a different root, or
        (OpenSearch) a tree node stored with a different hash, is a fork: `ForkError` naming
        the log and the size or node; nothing more is written.

        Log states are compare-and-set. `expected` maps a log id to the state its update was
        planned from (None: a log without a stored state yet); the update's state is stored
        only if the log is still in that state, else `FencedError` and nothing of the batch
        is written (OpenSearch checks before writing and again, atomically, on the state
        itself). A log without an entry only refuses to be rewound (a stored state of larger
        size: `FencedError`).

        Raises a retriable `AitrailError` when the backend is unavailable; then nothing or
        only part of the batch may be stored, and writing the whole batch again is correct."""
        ...

    def records_by_id(self, record_ids: Sequence[str]) -> dict[str, AuditRecord]:
        """The stored bodies of these record ids (any tenant; missing ones left out). Real
        time, like `existing`; the sequencer compares a re-sent record with what is stored
        (duplicate or conflict) before it takes a leaf."""
        ...

    def existing(self, record_ids: Sequence[str]) -> dict[str, tuple[str | None, int | None]]:
        """The stored ones of these record ids (any tenant), with the (log_id, leaf_index)
        they were sealed at. Real time, not subject to search refresh. The sequencer skips
        records whose leaf its log already covers, so a record re-sent by its service never
        takes a second leaf, and plans again (identically) those a failed write left behind."""
        ...


class RecordReader(Protocol):
    def get(self, tenant: str, record_id: str) -> AuditRecord | None:
        """The record, or None when it is missing or belongs to another tenant."""
        ...

    def trace(self, tenant: str, trace_id: str) -> list[AuditRecord]:
        """Every record of the trace for this tenant, ordered by start time then leaf order."""
        ...

    def span_contexts(self, traces: Sequence[tuple[str, str]], record_ids: Sequence[str] = ()) -> list[SpanContext]:
        """The place in its trace and the user / session / conversation of every record of
        these (tenant, trace_id) traces, system records left out: one read for them all (the
        collector's context inheritance, `aitrail.store.context`). SQLite: real time;
        OpenSearch: what is searchable (the refresh interval), plus, in real time, those of
        `record_ids` (records of these traces) stored but not yet searchable."""
        ...

    def search_answers(self, query: AnswerQuery) -> AnswerPage:
        """Completions matching the query, newest first. `text` is full-text over question and
        answer (English words, and Thai/Chinese/Japanese text by character bigrams); a span
        and its log-event fragment count as one answer."""
        ...

    def costs(self, query: CostQuery) -> list[CostRow]:
        """Tokens and cost of span-origin completions grouped as asked (log-event fragments
        repeat their span's usage and are not counted)."""
        ...

    def cost_summary(self, query: CostQuery) -> CostSummary:
        """Total cost in the range, and the traces it bought: all, and those with positive
        feedback ("useful actions")."""
        ...

    def list_records(self, query: RecordQuery) -> list[AuditRecord]:
        """Records of one kind (e.g. `access`), newest first, after the cursor."""
        ...


class LogStore(Protocol):
    """Read side of the Merkle logs; also `aitrail.integrity.verify.IntegrityReader` and
    `NodeReader`, so `aitrail verify` runs on any backend."""

    def log_ids(self) -> list[str]: ...

    def log_state(self, log_id: str) -> LogState | None:
        """The stored sequencing state (None for a log never written)."""
        ...

    def log_size(self, log_id: str) -> int: ...

    def checkpoints(self, log_id: str) -> list[SignedCheckpoint]:
        """Every stored checkpoint of the log, ascending size."""
        ...

    def latest_checkpoint(self, log_id: str) -> SignedCheckpoint | None: ...

    def records_in_log(self, log_id: str) -> Iterator[AuditRecord]:
        """Every record claiming a leaf of the log, ascending leaf index, all tenants."""
        ...

    def nodes(self, log_id: str, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        """Stored tree nodes by (level, index); missing ones are left out."""
        ...


class KeyStore(Protocol):
    def create_key(self, tenant: str, role: Role) -> tuple[str, KeyInfo]:
        """A new random key; only its hash is stored. Returns (plaintext key, info)."""
        ...

    def authenticate(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key, else None."""
        ...

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]: ...

    def revoke_key(self, key_id: str) -> bool: ...


class ViewReader(Protocol):
    """Read-only access to the derived views, so `aitrail.integrity.views.verify_views` can
    rebuild each of them from the sealed records and name every row that differs. Every
    method streams (any size), reads all tenants, and never writes. Ordering is left to the
    caller: it sorts on its own copy, keyed by the sealed bodies, not by the store's columns."""

    def record_columns(self) -> Iterator[StoredRecord]:
        """Every stored record, any tenant, with the store's own copies of its fields."""
        ...

    def derived_answers(self) -> Iterator[DerivedRow]:
        """The answers view (what `search_answers` and `costs` read): one row per completion
        span, `values` holding `tenant`, `trace_id`, `span_id`, `record_id`, `has_span` (bool)
        and every merged field the backend keeps (SQLite adds `terms`, OpenSearch `day` and
        `fragments`)."""
        ...

    def derived_documents(self) -> Iterator[DerivedRow] | None:
        """The retrieved documents the document-ACL filters (`visible_to`, `exposed_to`) read,
        one row per document of a retrieval record: `tenant`, `trace_id`, `record_id`,
        `doc_id`, `acl_tags` (a list, or the stored text when it is not one). None when the
        backend keeps no such view (OpenSearch filters on the records themselves)."""
        ...

    def derived_feedback(self) -> Iterator[DerivedRow] | None:
        """The feedback scores `cost_summary` counts useful actions by: `tenant`, `trace_id`,
        `score` per feedback record. None when the backend keeps no such view (OpenSearch)."""
        ...

    def derived_terms(self) -> FullTextIndex | None:
        """The full-text index of the answers when it is a structure of its own (SQLite);
        None when the backend analyses the answers' own fields (OpenSearch)."""
        ...

    def answer_records(self, tenant: str, spans: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[AuditRecord]]:
        """The completion records (the span's and its log-event fragments) of each
        (trace_id, span_id), for this tenant, in one batched read, each list in arrival order
        (SQLite: as stored; OpenSearch: leaf order). Found by the store's indexed copies of
        tenant, kind, trace and span: a caller that must not trust them checks each body.
        Pairs with no record are left out."""
        ...


class Store(RecordWriter, RecordReader, LogStore, ViewReader, KeyStore, Protocol):
    def ping(self) -> bool:
        """True when the backend answers (readiness)."""
        ...

    def close(self) -> None: ...
