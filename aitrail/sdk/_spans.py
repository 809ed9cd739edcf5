"""Span helpers: one span each for a retrieval, a prompt rendering, a model call, feedback.

Contract shared by every helper: SDK-internal failures are logged on the ``aitrail.sdk``
logger and swallowed (the telemetry is then incomplete, the host carries on); exceptions
raised by the caller's own code inside a ``with`` block propagate unchanged, after being
recorded on the span (status ERROR, ``error.type``).

Each helper is a context manager. Without ``with``, call ``start()`` and ``end()``.
Times (``start_time`` / ``end_time``) are ``datetime`` objects or integer nanoseconds since
the epoch; the default is "now".
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from aitrail.sdk import _messages
from aitrail.sdk import _semconv as sc
from aitrail.sdk._context import current_user, force_trace_id, release_trace_id

if TYPE_CHECKING:
    from aitrail.sdk._tracing import AitrailTracing

logger = logging.getLogger("aitrail.sdk")

SNIPPET_CHARS = 300
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

_F = TypeVar("_F", bound=Callable[..., Any])


def _log_internal(what: str) -> None:
    logger.warning("aitrail.sdk: %s failed; the telemetry for it is incomplete", what, exc_info=True)


def _guarded(method: _F) -> _F:
    """Never let an SDK error escape a handle method; chaining methods still return self."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            _log_internal(method.__qualname__)
            return self

    return wrapper  # type: ignore[return-value]


def to_ns(value: _dt.datetime | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        delta = (value if value.tzinfo is not None else value.astimezone()) - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"a time must be a datetime or integer nanoseconds, not {type(value).__name__}")


def _time_or_now(value: Any) -> int | None:
    """A bad time must not lose the span: it falls back to now (None)."""
    try:
        return to_ns(value)
    except Exception:
        _log_internal(f"reading the time {value!r}")
        return None


def _safe_json(value: Any, what: str) -> str | None:
    try:
        return _messages.to_json(value)
    except Exception:
        _log_internal(f"encoding {what} as JSON")
        return None


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


