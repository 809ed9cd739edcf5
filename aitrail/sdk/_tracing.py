"""`configure()` and the `AitrailTracing` object it returns."""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from aitrail import __version__
from aitrail.sdk import _semconv as sc
from aitrail.sdk._context import AitrailIdGenerator, UserContextSpanProcessor, user
from aitrail.sdk._spans import (
    Completion,
    Prompt,
    Retrieval,
    SpanHandle,
    record_feedback,
)

logger = logging.getLogger("aitrail.sdk")

HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
TRACES_PATH = "/v1/traces"
INSTRUMENTATION_SCOPE = "aitrail.sdk"


class AitrailTracing:
    """A configured tracer plus the aitrail span helpers bound to it.

    Attributes: ``tracer``, ``provider`` (None when wrapping someone else's provider),
    ``exporter``, and the resolved ``endpoint``, ``protocol`` and ``headers`` (for
    diagnostics; ``repr`` hides the API key).
    """

    def __init__(self, tracer: trace.Tracer, *, provider: TracerProvider | None = None,
                 exporter: SpanExporter | None = None, endpoint: str | None = None,
                 protocol: str | None = None, headers: Mapping[str, str] | None = None,
                 stamp_user_context: bool = False) -> None:
        self.tracer = tracer
        self.provider = provider
        self.exporter = exporter
        self.endpoint = endpoint
        self.protocol = protocol
        self.headers = dict(headers or {})
        # Our provider stamps the user context with a span processor; on a provider we did
        # not build, the helpers stamp their own spans instead.
        self.stamp_user_context = stamp_user_context
        self._shut_down = False

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "authorization" else v) for k, v in self.headers.items()}
        return f"AitrailTracing(endpoint={self.endpoint!r}, protocol={self.protocol!r}, headers={shown!r})"

    # -- span helpers ------------------------------------------------------------------------
    def retrieval(self, query: str, *, index: str | None = None, top_k: int | None = None,
                  data_source_id: str | None = None, start_time: Any = None,
                  end_time: Any = None) -> Retrieval:
        """Span ``retrieval <data source>``; add documents with ``add_document``/``documents``."""
        return Retrieval(self, query, index=index, top_k=top_k, data_source_id=data_source_id,
                         start_time=start_time, end_time=end_time)

    def prompt(self, template_id: str, *, version: str | None = None,
               variables: Mapping[str, Any] | None = None, template: str | None = None,
               start_time: Any = None, end_time: Any = None) -> Prompt:
        """Span ``prompt <template_id>``; record the rendered text with ``rendered(messages)``."""
        return Prompt(self, template_id, version=version, variables=variables, template=template,
                      start_time=start_time, end_time=end_time)

    def completion(self, model: str, *, provider: str = "openai", messages: Any = None,
                   system_instructions: Any = None, params: Mapping[str, Any] | None = None,
                   operation: str = "chat", start_time: Any = None, end_time: Any = None) -> Completion:
        """Span ``{operation} {model}``; record the answer with ``response(...)``."""
        return Completion(self, model, provider=provider, messages=messages,
                          system_instructions=system_instructions, params=params,
                          operation=operation, start_time=start_time, end_time=end_time)

    def span(self, name: str, *, attributes: Mapping[str, Any] | None = None,
             kind: trace.SpanKind = trace.SpanKind.INTERNAL, start_time: Any = None,
             end_time: Any = None) -> SpanHandle:
        """Any other span (e.g. the request root ``rag.answer``), with the same safety."""
        return SpanHandle(self, name, kind=kind, attributes=attributes, start_time=start_time,
                          end_time=end_time)

    def user(self, user_id: str | None, *, roles: Any = (), session_id: str | None = None,
             feature: str | None = None) -> user:
        """Context manager: spans started inside carry the user (see `aitrail.sdk.user`)."""
        return user(user_id, roles=roles, session_id=session_id, feature=feature)

    def feedback(self, target: Any, score: float, label: str | None = None,
                 comment: str | None = None, *, response_id: str | None = None,
                 timestamp: Any = None) -> str | None:
        """Record feedback on an answered trace (see `aitrail.sdk.feedback`)."""
        return record_feedback(self, target, score, label, comment, response_id=response_id,
                               timestamp=timestamp)

    # -- lifecycle -----------------------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export everything ended so far; False if that did not finish in time. (Export
        failures themselves are logged by OpenTelemetry, not reported here.)"""
        if self.provider is None:
            return True
        try:
            return bool(self.provider.force_flush(timeout_millis))
        except Exception:
            logger.warning("aitrail.sdk: flushing spans failed", exc_info=True)
            return False

    def shutdown(self) -> None:
        """Flush and stop the provider we built. Idempotent."""
        if self.provider is None or self._shut_down:
            return
        self._shut_down = True
        try:
            self.provider.shutdown()
        except Exception:
            logger.warning("aitrail.sdk: shutting down tracing failed", exc_info=True)


def parse_headers(value: str | None) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS`` format: ``key1=value1,key2=value2``, URL-encoded values."""
    headers: dict[str, str] = {}
    for item in (value or "").split(","):
        key, sep, val = item.partition("=")
        key = urllib.parse.unquote(key).strip().lower()
        if sep and key:
            headers[key] = urllib.parse.unquote(val).strip()
        elif item.strip():
            logger.warning("aitrail.sdk: ignoring malformed OTLP header entry %r", item)
    return headers


