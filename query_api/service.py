"""The queries behind the API and the CLI, so both answer the same."""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, WithJsonSchema, field_serializer
from pydantic.json_schema import JsonSchemaValue

from aitrail.errors import BadRequest, Forbidden, NotFound
from aitrail.schemas.canonical import record_to_dict
from aitrail.schemas.record import AuditRecord, Kind
from aitrail.store.base import Answer, AnswerQuery, CostQuery, Principal, RecordQuery, Role, Store
from aitrail.store.context import inherited_users
from aitrail.tenancy import log_tenant

from aitrail.integrity.note import Verifier
from aitrail.integrity.verify import verify_record

from aitrail.integrity.views import from_e10, merged_answer

from .integrity import Proofs, answer_integrity, report_strays, sealed_answer_records, without_strays
from .replay import for_role, merge_fragments, only_visible, with_inherited_context
from .timeparse import around, parse_when, parse_window, to_iso

# Response models: they are the API's contract (OpenAPI at /openapi.json, checked by
# tests/api/test_schemathesis.py). The examples are one consistent story: the refund question
# asked on Tuesday 2026-11-24 at 14:30 Bangkok time (07:30 UTC).
EXAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EXAMPLE_RECORD_ID = "be72356d6d069d3edf732c417cc8713f"  # record_id_for("acme", trace, "00f067aa0ba902b7", "completion")
_LEAF_HASH = "9e11d3e919719e813fbf77cd31c5aedbf4469bee810bbeb6f445c553b84eeece"
_ROOT_HASH = "85c7a4b6943211a7061a8caa30e4f43c7be672165d5097a2624a293d0482cf86"
_NOTE = (
    "aitrail/prod/acme.0\n1284\nhcektpQyEacGGoyqMOT0PHvmchZdUJeiYkopPQSCz4Y=\n\n"
    "\u2014 aitrail/prod 4woF4Fl8E3Q/hA/43fkzZp0vACjeTky00hIaN5jR/a6CluLNi7pP0OZvL6H88pHhXF39mXuZvOYj9EY1t62dy/J5HwU=\n"
)


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ErrorBody(BaseModel):
    model_config = _examples(
        {"code": "bad_request", "message": "unknown time zone 'Asia/Bangkk'; use an IANA name such as Asia/Bangkok"}
    )

    code: str = Field(
        description="Stable machine-readable code: bad_request, unauthorized, forbidden, not_found, "
                    "method_not_allowed, unavailable or internal."
    )
    message: str = Field(description="What went wrong and how to fix it, for people. Never a stack trace.")


class ErrorResponse(BaseModel):
    """Every error of the API, whatever the status (400, 401, 403, 404, 405, 503, 500)."""

    model_config = _examples(
        {"error": {"code": "not_found", "message": f"no trace {EXAMPLE_TRACE_ID}"}},
        {"error": {"code": "unavailable", "message": "this read could not be written to the access log, so it was "
                                                     "not served: store unavailable"}},
    )

    error: ErrorBody


class Money(BaseModel):
    model_config = _examples({"amount": "0.0000960000", "currency": "USD"}, {"amount": None, "currency": None})

    amount: Decimal | None = Field(description="Exact decimal as a string; null when the model has no price.")
    currency: str | None = Field(description="ISO 4217 code of the price table, e.g. USD; null when unknown or mixed.")

    @field_serializer("amount", when_used="json")
    def _plain(self, amount: Decimal | None) -> str | None:
        """Always positional notation: `0.0000000000`, never `0E-10`."""
        return None if amount is None else format(amount, "f")


IntegrityState = Literal["verified", "erased", "failed", "pending", "unsealed", "unverifiable", "partial", "empty"]


