"""SqliteStore: the embedded backend (one file, WAL, FTS5).

`records` holds every record as canonical JSON and refuses updates (a trigger). `answers` is
derived data, one row per completion span, merging the span's record with the content its
instrumentation sent as a log event; it is what `search_answers` and `costs` read and could
be rebuilt from `records`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from aitrail.errors import BadRequest, ConfigError, Unauthorized, Unavailable
from aitrail.integrity.sequencer import ForkError, LogState, LogUpdate, SignedCheckpoint
from aitrail.schemas.canonical import canonical_json, record_from_json
from aitrail.schemas.record import AuditRecord, Kind
from aitrail.tenancy import check_tenant

from .base import (
    COST_GROUPS,
    Answer,
    AnswerPage,
    AnswerQuery,
    CostQuery,
    CostRow,
    CostSummary,
    DeadLetter,
    DerivedRow,
    FullTextIndex,
    RecordQuery,
    RecordsRejected,
    KeyInfo,
    Principal,
    Role,
    StoredRecord,
    WriteResult,
    conflict_reason,
    same_content,
    state_to_write,
)
from .context import INHERITED, SYSTEM_KINDS, SpanContext, inherited_users
from .keys import hash_key, new_key
from .rowmac import RowMac, UnauthenticatedRow
from .text import index_terms, match_expression

log = logging.getLogger(__name__)

# The full-text tokenizer, also for rebuilding the index elsewhere (aitrail.integrity.views).
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    trace_id TEXT,
    span_id TEXT,
    start_time TEXT,
    log_id TEXT,
    leaf_index INTEGER,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_trace ON records (tenant, trace_id);
CREATE INDEX IF NOT EXISTS records_kind ON records (tenant, kind, start_time);
CREATE INDEX IF NOT EXISTS records_leaf ON records (log_id, leaf_index);
-- Traces with a user-bearing record other than a completion (those are in answers_user): the
-- ancestors whose user answers sealed before them inherit at query time (search_answers).
CREATE INDEX IF NOT EXISTS records_user ON records (tenant, json_extract(body, '$.user_pseudonym'), trace_id)
    WHERE kind != 'completion';
CREATE TRIGGER IF NOT EXISTS records_append_only BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    has_span INTEGER NOT NULL,
    time TEXT,
    question TEXT,
    answer TEXT,
    provider TEXT,
    model TEXT,
    request_model TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_e10 INTEGER,
    cost_currency TEXT,
    service TEXT,
    user TEXT,
    feature TEXT,
    terms TEXT,  -- question and answer as search terms (see aitrail.store.text)
    UNIQUE (tenant, trace_id, span_id)
);
-- Newest-first pages walk an index in order and stop at the limit (no sort of all matches).
CREATE INDEX IF NOT EXISTS answers_time ON answers (tenant, time, record_id);
CREATE INDEX IF NOT EXISTS answers_user ON answers (tenant, user, time, record_id);
CREATE INDEX IF NOT EXISTS answers_service ON answers (tenant, service, time, record_id);
-- Narrow enough that counting tens of thousands of full-text hits for a tenant stays cheap.
CREATE INDEX IF NOT EXISTS answers_id_tenant ON answers (id, tenant, time);
CREATE VIRTUAL TABLE IF NOT EXISTS answers_fts USING fts5 (
    terms, content = '', tokenize = '{FTS_TOKENIZE}'
);
-- The index follows `answers` inside SQLite, so a batch costs one statement per table.
CREATE TRIGGER IF NOT EXISTS answers_fts_insert AFTER INSERT ON answers WHEN new.terms IS NOT NULL
BEGIN INSERT INTO answers_fts (rowid, terms) VALUES (new.id, new.terms); END;
CREATE TRIGGER IF NOT EXISTS answers_fts_update AFTER UPDATE OF terms ON answers
    WHEN new.terms IS NOT old.terms
BEGIN
    INSERT INTO answers_fts (answers_fts, rowid, terms) SELECT 'delete', old.id, old.terms WHERE old.terms IS NOT NULL;
    INSERT INTO answers_fts (rowid, terms) SELECT new.id, new.terms WHERE new.terms IS NOT NULL;
END;

-- Derived from retrieval and feedback records, for document-ACL and useful-action queries.
CREATE TABLE IF NOT EXISTS retrieved_docs (
    tenant TEXT NOT NULL, trace_id TEXT NOT NULL, record_id TEXT NOT NULL, doc_id TEXT,
    acl_tags TEXT NOT NULL  -- JSON list; [] admits everyone
);
CREATE INDEX IF NOT EXISTS retrieved_docs_trace ON retrieved_docs (tenant, trace_id);
CREATE TABLE IF NOT EXISTS feedback (tenant TEXT NOT NULL, trace_id TEXT NOT NULL, score REAL);
CREATE INDEX IF NOT EXISTS feedback_trace ON feedback (tenant, trace_id);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);

-- Merkle logs: sequencing state, every completed tree node, signed checkpoints.
CREATE TABLE IF NOT EXISTS logs (log_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merkle_nodes (
    log_id TEXT NOT NULL, level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (log_id, level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    log_id TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL, signed_at TEXT NOT NULL,
    PRIMARY KEY (log_id, size)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

# A field merges order-independently: the span's value wins when it has one.
_MERGED = (
    "time", "question", "answer", "provider", "model", "request_model", "input_tokens",
    "output_tokens", "cost_e10", "cost_currency", "service", "user", "feature", "terms",
)
_UPSERT_ANSWER = (
    "INSERT INTO answers (tenant, trace_id, span_id, record_id, has_span, " + ", ".join(_MERGED) + ") "
    "VALUES (" + ", ".join("?" * (5 + len(_MERGED))) + ") "
    "ON CONFLICT (tenant, trace_id, span_id) DO UPDATE SET "
    "record_id = CASE WHEN excluded.has_span THEN excluded.record_id ELSE answers.record_id END, "
    "has_span = max(answers.has_span, excluded.has_span), "
    + ", ".join(
        f"{f} = CASE WHEN excluded.has_span THEN coalesce(excluded.{f}, answers.{f}) "
        f"ELSE coalesce(answers.{f}, excluded.{f}) END"
        for f in _MERGED
    )
)
_INSERT_RECORD = (
    "INSERT OR IGNORE INTO records (record_id, tenant, kind, origin, trace_id, span_id, start_time, log_id, "
    "leaf_index, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# The records table's copies of body fields (filters and sorting use them, not the body).
_RECORD_COLUMNS = ("record_id", "tenant", "kind", "origin", "trace_id", "span_id", "start_time", "log_id", "leaf_index")

_GROUP_COLUMNS = {
    "tenant": "tenant", "service": "service", "model": "coalesce(model, request_model)",
    "user": "user", "feature": "feature", "provider": "provider", "day": "substr(time, 1, 10)",
}


def _time_range(where: list[str], params: list, column: str, start: str | None, end: str | None) -> None:
    """Add an inclusive time range on `column` (ISO strings compare in time order)."""
    if start is not None:
        where.append(f"{column} >= ?")
        params.append(start)
    if end is not None:
        where.append(f"{column} <= ?")
        params.append(end)


def _answer_row(r: AuditRecord) -> tuple:
    cost = r.cost
    priced = cost is not None and cost.amount is not None
    text = " ".join(t for t in (r.question, r.answer) if t)
    return (
        r.tenant, r.trace_id, r.span_id, r.record_id, int(r.origin == "span"),
        r.start_time, r.question, r.answer, r.provider, r.response_model or r.request_model,
        r.request_model, r.input_tokens, r.output_tokens, int(cost.amount.scaleb(10)) if priced else None,
        cost.currency if priced else None, r.service, r.user_pseudonym, r.feature, index_terms(text) if text else None,
    )


def _temporary_tables() -> list[tuple[str, str]]:
    """(name, CREATE statement of an empty temporary table like it) for each table of the schema."""
    tables, buffer = [], ""
    for line in _SCHEMA.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            match = re.search(r"^CREATE (VIRTUAL )?TABLE IF NOT EXISTS (\w+)", buffer, re.MULTILINE)
            if match:
                name = match.group(2)
                rest = buffer[match.end() :].strip()
                tables.append((name, f"CREATE {match.group(1) or ''}TABLE temp.{name} {rest}"))
            buffer = ""
    return tables


def _from_e10(value: int) -> Decimal:
    """Exact, with ten decimal places as the cost module writes them."""
    whole, fraction = divmod(abs(value), 10**10)
    return Decimal(f"{'-' if value < 0 else ''}{whole}.{fraction:010d}")


@dataclass(frozen=True)
class _Rows:
    """What one record adds to the tables, encoded before anything is inserted."""

    record: tuple
    answer: tuple | None
    documents: list[tuple]
    feedback: tuple | None


# What SQLite raises for a value it will not hold (as opposed to OperationalError: the disk).
_REFUSED = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError)


def _rows(r: AuditRecord) -> _Rows:
    return _Rows(
        record=(r.record_id, r.tenant, r.kind, r.origin, r.trace_id, r.span_id, r.start_time, r.log_id,
                r.leaf_index, canonical_json(r)),
        answer=_answer_row(r) if r.kind == Kind.COMPLETION and r.trace_id and r.span_id else None,
        documents=[
            (r.tenant, r.trace_id, r.record_id, d.doc_id, json.dumps(sorted(d.acl_tags)))
            for d in (r.documents if r.kind == Kind.RETRIEVAL and r.trace_id else ())
        ],
        feedback=(r.tenant, r.trace_id, r.score) if r.kind == Kind.FEEDBACK and r.trace_id else None,
    )


def _insert_rows(conn: sqlite3.Connection, rows: list[_Rows]) -> None:
    conn.executemany(_INSERT_RECORD, [row.record for row in rows])
    conn.executemany(_UPSERT_ANSWER, [row.answer for row in rows if row.answer is not None])
    conn.executemany(
        "INSERT INTO retrieved_docs (tenant, trace_id, record_id, doc_id, acl_tags) VALUES (?, ?, ?, ?, ?)",
        [doc for row in rows for doc in row.documents],
    )
    conn.executemany(
        "INSERT INTO feedback (tenant, trace_id, score) VALUES (?, ?, ?)",
        [row.feedback for row in rows if row.feedback is not None],
    )


# What context inheritance reads of a record (aitrail.store.context), straight from its body.
_CONTEXT_COLUMNS = (
    "tenant, trace_id, span_id, json_extract(body, '$.parent_span_id'), record_id, origin, "
    + ", ".join(f"json_extract(body, '$.{f}')" for f in INHERITED)
    + ", json_extract(body, '$.context_from')"
)
_SYSTEM_KIND_LIST = ", ".join(f"'{k}'" for k in sorted(SYSTEM_KINDS))


def _span_context(row: tuple) -> SpanContext:
    return SpanContext.from_fields(*row[:6], row[6:9], json.loads(row[9]) if row[9] else None)


def _layout(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
    """(type, name) -> declaration of every index, trigger, view and table of the main
    schema (SQLite's own objects left out)."""
    rows = conn.execute(
        "SELECT type, name, coalesce(sql, '') FROM main.sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {(kind, name): " ".join(sql.split()) for kind, name, sql in rows}


def _trigger_table(sql: str) -> str | None:
    match = re.search(r"\bON\s+(\w+)", sql, re.IGNORECASE)
    return match.group(1) if match else None


def _shown_sql(sql: str, limit: int = 160) -> str:
    return sql if len(sql) <= limit else sql[: limit - 1] + "…"


# Tables whose rows no Merkle log seals carry a `mac` (aitrail.store.rowmac), added by ALTER
# TABLE on new and old stores alike, so that both declare them the same way.
_MAC_TABLES = ("api_keys", "secrets", "dead_letters")


def _has_mac(conn: sqlite3.Connection, table: str) -> bool:
    return any(row[1] == "mac" for row in conn.execute(f"PRAGMA table_info({table})"))


def _add_mac_columns(conn: sqlite3.Connection) -> None:
    for table in _MAC_TABLES:
        if not _has_mac(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN mac TEXT")


def _key_refused(key_id: str) -> Unauthorized:
    log.warning("API key %s refused: its row in the key store does not authenticate (changed or added outside "
                "aitrail)", key_id)
    return Unauthorized(f"key {key_id} is refused: its row in the key store was changed or added outside aitrail "
                        "(its MAC does not verify); an admin must create a new key")


def _secret_altered(name: str) -> ConfigError:
    return ConfigError(f"the secret {name!r} in the store does not authenticate: the data folder was altered (the row "
                       "was replaced or added outside aitrail); restore the store from a backup")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _dead_letter_ok(mac: RowMac, row: tuple) -> bool:
    """(id, at, reason, headers JSON, payload, mac) of a dead_letters row."""
    try:
        headers = json.loads(row[3])
    except (TypeError, ValueError):
        return False
    return isinstance(headers, dict) and mac.dead_letter_ok(row[1], row[2], headers, row[4] or b"", row[5])


class SqliteStore:
    """Store on one SQLite file. Thread-safe: one connection per thread, writes serialised."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """`read_only` (`aitrail verify`): open an existing store without writing anything
        to its folder (`_open_read_only`); every write then fails."""
        self.path = path
        self.read_only = read_only
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        if read_only:
            self._conn()  # an unreadable store fails here, with a sentence
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            conn = self._conn()
            # Stores made before these indexes carried record_id (newest-first order): rebuild once.
            for index, columns in (("answers_time", 3), ("answers_user", 4), ("answers_service", 4)):
                found = len(conn.execute(f"PRAGMA index_info({index})").fetchall())
                if found and found != columns:
                    conn.execute(f"DROP INDEX {index}")
            conn.executescript(_SCHEMA)
            _add_mac_columns(conn)

    # The row key (aitrail.custody.attach_row_key): with one, API keys, secrets and dead letters
    # carry a MAC that reads check; without one (a store opened by library code) neither happens.
    row_mac: RowMac | None = None

    @classmethod
    def in_dir(cls, data_dir: Path, *, read_only: bool = False) -> SqliteStore:
        return cls(Path(data_dir) / "aitrail.db", read_only=read_only)

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing, not even the -wal/-shm files a `mode=ro` open
        creates: `immutable=1` when no write-ahead log is in use (the store is closed),
        `mode=ro` when one is (a live store, or one copied or crashed with changes still in
        its -wal). Tables the file lacks read as empty (in-memory stand-ins), so a wiped store
        is reported as loss, not as unreadable. `query_only` refuses every write."""
        if not self.path.is_file():
            raise Unavailable(f"no SQLite store at {self.path}")
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        live = wal.exists() and (wal.stat().st_size > 0 or shm.exists())
        uri = f"{self.path.resolve().as_uri()}?{'mode=ro' if live else 'immutable=1'}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA temp_store = MEMORY")
            present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for name, stand_in in _temporary_tables():
                if name not in present:
                    conn.execute(stand_in)
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.DatabaseError as exc:
            hint = (
                "; its write-ahead log holds changes and the folder is read-only: verify a writable copy"
                if live and "unable to open" in str(exc) else ""
            )
            raise Unavailable(f"cannot read the SQLite store {self.path} read-only: {exc}{hint}") from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None and self.read_only:
            conn = self._local.conn = self._open_read_only()
            self._connections.append(conn)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # acknowledged means on disk
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA cache_size = -65536")
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- RecordWriter -------------------------------------------------------------------

    def write(
        self,
        records: Sequence[AuditRecord],
        updates: Sequence[LogUpdate] = (),
        *,
        expected: Mapping[str, LogState | None] | None = None,
    ) -> WriteResult:
        """One transaction. A record SQLite refuses (a value it cannot bind, such as an
        integer beyond 64 bits, or a body that cannot be encoded) is found by inserting the
        batch again one record at a time under savepoints; with `updates`, any rejection
        rolls the whole transaction back (`RecordsRejected`)."""
        if not records and not updates:
            return WriteResult(0, 0)
        try:
            with self._transaction() as conn:
                for update in updates:  # compare-and-set: the transaction holds the write lock
                    stored = self.log_state(update.log_id, conn)
                    state_to_write(update.log_id, stored, update.state, expected or {})
                fresh, duplicates, conflicts = self._classify(conn, records)
                rows, rejected = [], {}
                for record in fresh:
                    try:
                        rows.append(_rows(record))
                    except (TypeError, ValueError, OverflowError) as exc:  # orjson: JSONEncodeError is a TypeError
                        rejected[record.record_id] = f"SQLite cannot hold the record: {type(exc).__name__}: {exc}"
                written = self._insert_admissible(conn, rows, rejected)
                if rejected and updates:
                    raise RecordsRejected(rejected, len(records))
                for update in updates:
                    self._apply(conn, update)
        except sqlite3.OperationalError as exc:  # disk full, locked past the timeout, I/O error
            raise Unavailable(f"SQLite store {self.path} could not write: {exc}") from exc
        return WriteResult(written, len(duplicates), rejected, conflicts, frozenset(duplicates))

    def _insert_admissible(self, conn: sqlite3.Connection, rows: list[_Rows], rejected: dict[str, str]) -> int:
        """Insert the rows; when SQLite refuses the batch, again one record at a time, and
        the refused ones go to `rejected`. Returns how many were inserted."""
        conn.execute("SAVEPOINT batch")
        try:
            _insert_rows(conn, rows)
            conn.execute("RELEASE batch")
            return len(rows)
        except _REFUSED:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
        inserted = 0
        for row in rows:
            conn.execute("SAVEPOINT one")
            try:
                _insert_rows(conn, [row])
            except _REFUSED as exc:
                conn.execute("ROLLBACK TO one")
                rejected[row.record[0]] = f"SQLite refused the record: {type(exc).__name__}: {exc}"
            else:
                inserted += 1
            conn.execute("RELEASE one")
        return inserted

    def _classify(
        self, conn: sqlite3.Connection, records: Sequence[AuditRecord]
    ) -> tuple[list[AuditRecord], list[str], dict[str, str]]:
        """(records not stored yet, each once; ids of the duplicate copies; conflicts id -> reason)."""
        ids = list({r.record_id for r in records})
        stored = self._bodies(conn, ids) if ids else {}
        fresh: list[AuditRecord] = []
        first: dict[str, AuditRecord] = {}
        duplicates: list[str] = []
        conflicts: dict[str, str] = {}
        for record in records:
            rid = record.record_id
            earlier = stored.get(rid) or first.get(rid)
            if earlier is None:
                first[rid] = record
                fresh.append(record)
            elif isinstance(earlier, str):
                conflicts[rid] = earlier
            elif same_content(earlier, record):
                duplicates.append(rid)
            else:
                conflicts[rid] = conflict_reason(earlier, record)
        return fresh, duplicates, conflicts

    @staticmethod
    def _bodies(conn: sqlite3.Connection, ids: list[str]) -> dict[str, AuditRecord | str]:
        """Stored bodies by record id; a body that does not parse as its reason (a string)."""
        out: dict[str, AuditRecord | str] = {}
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            marks = ", ".join("?" * len(chunk))
            for record_id, body in conn.execute(f"SELECT record_id, body FROM records WHERE record_id IN ({marks})", chunk):
                try:
                    out[record_id] = record_from_json(body)
                except Exception as exc:  # an altered row: never silently taken as a duplicate
                    out[record_id] = f"record_id {record_id} is stored but its body does not parse ({type(exc).__name__})"
        return out

    def records_by_id(self, record_ids: Sequence[str]) -> dict[str, AuditRecord]:
        found = self._bodies(self._conn(), list(set(record_ids)))
        return {rid: body for rid, body in found.items() if not isinstance(body, str)}

    @staticmethod
    def _apply(conn: sqlite3.Connection, update: LogUpdate) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO merkle_nodes (log_id, level, idx, hash) VALUES (?, ?, ?, ?)",
            [(update.log_id, level, index, digest) for level, index, digest in update.nodes],
        )
        for cp in update.checkpoints:
            conn.execute(
                "INSERT OR IGNORE INTO checkpoints (log_id, size, root, note, signed_at) VALUES (?, ?, ?, ?, ?)",
                (cp.log_id, cp.size, cp.root_hash, cp.note, cp.signed_at),
            )
            (stored,) = conn.execute(
                "SELECT root FROM checkpoints WHERE log_id = ? AND size = ?", (cp.log_id, cp.size)
            ).fetchone()
            if stored != cp.root_hash:
                raise ForkError(f"log {cp.log_id} already has a different checkpoint for size {cp.size}")
        conn.execute(
            "INSERT INTO logs (log_id, state) VALUES (?, ?) ON CONFLICT (log_id) DO UPDATE SET state = excluded.state",
            (update.log_id, json.dumps(update.state.to_dict())),
        )

    def existing(self, record_ids: Sequence[str]) -> dict[str, tuple[str | None, int | None]]:
        ids, found = list(set(record_ids)), {}
        conn = self._conn()
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            marks = ", ".join("?" * len(chunk))
            for record_id, log_id, leaf_index in conn.execute(
                f"SELECT record_id, log_id, leaf_index FROM records WHERE record_id IN ({marks})", chunk
            ):
                found[record_id] = (log_id, leaf_index)
        return found

    # -- RecordReader -------------------------------------------------------------------

    def get(self, tenant: str, record_id: str) -> AuditRecord | None:
        row = self._conn().execute(
            "SELECT body FROM records WHERE record_id = ? AND tenant = ?", (record_id, tenant)
        ).fetchone()
        return record_from_json(row[0]) if row else None

    def trace(self, tenant: str, trace_id: str) -> list[AuditRecord]:
        rows = self._conn().execute(
            "SELECT body FROM records WHERE tenant = ? AND trace_id = ? ORDER BY start_time, seq",
            (tenant, trace_id),
        ).fetchall()
        return [record_from_json(body) for (body,) in rows]

    def span_contexts(self, traces: Sequence[tuple[str, str]], record_ids: Sequence[str] = ()) -> list[SpanContext]:
        del record_ids  # real time: the traces' rows hold them already
        by_tenant: dict[str, set[str]] = {}
        for tenant, trace_id in traces:
            by_tenant.setdefault(tenant, set()).add(trace_id)
        conn, out = self._conn(), []
        for tenant, ids in by_tenant.items():
            ordered = sorted(ids)
            for first in range(0, len(ordered), 500):
                chunk = ordered[first : first + 500]
                rows = conn.execute(
                    f"SELECT {_CONTEXT_COLUMNS} FROM records WHERE tenant = ? AND trace_id IN "
                    f"({', '.join('?' * len(chunk))}) AND kind NOT IN ({_SYSTEM_KIND_LIST})",
                    [tenant, *chunk],
                ).fetchall()
                out += [_span_context(row) for row in rows]
        return out

    def search_answers(self, query: AnswerQuery) -> AnswerPage:
        where, params = ["a.tenant = ?"], [query.tenant]
        _time_range(where, params, "a.time", query.start, query.end)
        if query.service is not None:
            where.append("a.service = ?")
            params.append(query.service)
        if query.user is not None:
            # Also the answers without a user of their own whose ancestor span's record has
            # this one (it arrived after they were sealed): see aitrail.store.context.
            if self._inheriting_answers(query):
                where.append("(a.user = ? OR a.id IN (SELECT id FROM temp.context_hits))")
            else:
                where.append("a.user = ?")
            params.append(query.user)
        if query.model is not None:
            where.append("(a.model = ? OR a.request_model = ?)")
            params += [query.model, query.model]
        for tags, negate in ((query.visible_to, True), (query.exposed_to, False)):
            if tags is not None:
                marks = ", ".join("?" * len(tags)) or "NULL"
                where.append(
                    ("NOT " if negate else "") + "EXISTS (SELECT 1 FROM retrieved_docs d WHERE d.tenant = a.tenant "
                    "AND d.trace_id = a.trace_id AND d.acl_tags != '[]' AND NOT EXISTS "
                    f"(SELECT 1 FROM json_each(d.acl_tags) t WHERE t.value IN ({marks})))"
                )
                params += list(tags)
        if query.text:
            expression = match_expression(query.text)
            if expression is None:
                raise BadRequest("q has no searchable words")
            # The hits are gathered once per query (count and page both use them), in this
            # connection's own temporary table. `+` keeps them a filter: the page walks the
            # time index newest first and stops at the limit instead of sorting every hit.
            where.append("+a.id IN (SELECT id FROM temp.fts_hits)")
        clause = " AND ".join(where)
        conn = self._conn()
        if query.text:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS fts_hits (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM temp.fts_hits")
            hits_sql, hits_params = "SELECT rowid FROM answers_fts WHERE answers_fts MATCH ?", [expression]
            if query.start is not None or query.end is not None:
                # Only the full-text rows whose ids fall between those of the window's answers
                # can match; the time filter still decides, so this only narrows the search.
                bounds_where, bounds_params = ["tenant = ?"], [query.tenant]
                _time_range(bounds_where, bounds_params, "time", query.start, query.end)
                low, high = conn.execute(
                    f"SELECT min(id), max(id) FROM answers WHERE {' AND '.join(bounds_where)}", bounds_params
                ).fetchone()
                hits_sql += " AND rowid BETWEEN ? AND ?"
                hits_params += [low if low is not None else 1, high if high is not None else 0]
            conn.execute(f"INSERT INTO temp.fts_hits {hits_sql}", hits_params)
        only_text = len(where) == 2 and query.text  # tenant + text: count the hits by the narrow index
        count_sql = (
            f"SELECT count(*) FROM answers a INDEXED BY answers_id_tenant WHERE {clause.replace('+a.id', 'a.id')}"
            if only_text else f"SELECT count(*) FROM answers a WHERE {clause}"
        )
        count = conn.execute(count_sql, params).fetchone()[0]
        if query.after is not None:  # the page moves; the count stays the count of all matches
            clause += " AND (coalesce(a.time, ''), a.record_id) < (?, ?)"
            params = [*params, *query.after]
        rows = conn.execute(
            "SELECT record_id, trace_id, span_id, time, question, answer, provider, model, input_tokens, "
            f"output_tokens, cost_e10, cost_currency, service, user FROM answers a WHERE {clause} "
            "ORDER BY a.time DESC, a.record_id DESC LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        ).fetchall()
        answers = [
            Answer(
                record_id=r[0], trace_id=r[1], span_id=r[2], time=r[3], question=r[4], answer=r[5],
                provider=r[6], model=r[7], input_tokens=r[8], output_tokens=r[9],
                cost_amount=None if r[10] is None else _from_e10(r[10]), cost_currency=r[11],
                service=r[12], user=r[13],
            )
            for r in rows
        ]
        return AnswerPage(answers=answers, count=count)

    def _inheriting_answers(self, query: AnswerQuery) -> bool:
        """Fill `temp.context_hits` with the answers (row ids) that have no user of their own
        and inherit `query.user` from an ancestor span's record; True when there are any. The
        candidates come from the traces holding a record with that user (two indexed reads:
        records_user, answers_user), then one read of those traces' context."""
        conn, tenant = self._conn(), query.tenant
        where, params = ["a.tenant = ?", "a.trace_id = t.trace_id", "+a.user IS NULL"], [tenant]
        _time_range(where, params, "+a.time", query.start, query.end)
        # CROSS JOIN: walk the few traces with the user, each answers row found by its unique
        # (tenant, trace_id, span_id) index, never the tenant's answers without a user.
        candidates = conn.execute(
            "SELECT a.id, a.trace_id, a.span_id FROM ("
            "SELECT trace_id FROM records WHERE tenant = ? AND json_extract(body, '$.user_pseudonym') = ? "
            "AND kind != 'completion' UNION SELECT trace_id FROM answers WHERE tenant = ? AND user = ?"
            f") AS t CROSS JOIN answers a WHERE {' AND '.join(where)}",
            [tenant, query.user, tenant, query.user, *params],
        ).fetchall()
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS context_hits (id INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM temp.context_hits")
        if not candidates:
            return False
        contexts = self.span_contexts(sorted({(tenant, trace_id) for _, trace_id, _ in candidates}))
        found = inherited_users(contexts, [(tenant, trace_id, span_id) for _, trace_id, span_id in candidates])
        hits = [(row_id,) for row_id, trace_id, span_id in candidates
                if (f := found.get((tenant, trace_id, span_id))) is not None and f.value == query.user]
        conn.executemany("INSERT INTO temp.context_hits (id) VALUES (?)", hits)
        return bool(hits)

    def costs(self, query: CostQuery) -> list[CostRow]:
        unknown = [g for g in query.group_by if g not in COST_GROUPS]
        if unknown:
            raise BadRequest(f"cannot group by {', '.join(unknown)}; choose from {', '.join(COST_GROUPS)}")
        columns = [_GROUP_COLUMNS[g] for g in query.group_by]
        where, params = ["tenant = ?", "has_span = 1"], [query.tenant]
        _time_range(where, params, "time", query.start, query.end)
        select = ", ".join(f"{c} AS g{i}" for i, c in enumerate(columns)) or "NULL"
        group = ", ".join(f"g{i}" for i in range(len(columns)))
        sql = (
            f"SELECT {select}, count(*), total(input_tokens), total(output_tokens), sum(cost_e10), "
            "max(cost_currency), sum(cost_e10 IS NULL) "
            f"FROM answers WHERE {' AND '.join(where)}"
            + (f" GROUP BY {group} ORDER BY {group}" if group else "")
        )
        rows = []
        for row in self._conn().execute(sql, params):
            n = len(columns) or 1
            calls, tokens_in, tokens_out, cost_e10, currency, unpriced = row[n:]
            if calls == 0:
                continue
            rows.append(
                CostRow(
                    group=dict(zip(query.group_by, row[: len(columns)], strict=True)),
                    calls=calls, input_tokens=int(tokens_in), output_tokens=int(tokens_out),
                    cost=_from_e10(cost_e10 or 0), currency=currency, unpriced_calls=unpriced,
                )
            )
        return rows

    # -- ViewReader (read-only, for aitrail.integrity.views) ----------------------------

    def record_columns(self) -> Iterator[StoredRecord]:
        cursor = self._conn().execute(f"SELECT seq, {', '.join(_RECORD_COLUMNS)}, body FROM records ORDER BY seq")
        for seq, *columns, body in cursor:
            try:
                record, error = record_from_json(body), None
            except ValueError as exc:
                record, error = None, str(exc)
            yield StoredRecord(view="records", row=str(seq), columns=dict(zip(_RECORD_COLUMNS, columns, strict=True)),
                               record=record, error=error, order=seq)

    def derived_answers(self) -> Iterator[DerivedRow]:
        names = ("tenant", "trace_id", "span_id", "record_id", "has_span", *_MERGED)
        for row_id, *values in self._conn().execute(f"SELECT id, {', '.join(names)} FROM answers ORDER BY id"):
            row = dict(zip(names, values, strict=True))
            row["has_span"] = bool(row["has_span"])
            yield DerivedRow(view="answers", row=str(row_id), values=row)

    def derived_documents(self) -> Iterator[DerivedRow]:
        cursor = self._conn().execute(
            "SELECT rowid, tenant, trace_id, record_id, doc_id, acl_tags FROM retrieved_docs ORDER BY rowid"
        )
        for row_id, tenant, trace_id, record_id, doc_id, acl_tags in cursor:
            # The text as stored: the ACL filters compare it as text, so must the check.
            yield DerivedRow(view="retrieved_docs", row=str(row_id), values={
                "tenant": tenant, "trace_id": trace_id, "record_id": record_id, "doc_id": doc_id,
                "acl_tags": acl_tags if isinstance(acl_tags, str) else repr(acl_tags),
            })

    def derived_feedback(self) -> Iterator[DerivedRow]:
        for row_id, tenant, trace_id, score in self._conn().execute(
            "SELECT rowid, tenant, trace_id, score FROM feedback ORDER BY rowid"
        ):
            yield DerivedRow(view="feedback", row=str(row_id), values={"tenant": tenant, "trace_id": trace_id, "score": score})

    def layout_problems(self) -> list[str]:
        """What differs in the file's own structure from what this code creates: an index,
        trigger, view or table declaration added or changed (a partial index rebuilt to hide
        rows, a full-text tokenizer swapped, a trigger that rewrites inserts), a trigger
        removed, and whatever `PRAGMA integrity_check` finds (an index that lacks rows of its
        table). Read-only. Tables of other parts of aitrail (dead-letter replays) and indexes
        a store made by an older version lacks are not problems."""
        fresh = sqlite3.connect(":memory:")
        try:
            fresh.executescript(_SCHEMA)
            before_macs = _layout(fresh)  # a store not opened writable since it gained row MACs
            _add_mac_columns(fresh)
            expected = _layout(fresh)
        finally:
            fresh.close()
        conn = self._conn()
        found = _layout(conn)
        problems = []
        for (kind, name), sql in sorted(found.items()):
            if (kind, name) not in expected:
                if kind != "table":
                    problems.append(f"{kind} {name} is not part of the store's layout: {_shown_sql(sql)}")
            elif sql != expected[kind, name] and not (name in _MAC_TABLES and sql == before_macs[kind, name]):
                problems.append(f"{kind} {name} was changed: it reads {_shown_sql(sql)}, "
                                f"aitrail creates {_shown_sql(expected[kind, name])}")
        tables = {name for kind, name in found if kind == "table"}
        for (kind, name), sql in sorted(expected.items()):
            if kind == "trigger" and (kind, name) not in found and _trigger_table(sql) in tables:
                problems.append(f"trigger {name} is missing (it keeps a derived view or the records append-only)")
        for (message,) in conn.execute("PRAGMA integrity_check(50)"):
            if message != "ok":
                problems.append(f"integrity_check: {message}")
        return problems

    def derived_terms(self) -> FullTextIndex | None:
        conn = self._conn()
        if conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'answers_fts'").fetchone() is None:
            return None  # dropped with the rest (reported as loss): no index to compare
        # A view of the index's own entries, in this connection's temporary schema (nothing
        # is written to the store); `ORDER BY term` is the vocabulary's own order (no sort).
        # A read-only connection refuses even its temporary schema (query_only): lifted for
        # this one statement, which cannot reach the store (`mode=ro` / `immutable` refuse that).
        read_only = conn.execute("PRAGMA query_only").fetchone()[0]
        conn.execute("PRAGMA query_only = 0")
        try:
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.answers_fts_instances USING fts5vocab(main, answers_fts, 'instance')"
            )
        finally:
            conn.execute(f"PRAGMA query_only = {int(read_only)}")
        cursor = conn.execute("SELECT term, doc, col, offset FROM temp.answers_fts_instances ORDER BY term")
        return FullTextIndex(view="answers_fts", tokenizer=FTS_TOKENIZE, instances=(tuple(row) for row in cursor))

    def answer_records(self, tenant: str, spans: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[AuditRecord]]:
        wanted = set(spans)
        traces = sorted({trace_id for trace_id, _ in wanted})
        found: dict[tuple[str, str], list[AuditRecord]] = {}
        conn = self._conn()
        for first in range(0, len(traces), 500):
            chunk = traces[first : first + 500]
            rows = conn.execute(
                "SELECT trace_id, span_id, body FROM records WHERE tenant = ? AND kind = ? "
                f"AND trace_id IN ({', '.join('?' * len(chunk))}) ORDER BY seq",
                [tenant, Kind.COMPLETION.value, *chunk],
            )
            for trace_id, span_id, body in rows:
                if (trace_id, span_id) in wanted:
                    found.setdefault((trace_id, span_id), []).append(record_from_json(body))
        return found

    # -- LogStore -----------------------------------------------------------------------

    def log_ids(self) -> list[str]:
        rows = self._conn().execute(
            "SELECT log_id FROM logs UNION SELECT DISTINCT log_id FROM records WHERE log_id IS NOT NULL ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def log_state(self, log_id: str, conn: sqlite3.Connection | None = None) -> LogState | None:
        row = (conn or self._conn()).execute("SELECT state FROM logs WHERE log_id = ?", (log_id,)).fetchone()
        return LogState.from_dict(json.loads(row[0])) if row else None

    def log_size(self, log_id: str) -> int:
        state = self.log_state(log_id)
        return state.size if state else 0

    def checkpoints(self, log_id: str) -> list[SignedCheckpoint]:
        rows = self._conn().execute(
            "SELECT log_id, size, root, note, signed_at FROM checkpoints WHERE log_id = ? ORDER BY size", (log_id,)
        ).fetchall()
        return [SignedCheckpoint(*row) for row in rows]

    def latest_checkpoint(self, log_id: str) -> SignedCheckpoint | None:
        row = self._conn().execute(
            "SELECT log_id, size, root, note, signed_at FROM checkpoints WHERE log_id = ? ORDER BY size DESC LIMIT 1",
            (log_id,),
        ).fetchone()
        return SignedCheckpoint(*row) if row else None

    def records_in_log(self, log_id: str) -> Iterator[AuditRecord]:
        cursor = self._conn().execute(
            "SELECT body FROM records WHERE log_id = ? ORDER BY leaf_index, seq", (log_id,)
        )
        for (body,) in cursor:
            try:
                yield record_from_json(body)
            except ValueError as exc:  # an edited body: its leaf is then missing from the log
                log.warning("log %s: a stored record body does not parse, left out: %s", log_id, exc)

    def nodes(self, log_id: str, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        out: dict[tuple[int, int], bytes] = {}
        conn = self._conn()
        for level, index in keys:
            row = conn.execute(
                "SELECT hash FROM merkle_nodes WHERE log_id = ? AND level = ? AND idx = ?", (log_id, level, index)
            ).fetchone()
            if row:
                out[level, index] = row[0]
        return out

    def cost_summary(self, query: CostQuery) -> CostSummary:
        where, params = ["a.tenant = ?", "a.has_span = 1"], [query.tenant]
        _time_range(where, params, "a.time", query.start, query.end)
        row = self._conn().execute(
            "SELECT sum(a.cost_e10), max(a.cost_currency), count(DISTINCT a.trace_id), count(DISTINCT CASE WHEN "
            "EXISTS (SELECT 1 FROM feedback f WHERE f.tenant = a.tenant AND f.trace_id = a.trace_id AND f.score > 0) "
            f"THEN a.trace_id END) FROM answers a WHERE {' AND '.join(where)}",
            params,
        ).fetchone()
        return CostSummary(cost=_from_e10(row[0] or 0), currency=row[1], traces=row[2], useful_traces=row[3])

    def list_records(self, query: RecordQuery) -> list[AuditRecord]:
        where, params = ["tenant = ?", "kind = ?"], [query.tenant, query.kind]
        _time_range(where, params, "start_time", query.start, query.end)
        if query.after is not None:
            where.append("(coalesce(start_time, ''), record_id) < (?, ?)")
            params += list(query.after)
        rows = self._conn().execute(
            f"SELECT body FROM records WHERE {' AND '.join(where)} "
            "ORDER BY coalesce(start_time, '') DESC, record_id DESC LIMIT ?",
            [*params, query.limit],
        ).fetchall()
        return [record_from_json(body) for (body,) in rows]

    # -- KeyStore -----------------------------------------------------------------------

    def create_key(self, tenant: str, role: Role) -> tuple[str, KeyInfo]:
        key_id, key = new_key()
        info = KeyInfo(key_id=key_id, tenant=check_tenant(tenant), role=Role(role), created_at=_now())
        key_hash = hash_key(key)
        mac = self.row_mac and self.row_mac.key_row(key_id, key_hash, info.tenant, info.role.value, info.created_at, None)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, tenant, role, created_at, mac) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, key_hash, tenant, info.role.value, info.created_at, mac),
            )
        return key, info

    def authenticate(self, key: str) -> Principal | None:
        """Raises Unauthorized (and logs the key id) for a key whose row does not authenticate."""
        row = self._conn().execute(
            "SELECT key_id, key_hash, tenant, role, created_at, revoked_at, mac FROM api_keys "
            "WHERE key_hash = ? AND revoked_at IS NULL",
            (hash_key(key),),
        ).fetchone()
        if row is None:
            return None
        if self.row_mac is not None and not self.row_mac.key_row_ok(*row):
            raise _key_refused(row[0])
        return Principal(key_id=row[0], tenant=row[2], role=Role(row[3]))

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        sql = "SELECT key_id, tenant, role, created_at, revoked_at FROM api_keys"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params = (tenant,)
        rows = self._conn().execute(sql + " ORDER BY created_at", params).fetchall()
        return [KeyInfo(r[0], r[1], Role(r[2]), r[3], r[4]) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        now = _now()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT key_id, key_hash, tenant, role, created_at, revoked_at, mac FROM api_keys "
                "WHERE key_id = ? AND revoked_at IS NULL", (key_id,),
            ).fetchone()
            if row is None:
                return False
            mac = row[6]
            # A row that authenticates stays authentic once revoked; one that does not stays refused.
            if self.row_mac is not None and self.row_mac.key_row_ok(*row):
                mac = self.row_mac.key_row(*row[:5], now)
            conn.execute("UPDATE api_keys SET revoked_at = ?, mac = ? WHERE key_id = ?", (now, mac, key_id))
        return True

    # -- housekeeping -------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the store, created on first use (pseudonym key).
        With a row key, one whose MAC does not verify raises ConfigError naming it."""
        value = secrets.token_bytes(32)
        mac = self.row_mac and self.row_mac.secret_row(name, value)
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value, mac) VALUES (?, ?, ?)", (name, value, mac))
            stored, tag = conn.execute("SELECT value, mac FROM secrets WHERE name = ?", (name,)).fetchone()
        if self.row_mac is not None and not self.row_mac.secret_row_ok(name, stored, tag):
            raise _secret_altered(name)
        return stored

    def add_dead_letter(self, reason: str, payload: bytes, headers: dict[str, str]) -> None:
        """Embedded mode's dead-letter topic: input we could not ingest, kept with the reason."""
        at = _now()
        mac = self.row_mac and self.row_mac.dead_letter(at, reason, headers, payload)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dead_letters (at, reason, headers, payload, mac) VALUES (?, ?, ?, ?, ?)",
                (at, reason, json.dumps(headers, sort_keys=True), payload, mac),
            )

    # -- row authentication (aitrail.store.rowmac) -----------------------------------------

    def row_macs_present(self) -> int:
        """How many API key, secret and dead-letter rows carry a MAC."""
        conn = self._conn()
        return sum(
            conn.execute(f"SELECT count(*) FROM {table} WHERE mac IS NOT NULL").fetchone()[0]
            for table in _MAC_TABLES if _has_mac(conn, table)
        )

    def authenticate_existing_rows(self, mac: RowMac) -> int:
        """MAC every API key, secret and dead-letter row without one: done once, when the row
        key is created (aitrail.custody.attach_row_key). Returns how many."""
        count = 0
        with self._transaction() as conn:
            for row in conn.execute(
                "SELECT key_id, key_hash, tenant, role, created_at, revoked_at FROM api_keys WHERE mac IS NULL"
            ).fetchall():
                conn.execute("UPDATE api_keys SET mac = ? WHERE key_id = ?", (mac.key_row(*row), row[0]))
                count += 1
            for name, value in conn.execute("SELECT name, value FROM secrets WHERE mac IS NULL").fetchall():
                conn.execute("UPDATE secrets SET mac = ? WHERE name = ?", (mac.secret_row(name, value), name))
                count += 1
            for ident, at, reason, headers, payload in conn.execute(
                "SELECT id, at, reason, headers, payload FROM dead_letters WHERE mac IS NULL"
            ).fetchall():
                tag = mac.dead_letter(at, reason, json.loads(headers), payload)
                conn.execute("UPDATE dead_letters SET mac = ? WHERE id = ?", (tag, ident))
                count += 1
        return count

    def unauthenticated_rows(self) -> list[UnauthenticatedRow]:
        """API key, secret and dead-letter rows whose MAC is missing or does not verify
        (`aitrail verify`); none are reported without a row key."""
        if self.row_mac is None:
            return []
        conn, mac, out = self._conn(), self.row_mac, []

        def bad(table: str, query: str, check, name) -> None:
            if not _has_mac(conn, table):
                query = query.replace(", mac FROM", ", NULL FROM")
            for row in conn.execute(query):
                if not check(row):
                    why = "its MAC is missing" if row[-1] is None else "its MAC does not verify"
                    out.append(UnauthenticatedRow(table, name(row), f"{why}: changed or added outside aitrail"))

        bad("api_keys", "SELECT key_id, key_hash, tenant, role, created_at, revoked_at, mac FROM api_keys ORDER BY key_id",
            lambda r: mac.key_row_ok(*r), lambda r: f"key {r[0]}")
        bad("secrets", "SELECT name, value, mac FROM secrets ORDER BY name",
            lambda r: mac.secret_row_ok(*r), lambda r: f"secret {r[0]}")
        bad("dead_letters", "SELECT id, at, reason, headers, payload, mac FROM dead_letters ORDER BY id",
            lambda r: _dead_letter_ok(mac, r), lambda r: f"dead letter {r[0]}")
        return out

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._conn().execute("SELECT reason, payload, headers FROM dead_letters ORDER BY id").fetchall()
        return [DeadLetter(reason=r[0], payload=r[1], headers=json.loads(r[2])) for r in rows]

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return self._conn().execute("SELECT count(*) FROM records").fetchone()[0]
        return self._conn().execute("SELECT count(*) FROM records WHERE tenant = ?", (tenant,)).fetchone()[0]

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._local = threading.local()

