"""OpenSearchStore: the scale-out backend (layout and tuning in docs/opensearch.md).

For index prefix P:

- `P-records-000001`, `-000002`, …: every record as its canonical JSON, `_id` = record_id,
  created from the index template `P-records`. The alias `P-records` is the write alias
  (rollover moves it); reads go to the pattern `P-records-*`, so rolled-over indices stay
  visible.
- `P-answers`: derived data, one document per completion span, merging the span's record
  with its log-event fragment by the stored painless script `P-answers-merge`; what
  `search_answers` and `costs` read, and could be rebuilt from the records.
- `P-logs` (one sequencing state per Merkle log), `P-merkle-nodes` (every completed tree
  node, `_id` = `<log>/<level>/<index>`) and `P-checkpoints` (signed checkpoints,
  `_id` = `<log>/<size>`).
- `P-keys` (API keys, hashed) and `P-secrets`.

Thread-safe: the opensearch-py client pools its connections.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opensearchpy import OpenSearch
from opensearchpy.helpers import scan
from opensearchpy.exceptions import (
    ConflictError,
    ConnectionError,
    ConnectionTimeout,
    NotFoundError,
    RequestError,
    TransportError,
)
from opensearchpy.serializer import JSONSerializer

from aitrail.errors import AitrailError, BadRequest, ConfigError, InvalidInput, Unauthorized, Unavailable
from aitrail.integrity.sequencer import ForkError, LogState, LogUpdate, SignedCheckpoint
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.generate import DATE, MULTILINGUAL_TEXT, index_template
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
    DerivedRow,
    FullTextIndex,
    KeyInfo,
    Principal,
    RecordQuery,
    RecordsRejected,
    Role,
    StoredRecord,
    WriteResult,
    conflict_reason,
    same_content,
    FencedError,
    state_to_write,
)
from .context import INHERITED, SYSTEM_KINDS, SpanContext, inherited_users
from .keys import PREFIX as KEY_PREFIX
from .keys import hash_key, new_key
from .rowmac import RowMac, UnauthenticatedRow
from .text import match_expression

if TYPE_CHECKING:
    from aitrail.settings import OpenSearchSettings

log = logging.getLogger(__name__)

_TIMEOUT_S = 30
_PAGE = 10_000  # index.max_result_window: the largest page one search may return
_GROUPS_PAGE = 1_000  # cost groups per composite aggregation page
_KEYS_PAGE = 50_000  # trace ids per composite aggregation page (below search.max_buckets, 65,535)
_SCAN_PAGE = 2_000  # hits per scroll page when reading whole indices
_MAX_TERMS = 65_536  # index.max_terms_count: the most values one `terms` query may hold
# Where a missing date sorts: the epoch, the least `date_nanos` value, so last when descending
# and first when ascending. Not `missing: _last`/`_first`: those sort it as Long.MIN_VALUE,
# which OpenSearch 2.19 fails to format as a `date_nanos` (a 500, "nanoseconds [...] are
# before the epoch") whenever a page of a longer result ends on such a document.
_MISSING_TIME = 0
_EXACT_DOUBLE = 2**53  # sums below this are exact in the double the sum aggregation returns
_COST_SPLIT = 1_000_000  # cost_e10 = hi * _COST_SPLIT + lo, summed apart when a total is too big


def _keyword() -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": 1024}


def _text() -> dict[str, Any]:
    return orjson.loads(orjson.dumps(MULTILINGUAL_TEXT))


_ANSWERS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "tenant": _keyword(),
        "trace_id": _keyword(),
        "span_id": _keyword(),
        "record_id": _keyword(),  # the span's record once it arrived, else the log event's
        "fragments": _keyword(),  # record ids merged in so far: replays are no-ops
        "has_span": {"type": "boolean"},
        "time": dict(DATE),
        "day": _keyword(),  # time[:10] for `group_by=day`
        "question": _text(),
        "answer": _text(),
        "provider": _keyword(),
        "model": _keyword(),  # response model, else request model
        "request_model": _keyword(),
        "input_tokens": {"type": "long"},
        "output_tokens": {"type": "long"},
        "cost_e10": {"type": "long"},  # cost in 1e-10 units: sums stay exact
        "cost_currency": _keyword(),
        "service": _keyword(),
        "user": _keyword(),
        "feature": _keyword(),
    },
}
_KEYS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "key_id": _keyword(),
        "key_hash": _keyword(),
        "tenant": _keyword(),
        "role": _keyword(),
        "created_at": dict(DATE),
        "revoked_at": dict(DATE),
        "mac": {"type": "keyword", "index": False, "doc_values": False},  # aitrail.store.rowmac: read, never searched
    },
}
_SECRETS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {"value": {"type": "binary"}, "mac": {"type": "keyword", "index": False, "doc_values": False}},
}


def _stored_only() -> dict[str, Any]:
    """Kept in _source, neither indexed nor aggregatable: read back by id only."""
    return {"type": "keyword", "index": False, "doc_values": False}


_LOGS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "log_id": _keyword(),
        "origin": _keyword(),
        "size": {"type": "long"},
        "compact_range": _stored_only(),
        "last_checkpoint_size": {"type": "long"},
        "last_checkpoint_at": {"type": "double"},
        "source_position": {"type": "long"},
    },
}
_NODES_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {"log_id": _keyword(), "hash": _stored_only()},
}
_CHECKPOINTS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "log_id": _keyword(),
        "size": {"type": "long"},
        "root_hash": _keyword(),
        "note": _stored_only(),
        "signed_at": _keyword(),
    },
}

# Same merge as SqliteStore's answers upsert: a field takes the span's value when the span has
# one, else the log event's; so arrival order does not matter. `fragments` makes a replayed
# fragment a no-op (no write at all).
_MERGED = (
    "time", "day", "question", "answer", "provider", "model", "request_model", "input_tokens",
    "output_tokens", "cost_e10", "cost_currency", "service", "user", "feature",
)
_MERGE_SCRIPT = """
Map src = ctx._source;
Map doc = params.doc;
if (src.fragments != null && src.fragments.contains(doc.record_id)) { ctx.op = 'none'; return; }
boolean span = doc.has_span;
if (src.tenant == null) { src.tenant = doc.tenant; src.trace_id = doc.trace_id; src.span_id = doc.span_id; }
if (span || src.record_id == null) { src.record_id = doc.record_id; }
src.has_span = span || src.has_span == true;
for (String f : FIELDS) {
  def v = doc[f];
  if (v != null && (span || src[f] == null)) { src[f] = v; }
}
if (src.fragments == null) { src.fragments = new ArrayList(); }
src.fragments.add(doc.record_id);
""".replace("FIELDS", "[" + ", ".join(f"'{f}'" for f in _MERGED) + "]")

# The row MAC is replaced only when it is the one the revoker checked: an altered row stays refused.
_REVOKE_SCRIPT = (
    "if (ctx._source.revoked_at == null) { ctx._source.revoked_at = params.now; "
    "if (params.mac != null && ctx._source.mac == params.checked) { ctx._source.mac = params.mac } } "
    "else { ctx.op = 'none' }"
)

_GROUP_FIELDS = {
    "tenant": "tenant", "service": "service", "model": "model", "user": "user",
    "feature": "feature", "provider": "provider", "day": "day",
}
_ANSWER_SOURCE = [
    "record_id", "trace_id", "span_id", "time", "question", "answer", "provider", "model",
    "input_tokens", "output_tokens", "cost_e10", "cost_currency", "service", "user",
]


@dataclass(frozen=True)
class RolloverResult:
    rolled_over: bool
    old_index: str | None
    new_index: str | None
    conditions: dict[str, bool] = field(default_factory=dict)  # which conditions were met


class _Serializer(JSONSerializer):
    """orjson both ways: search responses carry up to 10k records."""

    def loads(self, s: str) -> Any:
        return orjson.loads(s)

    def dumps(self, data: Any) -> Any:
        if isinstance(data, (str, bytes)):
            return data
        return orjson.dumps(data, default=self.default).decode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _from_e10(value: int) -> Decimal:
    """Exact, with ten decimal places as the cost module writes them."""
    whole, fraction = divmod(abs(value), 10**10)
    return Decimal(f"{'-' if value < 0 else ''}{whole}.{fraction:010d}")


def _cursor(after: tuple[str, str]) -> list[Any]:
    """`search_after` for a (time, record_id) cursor: the time as the date field parses it; an
    empty one (the item had no time) is where missing times sort."""
    time, record_id = after
    return [time or _MISSING_TIME, record_id]


def answer_id(tenant: str, trace_id: str, span_id: str) -> str:
    """The answers document of a span (trace and span ids are hex, so `/` is unambiguous)."""
    return hashlib.sha256(f"{tenant}/{trace_id}/{span_id}".encode()).hexdigest()


def _answer_doc(r: AuditRecord) -> dict[str, Any]:
    cost = r.cost
    priced = cost is not None and cost.amount is not None
    return {
        "tenant": r.tenant, "trace_id": r.trace_id, "span_id": r.span_id, "record_id": r.record_id,
        "has_span": r.origin == "span", "time": r.start_time,
        "day": r.start_time[:10] if r.start_time else None, "question": r.question, "answer": r.answer,
        "provider": r.provider, "model": r.response_model or r.request_model, "request_model": r.request_model,
        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "cost_e10": int(cost.amount.scaleb(10)) if priced else None,
        "cost_currency": cost.currency if priced else None,
        "service": r.service, "user": r.user_pseudonym, "feature": r.feature,
    }


def _span_context(s: dict[str, Any]) -> SpanContext:
    return SpanContext.from_fields(
        s["tenant"], s["trace_id"], s.get("span_id"), s.get("parent_span_id"), s["record_id"], s["origin"],
        [s.get(f) for f in INHERITED], s.get("context_from"),
    )


def _is_answer(r: AuditRecord) -> bool:
    return r.kind == Kind.COMPLETION and bool(r.trace_id) and bool(r.span_id)


def _reason(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    roots = error.get("root_cause") or []
    if error.get("type") == "search_phase_execution_exception" and roots and isinstance(roots[0], dict):
        error = roots[0]  # "all shards failed" says nothing; the root cause does
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict) and cause.get("reason") and cause["reason"] not in text:
        text += f" ({_reason(cause)})"
    return text


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if parts.netloc else url


def _retriable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _key_fields(doc: dict[str, Any]) -> tuple:
    """A key document's fields in the order its row MAC covers them (aitrail.store.rowmac)."""
    return (doc.get("key_id"), doc.get("key_hash"), doc.get("tenant"), doc.get("role"), doc.get("created_at"),
            doc.get("revoked_at"))


