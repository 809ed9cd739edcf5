"""OTLP → AuditRecord, for the three GenAI conventions in use today.

`normalise_traces` turns every span *of interest* into one `AuditRecord` (origin `span`);
`normalise_logs` turns GenAI event log records into records with origin `log` that carry the
same trace and span ids as the span they belong to. Everything else is skipped.

**Span of interest** — a span with a GenAI marker: any `gen_ai.*` or `llm.*` attribute,
`openinference.span.kind`, `traceloop.span.kind`, an aitrail SDK attribute that names a kind
(`aitrail.prompt.*`, `aitrail.retrieval.*`, `aitrail.feedback.*`), a `gen_ai.*` span event,
or a vector-store span (`db.system` chroma, pinecone, qdrant, …) carrying Traceloop
attributes or result events. Plain HTTP / database spans give no record, with one exception:

**Context span** — a span with no GenAI marker that says who asked (a user id such as
`enduser.id` / `user.id`, or `session.id`) and is where a request enters a service: a SERVER
span. Web frameworks set these ids on that span only; it becomes a record of kind `context`
(its own ids, times, status, name and attributes, no content), so that the records under it
inherit the user and session whichever of them arrives first, in whatever batch
(`aitrail.store.context`). Other plain spans stay unrecorded even when an SDK stamped the
user on them (every database call, every SDK wrapper span would otherwise become a record).

**Conventions** (the record's `semconv`):

- `gen_ai` — OpenTelemetry GenAI semantic conventions (`gen_ai.provider.name`,
  `gen_ai.input.messages` / `gen_ai.output.messages` / `gen_ai.system_instructions` as JSON
  text or structured values, the `gen_ai.client.inference.operation.details` event,
  `gen_ai.retrieval.*`, `gen_ai.evaluation.result` events);
- `gen_ai.legacy` — the older forms: `gen_ai.system`, `gen_ai.usage.prompt_tokens`,
  indexed `gen_ai.prompt.N.*` / `gen_ai.completion.N.*`, per-message events
  (`gen_ai.user.message`, `gen_ai.choice`, …; content in event attributes, in a
  `gen_ai.event.content` JSON attribute, or in the log body), `gen_ai.content.prompt`;
- `openinference` — Arize OpenInference (`openinference.span.kind`, `llm.*`,
  `retrieval.documents.N.document.*`, `reranker.*`, `embedding.*`, `tool.*`,
  `input.value` / `output.value`);
- `openllmetry` — Traceloop OpenLLMetry (`traceloop.*`, `llm.request.type`, `llm.usage.*`,
  `gen_ai.*` in its own flavour, vector-store `db.query.result` events);
- `otel` — context spans: the general OpenTelemetry attributes (`enduser.id`, `user.id`,
  `session.id`) on a plain SERVER span;
- `aitrail` — records whose kind comes from our SDK's own attributes (prompt render,
  retrieval with `aitrail.retrieval.documents`, feedback).

**Nothing is thrown away.** Every attribute not mapped to a field is kept in
`raw_attributes` under its own key, value as sent (kvlist → dict, array → list, bytes →
base64). Also kept there: resource attributes other than `service.name` /
`deployment.environment[.name]`, as `resource.<key>`; the instrumentation scope as
`scope.name` / `scope.version`; span links as `links` (list of `{trace_id, span_id,
attributes}`); span events that are not mapped, as `event.<name>` → list of `{time,
attributes}` (one entry per occurrence, in order; exception events are kept there too, after
`error_type` / `error_message` were taken from them); indexed sub-keys a mapping did not use
(e.g. `llm.output_messages.0.message.foo`), under their original key. When an attribute
names a field that another, preferred attribute already filled with a different value, the
losing one stays in `raw_attributes` too, and so do the kind markers
(`openinference.span.kind`, `traceloop.span.kind`, `llm.request.type`) when `operation`
(`gen_ai.operation.name`, else the marker's value in lower case) does not already say the
same. Message values that cannot be read (e.g. JSON truncated by an attribute length limit)
stay there as sent. The attributes of a per-message event or of an inference-details event,
other than the message itself, count as attributes of its span (the span's own win).

The losers, named: a request parameter or finish-reason attribute beside another of the same
name that says something else stays under its own key (an `llm.invocation_parameters` entry
as `llm.invocation_parameters.<name>`); an event attribute whose span holds the key with
another value stays in the event's `event.<name>` entry, as do a per-message event's message
fields the mapping does not read; a message's fields other than those of `Message` (`id`,
`refusal`, `logprobs`, a choice's `index` when it is not its position …) stay as
`<attribute>.<position>.<field>` (e.g. `gen_ai.input.messages.0.refusal`); tool calls keep
every key (`type` …); `gen_ai.system_instructions` with parts other than plain text stays as
sent beside the text; retrieved documents on a span of another kind go to `documents` (where
ACL filtering applies) like a retrieval's.

**What the stores cannot hold** (see `limits`): a span with a start or end time after
2262-04-11T23:47:16.854775807Z (the end of OpenSearch `date_nanos`; OTLP times cannot be
before 1970), or with an evaluation event after it, is refused with its evaluations, and so
are GenAI log records of such a time: `normalise_*` raises `SpansRefused` (an
`InvalidInput`) naming each, with the records of everything else in the request, which the
collector stores while it dead-letters the message with the reason. A string in a free-form
object too long for OpenSearch to index is truncated with the SHA-256 and length of the
whole kept; documents beyond 10,000 are counted and hashed.

**Never a raw user id.** `enduser.id`, `user.id`, `enduser.pseudo.id`, `user.email`,
`user.name`, `gen_ai.user`, `llm.user`, Traceloop `traceloop.association.properties.user_id`
(and `userId`, `user`), and the OpenAI `user` / `safety_identifier` request parameter (in
`llm.invocation_parameters`) become `user_pseudonym = pseudonymise(value)` and are removed;
`client.address` / `http.client_ip` become `client_ip_hash` (on a resource, such keys are
dropped). Every other occurrence of
those raw values inside `raw_attributes`, `request_params` and `template_variables` text
(e.g. the request body in OpenInference `input.value`) is replaced by its pseudonym. Message
*content* is left as sent: redacting what people typed is the PII stage's job.

**Kinds** — `completion` (gen_ai chat / text_completion / generate_content / embeddings,
OpenInference LLM and EMBEDDING, Traceloop `llm.request.type` chat / completion /
embedding), `retrieval` (gen_ai `retrieval`, OpenInference RETRIEVER and RERANKER, Traceloop
rerank and vector stores, aitrail retrieval spans), `tool` (gen_ai `execute_tool`,
OpenInference TOOL, Traceloop tool), `agent` (gen_ai invoke_agent / create_agent /
invoke_workflow / plan, OpenInference AGENT / CHAIN / UNKNOWN, Traceloop workflow / task /
agent), `prompt` (aitrail prompt-render span: `aitrail.prompt.template_id` with no
`gen_ai.operation.name` or `prompt`; OpenInference PROMPT), `evaluation` (OpenInference
EVALUATOR / GUARDRAIL; each `gen_ai.evaluation.result` span event or log record gives one
more record), `feedback` (`aitrail.feedback.*`).

**Ids** — `record_id_for(tenant, trace_id, span_id, kind, origin)` with lowercase hex ids.
Three exceptions keep ids unique: an evaluation span event's record uses the kind seed
`evaluation:<gen_ai.evaluation.name>` (plus `:<n>` for repeats); an evaluation log record's,
`evaluation:<name>@<its time>` (`@#<digest of its attributes>` without a time; plus `:<n>`
for repeats of name and time in one request), so results about one span sent in separate
requests stay apart and a request delivered twice gives the same ids; a log-derived record built
only from the older per-message events (which a batch boundary may split between two
export requests) or without a span id uses the kind seed `<kind>@<time of its first event>`.

**Cost** — only span records of kind `completion` are priced (agent spans may carry the sum
of their children's tokens). Log-derived records carry model and usage when the event has
them but `cost` is always None: the span record carries the cost, so nothing is counted
twice. A pricer that raises gives `cost.amount = None` with the reason; it never fails the
batch.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import orjson

from aitrail.schemas.record import AuditRecord, record_id_for
from aitrail.schemas.timefmt import ns_to_iso

from aitrail import __version__

from .genai_content import (
    assistant_text,
    documents_from_indexed,
    instructions_text,
    last_user_text,
    loads_maybe,
    messages_from_indexed,
    parse_documents,
    parse_messages,
    system_text,
    text_of_parts,
    to_document,
    to_float,
    to_int,
    to_message,
    to_str_list,
    to_text,
)
from .limits import MAX_TIME_NS, SpansRefused, TimeOutOfRange, fit_record
from .otlp_values import any_value_to_py, attributes_to_dict, id_hex

__all__ = ["MAX_TIME_NS", "Pricer", "SpansRefused", "default_pseudonymise", "normalise_logs", "normalise_traces"]

log = logging.getLogger(__name__)

Pricer = Callable[..., Any]
"""`(provider, model, input_tokens, output_tokens, cached_input_tokens, *, at) -> CostResult`
(`at` is passed by keyword, a timezone-aware datetime: the span's start)
where CostResult has `amount` (Decimal | None), `currency`, `price_table_version`,
`priced_by`, `reason` (see `aitrail.collector.cost.compute_cost`)."""

COMPLETION, RETRIEVAL, TOOL, AGENT, PROMPT, EVALUATION, FEEDBACK, CONTEXT = (
    "completion", "retrieval", "tool", "agent", "prompt", "evaluation", "feedback", "context",
)


def default_pseudonymise(raw: str) -> str:
    """Unkeyed pseudonym for tests and SDK-less use; the server passes a keyed HMAC."""
    return "u_" + hashlib.sha256(raw.encode()).hexdigest()[:32]


# --- attribute tables -------------------------------------------------------------------
# key → (record field, priority): lower priority wins when several keys name one field.

_SIMPLE: dict[str, tuple[str, int]] = {}


def _fields(field: str, *keys: str) -> None:
    for priority, key in enumerate(keys):
        _SIMPLE[key] = (field, priority)


_fields("provider", "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_fields("request_model", "gen_ai.request.model", "llm.request.model_name", "embedding.model_name", "reranker.model_name")
_fields("response_model", "gen_ai.response.model", "llm.response.model_name", "llm.model_name")
_fields("response_id", "gen_ai.response.id")
_fields("conversation_id", "gen_ai.conversation.id")
_fields("session_id", "session.id")
_fields(
    "input_tokens", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
_fields(
    "output_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
_fields(
    "cached_input_tokens", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.cached_tokens", "gen_ai.usage.input_tokens.cached", "gen_ai.usage.input_tokens_details.cached",
    "llm.usage.cache_read_input_tokens", "llm.token_count.prompt_details.cache_read",
)
_fields(
    "reasoning_tokens", "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.output_tokens.reasoning", "llm.token_count.completion_details.reasoning",
    "llm.usage.reasoning_tokens",
)
_fields("tool_name", "gen_ai.tool.name", "tool.name")
_fields("tool_call_id", "gen_ai.tool.call.id", "tool.id", "tool_call.id")
_fields("tool_arguments", "gen_ai.tool.call.arguments")
_fields("tool_result", "gen_ai.tool.call.result")
_fields("agent_name", "gen_ai.agent.name", "agent.name")
_fields("agent_id", "gen_ai.agent.id")
_fields("workflow_name", "gen_ai.workflow.name", "traceloop.workflow.name")
_fields("index_name", "aitrail.retrieval.index", "gen_ai.data_source.id")
_fields("query_text", "aitrail.retrieval.query", "gen_ai.retrieval.query.text", "reranker.query")
_fields("top_k", "aitrail.retrieval.top_k", "gen_ai.retrieval.top_k", "reranker.top_k", "db.vector.query.top_k")
_fields("template_id", "aitrail.prompt.template_id", "gen_ai.prompt.name", "traceloop.prompt.key", "prompt.id")
_fields(
    "template_version", "aitrail.prompt.template_version", "llm.prompt_template.version", "traceloop.prompt.version"
)
_fields("template_text", "llm.prompt_template.template", "traceloop.prompt.template")
_fields("feature", "aitrail.feature")
_fields("score", "aitrail.feedback.score", "gen_ai.evaluation.score.value", "evaluation.score")
_fields("label", "aitrail.feedback.label", "gen_ai.evaluation.score.label", "evaluation.label")
_fields("evaluation_name", "gen_ai.evaluation.name", "evaluation.name")
_fields("evaluation_explanation", "gen_ai.evaluation.explanation", "evaluation.explanation")
_fields("error_type", "error.type")


def _lower(value: Any) -> str | None:
    text = to_text(value)
    return text.strip().lower() or None if text is not None else None


_COERCE: dict[str, Callable[[Any], Any]] = {
    "provider": _lower,
    "input_tokens": to_int,
    "output_tokens": to_int,
    "cached_input_tokens": to_int,
    "reasoning_tokens": to_int,
    "top_k": to_int,
    "score": to_float,
}

# key → request_params name
_PARAMS: dict[str, str] = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.top_k": "top_k",
    "gen_ai.request.frequency_penalty": "frequency_penalty",
    "gen_ai.request.presence_penalty": "presence_penalty",
    "gen_ai.request.stop_sequences": "stop_sequences",
    "gen_ai.request.seed": "seed",
    "gen_ai.openai.request.seed": "seed",
    "gen_ai.request.choice.count": "choice_count",
    "gen_ai.request.encoding_formats": "encoding_formats",
    "gen_ai.request.stream": "stream",
    "gen_ai.is_streaming": "stream",
    "llm.is_streaming": "stream",
    "gen_ai.output.type": "output_type",
    "gen_ai.openai.request.response_format": "output_type",
    "gen_ai.embeddings.dimension.count": "dimensions",
    "gen_ai.openai.request.service_tier": "service_tier",
    "openai.request.service_tier": "service_tier",
    "llm.top_k": "top_k",
    "llm.frequency_penalty": "frequency_penalty",
    "llm.presence_penalty": "presence_penalty",
    "llm.chat.stop_sequences": "stop_sequences",
    "llm.request.repetition_penalty": "repetition_penalty",
}

# Attributes read by the code below rather than by the tables.
_SPECIAL = frozenset((
    "gen_ai.operation.name", "openinference.span.kind", "traceloop.span.kind", "llm.request.type",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.response.finish_reasons", "gen_ai.response.finish_reason", "llm.finish_reason",
    "llm.response.finish_reason", "llm.invocation_parameters", "input.value", "output.value", "input.mime_type",
    "output.mime_type", "traceloop.entity.name", "traceloop.entity.input", "traceloop.entity.output",
    "aitrail.retrieval.documents", "gen_ai.retrieval.documents", "aitrail.prompt.template_variables",
    "llm.prompt_template.variables", "traceloop.prompt.template_variables", "aitrail.user.roles", "user.roles",
    "db.system", "db.system.name", "llm.prompts",
))

# Raw user identifiers, strongest first. All are removed; the first present is pseudonymised.
_USER_KEYS = (
    "enduser.id", "user.id", "enduser.pseudo.id", "gen_ai.user", "gen_ai.request.user", "llm.user",
    "langfuse.user.id", "user.email", "user.name", "user.full_name",
)
_USER_RANK = {k: i for i, k in enumerate(_USER_KEYS)}
# What makes a plain SERVER or root span a context span (see the module's docstring).
_CONTEXT_KEYS = frozenset(_USER_KEYS) | {"session.id"}
_ASSOC_USER_KEYS = {"user_id": 20, "userId": 21, "user": 22, "user_email": 23, "email": 24}
_ASSOC_SESSION_KEYS = ("session_id", "sessionId", "thread_id", "chat_id", "conversation_id")
_PARAM_USER_KEYS = ("user", "safety_identifier", "user_id")
_IP_KEYS = frozenset(("client.address", "http.client_ip"))

# Indexed / prefixed families.
_ASSOC = "traceloop.association.properties."
_ROUTES = (
    ("gen_ai.prompt.", "legacy_in"),
    ("gen_ai.completion.", "legacy_out"),
    ("llm.input_messages.", "oi_in"),
    ("llm.output_messages.", "oi_out"),
    ("llm.prompts.", "oi_prompts"),
    ("llm.choices.", "oi_choices"),
    ("retrieval.documents.", "oi_docs"),
    ("reranker.output_documents.", "oi_rerank"),
    ("embedding.embeddings.", "oi_embed"),
    (_ASSOC, "assoc"),
)
_ROUTE_PREFIXES = tuple(p for p, _ in _ROUTES)

# Kinds.
_GEN_AI_OPS = {
    "chat": COMPLETION, "text_completion": COMPLETION, "generate_content": COMPLETION, "embeddings": COMPLETION,
    "completion": COMPLETION, "embedding": COMPLETION, "retrieval": RETRIEVAL, "rerank": RETRIEVAL,
    "search_memory": RETRIEVAL, "execute_tool": TOOL, "invoke_agent": AGENT, "create_agent": AGENT,
    "invoke_workflow": AGENT, "plan": AGENT, "prompt": PROMPT, "evaluation": EVALUATION,
}
_OI_KINDS = {
    "LLM": COMPLETION, "EMBEDDING": COMPLETION, "RETRIEVER": RETRIEVAL, "RERANKER": RETRIEVAL, "TOOL": TOOL,
    "AGENT": AGENT, "CHAIN": AGENT, "UNKNOWN": AGENT, "EVALUATOR": EVALUATION, "GUARDRAIL": EVALUATION,
    "PROMPT": PROMPT,
}
_TL_KINDS = {"workflow": AGENT, "task": AGENT, "agent": AGENT, "tool": TOOL, "unknown": AGENT}
_TL_REQUEST_TYPES = {"chat": COMPLETION, "completion": COMPLETION, "embedding": COMPLETION, "rerank": RETRIEVAL,
                     "unknown": COMPLETION}
_VECTOR_DBS = frozenset((
    "chroma", "chromadb", "pinecone", "qdrant", "weaviate", "milvus", "lancedb", "marqo", "pgvector", "faiss",
    "vespa", "redis_vector", "elasticsearch_vector", "opensearch_vector", "astra", "turbopuffer",
))

# Markers.
_MARKER_PREFIXES = ("gen_ai.", "llm.", "aitrail.prompt.", "aitrail.retrieval.", "aitrail.feedback.")
_MARKER_KEYS = frozenset(("openinference.span.kind", "traceloop.span.kind"))
_TL_KEYS = frozenset((
    "traceloop.span.kind", "traceloop.entity.name", "traceloop.entity.input", "traceloop.entity.output",
    "traceloop.workflow.name", "llm.request.type", "llm.usage.total_tokens", "llm.is_streaming", "llm.user",
    "llm.headers", "gen_ai.is_streaming", "gen_ai.openai.api_base", "gen_ai.openai.api_version",
    "gen_ai.openai.api_type", "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    "traceloop.prompt.key", "traceloop.prompt.template",
))
_TL_SCOPES = frozenset(("opentelemetry.instrumentation.openai.v1", "opentelemetry.instrumentation.openai.v0"))
_FEEDBACK_KEYS = frozenset(("aitrail.feedback.score", "aitrail.feedback.label", "aitrail.feedback.comment"))
_AITRAIL_RETRIEVAL_KEYS = frozenset((
    "aitrail.retrieval.documents", "aitrail.retrieval.query", "aitrail.retrieval.index", "aitrail.retrieval.top_k",
))
_LEGACY_KEYS = frozenset(("gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "gen_ai.prompt",
                          "gen_ai.completion", "gen_ai.openai.request.seed"))

# Events.
_DETAILS = "gen_ai.client.inference.operation.details"
_EVALUATION_EVENT = "gen_ai.evaluation.result"
_INPUT_EVENTS = {
    "gen_ai.system.message": "system", "gen_ai.user.message": "user", "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_CHOICE_EVENT = "gen_ai.choice"
_EXCEPTION_EVENT = "gen_ai.client.operation.exception"
_LEGACY_CONTENT_EVENTS = {"gen_ai.content.prompt": "gen_ai.prompt", "gen_ai.content.completion": "gen_ai.completion"}
_DB_RESULT_EVENTS = {"db.query.result": "db.query.result.", "db.search.result": "db.search.result."}
_MESSAGE_EVENT_KEYS = frozenset(("content", "role", "tool_calls", "id", "message", "finish_reason", "index",
                                 "gen_ai.event.content", "name", "tool_call_id"))
_STATUS = ("unset", "ok", "error")


# --- key classification (cached: instrumentations send the same keys over and over) ------

_RAW, _FIELD, _PARAM, _SPEC, _USER, _IP, _IDX, _ASSOC_SESSION, _TL_RAW = range(9)
_CLASSES: dict[str, tuple[Any, ...]] = {}
_CLASSES_MAX = 50_000  # high-cardinality keys (association properties …) must not grow it forever


def _classify(key: str) -> tuple[Any, ...]:
    spec = _SIMPLE.get(key)
    if spec is not None:
        c: tuple[Any, ...] = (_FIELD, spec[0], spec[1], _COERCE.get(spec[0]))
    elif key in _PARAMS:
        c = (_PARAM, _PARAMS[key])
    elif key in _SPECIAL:
        c = (_SPEC,)
    elif key in _USER_RANK:
        c = (_USER, _USER_RANK[key])
    elif key in _IP_KEYS:
        c = (_IP,)
    else:
        c = (_RAW,)
        if key.startswith(_ROUTE_PREFIXES):
            for prefix, route in _ROUTES:
                if key.startswith(prefix):
                    rest = key[len(prefix):]
                    if route == "assoc":
                        if rest in _ASSOC_USER_KEYS:
                            c = (_USER, _ASSOC_USER_KEYS[rest])
                        elif rest in _ASSOC_SESSION_KEYS:
                            c = (_ASSOC_SESSION,)
                        else:
                            c = (_TL_RAW,)
                    else:
                        idx, _, sub = rest.partition(".")
                        if sub and idx.isascii() and idx.isdigit():
                            c = (_IDX, route, int(idx), sub)
                    break
        elif key.startswith("traceloop."):
            c = (_TL_RAW,)
    if len(_CLASSES) >= _CLASSES_MAX:
        _CLASSES.clear()
    _CLASSES[key] = c
    return c


# --- per-call context -------------------------------------------------------------------


class _Ctx:
    __slots__ = ("tenant", "ingested_at", "pricer", "pseudonymise", "pseudonyms", "collector_version", "evaluations",
                 "refused")

    def __init__(self, tenant: str, ingested_at: str, pricer: Pricer | None,
                 pseudonymise: Callable[[str], str], collector_version: str) -> None:
        self.tenant = tenant
        self.ingested_at = ingested_at
        self.pricer = pricer
        self.pseudonymise = pseudonymise
        self.pseudonyms: dict[str, str] | None = None
        self.collector_version = collector_version
        # log-record evaluations seen in this call: (trace, span, name, time) -> count
        self.evaluations: dict[tuple[Any, ...], int] | None = None
        self.refused: list[str] | None = None  # why each refused span was refused

    def refuse(self, out: list[AuditRecord], keep: int, why: TimeOutOfRange) -> None:
        """Drop what one span (or log group) produced past `out[:keep]`, noting why."""
        del out[keep:]
        if self.refused is None:
            self.refused = []
        self.refused.append(str(why))

    def done(self, out: list[AuditRecord]) -> list[AuditRecord]:
        if self.refused:
            raise SpansRefused(self.refused, out)
        return out

    def pseudonym(self, raw: str) -> str:
        cache = self.pseudonyms
        if cache is None:
            cache = self.pseudonyms = _pseudonym_cache(self.pseudonymise)
        cached = cache.get(raw)
        if cached is None:
            if len(cache) >= _PSEUDONYMS_MAX:
                cache.clear()
            cached = cache[raw] = self.pseudonymise(raw)
        return cached


# Pseudonyms are a pure function of the raw id, and the same users come back span after span:
# remember them per pseudonymiser (an HMAC costs more than mapping a small span).
_PSEUDONYMS: weakref.WeakKeyDictionary[Callable[[str], str], dict[str, str]] = weakref.WeakKeyDictionary()
_PSEUDONYMS_MAX = 10_000


def _pseudonym_cache(pseudonymise: Callable[[str], str]) -> dict[str, str]:
    try:
        cache = _PSEUDONYMS.get(pseudonymise)
        if cache is None:
            cache = _PSEUDONYMS[pseudonymise] = {}
    except TypeError:  # not weakly referenceable: remember for this call only
        return {}
    return cache


class _Resource:
    """service, environment and the other resource attributes (as `resource.<key>`)."""

    __slots__ = ("service", "environment", "raw")

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.service = to_text(attrs.pop("service.name", None))
        env = attrs.pop("deployment.environment.name", None)
        legacy_env = attrs.pop("deployment.environment", None)
        if env is None:
            env = legacy_env
        elif legacy_env is not None and legacy_env != env:
            attrs["deployment.environment"] = legacy_env
        self.environment = to_text(env)
        self.raw = {
            "resource." + k: v
            for k, v in attrs.items()
            if v is not None and k not in _USER_RANK and k not in _IP_KEYS
        }


_RESOURCES: dict[bytes, _Resource] = {}  # a collector sees few distinct resources; parse each once


def _resource(resource: Any) -> _Resource:
    key = resource.SerializeToString()
    res = _RESOURCES.get(key)
    if res is None:
        if len(_RESOURCES) >= 1024:
            _RESOURCES.clear()
        res = _RESOURCES[key] = _Resource(attributes_to_dict(resource.attributes))
    return res


class _Source:
    """One span, or one group of GenAI log records about one span, before mapping."""

    # class-level defaults: an instance only stores what differs
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    name: str | None = None
    start_ns = 0
    end_ns = 0
    status_code = 0
    status_message = ""
    scope_name = ""
    scope_version = ""
    in_events: list[dict[str, Any]] | None = None
    out_events: list[dict[str, Any]] | None = None
    db_docs: list[dict[str, Any]] | None = None
    exception: dict[str, Any] | None = None
    raw_events: dict[str, list[dict[str, Any]]] | None = None
    links: list[dict[str, Any]] | None = None
    legacy_events = False  # content came from the older per-message events
    details = False  # a gen_ai.client.inference.operation.details event was folded in
    id_seed: str | None = None  # suffix for the kind seed of the record id
    kind: str | None = None  # set when the kind is known before mapping (evaluations)

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def add_raw_event(self, name: str, time_ns: int, attrs: dict[str, Any]) -> None:
        if self.raw_events is None:
            self.raw_events = {}
        entry: dict[str, Any] = {"attributes": attrs}
        if time_ns:
            entry["time"] = ns_to_iso(time_ns)
        self.raw_events.setdefault("event." + name, []).append(entry)


# --- public API -------------------------------------------------------------------------


def normalise_traces(
    traces: Any,
    tenant: str,
    *,
    ingested_at: str,
    pricer: Pricer | None = None,
    pseudonymise: Callable[[str], str] = default_pseudonymise,
    collector_version: str = __version__,
) -> list[AuditRecord]:
    """`TracesData` or `ExportTraceServiceRequest` → one record per span of interest, plus one
    evaluation record per `gen_ai.evaluation.result` span event. Order follows the input."""
    ctx = _Ctx(tenant, ingested_at, pricer, pseudonymise, collector_version)
    out: list[AuditRecord] = []
    for resource_spans in traces.resource_spans:
        res: _Resource | None = None
        for scope_spans in resource_spans.scope_spans:
            scope: tuple[str, str] | None = None
            for span in scope_spans.spans:
                interest = _interest(span)
                if interest is None:
                    continue
                if res is None:
                    res = _resource(resource_spans.resource)
                if scope is None:
                    scope = (scope_spans.scope.name, scope_spans.scope.version)
                keep = len(out)
                try:
                    _span_records(span, scope, res, ctx, out, context_only=interest is CONTEXT)
                except TimeOutOfRange as why:  # the span and its evaluations: all or none
                    ctx.refuse(out, keep, why)
    return ctx.done(out)


def normalise_logs(
    logs: Any,
    tenant: str,
    *,
    ingested_at: str,
    pricer: Pricer | None = None,
    pseudonymise: Callable[[str], str] = default_pseudonymise,
    collector_version: str = __version__,
) -> list[AuditRecord]:
    """`LogsData` or `ExportLogsServiceRequest` → records for the GenAI events among the log
    records (event name in `LogRecord.event_name`, or the `event.name` attribute of older
    SDKs); other log records are skipped. Events about one span (same trace and span id, same
    resource) become one record with origin `log` and that span's ids; each
    `gen_ai.evaluation.result` event becomes an evaluation record. `start_time` is the first
    event's `time_unix_nano` (or its `observed_time_unix_nano`). `pricer` is accepted for
    symmetry and not used: `cost` is always None here, the span record carries it."""
    del pricer
    ctx = _Ctx(tenant, ingested_at, None, pseudonymise, collector_version)
    out: list[AuditRecord] = []
    for resource_logs in logs.resource_logs:
        res: _Resource | None = None
        groups: dict[tuple[str | None, str | None, int], tuple[_Source, dict[str, Any]]] = {}
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            for lr in scope_logs.log_records:
                name = lr.event_name
                if not name:
                    for kv in lr.attributes:
                        if kv.key == "event.name":
                            name = kv.value.string_value
                            break
                if not name or not name.startswith("gen_ai."):
                    continue
                if res is None:
                    res = _resource(resource_logs.resource)
                _add_log_record(lr, name, scope, res, ctx, groups, out)
        for src, attrs in groups.values():
            if src.legacy_events and not src.details and src.id_seed is None:
                src.id_seed = f"@{src.start_ns}"
            try:
                record = _build_record(src, attrs, res, ctx)  # type: ignore[arg-type]
            except TimeOutOfRange as why:
                ctx.refuse(out, len(out), why)
                continue
            if record is not None:
                out.append(record)
    return ctx.done(out)


# --- traces -----------------------------------------------------------------------------


_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER


def _interest(span: Any) -> str | None:
    """"genai" for a span of interest, CONTEXT for a context span, None for neither."""
    vector_db = False
    traceloop = False
    context = False
    for kv in span.attributes:
        key = kv.key
        if key.startswith(_MARKER_PREFIXES) or key in _MARKER_KEYS:
            return "genai"
        if key == "db.system" or key == "db.system.name":
            vector_db = kv.value.string_value.lower() in _VECTOR_DBS
        elif key.startswith(("traceloop.", "db.vector.")):
            traceloop = True
        elif key in _CONTEXT_KEYS:
            context = True
    for event in span.events:
        name = event.name
        if name.startswith("gen_ai."):
            return "genai"
        if name in _DB_RESULT_EVENTS:
            traceloop = True
    if vector_db and traceloop:
        return "genai"
    if context and span.kind == _SERVER:
        return CONTEXT
    return None


def _span_records(
    span: Any, scope: tuple[str, str], res: _Resource, ctx: _Ctx, out: list[AuditRecord], *, context_only: bool = False
) -> None:
    src = _Source("span")
    if context_only:
        src.kind = CONTEXT
    src.trace_id = id_hex(span.trace_id)
    src.span_id = id_hex(span.span_id)
    src.parent_span_id = id_hex(span.parent_span_id)
    src.name = span.name or None
    src.start_ns = span.start_time_unix_nano
    src.end_ns = span.end_time_unix_nano
    status = span.status
    code = status.code
    if code:
        src.status_code = code
        src.status_message = status.message
    src.scope_name, src.scope_version = scope
    attrs = attributes_to_dict(span.attributes)
    evaluations: list[tuple[int, dict[str, Any]]] | None = None
    if span.events:
        for event in span.events:
            name = event.name
            ev_attrs = attributes_to_dict(event.attributes)
            if name == _EVALUATION_EVENT:
                if evaluations is None:
                    evaluations = []
                evaluations.append((event.time_unix_nano, ev_attrs))
            else:
                _apply_event(src, attrs, name, event.time_unix_nano, ev_attrs, None)
    if span.links:
        src.links = [
            {"trace_id": id_hex(link.trace_id), "span_id": id_hex(link.span_id),
             "attributes": attributes_to_dict(link.attributes)}
            for link in span.links
        ]
    record = _build_record(src, attrs, res, ctx)
    if record is not None:
        out.append(record)
    if evaluations:
        out.extend(_evaluation_records(src, evaluations, res, ctx))


def _apply_event(
    src: _Source, attrs: dict[str, Any], name: str, time_ns: int, ev_attrs: dict[str, Any], body: Any
) -> None:
    """Fold one span event (or GenAI log record) into the source: content into messages,
    details into the attributes (attributes already there win), the rest kept raw. What loses
    (an attribute the span holds with another value, a message field the mapping does not
    read) is kept as an `event.<name>` entry."""
    if name == _DETAILS:
        src.details = True
        lost: dict[str, Any] = {}
        _fold_attributes(attrs, ev_attrs, lost, None)
        if body not in (None, {}, ""):
            lost["body"] = body
        if lost:
            src.add_raw_event(name, time_ns, lost)
        return
    role = _INPUT_EVENTS.get(name)
    if role is not None or name == _CHOICE_EVENT:
        src.legacy_events = True
        lost = {}
        left: dict[str, Any] = {}
        content, where = _event_payload(ev_attrs, body)
        msg = to_message(content, role or "assistant", left)
        if msg is not None:
            if role == "tool" and "tool_call_id" not in msg and isinstance(content, dict) and content.get("id"):
                msg["tool_call_id"] = str(content["id"])
                left.pop("id", None)
            if role is not None:
                if src.in_events is None:
                    src.in_events = []
                src.in_events.append(msg)
            else:
                if src.out_events is None:
                    src.out_events = []
                if left.get("index") == len(src.out_events):  # its position says as much
                    del left["index"]
                src.out_events.append(msg)
        elif content not in (None, {}, ""):
            left = {"": content}
        if left:
            if where is None:
                lost.update(left)
            else:
                lost[where] = left.get("", left)
        if where is not None:  # message keys beside a body or a content attribute are not read
            for k, v in ev_attrs.items():
                if k in _MESSAGE_EVENT_KEYS and k != where and v is not None:
                    lost[k] = v
        _fold_attributes(attrs, ev_attrs, lost, _MESSAGE_EVENT_KEYS)
        if lost:
            src.add_raw_event(name, time_ns, lost)
        return
    if name in _LEGACY_CONTENT_EVENTS:
        src.legacy_events = True
        lost = {}
        _fold_attributes(attrs, ev_attrs, lost, None)
        if body not in (None, {}, ""):
            lost["body"] = body
        if lost:
            src.add_raw_event(name, time_ns, lost)
        return
    prefix = _DB_RESULT_EVENTS.get(name)
    if prefix is not None:
        n = len(prefix)
        if src.db_docs is None:
            src.db_docs = []
        doc = {k: v for k, v in ev_attrs.items() if not k.startswith(prefix)}
        for k, v in ev_attrs.items():
            if k.startswith(prefix):
                doc[k if k[n:] in doc else k[n:]] = v  # `id` beside `db.query.result.id`: both kept
        src.db_docs.append(doc)
        return
    if (name == "exception" or name == _EXCEPTION_EVENT) and src.exception is None:
        src.exception = ev_attrs
    if body not in (None, {}, ""):
        ev_attrs = {**ev_attrs, "body": body}
    src.add_raw_event(name, time_ns, ev_attrs)


def _fold_attributes(
    attrs: dict[str, Any], ev_attrs: dict[str, Any], lost: dict[str, Any], skip: frozenset[str] | None
) -> None:
    """An event's attributes count as its span's; where the span already holds the key with
    another value, the span's wins and the event's goes to `lost`."""
    for k, v in ev_attrs.items():
        if v is None or (skip is not None and k in skip):
            continue
        current = attrs.get(k)
        if current is None:
            attrs[k] = v
        elif current != v:
            lost[k] = v


def _event_payload(ev_attrs: dict[str, Any], body: Any) -> tuple[Any, str | None]:
    """The message carried by a per-message event, and where it was: the log body (`"body"`),
    a `gen_ai.event.content` JSON attribute, or the event attributes themselves (None)."""
    if body not in (None, {}, ""):
        return body, "body"
    content = ev_attrs.get("gen_ai.event.content")
    if content is not None:
        parsed = loads_maybe(content)
        return (parsed if isinstance(parsed, dict) else {"content": content}), "gen_ai.event.content"
    return {k: v for k, v in ev_attrs.items() if k in _MESSAGE_EVENT_KEYS}, None


# --- logs -------------------------------------------------------------------------------


def _add_log_record(
    lr: Any, name: str, scope: Any, res: _Resource, ctx: _Ctx,
    groups: dict[tuple[str | None, str | None, int], tuple[_Source, dict[str, Any]]], out: list[AuditRecord],
) -> None:
    trace_id = id_hex(lr.trace_id)
    span_id = id_hex(lr.span_id)
    time_ns = lr.time_unix_nano or lr.observed_time_unix_nano
    ev_attrs = attributes_to_dict(lr.attributes)
    ev_attrs.pop("event.name", None)
    body = any_value_to_py(lr.body) if lr.HasField("body") else None
    if name == _EVALUATION_EVENT:
        src = _log_source(trace_id, span_id, time_ns, scope)
        if body not in (None, {}, ""):
            ev_attrs.setdefault("body", body)
        if ctx.evaluations is None:
            ctx.evaluations = {}
        try:
            out.extend(_evaluation_records(src, [(time_ns, ev_attrs)], res, ctx, ctx.evaluations))
        except TimeOutOfRange as why:
            ctx.refuse(out, len(out), why)
        return
    key = (trace_id, span_id, 0 if span_id else time_ns)  # events without a span stay apart
    entry = groups.get(key)
    if entry is None:
        src = _log_source(trace_id, span_id, time_ns, scope)
        if span_id is None:
            src.id_seed = f"@{time_ns}"
        entry = groups[key] = (src, {})
    src, attrs = entry
    if time_ns and (not src.start_ns or time_ns < src.start_ns):
        src.start_ns = time_ns
    _apply_event(src, attrs, name, time_ns, ev_attrs, body)


def _log_source(trace_id: str | None, span_id: str | None, time_ns: int, scope: Any) -> _Source:
    src = _Source("log")
    src.trace_id = trace_id
    src.span_id = span_id
    src.start_ns = time_ns
    src.scope_name = scope.name
    src.scope_version = scope.version
    return src


# --- the mapping ------------------------------------------------------------------------


def _build_record(src: _Source, attrs: dict[str, Any], res: _Resource, ctx: _Ctx) -> AuditRecord | None:
    if src.start_ns > MAX_TIME_NS or src.end_ns > MAX_TIME_NS:
        _refuse_time(src)
    best: dict[str, tuple[int, Any]] = {}
    params: dict[str, Any] = {}
    special: dict[str, Any] = {}
    users: list[tuple[int, Any]] | None = None
    ips: list[Any] | None = None
    indexed: dict[str, dict[int, dict[str, Any]]] = {}
    raw: dict[str, Any] = {}
    assoc_session = None
    traceloop_seen = False

    classes_get = _CLASSES.get
    for key, value in attrs.items():
        if value is None:
            continue
        c = classes_get(key) or _classify(key)
        code = c[0]
        if code == _RAW:
            raw[key] = value
        elif code == _IDX:
            group = indexed.get(c[1])
            if group is None:
                group = indexed[c[1]] = {}
            item = group.get(c[2])
            if item is None:
                group[c[2]] = {c[3]: value}
            else:
                item[c[3]] = value
        elif code == _FIELD:
            field = c[1]
            current = best.get(field)
            if current is None:
                best[field] = (c[2], value, key, c[3])
            elif c[2] < current[0]:
                best[field] = (c[2], value, key, c[3])
                if current[1] != value:  # two conventions disagree: keep the loser as sent
                    raw[current[2]] = current[1]
            elif current[1] != value:
                raw[key] = value
        elif code == _SPEC:
            special[key] = value
        elif code == _PARAM:
            current = params.get(c[1], _ABSENT)
            if current is _ABSENT:
                params[c[1]] = value
            elif current != value:  # e.g. gen_ai.request.seed beside gen_ai.openai.request.seed
                raw[key] = value
        elif code == _USER:
            if users is None:
                users = []
            users.append((c[1], value))
        elif code == _IP:
            if ips is None:
                ips = []
            ips.append(value)
        elif code == _ASSOC_SESSION:
            traceloop_seen = True
            if assoc_session is None:
                assoc_session = value
            else:
                raw[key] = value
        else:  # _TL_RAW: kept as sent, but tells the convention
            traceloop_seen = True
            raw[key] = value

    kind, operation, from_aitrail = _kind(attrs, special, best, indexed, src)
    if kind is None:
        return None

    rec: dict[str, Any] = {}
    for field, (_, value, _, coerce) in best.items():
        if coerce is None:  # a text field
            if type(value) is not str:
                value = to_text(value)
        else:
            value = coerce(value)
        if value is not None:
            rec[field] = value
    if operation is not None:
        rec["operation"] = operation
    if special:  # the markers that named the kind; kept when `operation` does not say the same
        for key in _MARKERS_KEPT.intersection(special):
            value = special[key]
            if not isinstance(value, str) or value.lower() != operation:
                raw[key] = value
    if assoc_session is not None and "session_id" not in rec:
        rec["session_id"] = to_text(assoc_session)

    if special:
        inv = special.get("llm.invocation_parameters")
        if inv is not None:
            users = _invocation_parameters(inv, rec, params, raw, users)

    # -- content
    in_msgs, out_msgs = _messages(special, indexed, src, raw, kind, rec)
    if in_msgs:
        rec["input_messages"] = in_msgs
    if out_msgs:
        rec["output_messages"] = out_msgs
    si = special.get("gen_ai.system_instructions") if special else None
    system = None
    if si is not None:
        system, plain = instructions_text(si)
        if not plain:  # images, cache markers …: the parts as sent are kept too
            raw["gen_ai.system_instructions"] = si
    if system is None and in_msgs:
        system = system_text(in_msgs)
    if system is not None:
        rec["system_instructions"] = system
    if kind == RETRIEVAL:
        _retrieval_fields(rec, special, indexed, src, raw, in_msgs)
    else:
        if _has_documents(special, indexed, src):
            _documents(rec, special, indexed, src, raw)
        if in_msgs:
            q = last_user_text(in_msgs)
            if q is not None:
                rec["question"] = q
        if out_msgs:
            a = assistant_text(out_msgs)
            if a is not None:
                rec["answer"] = a
    finish = _finish_reasons(special, out_msgs, raw) if special or out_msgs else None
    if finish:
        rec["finish_reasons"] = finish
    if special:
        used = _tool_fields(rec, special) if kind == TOOL else None
        if kind == AGENT and "agent_name" not in rec and special.get("traceloop.span.kind") == "agent":
            name = special.get("traceloop.entity.name")
            if name is not None:
                rec["agent_name"] = to_text(name)
                used = {"traceloop.entity.name"}
        _other_specials(rec, special, raw, used)
    if params:
        rec["request_params"] = params

    # -- identity, time, outcome
    trace_id = src.trace_id
    span_id = src.span_id
    seed = kind if src.id_seed is None else kind + src.id_seed
    rec["record_id"] = record_id_for(ctx.tenant, trace_id or "", span_id or "", seed, src.origin)
    rec["kind"] = kind
    rec["origin"] = src.origin
    rec["tenant"] = ctx.tenant
    if trace_id is not None:
        rec["trace_id"] = trace_id
    if span_id is not None:
        rec["span_id"] = span_id
    if src.parent_span_id is not None:
        rec["parent_span_id"] = src.parent_span_id
    if res.service is not None:
        rec["service"] = res.service
    if res.environment is not None:
        rec["environment"] = res.environment
    if src.name:
        rec["span_name"] = src.name
    start_ns, end_ns = src.start_ns, src.end_ns
    if start_ns:
        rec["start_time"] = ns_to_iso(start_ns)
    if end_ns:
        rec["end_time"] = ns_to_iso(end_ns)
        if start_ns and end_ns >= start_ns:
            rec["duration_ms"] = rec["latency_ms"] = (end_ns - start_ns) / 1e6
    rec["ingested_at"] = ctx.ingested_at
    if src.status_code or src.exception is not None or "error_type" in rec:
        _outcome(rec, src)
    else:
        rec["status"] = "unset"

    # -- provenance
    rec["semconv"] = _semconv(attrs, src, from_aitrail, traceloop_seen, indexed)
    rec["collector_version"] = ctx.collector_version
    if src.scope_name:
        raw["scope.name"] = src.scope_name
        if src.scope_version:
            raw["scope.version"] = src.scope_version
    if src.links:
        raw["links"] = src.links
    if src.raw_events:
        raw.update(src.raw_events)
    if res.raw:
        raw.update(res.raw)
    rec["raw_attributes"] = raw

    # -- actor last: the scrub must see every value that ends up in the record
    if users or ips:
        _actor(rec, users, ips, raw, ctx.pseudonym)

    if kind == COMPLETION and ctx.pricer is not None and src.origin == "span":
        rec["cost"] = _cost(ctx.pricer, rec, start_ns)
    fit_record(rec)
    return _validate_record(rec)


def _refuse_time(src: _Source) -> None:
    """Raise `TimeOutOfRange` naming the span (or log records) and the time no store holds."""
    ids = f"{src.trace_id or '-'}/{src.span_id or '-'}"
    if src.kind == EVALUATION:
        what = f"gen_ai.evaluation.result {'event' if src.origin == 'span' else 'log record'} of span {ids}"
    elif src.origin == "span":
        what = f"span {ids}" + (f" {src.name!r}" if src.name else "")
    else:
        what = f"GenAI log records of span {ids}"
    start = src.origin == "span" and src.kind != EVALUATION
    if src.start_ns > MAX_TIME_NS:
        raise TimeOutOfRange(what, "start time" if start else "time", src.start_ns)
    raise TimeOutOfRange(what, "end time", src.end_ns)


# `AuditRecord.model_validate` minus its keyword plumbing (it runs once per record).
_validate_record = AuditRecord.__pydantic_validator__.validate_python


def _invocation_parameters(
    inv: Any, rec: dict[str, Any], params: dict[str, Any], raw: dict[str, Any], users: list[tuple[int, Any]] | None
) -> list[tuple[int, Any]] | None:
    """OpenInference `llm.invocation_parameters` (one JSON object) → request_params; the
    OpenAI `user` / `safety_identifier` in it is a raw user id."""
    parsed = loads_maybe(inv)
    if not isinstance(parsed, dict):
        raw["llm.invocation_parameters"] = inv
        return users
    for k in _PARAM_USER_KEYS:
        v = parsed.get(k)
        if isinstance(v, str) and v:
            del parsed[k]
            if users is None:
                users = []
            users.append((30, v))
    model = parsed.pop("model", None)
    if model is not None:
        if "request_model" not in rec:
            rec["request_model"] = to_text(model)
        elif rec["request_model"] != model:
            parsed["model"] = model
    for k, v in parsed.items():
        current = params.get(k, _ABSENT)
        if current is _ABSENT:
            params[k] = v
        elif current != v:  # the attribute of that name wins; this one stays under its path
            raw["llm.invocation_parameters." + k] = v
    return users


_ABSENT = object()


_MARKERS_KEPT = frozenset(("gen_ai.operation.name", "openinference.span.kind", "traceloop.span.kind",
                           "llm.request.type"))
_KEEP_RAW = frozenset((
    "input.value", "output.value", "input.mime_type", "output.mime_type", "db.system", "db.system.name",
    "traceloop.entity.name", "traceloop.entity.input", "traceloop.entity.output",
))
_VARIABLE_ORDER = ("aitrail.prompt.template_variables", "llm.prompt_template.variables",
                   "traceloop.prompt.template_variables")
_VARIABLE_KEYS = frozenset(_VARIABLE_ORDER)


def _other_specials(rec: dict[str, Any], special: dict[str, Any], raw: dict[str, Any], used: set[str] | None) -> None:
    for key in _KEEP_RAW.intersection(special):  # read by the mapping but kept as sent
        if used is None or key not in used:
            raw[key] = special[key]
    if _VARIABLE_KEYS.isdisjoint(special):
        variables = None
    else:
        variables = _template_variables(special, raw)
    if variables is not None:
        rec["template_variables"] = variables
    if "aitrail.user.roles" in special or "user.roles" in special:
        _roles(rec, special, raw)


def _template_variables(special: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any] | None:
    variables = None
    for key in _VARIABLE_ORDER:
        value = special.get(key)
        if value is None:
            continue
        parsed = loads_maybe(value)
        if variables is None and isinstance(parsed, dict):
            variables = parsed
        else:
            raw[key] = value
    return variables


def _roles(rec: dict[str, Any], special: dict[str, Any], raw: dict[str, Any]) -> None:
    roles = special.get("aitrail.user.roles")
    other_roles = special.get("user.roles")
    if roles is None:
        roles, other_roles = other_roles, None
    if roles is not None:
        rec["user_roles"] = to_str_list(roles)
    if other_roles is not None:
        raw["user.roles"] = other_roles


def _kind(
    attrs: dict[str, Any], special: dict[str, Any], best: dict[str, tuple[Any, ...]],
    indexed: dict[str, Any], src: _Source,
) -> tuple[str | None, str | None, bool]:
    """(kind, operation, the kind came from an aitrail SDK attribute)."""
    op = special.get("gen_ai.operation.name") if special else None
    if not isinstance(op, str) or not op:
        op = None
    if src.kind == CONTEXT:
        return CONTEXT, op, False
    if src.kind is not None:
        return src.kind, op or src.kind, False
    if not _FEEDBACK_KEYS.isdisjoint(attrs):
        return FEEDBACK, "feedback", True
    if special:
        oi = special.get("openinference.span.kind")
        if isinstance(oi, str):
            kind = _OI_KINDS.get(oi.upper())
            if kind is not None:
                return kind, op or oi.lower(), False
        if op is not None:
            kind = _GEN_AI_OPS.get(op)
            if kind == PROMPT or (kind is None and "aitrail.prompt.template_id" in attrs):
                return PROMPT, op, True
            if kind is not None:
                return kind, op, False
        tl = special.get("traceloop.span.kind")
        if isinstance(tl, str) and tl:
            kind = _TL_KINDS.get(tl.lower())
            if kind is not None:
                return kind, op or tl.lower(), False
        rt = special.get("llm.request.type")
        if isinstance(rt, str) and rt:
            return _TL_REQUEST_TYPES.get(rt.lower(), COMPLETION), op or rt.lower(), False
    if "aitrail.prompt.template_id" in attrs:
        return PROMPT, "prompt", True
    if not _AITRAIL_RETRIEVAL_KEYS.isdisjoint(attrs):
        return RETRIEVAL, "retrieval", True
    db = special.get("db.system", special.get("db.system.name")) if special else None
    if (isinstance(db, str) and db.lower() in _VECTOR_DBS) or src.db_docs:
        return RETRIEVAL, op or "retrieval", False
    if "evaluation_name" in best:
        return EVALUATION, op or "evaluation", False
    if src.in_events or src.out_events or any(k.startswith(("gen_ai.", "llm.", "aitrail.")) for k in attrs):
        looks_like_llm = (
            "request_model" in best or "response_model" in best or "input_tokens" in best
            or "gen_ai.input.messages" in special or "gen_ai.output.messages" in special or "gen_ai.prompt" in special
            or indexed or src.in_events or src.out_events
        )
        return (COMPLETION if looks_like_llm else AGENT), op, False
    return None, None, False


def _semconv(
    attrs: dict[str, Any], src: _Source, from_aitrail: bool, traceloop_seen: bool, indexed: dict[str, Any]
) -> str:
    if src.kind == CONTEXT:
        return "otel"
    if from_aitrail:
        return "aitrail"
    if "openinference.span.kind" in attrs:
        return "openinference"
    if (
        traceloop_seen or not _TL_KEYS.isdisjoint(attrs) or src.scope_name in _TL_SCOPES
        or "traceloop" in src.scope_name or src.db_docs
    ):
        return "openllmetry"
    if (
        ("gen_ai.system" in attrs and "gen_ai.provider.name" not in attrs) or src.legacy_events
        or "legacy_in" in indexed or "legacy_out" in indexed or not _LEGACY_KEYS.isdisjoint(attrs)
    ):
        return "gen_ai.legacy"
    for key in attrs:
        if key.startswith("gen_ai."):
            return "gen_ai"
    for key in attrs:
        if key.startswith("llm."):
            return "openinference"
    return "aitrail"


# Message sources, strongest first. Weaker sources present as well stay in raw_attributes.
_INDEXED_MESSAGES = (
    ("oi_in", "llm.input_messages.", True, True),
    ("oi_out", "llm.output_messages.", False, True),
    ("legacy_in", "gen_ai.prompt.", True, False),
    ("legacy_out", "gen_ai.completion.", False, False),
)


def _messages(
    special: dict[str, Any], indexed: dict[str, dict[int, dict[str, Any]]], src: _Source, raw: dict[str, Any],
    kind: str, rec: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    in_msgs: list[dict[str, Any]] | None = None
    out_msgs: list[dict[str, Any]] | None = None

    if special:
        value = special.get("gen_ai.input.messages")
        if value is not None:
            in_msgs = _parse_kept(value, "user", "gen_ai.input.messages", raw)
        value = special.get("gen_ai.output.messages")
        if value is not None:
            out_msgs = _parse_kept(value, "assistant", "gen_ai.output.messages", raw)

    if indexed:
        for route, prefix, is_input, oi in _INDEXED_MESSAGES:
            group = indexed.get(route)
            if not group:
                continue
            if (in_msgs if is_input else out_msgs) is not None:
                _keep_indexed(raw, prefix, group)
                continue
            msgs, left = messages_from_indexed(group, "user" if is_input else "assistant", oi)
            for k, v in left.items():
                raw[prefix + k] = v
            if is_input:
                in_msgs = msgs
            else:
                out_msgs = msgs

    if special:
        for key, is_input in (("gen_ai.prompt", True), ("gen_ai.completion", False)):
            value = special.get(key)
            if value is None:
                continue
            parsed = _parse_kept(value, "user" if is_input else "assistant", key, raw) if (
                in_msgs if is_input else out_msgs) is None else None
            if parsed is None:
                raw[key] = value
            elif is_input:
                in_msgs = parsed
            else:
                out_msgs = parsed

    if src.in_events:
        if in_msgs is None:
            in_msgs = src.in_events
        else:
            raw["event.gen_ai.input_messages"] = src.in_events
    if src.out_events:
        if out_msgs is None:
            out_msgs = src.out_events
        else:
            raw["event.gen_ai.output_messages"] = src.out_events

    if indexed:
        in_msgs, out_msgs = _openinference_text(indexed, special, raw, in_msgs, out_msgs)

    # No structured messages: read the request / response bodies (OpenInference).
    if kind == COMPLETION and special and (in_msgs is None or out_msgs is None):
        if in_msgs is None:
            in_msgs = _messages_from_value(special.get("input.value"), special.get("input.mime_type"), True, rec)
        if out_msgs is None:
            out_msgs = _messages_from_value(special.get("output.value"), special.get("output.mime_type"), False, rec)
    return in_msgs or [], out_msgs or []


def _parse_kept(value: Any, role: str, key: str, raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`parse_messages`, keeping what it does not map: the whole value when it is no list of
    messages, else each message's unread fields as `<key>.<position>.<field>`."""
    left: dict[str, Any] = {}
    msgs = parse_messages(value, role, left)
    if msgs is None:
        raw[key] = value
    elif left:
        for sub, v in left.items():
            raw[f"{key}.{sub}"] = v
    return msgs


def _openinference_text(
    indexed: dict[str, dict[int, dict[str, Any]]], special: dict[str, Any], raw: dict[str, Any],
    in_msgs: list[dict[str, Any]] | None, out_msgs: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Completions-API prompts / choices and embedding texts (OpenInference)."""
    group = indexed.get("oi_prompts")
    if group:
        if in_msgs is None:
            in_msgs = [{"role": "user", "content": to_text(g.get("prompt.text"))} for _, g in sorted(group.items())]
        else:
            _keep_indexed(raw, "llm.prompts.", group)
    prompts = special.get("llm.prompts") if special else None
    if prompts is not None:
        if in_msgs is None and isinstance(prompts, list):
            in_msgs = [{"role": "user", "content": to_text(p)} for p in prompts]
        else:
            raw["llm.prompts"] = prompts
    group = indexed.get("oi_choices")
    if group:
        if out_msgs is None:
            out_msgs = [{"role": "assistant", "content": to_text(g.get("completion.text"))}
                        for _, g in sorted(group.items())]
        else:
            _keep_indexed(raw, "llm.choices.", group)
    group = indexed.get("oi_embed")
    if group:
        texts = []
        for idx, g in sorted(group.items()):
            for sub, v in g.items():
                if sub == "embedding.text" and in_msgs is None:
                    texts.append({"role": "user", "content": to_text(v)})
                else:  # vectors are kept as sent
                    raw[f"embedding.embeddings.{idx}.{sub}"] = v
        if texts:
            in_msgs = texts
    return in_msgs, out_msgs


def _keep_indexed(raw: dict[str, Any], prefix: str, group: dict[int, dict[str, Any]]) -> None:
    for idx, flat in group.items():
        for sub, v in flat.items():
            raw[f"{prefix}{idx}.{sub}"] = v


def _messages_from_value(value: Any, mime: Any, is_input: bool, rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """OpenInference `input.value` / `output.value` → messages (the value itself stays raw)."""
    if not isinstance(value, str) or not value:
        return None
    if mime == "application/json" or (mime is None and value[:1] in ("{", "[")):
        body = loads_maybe(value)
        if isinstance(body, list):
            return parse_messages(body, "user" if is_input else "assistant")
        if not isinstance(body, dict):
            return None
        if is_input:
            if isinstance(body.get("messages"), list):
                msgs = parse_messages(body["messages"], "user") or []
                system = body.get("system")  # Anthropic keeps it apart
                if isinstance(system, (str, list)):
                    text = text_of_parts(system)
                    if text:
                        msgs.insert(0, {"role": "system", "content": text})
                return msgs
            if isinstance(body.get("prompt"), str):
                return [{"role": "user", "content": body["prompt"]}]
            if isinstance(body.get("input"), (str, list)):  # OpenAI Responses API
                return parse_messages(body["input"], "user")
            return None
        if body.get("id") is not None and "response_id" not in rec:
            rec["response_id"] = to_text(body["id"])
        if body.get("model") is not None and "response_model" not in rec:
            rec["response_model"] = to_text(body["model"])
        choices = body.get("choices")
        if isinstance(choices, list):
            msgs = []
            for choice in choices:
                if isinstance(choice, dict) and "message" not in choice and isinstance(choice.get("text"), str):
                    msg: dict[str, Any] | None = {"role": "assistant", "content": choice["text"]}
                    if choice.get("finish_reason") is not None:
                        msg["finish_reason"] = str(choice["finish_reason"])  # type: ignore[index]
                else:
                    msg = to_message(choice, "assistant")
                if msg is not None:
                    msgs.append(msg)
            return msgs
        output = body.get("output")
        if isinstance(output, list):  # OpenAI Responses API
            return parse_messages(
                [o for o in output if isinstance(o, dict) and o.get("type", "message") == "message"], "assistant"
            )
        if "content" in body:  # Anthropic message
            return parse_messages(body, "assistant")
        return None
    return [{"role": "user" if is_input else "assistant", "content": value}]


def _retrieval_fields(
    rec: dict[str, Any], special: dict[str, Any], indexed: dict[str, dict[int, dict[str, Any]]], src: _Source,
    raw: dict[str, Any], in_msgs: list[dict[str, Any]],
) -> None:
    _documents(rec, special, indexed, src, raw)
    if "query_text" not in rec:
        q = last_user_text(in_msgs) if in_msgs else None
        value = special.get("input.value")
        if q is None and isinstance(value, str) and special.get("input.mime_type") != "application/json":
            q = value
        if q is not None:
            rec["query_text"] = q
    if "query_text" in rec:
        rec["question"] = rec["query_text"]


_DOCUMENT_KEYS = ("aitrail.retrieval.documents", "gen_ai.retrieval.documents")
_DOCUMENT_ROUTES = (("oi_rerank", "reranker.output_documents."), ("oi_docs", "retrieval.documents."))


def _has_documents(special: dict[str, Any], indexed: dict[str, Any], src: _Source) -> bool:
    return bool(
        src.db_docs or (indexed and ("oi_docs" in indexed or "oi_rerank" in indexed))
        or (special and ("aitrail.retrieval.documents" in special or "gen_ai.retrieval.documents" in special))
    )


def _documents(
    rec: dict[str, Any], special: dict[str, Any], indexed: dict[str, dict[int, dict[str, Any]]], src: _Source,
    raw: dict[str, Any],
) -> None:
    """Retrieved documents, on whatever kind of span sent them (a chain or agent span may
    carry its retriever's results): in `documents`, where ACL filtering applies."""
    docs: list[dict[str, Any]] | None = None
    for key in _DOCUMENT_KEYS:
        value = special.get(key)
        if value is None:
            continue
        parsed = parse_documents(value) if docs is None else None
        if parsed is None:
            raw[key] = value
        else:
            docs = parsed
    for route, prefix in _DOCUMENT_ROUTES:
        group = indexed.get(route)
        if not group:
            continue
        if docs is None:
            docs = documents_from_indexed(group)
        else:
            _keep_indexed(raw, prefix, group)
    if src.db_docs:
        if docs is None:
            docs = [to_document(d, i) for i, d in enumerate(src.db_docs)]
        else:
            raw["event.db.query.result"] = src.db_docs
    if docs:
        rec["documents"] = docs


_FINISH_KEYS = ("gen_ai.response.finish_reasons", "llm.finish_reason", "llm.response.finish_reason",
                "gen_ai.response.finish_reason")


def _finish_reasons(special: dict[str, Any], out_msgs: list[dict[str, Any]], raw: dict[str, Any]) -> list[str]:
    """The first finish-reason attribute present; another that says something else stays raw."""
    reasons = None
    if special:
        for key in _FINISH_KEYS:
            value = special.get(key)
            if value is None:
                continue
            these = to_str_list(value) if isinstance(value, list) else [to_text(value) or ""]
            if reasons is None:
                reasons = these
            elif these != reasons:
                raw[key] = value
    if reasons is not None:
        return reasons
    return [m["finish_reason"] for m in out_msgs if m.get("finish_reason")]


def _tool_fields(rec: dict[str, Any], special: dict[str, Any]) -> set[str]:
    """Tool name / arguments / result from the OpenInference and Traceloop forms; returns the
    attributes used (they are then not also kept raw)."""
    used = set()
    if "tool_name" not in rec and special.get("traceloop.entity.name") is not None:
        rec["tool_name"] = to_text(special["traceloop.entity.name"])
        used.add("traceloop.entity.name")
    for field, keys in (
        ("tool_arguments", ("input.value", "traceloop.entity.input")),
        ("tool_result", ("output.value", "traceloop.entity.output")),
    ):
        if field in rec:
            continue
        for key in keys:
            if special.get(key) is not None:
                rec[field] = to_text(special[key])
                used.add(key)
                break
    return used


def _outcome(rec: dict[str, Any], src: _Source) -> None:
    exc = src.exception
    if exc is not None and "error_type" not in rec and exc.get("exception.type") is not None:
        rec["error_type"] = to_text(exc["exception.type"])
    message = src.status_message or (to_text(exc.get("exception.message")) if exc is not None else None)
    if message:
        rec["error_message"] = message
    code = src.status_code
    if code == 2 or (src.origin == "log" and "error_type" in rec):
        rec["status"] = "error"
    else:
        rec["status"] = _STATUS[code] if 0 <= code < 3 else "unset"


def _actor(
    rec: dict[str, Any], users: list[tuple[int, Any]] | None, ips: list[Any] | None, raw: dict[str, Any],
    pseudonymise: Callable[[str], str],
) -> None:
    replacements: dict[str, str] = {}
    if users:
        if len(users) > 1:
            users.sort(key=_by_rank)
        for _, value in users:
            text = to_text(value)
            if text and text not in replacements:
                replacements[text] = pseudonymise(text)
                rec.setdefault("user_pseudonym", replacements[text])
    if ips:
        for value in ips:
            text = to_text(value)
            if text:
                if text not in replacements:
                    replacements[text] = pseudonymise(text)
                rec.setdefault("client_ip_hash", replacements[text])
    # The raw values may be echoed elsewhere (the request body in input.value, tags, metadata).
    needles = [(k, v) for k, v in replacements.items() if len(k) >= 3]
    if needles:
        for key in ("request_params", "template_variables"):
            if key in rec:
                rec[key] = _scrub(rec[key], needles)
        for key, value in raw.items():
            raw[key] = _scrub(value, needles)


_by_rank = itemgetter(0)


def _scrub(value: Any, needles: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for needle, replacement in needles:
            if needle in value:
                value = value.replace(needle, replacement)
        return value
    if isinstance(value, list):
        return [_scrub(v, needles) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, needles) for k, v in value.items()}
    return value


def _cost(pricer: Pricer, rec: dict[str, Any], start_ns: int) -> dict[str, Any]:
    at = datetime.fromtimestamp(start_ns / 1e9, UTC) if start_ns else datetime.now(UTC)
    model = rec.get("response_model") or rec.get("request_model")
    try:
        result = pricer(  # `at` by keyword: compute_cost takes it keyword-only
            rec.get("provider"), model, rec.get("input_tokens"), rec.get("output_tokens"),
            rec.get("cached_input_tokens"), at=at,
        )
    except Exception as exc:  # a pricing bug must not dead-letter the spans
        log.warning("pricer failed for %s/%s: %s", rec.get("provider"), model, exc)
        return {"reason": f"pricer failed: {type(exc).__name__}: {exc}"}
    cost = {}
    for name in _COST_FIELDS:
        value = getattr(result, name, None)
        if value is not None:
            cost[name] = value
    return cost


_COST_FIELDS = ("amount", "currency", "price_table_version", "priced_by", "reason")


def _evaluation_records(
    parent: _Source, events: Iterable[tuple[int, dict[str, Any]]], res: _Resource, ctx: _Ctx,
    log_seen: dict[tuple[Any, ...], int] | None = None,
) -> list[AuditRecord]:
    """One record per evaluation result. Ids: `evaluation:<name>` (`:<n>` for the n-th repeat of
    a name on the span) for span events, which always arrive together with their span; log
    records about one span arrive in any number of requests, so theirs add the record's time,
    `evaluation:<name>@<time>` (`@#<digest of its attributes>` when it has none), and `:<n>`
    for a repeat of name and time in one request."""
    records = []
    seen: dict[str, int] = {}
    for time_ns, ev_attrs in events:
        src = _Source(parent.origin)
        src.trace_id = parent.trace_id
        src.span_id = parent.span_id
        src.parent_span_id = parent.parent_span_id
        src.start_ns = time_ns or parent.start_ns
        src.scope_name = parent.scope_name
        src.scope_version = parent.scope_version
        src.kind = EVALUATION
        name = to_text(ev_attrs.get("gen_ai.evaluation.name")) or ""
        if log_seen is None:
            n = seen.get(name, 0)
            seen[name] = n + 1
            src.id_seed = f":{name}" + (f":{n}" if n else "")
        else:
            # A record with neither time nor observed time is told apart by what it says.
            at = time_ns or "#" + hashlib.sha256(orjson.dumps(ev_attrs, default=repr,
                                                              option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
            key = (parent.trace_id, parent.span_id, name, at)
            n = log_seen.get(key, 0)
            log_seen[key] = n + 1
            src.id_seed = f":{name}@{at}" + (f":{n}" if n else "")
        record = _build_record(src, ev_attrs, res, ctx)
        if record is not None:
            records.append(record)
    return records