class IntegrityStatus(BaseModel):
    """The server's own check of one record against the newest signed checkpoint of its log."""

    model_config = _examples({"status": "verified", "reason": "leaf 0 is in the signed tree of size 1284"})

    status: IntegrityState = Field(
        description="verified (in the signed tree), erased (content erased, header still verifies), failed (the "
                    "record or log was altered: `reason` says how), pending (not yet covered by a checkpoint), "
                    "unsealed (written before integrity was on), unverifiable (no public key configured)."
    )
    reason: str | None = None


class AnswerOut(BaseModel):
    model_config = _examples(
        {
            "record_id": EXAMPLE_RECORD_ID, "trace_id": EXAMPLE_TRACE_ID, "time": "2026-11-24T07:30:00.000000000Z",
            "question": "What is our refund policy?",
            "answer": "You can return any item within 30 days of delivery for a full refund.",
            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 412, "output_tokens": 57,
            "cost": {"amount": "0.0000960000", "currency": "USD"}, "service": "support-bot",
            "user": "u_3f9a1c2e7b5d4a60",
            "integrity": {"status": "verified", "reason": "leaf 1283 is in the signed tree of size 1284"},
        }
    )

    record_id: str = Field(description="The completion record; `GET /v1/records/{record_id}` shows all of it.")
    trace_id: str = Field(description="`GET /v1/traces/{trace_id}` replays the whole answer.")
    time: str | None = Field(description="Start of the completion, ISO 8601 UTC with nanoseconds.")
    question: str | None = Field(description="Last user message; null for the analyst role (content redacted).")
    answer: str | None = Field(description="Assistant text; null for the analyst role (content redacted).")
    provider: str | None = Field(description="Model provider, e.g. openai, anthropic, aws.bedrock.")
    model: str | None = Field(description="Model that answered (response model, else the requested one).")
    input_tokens: int | None
    output_tokens: int | None
    cost: Money
    service: str | None = Field(description="service.name of the AI application.")
    user: str | None = Field(description="Pseudonym of the user who asked; never the raw id.")
    user_from: str | None = Field(
        None,
        description="When the completion's span did not name its user: the span id of the ancestor span whose "
                    "record gave `user` (at ingestion, the record's `context_from`, or at query time when that "
                    "ancestor was sealed after the completion). Null for the span's own user.",
    )
    integrity: IntegrityStatus = Field(
        description="The check of the sealed records this answer is read from (the span's and its log-event "
                    "fragments'), as in a replay; failed also when the derived answers row the search found "
                    "differs from them (`reason` names the fields: the values shown are the sealed ones)."
    )


class AnswersOut(BaseModel):
    model_config = _examples(
        {
            "data": [AnswerOut.model_config["json_schema_extra"]["examples"][0]],
            "count": 1,
            "window": {"from": "2026-11-24T07:15:00.000000000Z", "to": "2026-11-24T07:45:00.000000000Z"},
            "next_cursor": None,
        }
    )

    data: list[AnswerOut] = Field(description="Matching completions, newest first.")
    count: int = Field(description="All matches, not only this page.")
    window: dict[str, str | None] = Field(
        description="The time range searched, ISO 8601 UTC: `from` = at - window, `to` = at + window; "
                    "both null without `at`."
    )
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class AccessEntry(BaseModel):
    model_config = _examples(
        {
            "record_id": "1e29eec8f5b62ab61f261fa85c107d83", "time": "2026-11-25T09:12:44.019189000Z",
            "key_id": "47cb389ebd0f", "role": "auditor", "endpoint": "/v1/answers",
            "query": {"q": "refund policy", "at": "last Tuesday 14:30", "tz": "Asia/Bangkok", "limit": 20},
            "ids": [EXAMPLE_RECORD_ID], "count": 1, "status": 200,
        },
        {
            "record_id": "5c0d7e3b1f2a4e6d8c9b0a1f2e3d4c5b", "time": "2026-11-25T09:13:02.551021000Z",
            "key_id": None, "role": None, "endpoint": "/v1/traces/{trace_id}",
            "query": {"trace_id": EXAMPLE_TRACE_ID}, "ids": [], "count": 0, "status": 401,
            "reason": "unknown or revoked key", "claimed_key_id": "47cb389ebd0f",
        },
    )

    record_id: str = Field(description="The `access` record itself, sealed in the Merkle log like any other.")
    time: str | None = Field(description="When the read happened, ISO 8601 UTC.")
    key_id: str | None = Field(description="Id of the API key (or `oidc:<subject>`) that read.")
    role: str | None = Field(description="Role of the reader: auditor, analyst or admin.")
    endpoint: str | None = Field(description="Route template that was called, e.g. /v1/traces/{trace_id}.")
    query: dict[str, Any] = Field(default_factory=dict, description="Parameters of the read (nulls dropped).")
    ids: list[str] = Field(default_factory=list, description="Record or trace ids the read returned (at most 500).")
    count: int | None = Field(None, description="How many ids the read returned, also past the 500 kept in `ids`.")
    status: int | None = Field(
        None, description="HTTP status of the answer (200 served; 400, 401, 403, 404 refused; 503 not served). "
                          "Reads through the `aitrail` command carry the status the same read would have had.")
    reason: str | None = Field(None, description="Why the request was refused, as its error message said.")
    claimed_key_id: str | None = Field(
        None, description="Refused without a valid credential: the key id the request presented (unverified).")
    cli: dict[str, Any] | None = Field(
        None, description="Reads through the `aitrail` command: the operating-system user, uid, host and "
                          "process id that read.")