class SpanHandle:
    """One span, started on ``__enter__``/``start()`` and ended on ``__exit__``/``end()``."""

    def __init__(self, tracing: AitrailTracing, name: str, *, kind: SpanKind = SpanKind.INTERNAL,
                 attributes: Mapping[str, Any] | None = None, start_time: Any = None,
                 end_time: Any = None, links: Iterable[Link] | None = None,
                 parent: trace.SpanContext | None = None, root: bool = False) -> None:
        self._tracing = tracing
        self._name = name
        self._kind = kind
        self._attributes = dict(attributes or {})
        self._start_time = start_time
        self._end_time = end_time
        self._links = list(links or ())
        self._parent = parent
        self._root = root
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object | None = None
        self._started = False
        self._ended = False

    # -- what callers read -------------------------------------------------------------------
    @property
    def span(self) -> trace.Span:
        """The underlying OpenTelemetry span (a non-recording one if it could not be made)."""
        return self._span

    @property
    def span_context(self) -> trace.SpanContext:
        return self._span.get_span_context()

    @property
    def trace_id(self) -> str | None:
        """32 lower-case hex digits, or None when no span was recorded."""
        ctx = self.span_context
        return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None

    @property
    def span_id(self) -> str | None:
        ctx = self.span_context
        return trace.format_span_id(ctx.span_id) if ctx.is_valid else None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> SpanHandle:
        if self._started:
            return self
        self._started = True
        try:
            attrs = self._initial_attributes()
        except Exception:
            _log_internal(f"building attributes for span {self._name!r}")
            attrs = {}
        attrs.update(self._attributes)
        try:
            if self._tracing.stamp_user_context and (user := current_user()) is not None:
                attrs.update(user.attributes())
            parent_ctx = None
            if self._parent is not None:
                parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(self._parent))
            elif self._root:
                parent_ctx = otel_context.Context()
            self._span = self._tracing.tracer.start_span(
                self._name, context=parent_ctx, kind=self._kind, attributes=_clean(attrs),
                links=self._links or None, start_time=_time_or_now(self._start_time),
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        except Exception:
            _log_internal(f"starting span {self._name!r}")
        return self

    def end(self, end_time: Any = None) -> None:
        self._finish(None, end_time)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._finish(exc, None)
        return False  # the caller's exception, if any, propagates unchanged

    def _finish(self, exc: BaseException | None, end_time: Any) -> None:
        if self._ended or not self._started:
            return
        self._ended = True
        try:
            try:
                self._final_attributes()
            except Exception:
                _log_internal(f"recording span {self._name!r}")
            if exc is not None:
                self._record_exception(exc)
            self._span.end(end_time=_time_or_now(end_time if end_time is not None else self._end_time))
        except Exception:
            _log_internal(f"ending span {self._name!r}")
        finally:
            if self._token is not None:
                try:
                    otel_context.detach(self._token)  # type: ignore[arg-type]
                except Exception:
                    _log_internal("restoring the tracing context")
                self._token = None

    def _record_exception(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))

    # -- subclass hooks ----------------------------------------------------------------------
    def _initial_attributes(self) -> dict[str, Any]:
        return {}

    def _final_attributes(self) -> None:
        pass

    # -- generic setters ---------------------------------------------------------------------
    @_guarded
    def set_attribute(self, key: str, value: Any) -> SpanHandle:
        if value is not None:
            self._span.set_attribute(key, value)
        return self

    @_guarded
    def fail(self, error_type: str, message: str | None = None) -> SpanHandle:
        """Mark the span failed without an exception (e.g. an error returned by a provider)."""
        self._span.set_attribute(sc.ERROR_TYPE, error_type)
        self._span.set_status(Status(StatusCode.ERROR, message or error_type))
        return self