def _key_refused(key_id: str) -> Unauthorized:
    log.warning("API key %s refused: its document in the key index does not authenticate (changed or added outside "
                "aitrail)", key_id)
    return Unauthorized(f"key {key_id} is refused: its row in the key store was changed or added outside aitrail "
                        "(its MAC does not verify); an admin must create a new key")


class OpenSearchStore:
    """Store on OpenSearch. `refresh` is passed to every record write: `False` (collector:
    visible within `refresh_interval`, fastest), `"wait_for"` (visible on return, waits for
    the next scheduled refresh) or `True` (forces a refresh; costly under load)."""

    def __init__(
        self,
        client: OpenSearch,
        *,
        prefix: str = "aitrail",
        refresh: bool | str = False,
        shards: int = 1,
        replicas: int = 0,
        refresh_interval: str = "1s",
        rollover_conditions: dict[str, Any] | None = None,
        url: str = "",
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.refresh = refresh
        self.shards, self.replicas, self.refresh_interval = shards, replicas, refresh_interval
        self.rollover_conditions = {k: v for k, v in (rollover_conditions or {}).items() if v not in (None, "")}
        self._url = _without_credentials(url)  # for error messages
        self.template_name = self.write_alias = f"{prefix}-records"
        self.records_pattern = f"{prefix}-records-*"
        self.first_index = f"{prefix}-records-000001"
        self.answers_index = f"{prefix}-answers"
        self.keys_index = f"{prefix}-keys"
        self.secrets_index = f"{prefix}-secrets"
        self.logs_index = f"{prefix}-logs"
        self.nodes_index = f"{prefix}-merkle-nodes"
        self.checkpoints_index = f"{prefix}-checkpoints"
        self.merge_script = f"{prefix}-answers-merge"

    @classmethod
    def from_settings(
        cls, settings: OpenSearchSettings, *, refresh: bool | str = False, ensure_layout: bool = True
    ) -> OpenSearchStore:
        if not settings.url:
            raise ConfigError("opensearch.url is not set")
        auth = (settings.username, settings.password or "") if settings.username else None
        client = OpenSearch(
            hosts=[settings.url],
            http_auth=auth,
            verify_certs=settings.verify_certs,
            timeout=_TIMEOUT_S,
            retry_on_timeout=True,  # every write is idempotent, so resending is safe
            max_retries=3,
            pool_maxsize=16,
            serializer=_Serializer(),
        )
        store = cls(
            client,
            prefix=settings.index_prefix,
            refresh=refresh,
            shards=settings.shards,
            replicas=settings.replicas,
            refresh_interval=settings.refresh_interval,
            rollover_conditions={
                "max_age": settings.rollover_max_age,
                "max_docs": settings.rollover_max_docs,
                "max_size": settings.rollover_max_size,
            },
            url=settings.url,
        )
        if ensure_layout:
            try:
                store.ensure_layout()
            except BaseException:
                store.close()
                raise
        return store

    # -- errors -------------------------------------------------------------------------

    @contextmanager
    def _calling(self, what: str, *, client_error: type[AitrailError] = BadRequest) -> Iterator[None]:
        """OpenSearch exceptions as aitrail errors: unreachable, overloaded, failing or refusing
        our credentials is retriable (`Unavailable`); a 400 is `client_error`."""
        try:
            yield
        except ConnectionTimeout as exc:
            raise Unavailable(f"OpenSearch {self._url} timed out {what}") from exc
        except ConnectionError as exc:
            raise Unavailable(f"OpenSearch {self._url} is unreachable ({what}): {exc.info}") from exc
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 503
            reason = _reason(exc.info.get("error") if isinstance(exc.info, dict) else exc.info)
            if _retriable_status(status) or status in (401, 403):
                raise Unavailable(f"OpenSearch answered {status} {what}: {reason}") from exc
            if status == 404:
                raise Unavailable(f"OpenSearch layout incomplete ({what}): {reason}; run ensure_layout") from exc
            if status == 400:
                raise client_error(f"OpenSearch refused {what}: {reason}") from exc
            raise AitrailError(f"OpenSearch answered {status} {what}: {reason}") from exc

    # -- layout -------------------------------------------------------------------------

    def records_template(self) -> dict[str, Any]:
        template = index_template(self.prefix)
        index = template["template"]["settings"]["index"]
        index.update(
            number_of_shards=self.shards, number_of_replicas=self.replicas, refresh_interval=self.refresh_interval
        )
        return template

    def _index_settings(self, shards: int = 1) -> dict[str, Any]:
        return {
            "index": {
                "number_of_shards": shards,
                "number_of_replicas": self.replicas,
                "refresh_interval": self.refresh_interval,
            }
        }

    def ensure_layout(self) -> None:
        """Create what is missing and update what may have changed (template, script,
        mappings of the fixed indices). Idempotent; safe from several processes at once."""
        with self._calling("installing the index layout", client_error=ConfigError):
            self._client.indices.put_index_template(name=self.template_name, body=self.records_template())
            self._client.put_script(
                id=self.merge_script, body={"script": {"lang": "painless", "source": _MERGE_SCRIPT}}
            )
            if not self._client.indices.exists_alias(name=self.write_alias):
                self._create_index(self.first_index, {"aliases": {self.write_alias: {"is_write_index": True}}})
                if not self._client.indices.exists_alias(name=self.write_alias):
                    raise ConfigError(
                        f"{self.first_index} exists but the write alias {self.write_alias} does not; "
                        "add the alias (is_write_index) to the newest records index"
                    )
            self._upgrade_records_mapping()
            for name, mapping, shards in (
                (self.answers_index, _ANSWERS_MAPPING, self.shards),
                (self.keys_index, _KEYS_MAPPING, 1),
                (self.secrets_index, _SECRETS_MAPPING, 1),
                (self.logs_index, _LOGS_MAPPING, 1),
                (self.nodes_index, _NODES_MAPPING, self.shards),
                (self.checkpoints_index, _CHECKPOINTS_MAPPING, 1),
            ):
                if not self._create_index(name, {"settings": self._index_settings(shards), "mappings": mapping}):
                    self._client.indices.put_mapping(index=name, body=mapping)

    def layout_problems(self) -> list[str]:
        """What differs in the indices' own structure from what this code creates: a field
        mapped otherwise (another analyser on question/answer hides answers from search, a
        keyword turned into text changes every filter on it), an index's `dynamic` rule, or
        analysis settings of its own (aitrail uses built-in analysers only). Fields an older
        version did not map are not problems. Read-only."""
        fixed = {
            self.answers_index: _ANSWERS_MAPPING, self.keys_index: _KEYS_MAPPING, self.secrets_index: _SECRETS_MAPPING,
            self.logs_index: _LOGS_MAPPING, self.nodes_index: _NODES_MAPPING, self.checkpoints_index: _CHECKPOINTS_MAPPING,
        }
        records = self.records_template()["template"]["mappings"]
        records_prefix = self.records_pattern.rstrip("*")
        with self._calling("reading the index layout"):
            mappings = self._client.indices.get_mapping(index=f"{self.prefix}-*", params={"ignore_unavailable": "true"})
            settings = self._client.indices.get_settings(index=f"{self.prefix}-*", params={"ignore_unavailable": "true"})
        problems: list[str] = []
        for index in sorted(mappings):
            expected = fixed.get(index) or (records if index.startswith(records_prefix) else None)
            if expected is None:
                continue
            problems += [f"index {index}: {p}" for p in _mapping_differences(expected, mappings[index].get("mappings", {}))]
            analysis = settings.get(index, {}).get("settings", {}).get("index", {}).get("analysis")
            if analysis:
                problems.append(f"index {index}: analysis settings of its own ({_short(analysis)}); aitrail uses "
                                "built-in analysers only")
        return problems

    def _upgrade_records_mapping(self) -> None:
        """Fields added to the record model reach the current write index, so a newer
        writer's records are not refused by `dynamic: strict`; a change OpenSearch cannot
        apply in place starts a new write index from the template instead."""
        mappings = self.records_template()["template"]["mappings"]
        write_index = self._write_index()
        try:
            self._client.indices.put_mapping(index=write_index, body=mappings)
        except RequestError as exc:
            log.warning("records mapping cannot be updated in place (%s); rolling over", _reason(exc.info.get("error")))
            self.rollover(force=True)

    def _write_index(self) -> str:
        aliases = self._client.indices.get_alias(name=self.write_alias)
        flagged = [i for i, a in aliases.items() if a["aliases"][self.write_alias].get("is_write_index")]
        if not flagged and len(aliases) != 1:
            raise ConfigError(f"the alias {self.write_alias} has no write index; set is_write_index on the newest")
        return flagged[0] if flagged else next(iter(aliases))

    def _create_index(self, name: str, body: dict[str, Any]) -> bool:
        """False when it already exists (another process may have just created it)."""
        try:
            self._client.indices.create(index=name, body=body)
        except RequestError as exc:
            if exc.error == "resource_already_exists_exception":
                return False
            raise
        return True

    def rollover(self, *, force: bool = False) -> RolloverResult:
        """Start a new records index when the current one meets a configured condition
        (`rollover_max_age` / `_docs` / `_size`), or now with `force`. Without ISM, something
        must call this periodically (see docs/opensearch.md). The old index is refreshed once
        rolled, so every record in it is searchable (and so recognised as a duplicate)."""
        if not force and not self.rollover_conditions:
            return RolloverResult(False, None, None)
        body = None if force else {"conditions": self.rollover_conditions}
        with self._calling("rolling over", client_error=ConfigError):
            response = self._client.indices.rollover(alias=self.write_alias, body=body)
            if response.get("rolled_over"):
                self._client.indices.refresh(index=response["old_index"])
        return RolloverResult(
            rolled_over=bool(response.get("rolled_over")),
            old_index=response.get("old_index"),
            new_index=response.get("new_index"),
            conditions=response.get("conditions", {}),
        )

    def records_indices(self) -> list[str]:
        """The concrete records indices, oldest first."""
        with self._calling("listing indices"):
            return sorted(self._client.indices.get_alias(index=self.records_pattern))

    # -- RecordWriter -------------------------------------------------------------------

    def write(
        self,
        records: Sequence[AuditRecord],
        updates: Sequence[LogUpdate] = (),
        *,
        expected: Mapping[str, LogState | None] | None = None,
    ) -> WriteResult:
        """The log states are read and compared first (nothing is written for a stale plan),
        then the records (then their answers), then nodes and checkpoints, and last the log
        states, each on condition of the version read at the start (`if_seq_no`), so a
        stored state never points past stored nodes and no writer replaces a state it did
        not read. Not one transaction: a failure may leave part of it stored (writing it all
        again is correct)."""
        versions = self._check_logs(updates, expected or {}) if updates else {}
        result = self._write_records(records) if records else WriteResult(0, 0)
        if updates:
            self._write_updates(updates, versions)
        return result

    def _write_records(self, records: Sequence[AuditRecord]) -> WriteResult:
        """Bulk `create`; records OpenSearch refuses (per item of the bulk response) are
        rejected. Sealed records (a batch with log updates) are all or nothing: on a
        rejection, the records of this batch the write index holds beyond their log's
        stored state (created now, or left by an earlier attempt at the same plan) are
        withdrawn, so the sequencer can give their leaves to others."""
        sealed = any(r.log_id is not None and r.leaf_index is not None for r in records)
        batch: dict[str, AuditRecord] = {}
        later: list[AuditRecord] = []  # a second copy of an id in the same batch
        for record in records:
            if record.record_id in batch:
                later.append(record)
            else:
                batch[record.record_id] = record
        # A record rolled into an older index is invisible to `create` in the write index.
        stored = self._stored_where(list(batch))
        created, conflicts, retry, rejected = self._create([r for rid, r in batch.items() if rid not in stored])
        stored.update(conflicts)
        if retry:
            raise Unavailable(
                f"OpenSearch did not store {len(retry)} of {len(records)} records, retry the batch: {retry[0]}"
            )
        bodies = self._bodies(stored)
        duplicates: list[str] = []
        conflicting: dict[str, str] = {}
        for rid, where in stored.items():
            body = bodies.get(rid, f"record_id {rid} is stored in {where} but could not be read back")
            if isinstance(body, str):
                conflicting[rid] = body
            elif same_content(body, batch[rid]):
                duplicates.append(rid)
            else:
                conflicting[rid] = conflict_reason(body, batch[rid])
        for record in later:
            rid = record.record_id
            if rid in rejected or rid in conflicting:
                continue
            if same_content(batch[rid], record):
                duplicates.append(rid)
            else:
                conflicting[rid] = conflict_reason(batch[rid], record)
        if rejected and sealed:
            self._withdraw(created, [batch[rid] for rid in duplicates if rid in stored], bodies, stored)
            raise RecordsRejected(rejected, len(records))
        # Answers of new records from this batch; those of duplicates from what is stored
        # (a no-op unless an earlier write stopped between the two bulks).
        fragments = [_answer_doc(r) for r in created if _is_answer(r)]
        fragments += [
            _answer_doc(bodies[rid]) for rid in dict.fromkeys(duplicates) if rid in stored and _is_answer(bodies[rid])
        ]
        answer_retry, answer_rejected = self._merge_answers(fragments)
        if answer_retry:
            raise Unavailable(
                f"OpenSearch did not index {len(answer_retry)} answers, retry the batch: {answer_retry[0]}"
            )
        if answer_rejected:
            # The record is stored but cannot be found as an answer: it is not kept.
            if sealed:
                self._withdraw(created, [batch[rid] for rid in duplicates if rid in stored], bodies, stored)
                raise RecordsRejected(answer_rejected, len(records))
            self._withdraw([r for r in created if r.record_id in answer_rejected], [], {}, {})
            rejected.update(answer_rejected)
            created = [r for r in created if r.record_id not in answer_rejected]
        return WriteResult(len(created), len(duplicates), rejected, conflicting, frozenset(duplicates))

    def _withdraw(
        self,
        created: list[AuditRecord],
        left: list[AuditRecord],
        bodies: Mapping[str, AuditRecord | str],
        where: Mapping[str, str],
    ) -> None:
        """Delete what this write created, and the records `left` by an earlier attempt at the
        same plan, but only where the stored body sits beyond its log's stored state (a
        leaf no state covers): a record its log covers is never deleted."""
        targets = [(self.write_alias, r.record_id) for r in created]
        sizes: dict[str, int] = {}
        for record in left:
            body = bodies.get(record.record_id)
            if isinstance(body, AuditRecord) and body.log_id is not None and body.leaf_index is not None:
                if body.log_id not in sizes:
                    state = self.log_state(body.log_id)
                    sizes[body.log_id] = state.size if state is not None else 0
                if body.leaf_index >= sizes[body.log_id]:
                    targets.append((where[record.record_id], record.record_id))
        if not targets:
            return
        lines = b"\n".join(orjson.dumps({"delete": {"_index": index, "_id": rid}}) for index, rid in targets) + b"\n"
        with self._calling("withdrawing the records of a refused batch"):
            response = self._client.bulk(
                body=lines, params={"filter_path": "errors,items.*.status,items.*.error"}, **self._refresh_param()
            )
        for item in response.get("items", []) if response.get("errors") else []:
            result = item["delete"]
            if result["status"] not in (200, 404):
                raise Unavailable(
                    f"OpenSearch did not withdraw a record of a refused batch: {result['status']} "
                    f"{_reason(result.get('error'))}; the batch is written again"
                )
        log.info("withdrew %d record(s) of a batch the store partly refused, to sequence it again", len(targets))

    def _bodies(self, where: Mapping[str, str]) -> dict[str, AuditRecord | str]:
        """Stored bodies by record id (`where`: record id -> index); one that does not parse
        as its reason (a string), so it is never taken as a duplicate."""
        out: dict[str, AuditRecord | str] = {}
        items = list(where.items())
        for first in range(0, len(items), _PAGE):
            docs = [{"_index": index, "_id": rid} for rid, index in items[first : first + _PAGE]]
            with self._calling("reading stored records", client_error=InvalidInput):
                response = self._client.mget(body={"docs": docs}, params={"filter_path": "docs._id,docs._source,docs.found"})
            for d in response.get("docs", []):
                if not d.get("found"):
                    continue
                try:
                    out[d["_id"]] = AuditRecord.model_validate(d["_source"])
                except ValueError as exc:
                    out[d["_id"]] = f"record_id {d['_id']} is stored but its body does not parse: {exc}"
        return out

    def records_by_id(self, record_ids: Sequence[str]) -> dict[str, AuditRecord]:
        ids = list(set(record_ids))
        if not ids:
            return {}
        where = self._stored_where(ids)
        rest = [i for i in ids if i not in where]
        if rest:
            with self._calling("checking for stored records", client_error=InvalidInput):
                index = self._write_index()
            where.update({rid: index for rid in rest})
        return {rid: body for rid, body in self._bodies(where).items() if isinstance(body, AuditRecord)}

    def existing(self, record_ids: Sequence[str]) -> dict[str, tuple[str | None, int | None]]:
        """Real time: searchable records in any index, plus an `mget` on the write index for
        the rest (written there but not refreshed yet)."""
        ids = list(set(record_ids))
        if not ids:
            return {}
        found = self._stored_where(ids, positions=True)
        rest = [i for i in ids if i not in found]
        if rest:
            with self._calling("checking for stored records", client_error=InvalidInput):
                index = self._write_index()
                for first in range(0, len(rest), _PAGE):
                    docs = [{"_index": index, "_id": i} for i in rest[first : first + _PAGE]]
                    response = self._client.mget(
                        body={"docs": docs},
                        params={"_source_includes": "log_id,leaf_index", "filter_path": "docs._id,docs.found,docs._source"},
                    )
                    for d in response.get("docs", []):
                        if d.get("found"):
                            source = d.get("_source") or {}
                            found[d["_id"]] = (source.get("log_id"), source.get("leaf_index"))
        return found

    def _stored_where(self, ids: list[str], *, positions: bool = False) -> dict:
        """For the ids any records index already holds (as searchable): record id -> index,
        or with `positions` record id -> (log_id, leaf_index)."""
        found: dict = {}
        for first in range(0, len(ids), _PAGE):
            chunk = ids[first : first + _PAGE]
            with self._calling("checking for stored records", client_error=InvalidInput):
                response = self._client.search(
                    index=self.records_pattern,
                    body={"query": {"ids": {"values": chunk}}, "size": len(chunk),
                          "_source": ["log_id", "leaf_index"] if positions else False, "track_total_hits": False},
                    params={"filter_path": "hits.hits._id,hits.hits._index,hits.hits._source"},
                )
            for hit in response.get("hits", {}).get("hits", []):
                source = hit.get("_source") or {}
                found[hit["_id"]] = (source.get("log_id"), source.get("leaf_index")) if positions else hit["_index"]
        return found

    def _refresh_param(self) -> dict[str, Any]:
        return {} if self.refresh is False else {"refresh": self.refresh}

    def _create(
        self, records: list[AuditRecord]
    ) -> tuple[list[AuditRecord], dict[str, str], list[str], dict[str, str]]:
        """Bulk `create` into the write alias: (created, conflicts id -> index, retriable
        failures, rejected id -> reason)."""
        lines: list[bytes] = []
        unencodable: dict[str, str] = {}
        sendable: list[AuditRecord] = []
        for record in records:
            try:
                body = canonical_json(record)
            except (TypeError, ValueError, OverflowError) as exc:  # orjson: JSONEncodeError is a TypeError
                unencodable[record.record_id] = f"the record cannot be encoded: {type(exc).__name__}: {exc}"
                continue
            lines.append(orjson.dumps({"create": {"_id": record.record_id}}))
            lines.append(body)
            sendable.append(record)
        if not sendable:
            return [], {}, [], unencodable
        records = sendable
        with self._calling("writing records", client_error=InvalidInput):
            response = self._client.bulk(
                body=b"\n".join(lines) + b"\n",
                index=self.write_alias,
                require_alias=True,  # never auto-create an index named like the alias
                params={"filter_path": "errors,items.*.status,items.*.error,items.*._index"},
                **self._refresh_param(),
            )
        if not response.get("errors"):
            return records, {}, [], unencodable
        created, conflicts, retry, rejected = [], {}, [], unencodable
        for record, item in zip(records, response["items"], strict=True):
            result = item["create"]
            status = result["status"]
            if status < 300:
                created.append(record)
            elif status == 409:
                conflicts[record.record_id] = result["_index"]
            elif _retriable_status(status) or status == 404:  # 404: the write alias is gone
                retry.append(f"record {record.record_id}: {status} {_reason(result.get('error'))}")
            else:
                rejected[record.record_id] = _reason(result.get("error"))
        return created, conflicts, retry, rejected

    def _merge_answers(self, fragments: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
        if not fragments:
            return [], {}
        lines: list[bytes] = []
        for doc in fragments:
            lines.append(orjson.dumps({"update": {
                "_index": self.answers_index, "_id": answer_id(doc["tenant"], doc["trace_id"], doc["span_id"]),
                "retry_on_conflict": 5,
            }}))
            lines.append(orjson.dumps({"script": {"id": self.merge_script, "params": {"doc": doc}},
                                       "scripted_upsert": True, "upsert": {}}))
        with self._calling("indexing answers", client_error=InvalidInput):
            response = self._client.bulk(
                body=b"\n".join(lines) + b"\n",
                params={"filter_path": "errors,items.*.status,items.*.error"},
                **self._refresh_param(),
            )
        retry, rejected = [], {}
        if response.get("errors"):
            for doc, item in zip(fragments, response["items"], strict=True):
                result = item["update"]
                status = result["status"]
                if status < 300:
                    continue
                reason = _reason(result.get("error"))
                if _retriable_status(status) or status in (404, 409):
                    retry.append(f"answer of record {doc['record_id']}: {status} {reason}")
                else:
                    rejected[doc["record_id"]] = f"answers index: {reason}"
        return retry, rejected

    # -- RecordReader -------------------------------------------------------------------

    def _search(self, index: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        with self._calling(what):
            return self._client.search(index=index, body=body)

    def get(self, tenant: str, record_id: str) -> AuditRecord | None:
        body = {
            "query": {"bool": {"filter": [{"ids": {"values": [record_id]}}, {"term": {"tenant": tenant}}]}},
            "size": 1,
        }
        hits = self._search(self.records_pattern, body, "reading a record")["hits"]["hits"]
        return AuditRecord.model_validate(hits[0]["_source"]) if hits else None

    def trace(self, tenant: str, trace_id: str) -> list[AuditRecord]:
        """All records, however many: pages of 10,000 by `search_after`."""
        body: dict[str, Any] = {
            "query": {"bool": {"filter": [{"term": {"tenant": tenant}}, {"term": {"trace_id": trace_id}}]}},
            "sort": [
                {"start_time": {"order": "asc", "missing": _MISSING_TIME}},
                {"leaf_index": {"order": "asc", "missing": "_last"}},
                {"record_id": {"order": "asc"}},
            ],
            "size": _PAGE,
            "track_total_hits": False,
        }
        records: list[AuditRecord] = []
        seen: set[str] = set()
        while True:
            hits = self._search(self.records_pattern, body, "reading a trace")["hits"]["hits"]
            for hit in hits:
                if hit["_id"] not in seen:  # the same record in two indices (see docs): once
                    seen.add(hit["_id"])
                    records.append(AuditRecord.model_validate(hit["_source"]))
            if len(hits) < _PAGE:
                return records
            body["search_after"] = hits[-1]["sort"]

    def span_contexts(self, traces: Sequence[tuple[str, str]], record_ids: Sequence[str] = ()) -> list[SpanContext]:
        """What is searchable: a record written within the refresh interval may be missing
        (its descendants then resolve it at query time); `record_ids` not among the hits are
        looked up on the write index (`mget`, real time)."""
        by_tenant: dict[str, set[str]] = {}
        for tenant, trace_id in traces:
            by_tenant.setdefault(tenant, set()).add(trace_id)
        if not by_tenant:
            return []
        query = {"bool": {
            "should": [
                {"bool": {"filter": [{"term": {"tenant": tenant}}, self._any_of("trace_id", sorted(ids))]}}
                for tenant, ids in by_tenant.items()
            ],
            "minimum_should_match": 1,
            "must_not": [{"terms": {"kind": sorted(SYSTEM_KINDS)}}],
        }}
        body: dict[str, Any] = {
            "query": query, "sort": [{"record_id": "asc"}], "size": _PAGE, "track_total_hits": False,
            "_source": ["record_id", "tenant", "trace_id", "span_id", "parent_span_id", "origin", *INHERITED,
                        "context_from"],
        }
        out: dict[str, SpanContext] = {}  # by record id: the same record in two indices (see docs) once
        while True:
            hits = self._search(self.records_pattern, body, "reading trace context")["hits"]["hits"]
            for hit in hits:
                context = _span_context(hit["_source"])
                out[context.record_id] = context
            if len(hits) < _PAGE:
                break
            body["search_after"] = hits[-1]["sort"]
        rest = [rid for rid in dict.fromkeys(record_ids) if rid not in out]
        if rest:
            with self._calling("reading trace context", client_error=InvalidInput):
                index = self._write_index()
                for first in range(0, len(rest), _PAGE):
                    docs = [{"_index": index, "_id": rid} for rid in rest[first : first + _PAGE]]
                    response = self._client.mget(
                        body={"docs": docs},
                        params={"_source_includes": ",".join(body["_source"]), "filter_path": "docs.found,docs._source"},
                    )
                    for d in response.get("docs", []):
                        if d.get("found"):
                            context = _span_context(d["_source"])
                            out[context.record_id] = context
        return list(out.values())

    def search_answers(self, query: AnswerQuery) -> AnswerPage:
        filters: list[dict[str, Any]] = [{"term": {"tenant": query.tenant}}, *self._time_range(query.start, query.end)]
        if query.service is not None:
            filters.append({"term": {"service": query.service}})
        if query.user is not None:
            # Also the answers without a user of their own whose ancestor span's record has
            # this one (it arrived after they were sealed): see aitrail.store.context.
            inheriting = self._inheriting_answers(query)
            own = {"term": {"user": query.user}}
            filters.append({"bool": {"should": [own, *(
                {"ids": {"values": inheriting[i : i + _MAX_TERMS]}} for i in range(0, len(inheriting), _MAX_TERMS)
            )], "minimum_should_match": 1}} if inheriting else own)
        if query.model is not None:
            filters.append({"bool": {"should": [{"term": {"model": query.model}},
                                                {"term": {"request_model": query.model}}],
                                     "minimum_should_match": 1}})
        if query.text:
            if match_expression(query.text) is None:
                raise BadRequest("q has no searchable words")
            # Every word must occur, in question or answer, as one of the languages reads it.
            filters.append({"bool": {"should": [
                {"multi_match": {"query": query.text, "fields": [f"question{sub}", f"answer{sub}"],
                                 "type": "cross_fields", "operator": "and"}}
                for sub in ("", ".cjk", ".thai")
            ], "minimum_should_match": 1}})
        for tags, exposed in ((query.visible_to, False), (query.exposed_to, True)):
            if tags is not None:
                traces = self._exposing_traces(query.tenant, tags)
                if exposed:
                    filters.append(self._any_of("trace_id", traces))
                elif traces:
                    filters.append({"bool": {"must_not": [self._any_of("trace_id", traces)]}})
        body: dict[str, Any] = {
            "query": {"bool": {"filter": filters}},
            "sort": [{"time": {"order": "desc", "missing": _MISSING_TIME}}, {"record_id": {"order": "desc"}}],
            "from": query.offset,
            "size": query.limit,
            "track_total_hits": True,  # the cursor moves the page, not the query: still all matches
            "_source": _ANSWER_SOURCE,
        }
        if query.after is not None:  # `search_after` refuses `from`: skip the offset here instead
            body |= {"search_after": _cursor(query.after), "from": 0, "size": query.offset + query.limit}
        response = self._search(self.answers_index, body, "searching answers")
        answers = []
        hits = response["hits"]["hits"]
        for hit in hits[query.offset :] if query.after is not None else hits:
            s = hit["_source"]
            cost = s.get("cost_e10")
            answers.append(Answer(
                record_id=s["record_id"], trace_id=s["trace_id"], span_id=s["span_id"], time=s.get("time"),
                question=s.get("question"), answer=s.get("answer"), provider=s.get("provider"),
                model=s.get("model"), input_tokens=s.get("input_tokens"), output_tokens=s.get("output_tokens"),
                cost_amount=None if cost is None else _from_e10(cost), cost_currency=s.get("cost_currency"),
                service=s.get("service"), user=s.get("user"),
            ))
        return AnswerPage(answers=answers, count=response["hits"]["total"]["value"])

    def _inheriting_answers(self, query: AnswerQuery) -> list[str]:
        """The answers documents (ids) without a user of their own that inherit `query.user`
        from an ancestor span's record: candidates from the traces holding a record with that
        user (one indexed read of the records), then those traces' context."""
        tenant = query.tenant
        holding: list[dict[str, Any]] = [{"term": {"tenant": tenant}}, {"term": {"user_pseudonym": query.user}}]
        if query.end is not None:  # an ancestor starts before its descendants
            holding.append({"range": {"start_time": {"lte": query.end}}})
        traces = sorted(self._distinct(self.records_pattern, {"bool": {"filter": holding}}, "finding a user's traces"))
        if not traces:
            return []
        body: dict[str, Any] = {
            "query": {"bool": {
                "filter": [{"term": {"tenant": tenant}}, self._any_of("trace_id", traces),
                           *self._time_range(query.start, query.end)],
                "must_not": [{"exists": {"field": "user"}}],
            }},
            "sort": [{"record_id": "asc"}], "size": _PAGE, "track_total_hits": False,
            "_source": ["trace_id", "span_id"],
        }
        candidates: list[tuple[str, str, str]] = []
        while True:
            hits = self._search(self.answers_index, body, "finding answers without a user")["hits"]["hits"]
            candidates += [(tenant, h["_source"]["trace_id"], h["_source"]["span_id"]) for h in hits]
            if len(hits) < _PAGE:
                break
            body["search_after"] = hits[-1]["sort"]
        if not candidates:
            return []
        found = inherited_users(self.span_contexts(sorted({c[:2] for c in candidates})), candidates)
        return sorted(answer_id(*key) for key, inherited in found.items() if inherited.value == query.user)

    @staticmethod
    def _time_range(start: str | None, end: str | None, field: str = "time") -> list[dict[str, Any]]:
        bounds = {k: v for k, v in (("gte", start), ("lte", end)) if v is not None}
        return [{"range": {field: bounds}}] if bounds else []

    def _exposing_traces(self, tenant: str, tags: tuple[str, ...]) -> list[str]:
        """The tenant's traces that retrieved a document NOT admitting `tags`: one with acl_tags,
        none of them in `tags`. Materialised (see docs/opensearch.md for the scale limit)."""
        document: dict[str, Any] = {"filter": [{"exists": {"field": "documents.acl_tags"}}]}
        if tags:
            document["must_not"] = [{"terms": {"documents.acl_tags": list(tags)}}]
        query = {"bool": {"filter": [
            {"term": {"tenant": tenant}},
            {"term": {"kind": Kind.RETRIEVAL.value}},
            {"nested": {"path": "documents", "query": {"bool": document}}},
        ]}}
        return list(self._distinct(self.records_pattern, query, "checking document ACLs"))

    @staticmethod
    def _any_of(field: str, values: list[str]) -> dict[str, Any]:
        """`terms`, in chunks of at most index.max_terms_count values."""
        if not values:
            return {"match_none": {}}
        chunks = [{"terms": {field: values[i : i + _MAX_TERMS]}} for i in range(0, len(values), _MAX_TERMS)]
        return chunks[0] if len(chunks) == 1 else {"bool": {"should": chunks, "minimum_should_match": 1}}

    def _distinct(self, index: str, query: dict[str, Any], what: str) -> Iterator[str]:
        """Every distinct `trace_id` of the matches, exactly: a composite aggregation paged
        through to the end (each page reads every match: see docs/opensearch.md for the cost)."""
        composite: dict[str, Any] = {"size": _KEYS_PAGE, "sources": [{"trace": {"terms": {"field": "trace_id"}}}]}
        body = {"query": query, "size": 0, "track_total_hits": False, "aggs": {"traces": {"composite": composite}}}
        while True:
            result = self._search(index, body, what)["aggregations"]["traces"]
            for bucket in result["buckets"]:
                yield bucket["key"]["trace"]
            if "after_key" not in result or len(result["buckets"]) < _KEYS_PAGE:
                return
            composite["after"] = result["after_key"]

    def list_records(self, query: RecordQuery) -> list[AuditRecord]:
        """Newest first by (start_time, record_id), records without a start time last."""
        filters = [{"term": {"tenant": query.tenant}}, {"term": {"kind": query.kind}},
                   *self._time_range(query.start, query.end, "start_time")]
        body: dict[str, Any] = {
            "query": {"bool": {"filter": filters}},
            "sort": [{"start_time": {"order": "desc", "missing": _MISSING_TIME}}, {"record_id": {"order": "desc"}}],
            "track_total_hits": False,
        }
        if query.after is not None:
            body["search_after"] = _cursor(query.after)
        records: list[AuditRecord] = []
        seen: set[str] = set()
        while len(records) < query.limit:
            body["size"] = min(_PAGE, query.limit - len(records))
            hits = self._search(self.records_pattern, body, "listing records")["hits"]["hits"]
            for hit in hits:
                if hit["_id"] not in seen:  # the same record in two indices (the rollover race): once
                    seen.add(hit["_id"])
                    records.append(AuditRecord.model_validate(hit["_source"]))
            if len(hits) < body["size"]:
                break
            body["search_after"] = hits[-1]["sort"]
        return records

    def costs(self, query: CostQuery) -> list[CostRow]:
        unknown = [g for g in query.group_by if g not in COST_GROUPS]
        if unknown:
            raise BadRequest(f"cannot group by {', '.join(unknown)}; choose from {', '.join(COST_GROUPS)}")
        filters = [{"term": {"tenant": query.tenant}}, {"term": {"has_span": True}},
                   *self._time_range(query.start, query.end)]
        rows = self._cost_rows(query.group_by, filters, split=False)
        if any(abs(total) >= _EXACT_DOUBLE for _, _, total in rows):
            rows = self._cost_rows(query.group_by, filters, split=True)
        return [row for row, _, _ in rows]

    def cost_summary(self, query: CostQuery) -> CostSummary:
        """The cost as `costs` sums it (exact). The traces exactly, by composite aggregations
        paged to the end (not the approximate `cardinality`): the tenant's traces with positive
        feedback (a feedback record, any time, scoring above 0), then every trace with a
        span-origin completion in the range, counting those in the first set as useful."""
        total = self.costs(CostQuery(tenant=query.tenant, start=query.start, end=query.end, group_by=()))
        liked = set(self._distinct(self.records_pattern, {"bool": {"filter": [
            {"term": {"tenant": query.tenant}}, {"term": {"kind": Kind.FEEDBACK.value}},
            {"range": {"score": {"gt": 0}}},
        ]}}, "reading feedback"))
        spent = {"bool": {"filter": [{"term": {"tenant": query.tenant}}, {"term": {"has_span": True}},
                                     *self._time_range(query.start, query.end)]}}
        traces = useful = 0
        for trace_id in self._distinct(self.answers_index, spent, "counting traces"):
            traces += 1
            useful += trace_id in liked
        return CostSummary(
            cost=total[0].cost if total else _from_e10(0), currency=total[0].currency if total else None,
            traces=traces, useful_traces=useful,
        )

    def _cost_rows(
        self, groups: tuple[str, ...], filters: list[dict[str, Any]], *, split: bool
    ) -> list[tuple[CostRow, dict[str, Any], float]]:
        """(row, its buckets, the cost sum as the aggregation returned it). With `split` the
        cost is summed as two scripted parts, each small enough to stay exact."""
        metrics: dict[str, Any] = {
            "input_tokens": {"sum": {"field": "input_tokens"}},
            "output_tokens": {"sum": {"field": "output_tokens"}},
            "unpriced": {"missing": {"field": "cost_e10"}},
            "currency": {"terms": {"field": "cost_currency", "size": 1, "order": {"_key": "desc"}}},
        }
        if split:
            part = "doc['cost_e10'].size() == 0 ? 0L : doc['cost_e10'].value {op} {n}L"
            metrics["cost_hi"] = {"sum": {"script": {"source": part.format(op="/", n=_COST_SPLIT)}}}
            metrics["cost_lo"] = {"sum": {"script": {"source": part.format(op="%", n=_COST_SPLIT)}}}
        else:
            metrics["cost"] = {"sum": {"field": "cost_e10"}}

        def row(group: dict[str, Any], calls: int, aggs: dict[str, Any]) -> tuple[CostRow, dict[str, Any], float]:
            if split:
                total = int(aggs["cost_hi"]["value"]) * _COST_SPLIT + int(aggs["cost_lo"]["value"])
                raw = 0.0
            else:
                total, raw = int(aggs["cost"]["value"]), aggs["cost"]["value"]
            currencies = aggs["currency"]["buckets"]
            return CostRow(
                group=group, calls=calls, input_tokens=int(aggs["input_tokens"]["value"]),
                output_tokens=int(aggs["output_tokens"]["value"]), cost=_from_e10(total),
                currency=currencies[0]["key"] if currencies else None, unpriced_calls=aggs["unpriced"]["doc_count"],
            ), aggs, raw

        body: dict[str, Any] = {"query": {"bool": {"filter": filters}}, "size": 0}
        if not groups:
            body |= {"aggs": metrics, "track_total_hits": True}
            response = self._search(self.answers_index, body, "summing costs")
            calls = response["hits"]["total"]["value"]
            return [row({}, calls, response["aggregations"])] if calls else []
        composite: dict[str, Any] = {
            "size": _GROUPS_PAGE,
            "sources": [{g: {"terms": {"field": _GROUP_FIELDS[g], "missing_bucket": True}}} for g in groups],
        }
        body |= {"aggs": {"groups": {"composite": composite, "aggs": metrics}}, "track_total_hits": False}
        rows = []
        while True:
            result = self._search(self.answers_index, body, "summing costs")["aggregations"]["groups"]
            for bucket in result["buckets"]:
                rows.append(row({g: bucket["key"][g] for g in groups}, bucket["doc_count"], bucket))
            if "after_key" not in result or not result["buckets"]:
                return rows
            composite["after"] = result["after_key"]

    # -- ViewReader (read-only, for aitrail.integrity.views) ----------------------------

    def _scan(self, index: str, what: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every matching hit (`_index`, `_id`, `_source`) by a scroll, in no particular order."""
        with self._calling(what):
            yield from scan(self._client, index=index, query={"query": query or {"match_all": {}}}, size=_SCAN_PAGE)

    def record_columns(self) -> Iterator[StoredRecord]:
        """The indexed fields are the body's own; the one copy kept apart is the `_id`."""
        for hit in self._scan(self.records_pattern, "reading every record"):
            source = hit["_source"]
            try:
                record, error = AuditRecord.model_validate(source), None
            except ValueError as exc:
                record, error = None, str(exc)
            leaf = source.get("leaf_index") if isinstance(source, dict) else None
            yield StoredRecord(view=hit["_index"], row=f"{hit['_index']}/{hit['_id']}", columns={"record_id": hit["_id"]},
                               record=record, error=error, order=leaf if isinstance(leaf, int) else None)

    def derived_answers(self) -> Iterator[DerivedRow]:
        fields = list(_ANSWERS_MAPPING["properties"])
        for hit in self._scan(self.answers_index, "reading every answer"):
            source = hit["_source"]
            yield DerivedRow(view=self.answers_index, row=hit["_id"], values={f: source.get(f) for f in fields})

    def derived_documents(self) -> None:
        """None: the document-ACL filters read the retrieval records themselves."""
        return None

    def derived_feedback(self) -> None:
        """None: useful actions are counted from the feedback records themselves."""
        return None

    def derived_terms(self) -> None:
        """None: full text is OpenSearch's analysis of the answers documents' own fields."""
        return None

    def answer_records(self, tenant: str, spans: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[AuditRecord]]:
        wanted = set(spans)
        found: dict[tuple[str, str], list[AuditRecord]] = {}
        if not wanted:
            return found
        query = {"bool": {"filter": [
            {"term": {"tenant": tenant}}, {"term": {"kind": Kind.COMPLETION.value}},
            self._any_of("trace_id", sorted({trace_id for trace_id, _ in wanted})),
        ]}}
        sort = [{"leaf_index": {"order": "asc", "missing": "_last"}}, {"record_id": "asc"}]
        seen: set[str] = set()
        for source in self._paged(self.records_pattern, query, sort, "reading completions"):
            key = (source.get("trace_id"), source.get("span_id"))
            if key in wanted and source.get("record_id") not in seen:  # a record in two indices: once
                seen.add(source.get("record_id"))
                found.setdefault(key, []).append(AuditRecord.model_validate(source))
        return found

    # -- Merkle logs --------------------------------------------------------------------

    def _check_logs(
        self, updates: Sequence[LogUpdate], expected: Mapping[str, LogState | None]
    ) -> dict[str, tuple[int, int] | None]:
        """Before anything is written, in one real-time read: each log's stored state must be
        the one its update was planned from (`state_to_write`), and a checkpoint already
        stored for the same log and size must have the same root. Returns, for each log whose
        state is to be written, the version to write it on: (seq_no, primary_term), or None
        to create it."""
        states = {u.log_id: u.state for u in updates}  # the last one per log
        wanted = {f"{cp.log_id}/{cp.size}": cp for u in updates for cp in u.checkpoints}
        docs = [{"_index": self.logs_index, "_id": i} for i in states]
        docs += [{"_index": self.checkpoints_index, "_id": i, "_source": ["root_hash"]} for i in wanted]
        with self._calling("reading log states", client_error=InvalidInput):
            found = self._client.mget(body={"docs": docs})["docs"]
        for doc in found:
            if "error" in doc:
                raise Unavailable(f"OpenSearch layout incomplete (reading log states): {_reason(doc['error'])}")
        for cp, doc in zip(wanted.values(), found[len(states):], strict=True):
            stored = (doc.get("_source") or {}).get("root_hash")
            if stored is not None and stored != cp.root_hash.hex():
                raise ForkError(f"log {cp.log_id} already has a different checkpoint for size {cp.size}")
        versions: dict[str, tuple[int, int] | None] = {}
        for (log_id, state), doc in zip(states.items(), found[: len(states)], strict=True):
            stored = LogState.from_dict(doc["_source"]) if doc.get("found") else None
            if state_to_write(log_id, stored, state, expected):
                versions[log_id] = (doc["_seq_no"], doc["_primary_term"]) if doc.get("found") else None
        return versions

    def _write_updates(self, updates: Sequence[LogUpdate], versions: Mapping[str, tuple[int, int] | None]) -> None:
        lines: list[bytes] = []
        ours: dict[tuple[str, str], str] = {}  # (index, _id) -> the hash or root we write
        nodes, checkpoints = self.nodes_index, self.checkpoints_index
        for u in updates:
            for level, index, digest in u.nodes:
                ours[nodes, f"{u.log_id}/{level}/{index}"] = digest.hex()
                lines.append(orjson.dumps({"create": {"_index": nodes, "_id": f"{u.log_id}/{level}/{index}"}}))
                lines.append(orjson.dumps({"log_id": u.log_id, "hash": digest.hex()}))
            for cp in u.checkpoints:
                ours[checkpoints, f"{cp.log_id}/{cp.size}"] = cp.root_hash.hex()
                lines.append(orjson.dumps({"create": {"_index": checkpoints, "_id": f"{cp.log_id}/{cp.size}"}}))
                lines.append(orjson.dumps(cp.to_dict()))
        if lines:  # checkpoints are searched, so they follow `refresh`; nodes and states are read by id
            self._same_as_stored(self._bulk_log_items(lines, "writing Merkle nodes and checkpoints", searched=True), ours)
        states: dict[str, LogState] = {u.log_id: u.state for u in updates}  # the last one per log
        lines = []
        for log_id, version in versions.items():
            if version is None:  # a new log: only if no other writer created it meanwhile
                lines.append(orjson.dumps({"create": {"_index": self.logs_index, "_id": log_id}}))
            else:  # compare-and-set on the version read before the batch was written
                lines.append(orjson.dumps({"index": {"_index": self.logs_index, "_id": log_id,
                                                     "if_seq_no": version[0], "if_primary_term": version[1]}}))
            lines.append(orjson.dumps(states[log_id].to_dict()))
        if not lines:
            return
        # A conflict is another sequencer's state, unless it is exactly ours (a write whose
        # answer was lost, replayed).
        fenced = [log_id for _, log_id in self._bulk_log_items(lines, "writing log states", searched=False)
                  if self.log_state(log_id) != states[log_id]]
        if fenced:
            raise FencedError(
                f"log {', '.join(fenced)} was advanced by another sequencer while this batch was written; "
                "its state is refused (fenced)", fenced,
            )

    def _bulk_log_items(self, lines: list[bytes], what: str, *, searched: bool) -> list[tuple[str, str]]:
        """Our own documents, all `create` or conditional: returns the (index, _id) of those
        refused with 409 (already there, or another version) for the caller to compare;
        anything else is retriable or a bug."""
        with self._calling(what):
            response = self._client.bulk(
                body=b"\n".join(lines) + b"\n",
                params={"filter_path": "errors,items.*.status,items.*.error,items.*._id,items.*._index"},
                **(self._refresh_param() if searched else {}),
            )
        if not response.get("errors"):
            return []
        conflicts = []
        for item in response["items"]:
            ((_, result),) = item.items()
            status = result["status"]
            if status < 300:
                continue
            if status == 409:
                conflicts.append((result["_index"], result["_id"]))
                continue
            reason = f"{what}: {result.get('_id')}: {status} {_reason(result.get('error'))}"
            raise Unavailable(reason) if _retriable_status(status) else AitrailError(reason)
        return conflicts

    def _same_as_stored(self, conflicts: list[tuple[str, str]], ours: Mapping[tuple[str, str], str]) -> None:
        """Nodes and checkpoints that were already stored must hold what we wrote: a node
        or checkpoint with another hash is a fork (a stale writer, or a forgery); refuse."""
        if not conflicts:
            return
        docs = [{"_index": index, "_id": doc_id, "_source": ["hash", "root_hash"]} for index, doc_id in conflicts]
        with self._calling("comparing stored Merkle nodes and checkpoints"):
            found = self._client.mget(body={"docs": docs})["docs"]
        for (index, doc_id), doc in zip(conflicts, found, strict=True):
            source = doc.get("_source") or {}
            stored = source.get("hash") if index == self.nodes_index else source.get("root_hash")
            if stored == ours[index, doc_id]:
                continue
            if index == self.nodes_index:
                log_id, level, node = doc_id.rsplit("/", 2)
                raise ForkError(
                    f"log {log_id}: Merkle node at level {level}, index {node} is stored with hash {stored}, "
                    f"this write has {ours[index, doc_id]}: refusing to fork the log"
                )
            log_id, size = doc_id.rsplit("/", 1)
            raise ForkError(f"log {log_id} already has a different checkpoint for size {size}")

    def log_ids(self) -> list[str]:
        """Logs with a stored state, and logs that records claim (even without a state)."""
        ids = {h["_id"] for h in self._search(
            self.logs_index, {"query": {"match_all": {}}, "size": _PAGE, "_source": False}, "listing logs"
        )["hits"]["hits"]}
        composite: dict[str, Any] = {"size": _GROUPS_PAGE, "sources": [{"log": {"terms": {"field": "log_id"}}}]}
        body = {"size": 0, "aggs": {"logs": {"composite": composite}}, "track_total_hits": False}
        while True:
            result = self._search(self.records_pattern, body, "listing logs")["aggregations"]["logs"]
            ids.update(b["key"]["log"] for b in result["buckets"])
            if "after_key" not in result or not result["buckets"]:
                return sorted(ids)
            composite["after"] = result["after_key"]

    def log_state(self, log_id: str) -> LogState | None:
        with self._calling("reading a log state"):
            try:
                return LogState.from_dict(self._client.get(index=self.logs_index, id=log_id)["_source"])
            except NotFoundError as exc:
                if exc.error == "index_not_found_exception":
                    raise
                return None

    def log_size(self, log_id: str) -> int:
        state = self.log_state(log_id)
        return state.size if state else 0

    def checkpoints(self, log_id: str) -> list[SignedCheckpoint]:
        return [SignedCheckpoint.from_dict(s) for s in self._paged(
            self.checkpoints_index, {"term": {"log_id": log_id}}, [{"size": "asc"}], "reading checkpoints"
        )]

    def latest_checkpoint(self, log_id: str) -> SignedCheckpoint | None:
        body = {"query": {"term": {"log_id": log_id}}, "sort": [{"size": "desc"}], "size": 1}
        hits = self._search(self.checkpoints_index, body, "reading checkpoints")["hits"]["hits"]
        return SignedCheckpoint.from_dict(hits[0]["_source"]) if hits else None

    def records_in_log(self, log_id: str) -> Iterator[AuditRecord]:
        sort = [{"leaf_index": {"order": "asc", "missing": "_last"}}, {"record_id": "asc"}]
        for source in self._paged(self.records_pattern, {"term": {"log_id": log_id}}, sort, "reading a log"):
            try:
                yield AuditRecord.model_validate(source)
            except ValueError as exc:  # an edited document: its leaf is then missing from the log
                log.warning("log %s: a stored record does not parse, left out: %s", log_id, exc)

    def nodes(self, log_id: str, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        """Real-time gets by id."""
        out: dict[tuple[int, int], bytes] = {}
        keys = list(keys)
        for first in range(0, len(keys), _PAGE):
            ids = [f"{log_id}/{level}/{index}" for level, index in keys[first : first + _PAGE]]
            with self._calling("reading Merkle nodes"):
                response = self._client.mget(
                    index=self.nodes_index, body={"ids": ids}, params={"filter_path": "docs._id,docs._source.hash"}
                )
            for doc in response.get("docs", []):
                if "_source" in doc:
                    level, index = doc["_id"].rsplit("/", 2)[1:]
                    out[int(level), int(index)] = bytes.fromhex(doc["_source"]["hash"])
        return out

    def _paged(self, index: str, query: dict[str, Any], sort: list[Any], what: str) -> Iterator[dict[str, Any]]:
        """Every matching `_source`, in `sort` order (which must end on a unique field)."""
        body: dict[str, Any] = {"query": {"bool": {"filter": [query]}}, "sort": sort, "size": _PAGE,
                                "track_total_hits": False}
        while True:
            hits = self._search(index, body, what)["hits"]["hits"]
            for hit in hits:
                yield hit["_source"]
            if len(hits) < _PAGE:
                return
            body["search_after"] = hits[-1]["sort"]

    # -- KeyStore -----------------------------------------------------------------------

    def create_key(self, tenant: str, role: Role) -> tuple[str, KeyInfo]:
        key_id, key = new_key()
        info = KeyInfo(key_id=key_id, tenant=check_tenant(tenant), role=Role(role), created_at=_now())
        doc = {"key_id": key_id, "key_hash": hash_key(key), "tenant": tenant, "role": info.role.value,
               "created_at": info.created_at}
        if self.row_mac is not None:
            doc["mac"] = self.row_mac.key_row(*_key_fields(doc))
        with self._calling("creating a key", client_error=InvalidInput):
            self._client.index(index=self.keys_index, id=key_id, body=doc, op_type="create", refresh="wait_for")
        return key, info

    def authenticate(self, key: str) -> Principal | None:
        # `atk_<key id>_<secret>`: a real-time get by id, then the hash compared in constant time.
        key_id = key.removeprefix(KEY_PREFIX).split("_", 1)[0] if key.startswith(KEY_PREFIX) else ""
        if not key_id:
            return None
        with self._calling("checking a key"):
            try:
                doc = self._client.get(index=self.keys_index, id=key_id)["_source"]
            except NotFoundError as exc:
                if exc.error == "index_not_found_exception":
                    raise
                return None
        if not hmac.compare_digest(doc["key_hash"], hash_key(key)) or doc.get("revoked_at"):
            return None
        if self.row_mac is not None and not self.row_mac.key_row_ok(*_key_fields(doc), doc.get("mac")):
            raise _key_refused(key_id)
        return Principal(key_id=doc["key_id"], tenant=doc["tenant"], role=Role(doc["role"]))

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        query = {"term": {"tenant": tenant}} if tenant is not None else {"match_all": {}}
        body = {"query": query, "sort": [{"created_at": "asc"}, {"key_id": "asc"}], "size": _PAGE}
        hits = self._search(self.keys_index, body, "listing keys")["hits"]["hits"]
        return [
            KeyInfo(s["key_id"], s["tenant"], Role(s["role"]), s["created_at"], s.get("revoked_at"))
            for s in (h["_source"] for h in hits)
        ]

    def revoke_key(self, key_id: str) -> bool:
        now = _now()
        params: dict[str, Any] = {"now": now, "mac": None, "checked": None}
        with self._calling("revoking a key"):
            try:
                if self.row_mac is not None:
                    doc = self._client.get(index=self.keys_index, id=key_id)["_source"]
                    if self.row_mac.key_row_ok(*_key_fields(doc), doc.get("mac")):
                        params["checked"] = doc["mac"]
                        params["mac"] = self.row_mac.key_row(*_key_fields(doc)[:5], now)
                response = self._client.update(
                    index=self.keys_index, id=key_id, refresh="wait_for", retry_on_conflict=5,
                    body={"script": {"source": _REVOKE_SCRIPT, "lang": "painless", "params": params}},
                )
            except NotFoundError as exc:
                if exc.error == "index_not_found_exception":
                    raise
                return False
        return response["result"] == "updated"

    # -- housekeeping -------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the store, created on first use (pseudonym key).
        Several processes may race to create it; the first one wins, all read the same."""
        with self._calling("reading a secret", client_error=ConfigError):
            try:
                return self._read_secret(name)
            except NotFoundError as exc:
                if exc.error == "index_not_found_exception":
                    raise
            value = secrets.token_bytes(32)
            body = {"value": base64.b64encode(value).decode()}
            if self.row_mac is not None:
                body["mac"] = self.row_mac.secret_row(name, value)
            try:
                self._client.index(index=self.secrets_index, id=name, op_type="create", body=body)
            except ConflictError:
                return self._read_secret(name)
            return value

    def _read_secret(self, name: str) -> bytes:
        """Raises ConfigError naming a secret whose MAC does not verify (with a row key)."""
        source = self._client.get(index=self.secrets_index, id=name)["_source"]
        value = base64.b64decode(source["value"])
        if self.row_mac is not None and not self.row_mac.secret_row_ok(name, value, source.get("mac")):
            raise ConfigError(f"the secret {name!r} in {self.secrets_index} does not authenticate: the index was "
                              "altered (the document was replaced or added outside aitrail); restore it from a snapshot")
        return value

    # -- row authentication (aitrail.store.rowmac) -----------------------------------------

    # The row key (aitrail.custody.attach_row_key); without one, no MAC is written or checked.
    row_mac: RowMac | None = None

    def _mac_rows(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(index, id, source) of every key and secret document."""
        for index in (self.keys_index, self.secrets_index):
            if not self._client.indices.exists(index=index):
                continue
            for hit in self._scan(index, f"reading {index}"):
                yield index, hit["_id"], hit["_source"]

    def _row_ok(self, mac: RowMac, index: str, ident: str, source: dict[str, Any]) -> bool:
        if index == self.keys_index:
            return mac.key_row_ok(*_key_fields(source), source.get("mac"))
        try:
            value = base64.b64decode(source.get("value") or "", validate=True)
        except ValueError:
            return False
        return mac.secret_row_ok(ident, value, source.get("mac"))

    def row_macs_present(self) -> int:
        """How many key and secret documents carry a MAC."""
        with self._calling("looking for row MACs"):
            return sum(1 for _, _, source in self._mac_rows() if source.get("mac"))

    def authenticate_existing_rows(self, mac: RowMac) -> int:
        """MAC every key and secret document without one: done once, when the row key is
        created (aitrail.custody.attach_row_key). Returns how many."""
        count = 0
        with self._calling("authenticating the existing keys and secrets"):
            for index, ident, source in list(self._mac_rows()):
                if source.get("mac"):
                    continue
                if index == self.keys_index:
                    tag = mac.key_row(*_key_fields(source))
                else:
                    tag = mac.secret_row(ident, base64.b64decode(source["value"]))
                self._client.update(index=index, id=ident, body={"doc": {"mac": tag}}, refresh="wait_for")
                count += 1
        return count

    def unauthenticated_rows(self) -> list[UnauthenticatedRow]:
        """Key and secret documents whose MAC is missing or does not verify (`aitrail
        verify`); none are reported without a row key."""
        if self.row_mac is None:
            return []
        out = []
        with self._calling("authenticating keys and secrets"):
            for index, ident, source in self._mac_rows():
                if not self._row_ok(self.row_mac, index, ident, source):
                    why = "its MAC is missing" if not source.get("mac") else "its MAC does not verify"
                    name = f"key {ident}" if index == self.keys_index else f"secret {ident}"
                    out.append(UnauthenticatedRow(index, name, f"{why}: changed or added outside aitrail"))
        return sorted(out, key=lambda r: (r.view, r.row))

    def ping(self) -> bool:
        try:
            return bool(self._client.ping(request_timeout=5))
        except Exception:  # noqa: BLE001  (readiness: any failure means not ready)
            return False

    def settle(self) -> None:
        """Make every acknowledged write visible to searches now (a refresh), so that a full
        check such as `aitrail verify` does not mistake the last second's records and
        checkpoints, written with refresh off, for missing ones."""
        with self._calling("refreshing before a full read"):
            self._client.indices.refresh(
                index=f"{self.records_pattern},{self.answers_index},{self.checkpoints_index},{self.logs_index},"
                  f"{self.nodes_index}",
                params={"ignore_unavailable": "true"},
            )

    def count(self, tenant: str | None = None) -> int:
        query = {"term": {"tenant": tenant}} if tenant is not None else {"match_all": {}}
        with self._calling("counting records"):
            return self._client.count(index=self.records_pattern, body={"query": query})["count"]

    def close(self) -> None:
        self._client.close()


def _short(value: Any, limit: int = 160) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mapping_differences(expected: Mapping[str, Any], actual: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    """Each setting of `expected` (a mapping or a field's definition, recursively through
    `properties` and `fields`) that `actual` holds with another value. Fields `actual` lacks
    are left out (an index made before they were added); extra ones too."""
    out = []
    for key, want in expected.items():
        if key in ("properties", "fields"):
            have = actual.get(key) or {}
            for name, definition in want.items():
                if name in have and isinstance(definition, Mapping) and isinstance(have[name], Mapping):
                    out += _mapping_differences(definition, have[name], (*path, name))
            continue
        got = actual.get(key, _DEFAULT_MAPPING.get(key))
        if not _same_setting(got, want):
            where = ".".join(path) or "the index"
            out.append(f"{where}: {key} is {_short(got)}, aitrail maps {_short(want)}")
    return out


# What OpenSearch leaves out of a mapping it returns when the value is the default.
_DEFAULT_MAPPING: dict[str, Any] = {"index": True, "doc_values": True, "_source": {"enabled": True}}


def _same_setting(got: Any, want: Any) -> bool:
    """Equal as OpenSearch means it: 1e10 and 10000000000.0, true and "true"."""
    if isinstance(got, (int, float)) and isinstance(want, (int, float)) and not isinstance(want, bool):
        return float(got) == float(want)
    if isinstance(got, Mapping) and isinstance(want, Mapping):
        return set(got) == set(want) and all(_same_setting(got[k], want[k]) for k in want)
    return str(got).lower() == str(want).lower()