def _bearer(api_key: str) -> str:
    return api_key if api_key.lower().startswith("bearer ") else f"Bearer {api_key}"


def resolve_exporter_settings(
    endpoint: str | None, api_key: str | None, headers: Mapping[str, str] | None,
    protocol: str | None, environ: Mapping[str, str],
) -> tuple[str, str, dict[str, str]]:
    """(protocol, URL, headers) from the arguments, then ``OTEL_*``/``AITRAIL_API_KEY``.

    Precedence, highest first: arguments; the traces-specific ``OTEL_EXPORTER_OTLP_TRACES_*``
    variable; the generic ``OTEL_EXPORTER_OTLP_*`` one; defaults. The Authorization header is
    ``api_key``, else an explicit ``headers`` entry, else one from the OTel header variables,
    else ``AITRAIL_API_KEY``.
    """
    proto = (protocol or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
             or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or HTTP_PROTOBUF).strip().lower()
    if proto not in (HTTP_PROTOBUF, GRPC):
        logger.warning("aitrail.sdk: OTLP protocol %r is not supported; using %s", proto, HTTP_PROTOBUF)
        proto = HTTP_PROTOBUF

    if proto == GRPC:
        url = (endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
               or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_GRPC_ENDPOINT)
    elif endpoint:
        url = endpoint if endpoint.rstrip("/").endswith(TRACES_PATH) else endpoint.rstrip("/") + TRACES_PATH
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # signal URL, used as is (OTel spec)
    else:
        url = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_HTTP_ENDPOINT).rstrip("/") + TRACES_PATH

    resolved = parse_headers(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                             or environ.get("OTEL_EXPORTER_OTLP_HEADERS"))
    if "authorization" not in resolved and environ.get("AITRAIL_API_KEY"):
        resolved["authorization"] = _bearer(environ["AITRAIL_API_KEY"])
    resolved.update({str(k).lower(): str(v) for k, v in (headers or {}).items()})
    if api_key:
        resolved["authorization"] = _bearer(api_key)
    return proto, url, resolved


def _make_exporter(proto: str, url: str, headers: dict[str, str]) -> tuple[SpanExporter, str, str]:
    if proto == GRPC:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            logger.warning("aitrail.sdk: OTLP/gRPC needs opentelemetry-exporter-otlp-proto-grpc; "
                           "sending OTLP/HTTP to %s instead", DEFAULT_HTTP_ENDPOINT + TRACES_PATH)
            proto, url = HTTP_PROTOBUF, DEFAULT_HTTP_ENDPOINT + TRACES_PATH
        else:
            return GrpcSpanExporter(endpoint=url, headers=tuple(headers.items())), proto, url
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=url, headers=headers), proto, url