class Retrieval(SpanHandle):
    """``retrieval <data source>``: a search over an index and the documents it returned."""

    def __init__(self, tracing: AitrailTracing, query: str, *, index: str | None = None,
                 top_k: int | None = None, data_source_id: str | None = None, **span_args: Any) -> None:
        source = data_source_id if data_source_id is not None else index
        super().__init__(tracing, f"retrieval {source}" if source else "retrieval",
                         kind=SpanKind.CLIENT, **span_args)
        self._query = query
        self._index = index
        self._top_k = top_k
        self._data_source_id = source
        self._documents: list[dict[str, Any]] = []

    def _initial_attributes(self) -> dict[str, Any]:
        top_k = int(self._top_k) if self._top_k is not None else None
        return _clean({
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_RETRIEVAL,
            sc.GEN_AI_DATA_SOURCE_ID: self._data_source_id,
            sc.GEN_AI_RETRIEVAL_QUERY_TEXT: self._query,
            sc.GEN_AI_REQUEST_TOP_K: float(top_k) if top_k is not None else None,
            sc.AITRAIL_RETRIEVAL_QUERY: self._query,
            sc.AITRAIL_RETRIEVAL_INDEX: self._index,
            sc.AITRAIL_RETRIEVAL_TOP_K: top_k,
        })

    @_guarded
    def add_document(self, doc_id: str, *, chunk_id: str | None = None, source_uri: str | None = None,
                     version: str | None = None, content: str | None = None,
                     content_sha256: str | None = None, score: float | None = None,
                     rank: int | None = None, acl_tags: Iterable[str] | str = ()) -> Retrieval:
        """Record one retrieved document. ``content`` is hashed (SHA-256 of its UTF-8 bytes)
        and its first 300 characters kept as the snippet; the full text is not recorded.
        ``rank`` defaults to the 1-based position in the order documents are added."""
        if content is not None and not isinstance(content, str):
            content = str(content)
        if content_sha256 is None and content is not None:
            content_sha256 = hashlib.sha256(content.encode("utf-8")).hexdigest()
        if isinstance(acl_tags, str):
            acl_tags = [acl_tags]
        doc = {
            "doc_id": str(doc_id),
            "chunk_id": str(chunk_id) if chunk_id is not None else None,
            "source_uri": source_uri,
            "doc_version": str(version) if version is not None else None,
            "content_sha256": content_sha256,
            "score": float(score) if score is not None else None,
            "rank": int(rank) if rank is not None else len(self._documents) + 1,
            "acl_tags": [str(t) for t in acl_tags],
            "snippet": content[:SNIPPET_CHARS] if content is not None else None,
        }
        self._documents.append(_clean(doc))
        return self

    @_guarded
    def documents(self, docs: Iterable[Any]) -> Retrieval:
        """Record several documents: mappings with `add_document`'s keyword names (``id`` and
        ``doc_version`` are accepted as aliases), or objects with those attributes."""
        names = ("chunk_id", "source_uri", "version", "content", "content_sha256", "score",
                 "rank", "acl_tags")
        for doc in docs:
            if isinstance(doc, Mapping):
                fields = dict(doc)
            else:
                fields = {n: getattr(doc, n) for n in ("doc_id", "id", "doc_version", *names)
                          if hasattr(doc, n)}
            doc_id = fields.pop("doc_id", None)
            if doc_id is None:
                doc_id = fields.pop("id", None)
            if "version" not in fields and "doc_version" in fields:
                fields["version"] = fields.pop("doc_version")
            kwargs = {n: fields[n] for n in names if fields.get(n) is not None}
            self.add_document(doc_id, **kwargs)
        return self

    def _final_attributes(self) -> None:
        if not self._documents:
            return
        standard = [_clean({"id": d["doc_id"], "score": d.get("score")}) for d in self._documents]
        self._span.set_attributes(_clean({
            sc.AITRAIL_RETRIEVAL_DOCUMENTS: _safe_json(self._documents, "retrieved documents"),
            sc.GEN_AI_RETRIEVAL_DOCUMENTS: _safe_json(standard, "retrieved documents"),
        }))


class Prompt(SpanHandle):
    """``prompt <template_id>``: a prompt template rendered with variables."""

    def __init__(self, tracing: AitrailTracing, template_id: str, *, version: str | None = None,
                 variables: Mapping[str, Any] | None = None, template: str | None = None,
                 **span_args: Any) -> None:
        super().__init__(tracing, f"prompt {template_id}", **span_args)
        self._template_id = template_id
        self._version = version
        self._variables = variables
        self._template = template

    def _initial_attributes(self) -> dict[str, Any]:
        return _clean({
            sc.GEN_AI_PROMPT_NAME: str(self._template_id),
            sc.AITRAIL_PROMPT_TEMPLATE_ID: str(self._template_id),
            sc.AITRAIL_PROMPT_TEMPLATE_VERSION: str(self._version) if self._version is not None else None,
            sc.AITRAIL_PROMPT_TEMPLATE_VARIABLES: (
                _safe_json(dict(self._variables), "prompt template variables")
                if self._variables is not None else None),
            sc.AITRAIL_PROMPT_TEMPLATE: self._template,
        })

    @_guarded
    def rendered(self, messages: Any) -> Prompt:
        """The rendered prompt: a string (one user message) or chat messages."""
        value = _safe_json(_messages.input_messages(messages), "rendered prompt")
        if value is not None:
            self._span.set_attribute(sc.AITRAIL_PROMPT_RENDERED, value)
        return self