class AccessLogOut(BaseModel):
    model_config = _examples({"data": [AccessEntry.model_config["json_schema_extra"]["examples"][0]],
                              "next_cursor": None})

    data: list[AccessEntry] = Field(description="Reads of audit data, newest first.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class WhoAmI(BaseModel):
    model_config = _examples({"tenant": "acme", "role": "auditor", "key_id": "47cb389ebd0f"})

    tenant: str = Field(description="Tenant of the key or token; every query is limited to it.")
    role: str = Field(description="ingest, auditor, analyst or admin.")
    key_id: str = Field(description="Id of the API key, or `oidc:<subject>` for an OIDC token.")


class InheritedValue(BaseModel):
    value: str
    span_id: str = Field(description="The ancestor span whose record carries the value.")
    resolved: Literal["ingest", "query"] = Field(
        description="ingest: the sealed record carries the value (its `context_from`); query: the ancestor was "
                    "sealed after this record, so the value is joined when read and the record's field stays null."
    )


class RecordView(AuditRecord):
    """An `AuditRecord` (schemas/audit-record.v1.schema.json) as the API shows it: fields that are
    null are left out; for the analyst role the content fields are left out and listed in
    `redacted`. In a replay, each view also carries its `fragments` and `integrity`."""

    model_config = _examples(
        {
            "schema_version": 1, "record_id": EXAMPLE_RECORD_ID, "kind": "completion", "origin": "span",
            "trace_id": EXAMPLE_TRACE_ID, "span_id": "00f067aa0ba902b7", "parent_span_id": "a3ce929d0e0e4736",
            "tenant": "acme", "service": "support-bot", "environment": "production",
            "operation": "chat", "start_time": "2026-11-24T07:30:00.000000000Z",
            "end_time": "2026-11-24T07:30:01.412000000Z", "duration_ms": 1412.0,
            "user_pseudonym": "u_3f9a1c2e7b5d4a60", "user_roles": ["customer"], "provider": "openai",
            "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18",
            "request_params": {"temperature": 0.2, "max_tokens": 512}, "finish_reasons": ["stop"],
            "input_messages": [{"role": "user", "content": "What is our refund policy?"}],
            "system_instructions": "You are the support assistant of ACME. Answer from the retrieved documents.",
            "output_messages": [{"role": "assistant",
                                 "content": "You can return any item within 30 days of delivery for a full refund.",
                                 "finish_reason": "stop"}],
            "question": "What is our refund policy?",
            "answer": "You can return any item within 30 days of delivery for a full refund.",
            "template_id": "support-answer", "template_version": "7",
            "documents": [], "input_tokens": 412, "output_tokens": 57,
            "cost": {"amount": "0.0000960000", "currency": "USD", "price_table_version": "2026-11-01",
                     "priced_by": "openai/gpt-4o-mini"},
            "status": "ok", "semconv": "gen_ai", "raw_attributes": {}, "log_id": "acme.0", "leaf_index": 1283,
            "leaf_hash": _LEAF_HASH,
            "content_commitment": "677340fbeb31f5938ea7ead6b7e75de8a38cf68afcc05aff750b110064731e8d",
        }
    )

    redacted: list[str] | None = Field(
        None, description="Content fields (and content_salt, documents' snippet and content_sha256) left out because "
                          "of the caller's role."
    )
    fragments: list[str] | None = Field(
        None, description="Replay only: ids of the records merged into this view (a span and its log events)."
    )
    integrity: IntegrityStatus | None = Field(None, description="Replay only: the check of this view's records.")
    documents_hidden: int | None = Field(
        None, description="Replay with `visible_to` only: retrieved documents left out because of their ACL tags."
    )
    inherited: dict[str, InheritedValue] | None = Field(
        None,
        description="Replay only: user_pseudonym / session_id / conversation_id this span did not set but an "
                    "ancestor span did, each with that ancestor's span id.",
    )


class _RecordViewSchema:
    """Documents a plain dict (what the CLI renders) with the `RecordView` JSON schema."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(RecordView.__pydantic_core_schema__)


_TRACE_INTEGRITY = {
    "type": "object",
    "description": "Integrity of the whole trace: `status` is verified when every record verifies (or is erased), "
                   "failed when any fails, partial otherwise; `records` has each record's own check.",
    "properties": {
        "status": {"type": "string", "enum": list(IntegrityState.__args__)},
        "reason": {"type": "string"},
        "records": {"type": "object", "additionalProperties": IntegrityStatus.model_json_schema()},
    },
    "required": ["status", "records"],
}


class TraceOut(BaseModel):
    model_config = _examples(
        {
            "trace_id": EXAMPLE_TRACE_ID,
            "records": [
                {
                    **{k: v for k, v in RecordView.model_config["json_schema_extra"]["examples"][0].items()},
                    "fragments": [EXAMPLE_RECORD_ID],
                    "integrity": {"status": "verified", "reason": "leaf 1283 is in the signed tree of size 1284"},
                }
            ],
            "integrity": {
                "status": "verified",
                "records": {EXAMPLE_RECORD_ID: {"status": "verified",
                                                "reason": "leaf 1283 is in the signed tree of size 1284"}},
            },
        }
    )

    trace_id: str = Field(description="The trace id, lower case.")
    records: list[Annotated[dict[str, Any], _RecordViewSchema]] = Field(
        description="Every record of the trace in causal order (parents before children, siblings by time): "
                    "retrievals with their documents, prompts, completions, tools, feedback."
    )
    integrity: Annotated[dict[str, Any], WithJsonSchema(_TRACE_INTEGRITY)]


class CostRowOut(BaseModel):
    model_config = _examples(
        {"group": {"model": "gpt-4o-mini", "service": "support-bot"}, "calls": 1840, "input_tokens": 731_520,
         "output_tokens": 96_210, "cost": {"amount": "0.1674540000", "currency": "USD"}, "unpriced_calls": 0}
    )

    group: dict[str, str | None] = Field(description="Value of each `group_by` dimension; null when unknown.")
    calls: int = Field(description="Completions in the group.")
    input_tokens: int
    output_tokens: int
    cost: Money
    unpriced_calls: int = Field(description="Completions without a price (model missing from the price table).")


class CostSummaryOut(BaseModel):
    model_config = _examples(
        {"traces": 1840, "useful_traces": 1211, "cost_per_trace": {"amount": "0.0000910076", "currency": "USD"},
         "cost_per_useful_action": {"amount": "0.0001382775", "currency": "USD"}}
    )

    traces: int = Field(description="Traces with at least one completion in the range.")
    useful_traces: int = Field(description="Of those, traces with positive feedback: the useful actions.")
    cost_per_trace: Money
    cost_per_useful_action: Money = Field(description="All cost in the range divided by the useful actions.")


class CostsOut(BaseModel):
    model_config = _examples(
        {
            "data": [CostRowOut.model_config["json_schema_extra"]["examples"][0]],
            "total": {"amount": "0.1674540000", "currency": "USD"},
            "group_by": ["model", "service"],
            "summary": CostSummaryOut.model_config["json_schema_extra"]["examples"][0],
        }
    )

    data: list[CostRowOut] = Field(description="One row per group.")
    total: Money = Field(description="Sum of all rows; currency null when the rows have several.")
    group_by: list[str] = Field(description="The dimensions grouped by, in order.")
    summary: CostSummaryOut


class ProofOut(BaseModel):
    model_config = _examples(
        {
            "record_id": EXAMPLE_RECORD_ID, "log_id": "acme.0", "leaf_index": 1283, "leaf_hash": _LEAF_HASH,
            "tree_size": 1284, "root_hash": _ROOT_HASH,
            "inclusion_proof": ["0f49b740b3caf6d1e334235e8374922e7321b303c3206a5c41117c161bf0dfb5",
                                "e447fd409ad0eddb95fdc1cd02a46ae8fd332edcf2f49926ea63aa44c0b81f00"],
            "checkpoint": _NOTE, "status": "verified",
        }
    )

    record_id: str
    log_id: str = Field(description="The Merkle log the record is in (one per Kafka partition; one embedded).")
    leaf_index: int = Field(description="Position of the record's leaf in the log.")
    leaf_hash: str | None = Field(description="SHA-256 leaf hash (RFC 9162, 0x00 prefix), hex.")
    tree_size: int = Field(description="Size of the tree the checkpoint signs.")
    root_hash: str = Field(description="Root hash the checkpoint signs, hex.")
    inclusion_proof: list[str] = Field(description="Sibling hashes, leaf side first (RFC 9162 inclusion path), hex.")
    checkpoint: str = Field(description="The signed checkpoint (C2SP signed note) the proof is against.")
    status: str = Field(description="The server's own check: verified, erased, failed, or unverifiable "
                                    "(no public key configured).")


class CheckpointOut(BaseModel):
    model_config = _examples(
        {"log_id": "acme.0", "size": 1284, "root_hash": _ROOT_HASH, "signed_at": "2026-11-24T07:30:01.998739000Z",
         "note": _NOTE}
    )

    log_id: str
    size: int = Field(description="Number of leaves the checkpoint covers.")
    root_hash: str = Field(description="Merkle root hash, hex.")
    signed_at: str = Field(description="When the checkpoint was signed, ISO 8601 UTC.")
    note: str = Field(description="C2SP signed note (origin, size, base64 root, Ed25519 signature lines); "
                                  "`aitrail verify` checks it with the public key alone.")


class CheckpointProblem(BaseModel):
    log_id: str
    reason: str = Field(description="Why the log's newest stored checkpoint is not served.")


class CheckpointsOut(BaseModel):
    model_config = _examples({"data": [CheckpointOut.model_config["json_schema_extra"]["examples"][0]], "problems": []})

    data: list[CheckpointOut] = Field(description="Newest checkpoint of each log (or of the one asked for), each "
                                                  "opened with the trusted keys: size and root are its signed note's.")
    problems: list[CheckpointProblem] = Field(
        default_factory=list,
        description="Logs of the caller's tenant whose newest stored checkpoint is not served: its note does not "
                    "open with a trusted key, is another log's, or disagrees with the stored size or root "
                    "(the store was edited; run `aitrail verify --log`).",
    )


class Health(BaseModel):
    model_config = _examples({"status": "ok", "version": "0.1.0"})

    status: Literal["ok"] = Field(description="Always ok: the process answers.")
    version: str = Field(description="aitrail version.")


class Ready(BaseModel):
    model_config = _examples({"status": "ready"})

    status: Literal["ready"] = Field(description="The store answers; otherwise the answer is 503.")


ACCESS_LOG_READERS = (Role.ADMIN, Role.AUDITOR)


def _access_entry(record: AuditRecord) -> AccessEntry:
    details = record.details or {}
    return AccessEntry(
        record_id=record.record_id, time=record.start_time, key_id=details.get("key_id"), role=details.get("role"),
        endpoint=details.get("endpoint"), query=details.get("query") or {}, ids=details.get("ids") or [],
        count=details.get("count"), status=details.get("status"), reason=details.get("reason"),
        claimed_key_id=details.get("claimed_key_id"), cli=details.get("cli"),
    )


def encode_cursor(time: str | None, record_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([time or "", record_id])).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        time, record_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(time, str) and isinstance(record_id, str)):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("cursor is not one this API gave out; start again without it") from None
    return time, record_id


def tags(value: str | None) -> tuple[str, ...] | None:
    """`a,b` → ("a", "b"); absent → None (no ACL filter); empty → () (a principal with no tags)."""
    if value is None:
        return None
    return tuple(sorted({t.strip() for t in value.split(",") if t.strip()}))


class QueryService:
    def __init__(self, store: Store, *, pseudonymise: Callable[[str], str], verifier: Verifier | None = None):
        self.store = store
        self.pseudonymise = pseudonymise
        self.proofs = Proofs(store, verifier)

    def answers(
        self,
        principal: Principal,
        *,
        q: str | None = None,
        at: str | None = None,
        tz: str | None = None,
        window: str | None = None,
        user: str | None = None,
        service: str | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        visible_to: str | None = None,
        exposed_to: str | None = None,
    ) -> AnswersOut:
        if q and principal.role == Role.ANALYST:
            raise Forbidden("role 'analyst' may not search the content of questions and answers (q); "
                            "it needs role auditor or admin")
        start = end = None
        if at is not None:
            low, high = around(parse_when(at, tz), parse_window(window))
            start, end = to_iso(low), to_iso(high)
        elif window is not None:
            raise BadRequest("window needs at")
        # A pseudonym is accepted as is; anything else is the service's own user id.
        pseudonym = user if user is None or user.startswith("u_") else self.pseudonymise(user)
        page = self.store.search_answers(
            AnswerQuery(
                tenant=principal.tenant, text=q, start=start, end=end, user=pseudonym, service=service,
                model=model, limit=limit, after=decode_cursor(cursor), visible_to=tags(visible_to),
                exposed_to=tags(exposed_to),
            )
        )
        # The derived view found and ordered the page; what it shows is read from the sealed
        # records (one batched read, one proof computation for the page) and checked against it.
        spans = [(a.trace_id, a.span_id) for a in page.answers]
        sealed, strays = sealed_answer_records(
            principal.tenant, self.store.answer_records(principal.tenant, spans) if spans else {}
        )
        report = self.proofs.report([r for key in dict.fromkeys(spans) for r in sealed.get(key, [])])
        redact = principal.role == Role.ANALYST
        data = []
        for a in page.answers:
            records = sealed.get((a.trace_id, a.span_id), [])
            merged = merged_answer(records)
            integrity = answer_integrity(a, records, merged, strays.get((a.trace_id, a.span_id), 0), report)
            shown = merged or {"record_id": a.record_id}
            cost = shown.get("cost_e10")
            data.append(AnswerOut(
                record_id=shown["record_id"], trace_id=a.trace_id, time=shown.get("time"),
                question=None if redact else shown.get("question"), answer=None if redact else shown.get("answer"),
                provider=shown.get("provider"), model=shown.get("model"), input_tokens=shown.get("input_tokens"),
                output_tokens=shown.get("output_tokens"),
                cost=Money(amount=None if cost is None else from_e10(cost), currency=shown.get("cost_currency")),
                service=shown.get("service"), user=shown.get("user"), user_from=_user_source(records),
                integrity=IntegrityStatus(**integrity),
            ))
        self._inherit_users(principal.tenant, page.answers, data)
        last = page.answers[-1] if len(page.answers) == limit else None
        return AnswersOut(
            data=data, count=page.count, window={"from": start, "to": end},
            next_cursor=encode_cursor(last.time, last.record_id) if last else None,
        )

    def _inherit_users(self, tenant: str, page: list[Answer], data: list[AnswerOut]) -> None:
        """Answers whose sealed records name no user: the user an ancestor span's record gives
        them at query time (sealed after them), with its span id. One read for the page."""
        spans = [(tenant, a.trace_id, a.span_id) for a, out in zip(page, data, strict=True) if out.user is None]
        if not spans:
            return
        found = inherited_users(self.store.span_contexts(sorted({s[:2] for s in spans})), spans)
        for a, out in zip(page, data, strict=True):
            inherited = found.get((tenant, a.trace_id, a.span_id)) if out.user is None else None
            if inherited is not None:
                out.user, out.user_from = inherited.value, inherited.source

    def trace(self, principal: Principal, trace_id: str, *, visible_to: str | None = None) -> TraceOut:
        trace_id = trace_id.lower()
        # Found by the store's trace and tenant columns: a record whose sealed body says
        # otherwise was moved here by editing them, and is left out.
        records, strays = without_strays(self.store.trace(principal.tenant, trace_id), principal.tenant, trace_id)
        if not records:
            raise NotFound(f"no trace {trace_id}")
        report = report_strays(self.proofs.report(records), strays, principal.tenant)
        views = []
        for view in with_inherited_context(merge_fragments(records), records):
            checks = [report["records"][rid] for rid in view["fragments"] if rid in report["records"]]
            failed = [c for c in checks if c["status"] == "failed"]
            view["integrity"] = failed[0] if failed else (checks[0] if checks else {"status": report["status"]})
            if visible_to is not None and view.get("documents"):
                view = only_visible(view, tags(visible_to))
            views.append(for_role(view, principal.role))
        return TraceOut(trace_id=trace_id, records=views, integrity=report)

    def proof(self, principal: Principal, record_id: str) -> ProofOut:
        record = self.store.get(principal.tenant, record_id)
        if record is None or record.tenant != principal.tenant:  # another tenant's body: as if missing
            raise NotFound(f"no record {record_id}")
        if record.record_id != record_id:
            raise NotFound(f"no record {record_id}: what is stored under this id is sealed as record "
                           f"{record.record_id} (integrity failed); run `aitrail verify`")
        proof = self.proofs.proof(record)
        status = "unverifiable"
        if self.proofs.verifier:
            status = str(verify_record(record, proof.path, proof.checkpoint.note, self.proofs.verifier).status)
        return ProofOut(
            record_id=record.record_id, log_id=record.log_id, leaf_index=record.leaf_index, leaf_hash=record.leaf_hash,
            tree_size=proof.checkpoint.size, root_hash=proof.checkpoint.root_hash.hex(),
            inclusion_proof=[h.hex() for h in proof.path], checkpoint=proof.checkpoint.note, status=status,
        )

    def latest_checkpoints(self, principal: Principal, log_id: str | None = None) -> CheckpointsOut:
        """The newest checkpoint of each of the caller's tenant's logs (`log_tenant`). Logs
        without a tenant (written before logs were per tenant) are shown to nobody: they mix
        tenants. Another tenant's log is refused before the store is asked, exactly as a
        missing one."""
        if log_id is not None:
            log_ids = [log_id] if log_tenant(log_id) == principal.tenant else []
        else:
            log_ids = [i for i in self.store.log_ids() if log_tenant(i) == principal.tenant]
        found = [cp for cp in (self.store.latest_checkpoint(i) for i in log_ids) if cp is not None]
        if log_id is not None and not found:
            raise NotFound(f"no checkpoint for log {log_id}")
        # A row is what the store says; only its note is signed (Proofs.checkpoint_problem).
        data, problems = [], []
        for cp in found:
            problem = self.proofs.checkpoint_problem(cp)
            if problem is None:
                data.append(CheckpointOut(log_id=cp.log_id, size=cp.size, root_hash=cp.root_hash.hex(),
                                          signed_at=cp.signed_at, note=cp.note))
            else:
                problems.append(CheckpointProblem(
                    log_id=cp.log_id, reason=f"newest stored checkpoint (size {cp.size}) not served: {problem}; "
                                             f"run `aitrail verify --log {cp.log_id}`"))
        return CheckpointsOut(data=data, problems=problems)

    def access_log(
        self, principal: Principal, *, start: str | None, end: str | None, tz: str | None, limit: int,
        cursor: str | None,
    ) -> AccessLogOut:
        records = self.store.list_records(
            RecordQuery(
                tenant=principal.tenant, kind="access", start=to_iso(parse_when(start, tz)) if start else None,
                end=to_iso(parse_when(end, tz)) if end else None, limit=limit, after=decode_cursor(cursor),
            )
        )
        data = [_access_entry(r) for r in records]
        last = records[-1] if len(records) == limit else None
        return AccessLogOut(data=data, next_cursor=encode_cursor(last.start_time, last.record_id) if last else None)

    def record(self, principal: Principal, record_id: str) -> dict[str, Any]:
        found = self.store.get(principal.tenant, record_id)
        if found is None or found.tenant != principal.tenant:  # another tenant's body: as if missing
            raise NotFound(f"no record {record_id}")
        if found.record_id != record_id:
            raise NotFound(f"no record {record_id}: what is stored under this id is sealed as record "
                           f"{found.record_id} (integrity failed); run `aitrail verify`")
        if found.kind == Kind.ACCESS and principal.role not in ACCESS_LOG_READERS:
            # Its details hold what others searched for (`q`) and the ids they read.
            raise Forbidden(f"role '{principal.role}' may not read access records; it needs role admin or auditor")
        return for_role(record_to_dict(found), principal.role)

    def costs(
        self, principal: Principal, *, start: str | None, end: str | None, tz: str | None, group_by: str
    ) -> CostsOut:
        groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
        query = CostQuery(
            tenant=principal.tenant,
            start=to_iso(parse_when(start, tz)) if start else None,
            end=to_iso(parse_when(end, tz)) if end else None,
            group_by=groups,
        )
        rows = self.store.costs(query)
        total = sum((r.cost for r in rows), Decimal(0))
        currencies = {r.currency for r in rows if r.currency}
        summary = self.store.cost_summary(query)
        currency = summary.currency

        def per(count: int) -> Money:
            return Money(amount=(summary.cost / count).quantize(Decimal("1e-10")) if count else None, currency=currency)

        return CostsOut(
            summary=CostSummaryOut(
                traces=summary.traces, useful_traces=summary.useful_traces, cost_per_trace=per(summary.traces),
                cost_per_useful_action=per(summary.useful_traces),
            ),
            data=[
                CostRowOut(
                    group=r.group, calls=r.calls, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
                    cost=Money(amount=r.cost, currency=r.currency), unpriced_calls=r.unpriced_calls,
                )
                for r in rows
            ],
            total=Money(amount=total, currency=currencies.pop() if len(currencies) == 1 else None),
            group_by=list(groups),
        )


def _user_source(records: list[AuditRecord]) -> str | None:
    """The ancestor span the answer's sealed user came from (span record first, as merged)."""
    for record in sorted(records, key=lambda r: r.origin != "span"):
        if record.user_pseudonym is not None:
            return record.context_from.user_pseudonym if record.context_from is not None else None
    return None
