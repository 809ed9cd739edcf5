"""aitrail.sdk: attributes emitted, safety contract, configuration, demo traffic."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aitrail.sdk as trail
from aitrail.sdk import _tracing

USER_ATTRS = ("enduser.id", "user.roles", "aitrail.user.roles", "session.id", "aitrail.feature")
REFUND_DOC = (
    "Refund policy (version 3). Items that arrive damaged can be returned within 30 days for a "
    "full refund. " * 5
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter):
    instance = trail.configure("test-svc", "http://127.0.0.1:9", "test-key", environment="test",
                               set_global=False, exporter=exporter)
    yield instance
    instance.shutdown()


def finished(tracing, exporter) -> dict[str, object]:
    assert tracing.force_flush()
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), "span names are unique in these tests"
    return by_name


def without_user(attrs) -> dict:
    return {k: v for k, v in attrs.items() if k not in USER_ATTRS}


# --- attributes ----------------------------------------------------------------------------------

def test_retrieval_span(tracing, exporter):
    with tracing.retrieval("refund policy for damaged items", index="policies", top_k=4) as r:
        r.add_document("refund-policy", chunk_id="refund-policy#2", source_uri="kb://refund-policy",
                       version="v3", content=REFUND_DOC, score=0.91, acl_tags=["public"])
        r.add_document("board-minutes", version="v1", content_sha256="ab" * 32, score=0.5,
                       acl_tags=("board-only", "finance"))
    span = finished(tracing, exporter)["retrieval policies"]

    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes)
    documents = json.loads(attrs.pop("aitrail.retrieval.documents"))
    standard = json.loads(attrs.pop("gen_ai.retrieval.documents"))
    assert attrs == {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.data_source.id": "policies",
        "gen_ai.retrieval.query.text": "refund policy for damaged items",
        "gen_ai.request.top_k": 4.0,
        "aitrail.retrieval.query": "refund policy for damaged items",
        "aitrail.retrieval.index": "policies",
        "aitrail.retrieval.top_k": 4,
    }
    assert documents == [
        {
            "doc_id": "refund-policy",
            "chunk_id": "refund-policy#2",
            "source_uri": "kb://refund-policy",
            "doc_version": "v3",
            "content_sha256": hashlib.sha256(REFUND_DOC.encode("utf-8")).hexdigest(),
            "score": 0.91,
            "rank": 1,
            "acl_tags": ["public"],
            "snippet": REFUND_DOC[:300],
        },
        {  # nulls omitted; an explicit hash is kept as given; rank follows insertion order
            "doc_id": "board-minutes",
            "doc_version": "v1",
            "content_sha256": "ab" * 32,
            "score": 0.5,
            "rank": 2,
            "acl_tags": ["board-only", "finance"],
        },
    ]
    assert standard == [{"id": "refund-policy", "score": 0.91}, {"id": "board-minutes", "score": 0.5}]


def test_retrieval_documents_in_bulk_and_data_source(tracing, exporter):
    class Hit:
        doc_id = "faq"
        doc_version = "7"
        content = "ไม่มีปัญหา"  # non-ASCII is hashed as UTF-8 and kept readable
        score = 0.2

    with tracing.retrieval("q", index="faq-index", data_source_id="vs_123") as r:
        r.documents([{"id": "a", "doc_version": "2", "score": 0.9, "rank": 5}, Hit()])
    span = finished(tracing, exporter)["retrieval vs_123"]
    assert span.attributes["gen_ai.data_source.id"] == "vs_123"
    assert span.attributes["aitrail.retrieval.index"] == "faq-index"
    assert "ไม่มีปัญหา" in span.attributes["aitrail.retrieval.documents"]
    docs = json.loads(span.attributes["aitrail.retrieval.documents"])
    assert docs == [
        {"doc_id": "a", "doc_version": "2", "score": 0.9, "rank": 5, "acl_tags": []},
        {"doc_id": "faq", "doc_version": "7", "score": 0.2, "rank": 2, "acl_tags": [],
         "content_sha256": hashlib.sha256("ไม่มีปัญหา".encode()).hexdigest(), "snippet": "ไม่มีปัญหา"},
    ]


def test_prompt_span(tracing, exporter):
    with tracing.prompt("support-answer", version="3", variables={"question": "refund?", "n": 2},
                        template="Q: {question}") as p:
        p.rendered([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: refund?"}])
    span = finished(tracing, exporter)["prompt support-answer"]

    assert span.kind is SpanKind.INTERNAL
    attrs = dict(span.attributes)
    assert json.loads(attrs.pop("aitrail.prompt.template_variables")) == {"question": "refund?", "n": 2}
    assert json.loads(attrs.pop("aitrail.prompt.rendered")) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Q: refund?"}]},
    ]
    assert attrs == {
        "gen_ai.prompt.name": "support-answer",
        "aitrail.prompt.template_id": "support-answer",
        "aitrail.prompt.template_version": "3",
        "aitrail.prompt.template": "Q: {question}",
    }


def test_completion_span(tracing, exporter):
    messages = [{"role": "user", "content": "What is our refund policy?"}]
    params = {"temperature": 0.2, "max_tokens": 256, "top_p": 0.9, "stop": "###", "logit_bias": {"1": 2}}
    with tracing.completion("gpt-4o-mini", provider="openai", messages=messages,
                            system_instructions="You are helpful.", params=params) as c:
        c.response("30 days, full refund.", response_model="gpt-4o-mini-2024-07-18",
                   response_id="chatcmpl-1", input_tokens=120, output_tokens=9, cached_input_tokens=64)
    span = finished(tracing, exporter)["chat gpt-4o-mini"]

    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes)
    assert json.loads(attrs.pop("gen_ai.input.messages")) == [
        {"role": "user", "parts": [{"type": "text", "content": "What is our refund policy?"}]}]
    assert json.loads(attrs.pop("gen_ai.output.messages")) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "30 days, full refund."}],
         "finish_reason": "stop"}]
    assert json.loads(attrs.pop("gen_ai.system_instructions")) == [
        {"type": "text", "content": "You are helpful."}]
    assert json.loads(attrs.pop("aitrail.request.extra_params")) == {"logit_bias": {"1": 2}}
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stop_sequences": ("###",),
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 9,
        "gen_ai.usage.cache_read.input_tokens": 64,
    }


def test_completion_message_shapes(tracing, exporter):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Bangkok\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "33C"},
        {"role": "user", "parts": [{"type": "text", "content": "already parts"}]},
    ]
    output = [{"role": "assistant", "content": "Hot.", "finish_reason": "length"}]
    with tracing.completion("claude-3-5-sonnet-20241022", provider="anthropic", messages=messages,
                            operation="chat") as c:
        c.response(output)
    span = finished(tracing, exporter)["chat claude-3-5-sonnet-20241022"]
    assert json.loads(span.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"},
                                   {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather",
                                         "arguments": {"city": "Bangkok"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "33C"}]},
        {"role": "user", "parts": [{"type": "text", "content": "already parts"}]},
    ]
    assert json.loads(span.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hot."}], "finish_reason": "length"}]
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)


def test_user_context_on_every_span_inside(tracing, exporter):
    with tracing.user("alice@example.com", roles=["support", "agent"], session_id="s-1", feature="chat"):
        with tracing.span("rag.answer"):
            with tracing.retrieval("q", index="kb"):
                pass
            with tracing.user(None, feature="summary"):  # inherits the rest
                tracing.tracer.start_span("plain otel span").end()
    with tracing.prompt("after"):
        pass
    spans = finished(tracing, exporter)

    expected = {"enduser.id": "alice@example.com", "user.roles": ("support", "agent"),
                "aitrail.user.roles": ("support", "agent"), "session.id": "s-1", "aitrail.feature": "chat"}
    for name in ("rag.answer", "retrieval kb"):
        assert {k: spans[name].attributes[k] for k in USER_ATTRS} == expected
    assert {k: spans["plain otel span"].attributes[k] for k in USER_ATTRS} == {**expected, "aitrail.feature": "summary"}
    assert not set(USER_ATTRS) & set(spans["prompt after"].attributes)
    assert trail.current_user() is None


def test_spans_nest_under_the_root(tracing, exporter):
    with tracing.span("rag.answer") as root:
        with tracing.retrieval("q", index="kb"):
            pass
        with tracing.completion("gpt-4o", messages=[]) as c:
            c.response("a")
    spans = finished(tracing, exporter)
    for name in ("retrieval kb", "chat gpt-4o"):
        assert spans[name].parent.span_id == spans["rag.answer"].context.span_id
        assert spans[name].context.trace_id == spans["rag.answer"].context.trace_id
    assert root.trace_id == trace.format_trace_id(spans["rag.answer"].context.trace_id)
    assert spans["rag.answer"].parent is None


def test_explicit_times(tracing, exporter):
    start = dt.datetime(2025, 11, 18, 14, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    end = start + dt.timedelta(seconds=2)
    with tracing.completion("gpt-4o", messages=[], start_time=start, end_time=end):
        pass
    span = finished(tracing, exporter)["chat gpt-4o"]
    assert span.start_time == 1763451000_123456000
    assert span.end_time == 1763451002_123456000


def test_feedback_on_a_completion(tracing, exporter):
    with tracing.completion("gpt-4o", messages=[]) as c:
        c.response("answer", response_id="r-9")
    span_id = tracing.feedback(c, -1, "thumbs_down", "wrong policy", response_id="r-9")
    spans = finished(tracing, exporter)
    answered, feedback = spans["chat gpt-4o"], spans["feedback"]

    assert span_id == trace.format_span_id(feedback.context.span_id)
    assert feedback.context.trace_id == answered.context.trace_id
    assert feedback.parent.span_id == answered.context.span_id
    assert [link.context.span_id for link in feedback.links] == [answered.context.span_id]
    assert dict(feedback.attributes) == {
        "aitrail.feedback.score": -1.0,
        "aitrail.feedback.label": "thumbs_down",
        "aitrail.feedback.comment": "wrong policy",
        "aitrail.feedback.trace_id": trace.format_trace_id(answered.context.trace_id),
        "aitrail.feedback.span_id": trace.format_span_id(answered.context.span_id),
        "gen_ai.response.id": "r-9",
    }
    assert not feedback.events  # an evaluation event would become a second aitrail record


@pytest.mark.parametrize("form", ["hex", "int", "traceparent"])
def test_feedback_by_trace_id_joins_that_trace(tracing, exporter, form):
    with tracing.span("rag.answer") as root:
        pass
    trace_id = root.span_context.trace_id
    target = {
        "hex": root.trace_id,
        "int": trace_id,
        "traceparent": f"00-{root.trace_id}-{root.span_id}-01",
    }[form]
    with tracing.span("unrelated request"):  # feedback does not nest under whatever is current
        tracing.feedback(target, 1.0, "thumbs_up")
    feedback = finished(tracing, exporter)["feedback"]
    assert feedback.context.trace_id == trace_id
    assert feedback.attributes["aitrail.feedback.trace_id"] == root.trace_id
    if form == "traceparent":
        assert feedback.parent.span_id == root.span_context.span_id
    else:
        assert feedback.parent is None
        assert "aitrail.feedback.span_id" not in feedback.attributes


def test_feedback_on_nonsense_is_logged_not_raised(tracing, exporter, caplog):
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        assert tracing.feedback("not-a-trace", 1.0) is None
        assert tracing.feedback(object(), 1.0) is None
    assert "feedback" not in finished(tracing, exporter)
    assert len([r for r in caplog.records if r.name == "aitrail.sdk"]) == 2


# --- never raise into the host ---------------------------------------------------------------------

class HostError(Exception):
    pass


def test_host_exception_propagates_and_marks_the_span(tracing, exporter):
    with pytest.raises(HostError, match="provider down") as raised:
        with tracing.span("rag.answer"):
            with tracing.completion("gpt-4o", messages=[{"role": "user", "content": "hi"}]):
                raise HostError("provider down")
    assert type(raised.value) is HostError
    spans = finished(tracing, exporter)
    for name in ("chat gpt-4o", "rag.answer"):
        span = spans[name]
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "HostError"
        assert [e.name for e in span.events] == ["exception"]
    assert trace.get_current_span() is trace.INVALID_SPAN  # context restored


def test_internal_failure_is_logged_and_swallowed(tracing, exporter, caplog):
    after = []
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        with tracing.prompt("t", version="1", variables={"when": dt.date(2025, 1, 2), "obj": object()}) as p:
            p.rendered(["fine"])
            after.append("body ran")
        with tracing.retrieval("q", index="kb") as r:
            r.add_document("d1", score="not a number")  # the SDK fails converting it
            r.add_document("d2", score=0.4)
        after.append("host continued")
    assert after == ["body ran", "host continued"]
    spans = finished(tracing, exporter)
    assert "aitrail.prompt.template_variables" not in spans["prompt t"].attributes
    assert spans["prompt t"].attributes["aitrail.prompt.template_id"] == "t"
    assert spans["prompt t"].status.status_code is StatusCode.UNSET
    assert [d["doc_id"] for d in json.loads(spans["retrieval kb"].attributes["aitrail.retrieval.documents"])] == ["d2"]
    messages = [r.getMessage() for r in caplog.records if r.name == "aitrail.sdk"]
    assert any("prompt template variables" in m for m in messages)
    assert any("add_document" in m for m in messages)


def test_json_failure_everywhere_is_swallowed(tracing, exporter, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("json is broken")

    monkeypatch.setattr(json, "dumps", broken)
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        with tracing.completion("gpt-4o", messages=[{"role": "user", "content": "hi"}]) as c:
            c.response("hello", input_tokens=3, output_tokens=1)
        with tracing.retrieval("q", index="kb") as r:
            r.add_document("d", content="x")
        tracing.feedback(c, 1.0)
    monkeypatch.undo()
    spans = finished(tracing, exporter)
    completion = spans["chat gpt-4o"]
    assert completion.attributes["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.input.messages" not in completion.attributes
    assert "gen_ai.output.messages" not in completion.attributes
    assert "aitrail.retrieval.documents" not in spans["retrieval kb"].attributes
    assert "feedback" in spans
    assert any("json" in r.getMessage().lower() for r in caplog.records if r.name == "aitrail.sdk")


def test_broken_tracer_does_not_break_the_host(tracing, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(tracing.tracer, "start_span", broken)
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        with tracing.completion("gpt-4o", messages=[]) as c:
            c.response("still fine")
            assert c.trace_id is None
        with pytest.raises(HostError):
            with tracing.retrieval("q", index="kb") as r:
                r.add_document("d", content="x")
                raise HostError("mine")
        tracing.feedback("0af7651916cd43dd8448eb211c80319c", 1.0)
    assert any("starting span" in r.getMessage() for r in caplog.records)


def test_configuration_failure_gives_a_silent_instance(monkeypatch, caplog):
    monkeypatch.setattr(_tracing, "TracerProvider", None)  # calling it raises TypeError
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        instance = trail.configure("svc", exporter=InMemorySpanExporter(), set_global=False)
    with instance.completion("gpt-4o", messages=[]) as c:
        c.response("x")
    assert instance.force_flush()
    instance.shutdown()
    assert any("configuration failed" in r.getMessage() for r in caplog.records)


def test_bad_times_fall_back_to_now(tracing, exporter, caplog):
    with caplog.at_level(logging.WARNING, logger="aitrail.sdk"):
        with tracing.span("timed", start_time="yesterday", end_time=1.5):
            pass
    span = finished(tracing, exporter)["timed"]
    assert span.start_time <= span.end_time
    assert len([r for r in caplog.records if "reading the time" in r.getMessage()]) == 2


def test_sdk_installs_no_log_handlers():
    assert logging.getLogger("aitrail.sdk").handlers == []


# --- configuration ---------------------------------------------------------------------------------

def _exporter_headers(exporter) -> dict[str, str]:
    client = getattr(exporter, "_client", exporter)
    return {k.lower(): v for k, v in dict(client._headers).items()}


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "AITRAIL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_otel_environment_variables_are_honoured(clean_env):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    clean_env.setenv("OTEL_SERVICE_NAME", "env-svc")
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,team=ml")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-scope=acme%20corp")
    clean_env.setenv("AITRAIL_API_KEY", "env-key")
    instance = trail.configure(set_global=False)
    try:
        assert isinstance(instance.exporter, OTLPSpanExporter)
        resource = instance.provider.resource.attributes
        assert resource["service.name"] == "env-svc"
        assert resource["deployment.environment.name"] == "staging"
        assert resource["team"] == "ml"
        assert instance.endpoint == "http://collector:4318/v1/traces"
        assert instance.exporter._endpoint == "http://collector:4318/v1/traces"
        headers = _exporter_headers(instance.exporter)
        assert headers["authorization"] == "Bearer env-key"
        assert headers["x-scope"] == "acme corp"
        assert instance.headers == {"x-scope": "acme corp", "authorization": "Bearer env-key"}
        assert "env-key" not in repr(instance)
    finally:
        instance.shutdown()


def test_explicit_arguments_win(clean_env):
    clean_env.setenv("OTEL_SERVICE_NAME", "env-svc")
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/custom/traces")
    clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20otel-key,x-a=1")
    clean_env.setenv("AITRAIL_API_KEY", "env-key")
    instance = trail.configure("arg-svc", "http://127.0.0.1:4318", "arg-key", environment="prod",
                               headers={"X-B": "2"}, set_global=False)
    try:
        resource = instance.provider.resource.attributes
        assert resource["service.name"] == "arg-svc"
        assert resource["deployment.environment.name"] == "prod"
        assert instance.exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
        headers = _exporter_headers(instance.exporter)
        assert headers["authorization"] == "Bearer arg-key"
        assert headers["x-a"] == "1" and headers["x-b"] == "2"
    finally:
        instance.shutdown()


def test_traces_endpoint_variable_is_used_as_is_and_otel_auth_beats_aitrail_key(clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://ingest.example.com/otlp/v1/traces")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%20otel-key")
    clean_env.setenv("AITRAIL_API_KEY", "env-key")
    instance = trail.configure("svc", set_global=False)
    try:
        assert instance.exporter._endpoint == "https://ingest.example.com/otlp/v1/traces"
        assert _exporter_headers(instance.exporter)["authorization"] == "Bearer otel-key"
    finally:
        instance.shutdown()


def test_defaults_and_endpoint_with_signal_path(clean_env):
    default = trail.configure("svc", set_global=False)
    given = trail.configure("svc", "http://h:4318/v1/traces", set_global=False)
    try:
        assert default.endpoint == "http://localhost:4318/v1/traces"
        assert "authorization" not in default.headers
        assert given.endpoint == "http://h:4318/v1/traces"
    finally:
        default.shutdown()
        given.shutdown()


def test_grpc_protocol(clean_env):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    instance = trail.configure("svc", "http://127.0.0.1:4317", "k", protocol="grpc", set_global=False)
    try:
        assert instance.protocol == "grpc"
        assert instance.endpoint == "http://127.0.0.1:4317"
        assert ("authorization", "Bearer k") in tuple(instance.exporter._headers)
    finally:
        instance.shutdown()


def test_module_level_helpers_use_the_global_instance(exporter, monkeypatch):
    # Keep OpenTelemetry's process-wide provider untouched for the rest of the test session.
    installed = []
    monkeypatch.setattr(_tracing, "_set_otel_global", installed.append)
    monkeypatch.setattr(_tracing, "_global", None)
    instance = trail.configure("global-svc", exporter=exporter)
    assert trail.get_tracing() is instance and installed == [instance.provider]
    with trail.user("bob@example.com"):
        with trail.retrieval("q", index="kb") as r:
            r.add_document("d", score=1.0)
        with trail.prompt("p", version="1"):
            pass
        with trail.completion("gpt-4o-mini", messages=["hi"]) as c:
            c.response("hello")
        trail.feedback(c, 1.0, "thumbs_up")
    assert trail.force_flush()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["chat gpt-4o-mini", "feedback", "prompt p", "retrieval kb"]
    assert all(s.attributes["enduser.id"] == "bob@example.com" for s in exporter.get_finished_spans())
    assert all(s.resource.attributes["service.name"] == "global-svc" for s in exporter.get_finished_spans())
    trail.shutdown()


def test_unconfigured_helpers_are_harmless(monkeypatch):
    monkeypatch.setattr(_tracing, "_global", None)
    with trail.user("x"):
        with trail.completion("gpt-4o", messages=[]) as c:
            c.response("y")
    trail.feedback(c, 1.0)
    assert trail.force_flush()
    trail.shutdown()


def test_reproducible_ids():
    def run() -> list[tuple[int, int]]:
        exporter = InMemorySpanExporter()
        instance = trail.configure("svc", exporter=exporter, set_global=False,
                                   id_generator=trail.AitrailIdGenerator(seed=42))
        with instance.span("a"):
            with instance.span("b"):
                pass
        instance.force_flush()
        ids = [(s.context.trace_id, s.context.span_id) for s in exporter.get_finished_spans()]
        instance.shutdown()
        return ids

    assert run() == run()


# --- import footprint ------------------------------------------------------------------------------

def test_sdk_imports_with_opentelemetry_only():
    """aitrail.sdk and aitrail.demo import with server packages and modules unavailable."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = ("pydantic", "pydantic_settings", "fastapi", "uvicorn", "aiokafka", "opensearchpy",
                   "duckdb", "cryptography", "orjson", "dateparser", "aitrail.store", "aitrail.bus",
                   "aitrail.integrity", "aitrail.collector", "aitrail.schemas", "aitrail.query_api",
                   "aitrail.settings", "aitrail.cli", "aitrail.errors", "aitrail.otlp")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import aitrail.sdk, aitrail.demo
        loaded = sorted(m for m in sys.modules if m == "aitrail" or m.startswith("aitrail."))
        print(",".join(loaded))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.strip().split(","))
    assert loaded <= {"aitrail", "aitrail.demo", "aitrail.sdk"} | {m for m in loaded if m.startswith("aitrail.sdk.")}


