"""AuditRecord v1: one immutable record per span of interest (and per system event).

The models are the single source of truth: the JSON Schema (`audit-record.v1.schema.json`)
and the OpenSearch index template (`opensearch-template.v1.json`) are generated from them by
`python -m aitrail.schemas.generate` and committed; a golden test fails when they drift.

Times are ISO 8601 strings in UTC with exactly nine fractional digits
(`2026-11-24T07:30:00.123456789Z`). Fixed width makes them sort as text in the same order
as in time, and keeps the nanosecond precision OTLP gives us.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Kind(StrEnum):
    RETRIEVAL = "retrieval"
    PROMPT = "prompt"
    COMPLETION = "completion"
    TOOL = "tool"
    AGENT = "agent"
    EVALUATION = "evaluation"
    FEEDBACK = "feedback"
    # a plain SERVER span that says who asked (user, session): no content, only the
    # context the records under it inherit (aitrail.collector.normalise, "Context span")
    CONTEXT = "context"
    # system kinds: written by aitrail itself, not by instrumented services
    CHECKPOINT = "checkpoint"
    RETENTION = "retention"
    ERASURE = "erasure"
    ACCESS = "access"


class Origin(StrEnum):
    """Where the record's content came from. A completion whose content the instrumentation
    sent as an OTLP log event yields two records for one span (`span` and `log`); readers
    merge them (see `aitrail.schemas.merge`)."""

    SPAN = "span"
    LOG = "log"
    SYSTEM = "system"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    UNSET = "unset"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True, allow_inf_nan=False)


class Message(_Model):
    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    finish_reason: str | None = None
    parts: list[dict[str, Any]] | None = Field(
        default=None, description="Structured parts as sent (images, tool calls, reasoning), when not plain text."
    )


class Document(_Model):
    doc_id: str | None = None
    chunk_id: str | None = None
    source_uri: str | None = None
    doc_version: str | None = None
    content_sha256: str | None = None
    score: float | None = None
    rank: int | None = None
    acl_tags: list[str] = Field(default_factory=list)
    snippet: str | None = None
    metadata: dict[str, Any] | None = None


class Cost(_Model):
    amount: Decimal | None = Field(default=None, description="Exact decimal; null when the model has no price.")
    currency: str | None = None
    price_table_version: str | None = None
    priced_by: str | None = Field(default=None, description="Price-table entry used, e.g. openai/gpt-4o-mini.")
    reason: str | None = Field(default=None, description="Why amount is null.")


class KafkaPosition(_Model):
    topic: str
    partition: int
    offset: int


class ContextFrom(_Model):
    """Which ancestor span a record inherited its trace context from (see `collector.context`):
    the span id of the nearest ancestor record that carried the value, per field."""

    user_pseudonym: str | None = None
    session_id: str | None = None
    conversation_id: str | None = None


class AuditRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    # identity
    record_id: str
    kind: Kind
    origin: Origin = Origin.SPAN
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    tenant: str
    service: str | None = None
    environment: str | None = None
    session_id: str | None = None
    conversation_id: str | None = None
    span_name: str | None = None
    operation: str | None = Field(default=None, description="gen_ai.operation.name or the convention's span kind.")
    feature: str | None = Field(default=None, description="aitrail.feature: the product feature this call served.")
    agent_name: str | None = Field(default=None, description="gen_ai.agent.name / OpenInference agent.name.")
    agent_id: str | None = Field(default=None, description="gen_ai.agent.id.")
    workflow_name: str | None = Field(
        default=None, description="gen_ai.workflow.name / traceloop.workflow.name: the workflow this step ran in."
    )
    # time
    start_time: str | None = None
    end_time: str | None = None
    duration_ms: float | None = None
    ingested_at: str | None = None
    # actor
    user_pseudonym: str | None = None
    user_roles: list[str] = Field(default_factory=list)
    client_ip_hash: str | None = None
    context_from: ContextFrom | None = Field(
        default=None,
        description="Fields of user_pseudonym / session_id / conversation_id the span did not set itself but "
        "inherited from an ancestor span's record at ingestion, each with that ancestor's span id.",
    )
    # model
    provider: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    request_params: dict[str, Any] | None = None
    finish_reasons: list[str] = Field(default_factory=list)
    response_id: str | None = None
    route: str | None = Field(default=None, description="Gateway route or fallback attempt, when a router reports it.")
    # content
    input_messages: list[Message] = Field(default_factory=list)
    system_instructions: str | None = None
    output_messages: list[Message] = Field(default_factory=list)
    question: str | None = Field(default=None, description="Last user message, for search.")
    answer: str | None = Field(default=None, description="Assistant text, for search.")
    template_id: str | None = None
    template_version: str | None = None
    template_variables: dict[str, Any] | None = None
    template_text: str | None = Field(
        default=None, description="The prompt template itself (OpenInference llm.prompt_template.template)."
    )
    tool_name: str | None = None
    tool_arguments: str | None = None
    tool_result: str | None = None
    tool_call_id: str | None = Field(
        default=None, description="gen_ai.tool.call.id: links a tool run to the model's tool call."
    )
    # retrieval
    query_text: str | None = None
    documents: list[Document] = Field(default_factory=list)
    index_name: str | None = None
    top_k: int | None = None
    # usage & cost
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: Cost | None = None
    # evaluation / feedback
    score: float | None = None
    label: str | None = None
    evaluation_name: str | None = Field(default=None, description="gen_ai.evaluation.name: what score/label measure.")
    evaluation_explanation: str | None = Field(default=None, description="gen_ai.evaluation.explanation.")
    # outcome
    status: Status = Status.UNSET
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    # provenance
    semconv: str | None = Field(default=None, description="Convention the record was mapped from.")
    raw_attributes: dict[str, Any] = Field(
        default_factory=dict, description="Every span/resource attribute not mapped above, flat and as sent."
    )
    collector_version: str | None = None
    kafka: KafkaPosition | None = None
    # system records (checkpoint, retention, erasure, access)
    details: dict[str, Any] | None = None
    # integrity
    log_id: str | None = None
    leaf_index: int | None = None
    leaf_hash: str | None = None
    content_commitment: str | None = None
    content_salt: str | None = Field(
        default=None, description="Hex salt of content_commitment; dropped (with the content) on erasure."
    )
    erased_at: str | None = Field(default=None, description="When the content was erased; the leaf still verifies.")


def record_id_for(tenant: str, trace_id: str, span_id: str, kind: str, origin: str = Origin.SPAN) -> str:
    """Deterministic id: the same span always yields the same id, so re-ingesting is a no-op."""
    seed = "\x00".join((tenant, trace_id, span_id, kind, origin)).encode()
    return hashlib.sha256(seed).hexdigest()[:32]
