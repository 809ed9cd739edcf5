"""aitrail instrumentation SDK: a thin layer over the OpenTelemetry SDK.

For services without an off-the-shelf GenAI instrumentation::

    import aitrail.sdk as trail

    trail.configure("support-bot", "http://127.0.0.1:4318", api_key="...")
    with trail.user("alice@example.com", roles=["support"], session_id="s-1"):
        with trail.retrieval(question, index="policies", top_k=3) as r:
            r.add_document("refund-policy", version="v3", content=text, score=0.91)
        with trail.prompt("support-answer", version="3", variables={"question": question}):
            ...
        with trail.completion("gpt-4o-mini", messages=messages) as c:
            c.response(answer, input_tokens=812, output_tokens=96)

Spans carry the standard ``gen_ai.*`` attributes, plus ``aitrail.*`` only where the
conventions have nothing (prompt templates, document provenance and ACL tags, feedback).
Nothing here raises into the host service: SDK errors are logged on the ``aitrail.sdk``
logger (no handlers installed) and swallowed; exceptions from your own code inside a
``with`` block propagate unchanged and mark the span as failed.

Depends on opentelemetry-api, -sdk and -exporter-otlp-proto-http only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from aitrail.sdk._context import AitrailIdGenerator, UserContext, current_user, user
from aitrail.sdk._spans import Completion, Prompt, Retrieval, SpanHandle
from aitrail.sdk._tracing import AitrailTracing, configure, get_tracing

__all__ = [
    "AitrailIdGenerator",
    "AitrailTracing",
    "Completion",
    "Prompt",
    "Retrieval",
    "SpanHandle",
    "UserContext",
    "completion",
    "configure",
    "current_user",
    "feedback",
    "force_flush",
    "get_tracing",
    "prompt",
    "retrieval",
    "shutdown",
    "span",
    "user",
]


def retrieval(query: str, *, index: str | None = None, top_k: int | None = None,
              data_source_id: str | None = None, start_time: Any = None,
              end_time: Any = None) -> Retrieval:
    """Span ``retrieval <data source>`` on the configured instance; see `AitrailTracing.retrieval`."""
    return get_tracing().retrieval(query, index=index, top_k=top_k, data_source_id=data_source_id,
                                   start_time=start_time, end_time=end_time)


def prompt(template_id: str, *, version: str | None = None, variables: Mapping[str, Any] | None = None,
           template: str | None = None, start_time: Any = None, end_time: Any = None) -> Prompt:
    """Span ``prompt <template_id>`` on the configured instance; see `AitrailTracing.prompt`."""
    return get_tracing().prompt(template_id, version=version, variables=variables, template=template,
                                start_time=start_time, end_time=end_time)


def completion(model: str, *, provider: str = "openai", messages: Any = None,
               system_instructions: Any = None, params: Mapping[str, Any] | None = None,
               operation: str = "chat", start_time: Any = None, end_time: Any = None) -> Completion:
    """Span ``{operation} {model}`` on the configured instance; see `AitrailTracing.completion`."""
    return get_tracing().completion(model, provider=provider, messages=messages,
                                    system_instructions=system_instructions, params=params,
                                    operation=operation, start_time=start_time, end_time=end_time)


def span(name: str, *, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL,
         start_time: Any = None, end_time: Any = None) -> SpanHandle:
    """Any other span (e.g. a request root) on the configured instance."""
    return get_tracing().span(name, attributes=attributes, kind=kind, start_time=start_time,
                              end_time=end_time)


def feedback(target: Any, score: float, label: str | None = None, comment: str | None = None, *,
             response_id: str | None = None, timestamp: Any = None) -> str | None:
    """Record user feedback on an answer.

    ``target`` names the answered trace: a helper handle or OpenTelemetry span (best: the
    completion), a SpanContext, or a trace id as int / 32 hex digits / ``traceparent``.
    Emits a ``feedback`` span in that trace with ``aitrail.feedback.score/label/comment``.
    ``timestamp`` defaults to now. Returns the feedback span id (hex), or None.
    """
    return get_tracing().feedback(target, score, label, comment, response_id=response_id,
                                  timestamp=timestamp)


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Export every ended span of the configured instance now."""
    return get_tracing().force_flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop the configured instance."""
    get_tracing().shutdown()