_global: AitrailTracing | None = None
_fallback: AitrailTracing | None = None


def configure(
    service_name: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    *,
    environment: str | None = None,
    headers: Mapping[str, str] | None = None,
    protocol: str | None = None,
    set_global: bool = True,
    exporter: SpanExporter | None = None,
    id_generator: IdGenerator | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> AitrailTracing:
    """Build a TracerProvider that sends spans to aitrail, and return its helpers.

    - ``service_name`` / ``environment`` become the resource's ``service.name`` and
      ``deployment.environment.name``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
      apply where these are not given.
    - Spans go through a BatchSpanProcessor to an OTLP exporter: ``{endpoint}/v1/traces`` over
      HTTP/protobuf (``protocol="grpc"`` sends to ``endpoint`` as is, if the gRPC exporter is
      installed). ``endpoint``, ``headers`` and ``protocol`` fall back to the standard
      ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT/HEADERS/PROTOCOL`` variables.
    - ``api_key`` (else ``AITRAIL_API_KEY``) is sent as ``Authorization: Bearer <key>``.
    - ``exporter`` replaces the OTLP exporter (tests pass an ``InMemorySpanExporter``).
    - ``id_generator``: e.g. ``AitrailIdGenerator(seed=7)`` for reproducible trace ids.
    - ``set_global``: the module-level helpers (``aitrail.sdk.retrieval`` …) use this instance
      (a later call replaces it without shutting it down), and it becomes OpenTelemetry's
      global provider unless one was set already.

    Never raises: on a configuration error it logs and returns an instance whose helpers
    record nothing.
    """
    global _global
    try:
        proto, url, resolved_headers = resolve_exporter_settings(
            endpoint, api_key, headers, protocol, os.environ)
        if exporter is None:
            exporter, proto, url = _make_exporter(proto, url, resolved_headers)
        attrs: dict[str, Any] = dict(resource_attributes or {})
        if service_name:
            attrs[sc.SERVICE_NAME] = service_name
        if environment:
            attrs[sc.DEPLOYMENT_ENVIRONMENT_NAME] = environment
        provider = TracerProvider(
            resource=Resource.create(attrs),
            id_generator=id_generator if isinstance(id_generator, AitrailIdGenerator)
            else AitrailIdGenerator(inner=id_generator),
        )
        provider.add_span_processor(UserContextSpanProcessor())
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracing = AitrailTracing(
            provider.get_tracer(INSTRUMENTATION_SCOPE, __version__), provider=provider,
            exporter=exporter, endpoint=url, protocol=proto, headers=resolved_headers,
        )
    except Exception:
        logger.warning("aitrail.sdk: configuration failed; spans will not be recorded", exc_info=True)
        tracing = AitrailTracing(trace.NoOpTracer())
    if set_global:
        _global = tracing
        if tracing.provider is not None:
            _set_otel_global(tracing.provider)
    return tracing


def _set_otel_global(provider: TracerProvider) -> None:
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    else:
        logger.info("aitrail.sdk: an OpenTelemetry tracer provider is already global; "
                    "the aitrail helpers use their own")


def get_tracing() -> AitrailTracing:
    """The instance the module-level helpers use: the last ``configure(set_global=True)``,
    else one over OpenTelemetry's global tracer provider (e.g. set by auto-instrumentation)."""
    global _fallback
    if _global is not None:
        return _global
    if _fallback is None:
        _fallback = AitrailTracing(trace.get_tracer(INSTRUMENTATION_SCOPE, __version__),
                                   stamp_user_context=True)
    return _fallback


def reset_global() -> None:
    """Forget the module-level instance (tests). Does not shut it down."""
    global _global
    _global = None