_PARAM_ATTRIBUTES = {
    "temperature": (sc.GEN_AI_REQUEST_TEMPERATURE, float),
    "max_tokens": (sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    "max_completion_tokens": (sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    "max_output_tokens": (sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    "top_p": (sc.GEN_AI_REQUEST_TOP_P, float),
    "top_k": (sc.GEN_AI_REQUEST_TOP_K, float),
    "frequency_penalty": (sc.GEN_AI_REQUEST_FREQUENCY_PENALTY, float),
    "presence_penalty": (sc.GEN_AI_REQUEST_PRESENCE_PENALTY, float),
    "seed": (sc.GEN_AI_REQUEST_SEED, int),
    "n": (sc.GEN_AI_REQUEST_CHOICE_COUNT, int),
    "choice_count": (sc.GEN_AI_REQUEST_CHOICE_COUNT, int),
    "stream": (sc.GEN_AI_REQUEST_STREAM, bool),
}


def request_param_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    """``gen_ai.request.*`` for the parameters the conventions name; the rest as one JSON
    object in ``aitrail.request.extra_params``."""
    attrs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in ("stop", "stop_sequences"):
            stops = [value] if isinstance(value, str) else value
            attrs[sc.GEN_AI_REQUEST_STOP_SEQUENCES] = [str(v) for v in stops]
        elif key in _PARAM_ATTRIBUTES:
            name, cast = _PARAM_ATTRIBUTES[key]
            attrs[name] = cast(value)
        else:
            extra[key] = value
    if extra:
        encoded = _safe_json(extra, "request parameters")
        if encoded is not None:
            attrs[sc.AITRAIL_REQUEST_EXTRA_PARAMS] = encoded
    return attrs


class Completion(SpanHandle):
    """``{operation} {model}`` (kind CLIENT): one call to a model."""

    def __init__(self, tracing: AitrailTracing, model: str, *, provider: str = "openai",
                 messages: Any = None, system_instructions: Any = None,
                 params: Mapping[str, Any] | None = None, operation: str = "chat",
                 **span_args: Any) -> None:
        super().__init__(tracing, f"{operation} {model}", kind=SpanKind.CLIENT, **span_args)
        self._model = model
        self._provider = provider
        self._messages = messages
        self._system_instructions = system_instructions
        self._params = params
        self._operation = operation

    def _initial_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: self._operation,
            sc.GEN_AI_PROVIDER_NAME: self._provider,
            sc.GEN_AI_REQUEST_MODEL: self._model,
        }
        for build in (self._param_attributes, self._content_attributes):
            try:
                attrs.update(build())
            except Exception:
                _log_internal(f"recording the request of {self._name!r}")
        return _clean(attrs)

    def _param_attributes(self) -> dict[str, Any]:
        return request_param_attributes(self._params) if self._params else {}

    def _content_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self._messages is not None:
            attrs[sc.GEN_AI_INPUT_MESSAGES] = _safe_json(
                _messages.input_messages(self._messages), "input messages")
        if self._system_instructions is not None:
            attrs[sc.GEN_AI_SYSTEM_INSTRUCTIONS] = _safe_json(
                _messages.system_instruction_parts(self._system_instructions), "system instructions")
        return attrs

    @_guarded
    def response(self, output: Any = None, *, response_model: str | None = None,
                 response_id: str | None = None, finish_reason: str | None = "stop",
                 input_tokens: int | None = None, output_tokens: int | None = None,
                 cached_input_tokens: int | None = None,
                 reasoning_tokens: int | None = None) -> Completion:
        """Record the model's answer (text or output messages) and usage.

        ``input_tokens`` includes cached tokens, as the conventions define it;
        ``cached_input_tokens`` is the cache-read share of it."""
        attrs: dict[str, Any] = {
            sc.GEN_AI_RESPONSE_MODEL: response_model,
            sc.GEN_AI_RESPONSE_ID: response_id,
            sc.GEN_AI_USAGE_INPUT_TOKENS: int(input_tokens) if input_tokens is not None else None,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: int(output_tokens) if output_tokens is not None else None,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS:
                int(cached_input_tokens) if cached_input_tokens is not None else None,
            sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS:
                int(reasoning_tokens) if reasoning_tokens is not None else None,
        }
        if output is not None:
            messages = _messages.output_messages(output, finish_reason)
            attrs[sc.GEN_AI_OUTPUT_MESSAGES] = _safe_json(messages, "output messages")
            attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = [str(m["finish_reason"]) for m in messages]
        elif finish_reason is not None:
            attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = [finish_reason]
        self._span.set_attributes(_clean(attrs))
        return self


def parse_target(target: Any) -> tuple[int, int | None]:
    """The answered trace (and span, when known) a feedback refers to.

    Accepts a helper handle, an OpenTelemetry span or SpanContext, an int trace id, a hex
    trace id (32 digits), or a W3C ``traceparent`` / ``<trace id>-<span id>`` string."""
    if isinstance(target, SpanHandle):
        target = target.span_context
    elif isinstance(target, trace.Span):
        target = target.get_span_context()
    if isinstance(target, trace.SpanContext):
        if not target.is_valid:
            raise ValueError("the span context is not valid")
        return target.trace_id, target.span_id
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 < target < 2**128:
            raise ValueError("a trace id is a non-zero 128-bit integer")
        return target, None
    if isinstance(target, str):
        pieces = [p.lower().removeprefix("0x") for p in target.strip().replace(":", "-").split("-")]
        if len(pieces) == 4 and len(pieces[1]) == 32:  # traceparent: version-trace-span-flags
            pieces = pieces[1:3]
        trace_hex = pieces[0]
        span_hex = pieces[1] if len(pieces) > 1 else None
        trace_id = int(trace_hex, 16)
        span_id = int(span_hex, 16) if span_hex else None
        bad_span = span_hex is not None and (len(span_hex) != 16 or not span_id)
        if len(trace_hex) != 32 or not trace_id or bad_span:
            raise ValueError(f"not a trace id: {target!r}")
        return trace_id, span_id
    raise TypeError(f"cannot find a trace in a {type(target).__name__}")


def record_feedback(tracing: AitrailTracing, target: Any, score: float, label: str | None = None,
                    comment: str | None = None, *, response_id: str | None = None,
                    timestamp: Any = None) -> str | None:
    """Record user feedback on an answer; returns the feedback span id (hex) or None.

    The span joins the answered trace: a child of the answered span when its id is known
    (and linked to it), otherwise a new root in that trace. It carries ``aitrail.feedback.*``
    (``gen_ai.response.id`` too when given).

    No ``gen_ai.evaluation.result`` event: aitrail turns each such event into an extra
    ``evaluation`` record, so one thumbs-up would be counted twice."""
    try:
        trace_id, span_id = parse_target(target)
    except Exception:
        _log_internal("reading the trace a feedback refers to")
        return None
    try:
        attrs = _clean({
            sc.AITRAIL_FEEDBACK_SCORE: float(score),
            sc.AITRAIL_FEEDBACK_LABEL: label,
            sc.AITRAIL_FEEDBACK_COMMENT: comment,
            sc.AITRAIL_FEEDBACK_TRACE_ID: trace.format_trace_id(trace_id),
            sc.AITRAIL_FEEDBACK_SPAN_ID: trace.format_span_id(span_id) if span_id else None,
            sc.GEN_AI_RESPONSE_ID: response_id,
        })
        parent = links = None
        if span_id:
            parent = trace.SpanContext(trace_id, span_id, is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            links = [Link(parent)]
        handle = _Feedback(tracing, "feedback", attributes=attrs, start_time=timestamp,
                           end_time=timestamp, parent=parent, links=links,
                           root=parent is None)
        # A root span only lands in the answered trace through our id generator.
        token = force_trace_id(trace_id) if parent is None else None
        try:
            handle.start()
        finally:
            if token is not None:
                release_trace_id(token)
        handle.end()
        return handle.span_id
    except Exception:
        _log_internal("recording feedback")
        return None


class _Feedback(SpanHandle):
    def start(self) -> SpanHandle:
        # Feedback is not the parent of anything: start without making it current.
        super().start()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        return self