# --- demo traffic ----------------------------------------------------------------------------------

BANGKOK = dt.timezone(dt.timedelta(hours=7))
NOW = dt.datetime(2025, 11, 26, 3, 0, tzinfo=dt.UTC)  # Wednesday 10:00 in Bangkok


def _demo(seed: int = 7, now: dt.datetime = NOW, traces: int = 60):
    from aitrail.demo import send_sample_traffic

    exporter = InMemorySpanExporter()
    summary = send_sample_traffic("http://127.0.0.1:9", "k", traces=traces, seed=seed, now=now,
                                  exporter=exporter)
    return summary, exporter.get_finished_spans()


def kind(span) -> str:
    name = span.name.split(" ")[0]
    return {"chat": "completion"}.get(name, name)


def _by_trace(spans):
    traces: dict[int, list] = {}
    for span in spans:
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


def test_demo_is_deterministic():
    first, spans_a = _demo()
    second, spans_b = _demo()
    assert first == second
    assert first.trace_ids == second.trace_ids and len(set(first.trace_ids)) == 60
    questions = lambda spans: [s.attributes.get("aitrail.retrieval.query") for s in spans]
    assert questions(spans_a) == questions(spans_b)
    assert [(s.name, s.start_time, s.end_time) for s in spans_a] == [(s.name, s.start_time, s.end_time) for s in spans_b]
    other, _ = _demo(seed=8)
    assert other.trace_ids != first.trace_ids


