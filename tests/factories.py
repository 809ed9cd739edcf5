"""Small builders for records in tests."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from aitrail.schemas.record import AuditRecord, record_id_for

_counter = itertools.count(1)


def iso(day: int, hour: int, minute: int = 0, second: int = 0) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.000000000Z"


def completion(
    tenant: str = "acme",
    *,
    trace: int | None = None,
    span: int = 1,
    origin: str = "span",
    question: str | None = "What is our refund policy?",
    answer: str | None = "Refunds within 30 days.",
    time: str | None = None,
    model: str = "gpt-4o-mini",
    service: str = "support-bot",
    user: str | None = "u_alice",
    cost: str | None = "0.0000165",
    **extra: Any,
) -> AuditRecord:
    trace = next(_counter) if trace is None else trace
    trace_id, span_id = f"{trace:032x}", f"{span:016x}"
    data: dict[str, Any] = dict(
        record_id=record_id_for(tenant, trace_id, span_id, "completion", origin),
        kind="completion", origin=origin, tenant=tenant, trace_id=trace_id, span_id=span_id,
        start_time=time or iso(24, 7, 30), service=service, provider="openai", request_model=model,
        response_model=model, question=question, answer=answer, user_pseudonym=user,
        input_tokens=42, output_tokens=17,
        cost={"amount": Decimal(cost), "currency": "USD", "price_table_version": "t"} if cost else None,
    )
    data.update(extra)
    return AuditRecord.model_validate(data)


def retrieval(tenant: str = "acme", *, trace: int, span: int = 2, parent: int | None = None, **extra: Any) -> AuditRecord:
    trace_id, span_id = f"{trace:032x}", f"{span:016x}"
    data: dict[str, Any] = dict(
        record_id=record_id_for(tenant, trace_id, span_id, "retrieval"), kind="retrieval", tenant=tenant,
        trace_id=trace_id, span_id=span_id, parent_span_id=f"{parent:016x}" if parent else None,
        start_time=iso(24, 7, 29), query_text="refund policy",
        documents=[
            {"doc_id": "policy-7", "doc_version": "3", "score": 0.91, "rank": 1, "acl_tags": ["public"]},
            {"doc_id": "board-1", "doc_version": "1", "score": 0.42, "rank": 2, "acl_tags": ["board-only"]},
        ],
    )
    data.update(extra)
    return AuditRecord.model_validate(data)
