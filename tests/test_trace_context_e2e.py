"""Trace context end to end on the embedded server: a real OpenTelemetry SDK exports a root
span carrying `user.id` / `session.id` and a chat span under it that carries neither, root
first or root last (SimpleSpanProcessor: one export request per span, as it ends). The root
is an agent span, or a plain HTTP SERVER span as a web framework makes (no GenAI attribute:
it is kept as a `context` record)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from aitrail.integrity.views import verify_views
from aitrail.store.base import Role
from tests.running import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("serve")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(server):
    return {role: server.store.create_key("acme", role)[0] for role in (Role.INGEST, Role.AUDITOR)}


def get(server, keys, path, **params):
    headers = {"Authorization": f"Bearer {keys[Role.AUDITOR]}"}
    return httpx.get(server.api + path, params=params, headers=headers, timeout=30)


def send(server, keys, *, root_first: bool, question: str, user: str, root: str = "agent") -> tuple[str, str]:
    exporter = OTLPSpanExporter(endpoint=server.otlp_http + "/v1/traces",
                                headers={"authorization": f"Bearer {keys[Role.INGEST]}"})
    provider = TracerProvider(resource=Resource.create({"service.name": "context-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test-instrumentation")
    who = {"user.id": user, "session.id": f"session-{len(user)}-{user[6]}"}
    if root == "http":
        root = tracer.start_span("POST /chat", kind=trace.SpanKind.SERVER, attributes={
            "http.request.method": "POST", "url.path": "/chat", "http.route": "/chat", **who,
        })
    else:
        root = tracer.start_span("invoke_agent support", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support", **who,
        })
    root_span_id = format(root.get_span_context().span_id, "016x")
    if root_first:
        root.end()
    with tracer.start_as_current_span("chat gpt-4o-mini", context=trace.set_span_in_context(root)) as chat:
        chat.set_attributes({
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": question}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant",
                                                   "parts": [{"type": "text", "content": "Tomorrow."}]}]),
        })
        trace_id = format(chat.get_span_context().trace_id, "032x")
    if not root_first:
        root.end()
    provider.shutdown()
    return trace_id, root_span_id


def wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("root", ["agent", "http"], ids=["agent-root", "http-server-root"])
@pytest.mark.parametrize("root_first", [True, False], ids=["root-first", "root-last"])
def test_user_and_session_reach_the_completion(server, keys, root_first, root):
    user = f"carol-{root_first}-{root}@example.com"
    question = f"When does my parcel arrive ({'early' if root_first else 'late'} {root} root)?"
    trace_id, root_span_id = send(server, keys, root_first=root_first, question=question, user=user, root=root)
    # both spans stored
    replay = wait_for(lambda: (r := get(server, keys, f"/v1/traces/{trace_id}").json()).get("records")
                      and len(r["records"]) == 2 and r, "both records of the trace")
    root_view, chat_view = replay["records"]
    assert (root_view["kind"], chat_view["kind"]) == ({"agent": "agent", "http": "context"}[root], "completion")
    pseudonym = root_view["user_pseudonym"]
    assert pseudonym.startswith("u_") and user not in json.dumps(replay)
    resolved = "ingest" if root_first else "query"
    assert chat_view["inherited"] == {
        "user_pseudonym": {"value": pseudonym, "span_id": root_span_id, "resolved": resolved},
        "session_id": {"value": f"session-{len(user)}-{user[6]}", "span_id": root_span_id, "resolved": resolved},
    }
    if root_first:
        assert chat_view["user_pseudonym"] == pseudonym
        assert chat_view["context_from"] == {"user_pseudonym": root_span_id, "session_id": root_span_id}
    else:
        assert "user_pseudonym" not in chat_view and "context_from" not in chat_view

    # the service's own user id finds it, as does the pseudonym
    for asked in (user, pseudonym):
        body = get(server, keys, "/v1/answers", user=asked).json()
        assert [(a["trace_id"], a["question"], a["user"], a["user_from"]) for a in body["data"]] == [
            (trace_id, question, pseudonym, root_span_id)
        ], body
        assert body["count"] == 1
        assert body["data"][0]["integrity"]["status"] != "failed", body
    assert verify_views(server.store) == []