def test_demo_traffic_shape():
    summary, spans = _demo()
    traces = _by_trace(spans)
    assert summary.traces == len(traces) == 60
    assert summary.spans == len(spans)
    assert summary.services == ("hr-assistant", "sales-copilot", "support-bot")
    assert {s.resource.attributes["service.name"] for s in spans} == set(summary.services)
    for members in traces.values():
        (root,) = [s for s in members if s.name == "rag.answer"]
        assert root.parent is None
        kinds = Counter(kind(s) for s in members if s is not root)
        assert kinds["retrieval"] == kinds["prompt"] == kinds["completion"] == 1
        for span in members:
            if kind(span) != "feedback":
                assert span.parent is None or span.parent.span_id == root.context.span_id
                assert root.start_time <= span.start_time <= span.end_time <= root.end_time
            assert "@" in span.attributes["enduser.id"]
        retrieval = next(s for s in members if kind(s) == "retrieval")
        docs = json.loads(retrieval.attributes["aitrail.retrieval.documents"])
        assert 2 <= len(docs) <= 4 and all(len(d["content_sha256"]) == 64 and d["acl_tags"] for d in docs)
    newest = max(s.end_time for s in spans)
    oldest = min(s.start_time for s in spans)
    now_ns = int(NOW.timestamp()) * 10**9
    assert newest <= now_ns and oldest >= now_ns - 8 * 86_400 * 10**9
    models = {s.attributes.get("gen_ai.request.model") for s in spans} - {None}
    assert models == {"gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-20241022", "gemini-2.5-flash",
                      "mistral-large-2411", "northwind-llm-2"}
    tags = {t for s in spans for d in json.loads(s.attributes.get("aitrail.retrieval.documents", "[]"))
            for t in d["acl_tags"]}
    assert {"public", "hr-only", "board-only"} <= tags
    prompts = [s for s in spans if kind(s) == "prompt"]
    assert all(s.attributes["aitrail.prompt.template_version"] and
               json.loads(s.attributes["aitrail.prompt.template_variables"])["question"] for s in prompts)


