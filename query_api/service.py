"""The queries behind the API and the CLI, so both answer the same."""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, Field

from aitrail.errors import BadRequest, NotFound
from aitrail.schemas.canonical import record_to_dict
from aitrail.store.base import AnswerQuery, CostQuery, Principal, RecordQuery, Role, Store

from aitrail.integrity.note import Verifier
from aitrail.integrity.verify import verify_record

from .integrity import Proofs
from .replay import for_role, merge_fragments, only_visible
from .timeparse import parse_when, parse_window, to_iso

class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Money(BaseModel):
    amount: Decimal | None = Field(description="Exact decimal as a string; null when the model has no price.")
    currency: str | None


class AnswerOut(BaseModel):
    record_id: str
    trace_id: str
    time: str | None
    question: str | None
    answer: str | None
    provider: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost: Money
    service: str | None
    user: str | None = Field(description="Pseudonym of the user who asked; never the raw id.")


class AnswersOut(BaseModel):
    data: list[AnswerOut]
    count: int = Field(description="All matches, not only this page.")
    window: dict[str, str | None] = Field(description="The time range searched, ISO 8601 UTC.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class AccessEntry(BaseModel):
    record_id: str
    time: str | None
    key_id: str | None
    role: str | None
    endpoint: str | None
    query: dict[str, Any] = Field(default_factory=dict)
    ids: list[str] = Field(default_factory=list, description="Record or trace ids the read returned.")
    count: int | None = None


class AccessLogOut(BaseModel):
    data: list[AccessEntry]
    next_cursor: str | None = None


class WhoAmI(BaseModel):
    tenant: str
    role: str
    key_id: str


class TraceOut(BaseModel):
    trace_id: str
    records: list[dict[str, Any]]
    integrity: dict[str, Any]


class CostRowOut(BaseModel):
    group: dict[str, str | None]
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Money
    unpriced_calls: int


class CostSummaryOut(BaseModel):
    traces: int = Field(description="Traces with at least one completion in the range.")
    useful_traces: int = Field(description="Of those, traces with positive feedback: the useful actions.")
    cost_per_trace: Money
    cost_per_useful_action: Money = Field(description="All cost in the range divided by the useful actions.")


class CostsOut(BaseModel):
    data: list[CostRowOut]
    total: Money
    group_by: list[str]
    summary: CostSummaryOut



class ProofOut(BaseModel):
    record_id: str
    log_id: str
    leaf_index: int
    leaf_hash: str | None
    tree_size: int
    root_hash: str
    inclusion_proof: list[str] = Field(description="Sibling hashes, leaf side first (RFC 9162 inclusion path), hex.")
    checkpoint: str = Field(description="The signed checkpoint (C2SP signed note) the proof is against.")
    status: str = Field(description="The server's own check: verified, erased or failed.")


class CheckpointOut(BaseModel):
    log_id: str
    size: int
    root_hash: str
    signed_at: str
    note: str


class CheckpointsOut(BaseModel):
    data: list[CheckpointOut]


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
        start = end = None
        if at is not None:
            moment, span = parse_when(at, tz), parse_window(window)
            start, end = to_iso(moment - span), to_iso(moment + span)
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
        redact = principal.role == Role.ANALYST
        data = [
            AnswerOut(
                record_id=a.record_id, trace_id=a.trace_id, time=a.time,
                question=None if redact else a.question, answer=None if redact else a.answer,
                provider=a.provider, model=a.model, input_tokens=a.input_tokens, output_tokens=a.output_tokens,
                cost=Money(amount=a.cost_amount, currency=a.cost_currency), service=a.service, user=a.user,
            )
            for a in page.answers
        ]
        last = page.answers[-1] if len(page.answers) == limit else None
        return AnswersOut(
            data=data, count=page.count, window={"from": start, "to": end},
            next_cursor=encode_cursor(last.time, last.record_id) if last else None,
        )

    def trace(self, principal: Principal, trace_id: str, *, visible_to: str | None = None) -> TraceOut:
        trace_id = trace_id.lower()
        records = self.store.trace(principal.tenant, trace_id)
        if not records:
            raise NotFound(f"no trace {trace_id}")
        report = self.proofs.report(records)
        views = []
        for view in merge_fragments(records):
            checks = [report["records"][rid] for rid in view["fragments"] if rid in report["records"]]
            failed = [c for c in checks if c["status"] == "failed"]
            view["integrity"] = failed[0] if failed else (checks[0] if checks else {"status": report["status"]})
            if visible_to is not None and view.get("documents"):
                view = only_visible(view, tags(visible_to))
            views.append(for_role(view, principal.role))
        return TraceOut(trace_id=trace_id, records=views, integrity=report)

    def proof(self, principal: Principal, record_id: str) -> ProofOut:
        record = self.store.get(principal.tenant, record_id)
        if record is None:
            raise NotFound(f"no record {record_id}")
        proof = self.proofs.proof(record)
        status = "unverifiable"
        if self.proofs.verifier is not None:
            status = str(verify_record(record, proof.path, proof.checkpoint.note, self.proofs.verifier).status)
        return ProofOut(
            record_id=record.record_id, log_id=record.log_id, leaf_index=record.leaf_index, leaf_hash=record.leaf_hash,
            tree_size=proof.checkpoint.size, root_hash=proof.checkpoint.root_hash.hex(),
            inclusion_proof=[h.hex() for h in proof.path], checkpoint=proof.checkpoint.note, status=status,
        )

    def latest_checkpoints(self, log_id: str | None = None) -> CheckpointsOut:
        log_ids = [log_id] if log_id else self.store.log_ids()
        found = [cp for cp in (self.store.latest_checkpoint(i) for i in log_ids) if cp is not None]
        if log_id and not found:
            raise NotFound(f"no checkpoint for log {log_id}")
        return CheckpointsOut(
            data=[
                CheckpointOut(log_id=cp.log_id, size=cp.size, root_hash=cp.root_hash.hex(), signed_at=cp.signed_at,
                              note=cp.note)
                for cp in found
            ]
        )

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
        data = [
            AccessEntry(
                record_id=r.record_id, time=r.start_time, key_id=(r.details or {}).get("key_id"),
                role=(r.details or {}).get("role"), endpoint=(r.details or {}).get("endpoint"),
                query=(r.details or {}).get("query") or {}, ids=(r.details or {}).get("ids") or [],
                count=(r.details or {}).get("count"),
            )
            for r in records
        ]
        last = records[-1] if len(records) == limit else None
        return AccessLogOut(data=data, next_cursor=encode_cursor(last.start_time, last.record_id) if last else None)

    def record(self, principal: Principal, record_id: str) -> dict[str, Any]:
        found = self.store.get(principal.tenant, record_id)
        if found is None:
            raise NotFound(f"no record {record_id}")
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