def test_demo_has_the_refund_question_last_tuesday_1430_bangkok():
    summary, spans = _demo()
    expected = dt.datetime(2025, 11, 25, 14, 30, tzinfo=BANGKOK)  # NOW is a Wednesday
    assert summary.example_question == "What is our refund policy for damaged items?"
    assert summary.example_time == expected
    root = next(s for s in spans if trace.format_trace_id(s.context.trace_id) == summary.example_trace_id
                and s.name == "rag.answer")
    assert root.start_time == int(expected.timestamp()) * 10**9
    completion = next(s for s in _by_trace(spans)[root.context.trace_id]
                      if kind(s) == "completion")
    assert json.loads(completion.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "What is our refund policy for damaged items?"}]}]
    assert "[refund-policy]" in json.loads(completion.attributes["gen_ai.system_instructions"])[0]["content"]
    assert "30 days" in completion.attributes["gen_ai.output.messages"]


def test_demo_last_tuesday_on_a_tuesday_is_a_week_ago():
    tuesday_noon = dt.datetime(2025, 11, 25, 5, 0, tzinfo=dt.UTC)  # Tuesday 12:00 Bangkok
    summary, _ = _demo(now=tuesday_noon, traces=3)
    assert summary.example_time == dt.datetime(2025, 11, 18, 14, 30, tzinfo=BANGKOK)
    assert summary.traces == 3


def test_demo_has_a_failed_call_and_four_languages():
    summary, spans = _demo()
    failed = [s for s in spans if s.status.status_code is StatusCode.ERROR
              and kind(s) == "completion"]
    assert len(failed) == 1
    assert failed[0].attributes["error.type"] == "ServiceUnavailableError"
    assert "gen_ai.output.messages" not in failed[0].attributes
    assert trace.format_trace_id(failed[0].context.trace_id) == summary.failed_trace_id

    def script(text: str) -> str:
        if any("\u0e00" <= ch <= "\u0e7f" for ch in text):
            return "th"
        if any("\u3040" <= ch <= "\u30ff" for ch in text):
            return "ja"
        if any("\u4e00" <= ch <= "\u9fff" for ch in text):
            return "zh"
        return "en"

    queries = [s.attributes["aitrail.retrieval.query"] for s in spans if "aitrail.retrieval.query" in s.attributes]
    assert set(map(script, queries)) == {"en", "th", "ja", "zh"}
    assert summary.languages == ("en", "ja", "th", "zh")


def test_demo_leaves_the_injected_exporter_open_and_the_global_provider_alone():
    before = trace.get_tracer_provider()
    from aitrail.demo import send_sample_traffic

    exporter = InMemorySpanExporter()
    send_sample_traffic(None, None, traces=2, now=NOW, exporter=exporter)
    send_sample_traffic(None, None, traces=2, now=NOW + dt.timedelta(days=1), exporter=exporter)
    assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 4
    assert trace.get_tracer_provider() is before
