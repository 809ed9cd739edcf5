"""Embedded mode (`aitrail serve`) answers what the collector refuses instead of acknowledging
it: the sender's answer waits for the collector, so what the normaliser refuses comes back as
400 with a `google.rpc.Status` naming the reason (nothing of the request stored), or, when
only some spans are refused, as OTLP's partial success (200, `rejected_spans`, the reason) with
the rest stored. Nothing refused lands in the dead letters nobody reads.

Refusals used: the normaliser's own (spans starting after 2262, which no store can hold:
it stores the rest and refuses those); the tenant check (a key made before tenant names were
checked, whose tenant cannot name a Merkle log: every message of it is refused); and the
normaliser wrapped to raise for spans carrying `test.refuse`, for a refusal that fails the
whole message (as an unexpected normalisation error does)."""

from __future__ import annotations

import json
import sqlite3
import time

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import aitrail.collector.pipeline as pipeline_module
from aitrail.custody import load_row_key
from aitrail.errors import InvalidInput
from aitrail.gateway.grpc import TRACE_SERVICE
from aitrail.gateway.status import STATUS_DETAILS_TRAILER
from aitrail.store.base import Role
from aitrail.store.keys import hash_key
from tests.running import RunningServer

PROTOBUF, JSON = "application/x-protobuf", "application/json"
REFUSE = "test.refuse"
REASON = "the span carries test.refuse; the normaliser refuses it"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    real = pipeline_module.normalise_traces

    def refusing(traces, tenant, **kwargs):
        for resource_spans in traces.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if any(kv.key == REFUSE for kv in span.attributes):
                        raise InvalidInput(REASON)
        return real(traces, tenant, **kwargs)

    pipeline_module.normalise_traces = refusing
    running = RunningServer(tmp_path_factory.mktemp("serve-refusals")).start()
    try:
        yield running
    finally:
        running.stop()
        pipeline_module.normalise_traces = real


@pytest.fixture(scope="module")
def keys(server):
    ingest, _ = server.store.create_key("acme", Role.INGEST)
    auditor, _ = server.store.create_key("acme", Role.AUDITOR)
    legacy, info = server.store.create_key("acme", Role.INGEST)
    db = sqlite3.connect(server.settings.data_dir / "aitrail.db")
    # As a key made before tenant names were checked could have it, authenticated (its row MAC,
    # aitrail.store.rowmac) when the row key was made for the existing rows.
    mac = load_row_key(server.settings).key_row(
        info.key_id, hash_key(legacy), "acme/../globex", info.role.value, info.created_at, None)
    with db:
        db.execute("UPDATE api_keys SET tenant = ?, mac = ? WHERE key_id = ?", ("acme/../globex", mac, info.key_id))
    db.close()
    return {"ingest": ingest, "auditor": auditor, "legacy": legacy}


AFTER_2262_NS = 2**63 + 10**18  # 2293: OTLP can send it, no store can hold it


def request_of(*spans: tuple[str, bool], after_2262: tuple[str, ...] = ()) -> ExportTraceServiceRequest:
    """(name, refused?) spans, each a chat completion in its own trace; those named in
    `after_2262` start after the last instant the stores hold (the normaliser refuses them)."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    request.resource_spans[0].resource.attributes.add(key="service.name").value.string_value = "refusals"
    now = time.time_ns()
    for index, (name, refused) in enumerate(spans):
        span = scope.spans.add()
        span.trace_id = (now + index).to_bytes(16, "big")
        span.span_id = (index + 1).to_bytes(8, "big")
        span.name, span.start_time_unix_nano, span.end_time_unix_nano = name, now, now + 1000
        span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        span.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini"
        if refused:
            span.attributes.add(key=REFUSE).value.bool_value = True
        if name in after_2262:
            span.start_time_unix_nano, span.end_time_unix_nano = AFTER_2262_NS, AFTER_2262_NS + 1000
    return request


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: ids as hex, not protobuf JSON's base64."""
    data = json_format.MessageToDict(request)
    for resource_spans, original in zip(data["resourceSpans"], request.resource_spans, strict=True):
        for scope_spans, scope in zip(resource_spans["scopeSpans"], original.scope_spans, strict=True):
            for span, span_pb in zip(scope_spans["spans"], scope.spans, strict=True):
                span["traceId"], span["spanId"] = span_pb.trace_id.hex(), span_pb.span_id.hex()
    return json.dumps(data).encode()


def post(server, key: str, request: ExportTraceServiceRequest, content_type: str) -> httpx.Response:
    body = request.SerializeToString() if content_type == PROTOBUF else otlp_json(request)
    return httpx.post(server.otlp_http + "/v1/traces", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})


def parsed(response: httpx.Response, message):
    if response.headers["content-type"] == JSON:
        return json_format.Parse(response.text, message)
    message.ParseFromString(response.content)
    return message


def stored_names(server, keys, request: ExportTraceServiceRequest) -> set[str]:
    names = set()
    for span in request.resource_spans[0].scope_spans[0].spans:
        trace = httpx.get(f"{server.api}/v1/traces/{span.trace_id.hex()}", timeout=30,
                          headers={"Authorization": f"Bearer {keys['auditor']}"})
        if trace.status_code == 200:
            names |= {span.name for r in trace.json()["records"] if r["span_id"] == span.span_id.hex()}
        else:
            assert trace.status_code == 404, trace.text
    return names


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_some_spans_refused_is_a_partial_success_and_the_rest_stored(server, keys, content_type):
    dead_before = len(server.store.dead_letters())
    request = request_of(("kept one", False), ("refused", True), ("kept two", False))
    response = post(server, keys["ingest"], request, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    answer = parsed(response, ExportTraceServiceResponse())
    assert answer.partial_success.rejected_spans == 1
    assert answer.partial_success.error_message == f"1 span refused, the rest stored: {REASON}"
    # acknowledged means stored: the two others are there as soon as the answer is
    assert stored_names(server, keys, request) == {"kept one", "kept two"}
    assert len(server.store.dead_letters()) == dead_before


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_every_span_refused_is_400_with_the_reason(server, keys, content_type):
    dead_before = len(server.store.dead_letters())
    request = request_of(("refused a", True), ("refused b", True))
    response = post(server, keys["ingest"], request, content_type)
    assert response.status_code == 400, response.text
    status = parsed(response, status_pb2.Status())
    assert status.code == 3  # INVALID_ARGUMENT
    assert status.message == f"the server cannot store any of these 2 spans: {REASON}"
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad) and bad.field_violations[0].description == status.message
    assert "retry-after" not in response.headers
    assert stored_names(server, keys, request) == set()
    assert len(server.store.dead_letters()) == dead_before


def test_a_tenant_that_cannot_name_a_log_is_400_not_a_dead_letter(server, keys):
    dead_before = len(server.store.dead_letters())
    request = request_of(("from a legacy key", False))
    response = post(server, keys["legacy"], request, PROTOBUF)
    assert response.status_code == 400, response.text
    status = parsed(response, status_pb2.Status())
    assert status.message.startswith("the server cannot store this span: invalid tenant name 'acme/../globex'")
    assert len(server.store.dead_letters()) == dead_before


def test_grpc_answers_the_same(server, keys):
    dead_before = len(server.store.dead_letters())
    with grpc.insecure_channel(server.otlp_grpc) as channel:
        export = channel.unary_unary(f"/{TRACE_SERVICE}/Export")
        metadata = [("authorization", f"Bearer {keys['ingest']}")]
        partial = request_of(("grpc kept", False), ("grpc refused", True))
        answer = ExportTraceServiceResponse.FromString(export(partial.SerializeToString(), metadata=metadata, timeout=30))
        assert answer.partial_success.rejected_spans == 1 and REASON in answer.partial_success.error_message
        assert stored_names(server, keys, partial) == {"grpc kept"}
        with pytest.raises(grpc.RpcError) as raised:
            export(request_of(("grpc refused alone", True)).SerializeToString(), metadata=metadata, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"the server cannot store this span: {REASON}"
    status = status_pb2.Status.FromString(dict(raised.value.trailing_metadata())[STATUS_DETAILS_TRAILER])
    assert status.message == raised.value.details()
    assert len(server.store.dead_letters()) == dead_before


def test_what_is_not_from_a_waiting_sender_still_goes_to_the_dead_letters(server, keys):
    """System records published in-process have no sender to tell: dead-lettered as before."""
    from aitrail.bus.base import BusMessage, Signal

    before = len(server.store.dead_letters())
    poison = BusMessage(signal=Signal.RECORDS, payload=b"not a list of system records", tenant="acme")
    server.call(server.bus.publish([poison]))
    [dead] = server.store.dead_letters()[before:]
    assert "not a list of system records" in dead.reason
    assert dead.headers["tenant"] == "acme"


def test_metrics_count_refused_spans_and_failed_requests(server, keys):
    admin, _ = server.store.create_key("default", Role.ADMIN)  # the operator tenant: collector.default_tenant

    def series() -> dict[str, float]:
        text = httpx.get(server.api + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(("aitrail_otlp_items_rejected_total", "aitrail_otlp_requests_failed_total"))}

    before = series()
    assert post(server, keys["ingest"], request_of(("m kept", False), ("m refused", True)), PROTOBUF).status_code == 200
    assert post(server, keys["ingest"], request_of(("m refused alone", True)), PROTOBUF).status_code == 400
    after = series()
    rejected = 'aitrail_otlp_items_rejected_total{signal="traces"}'
    failed = 'aitrail_otlp_requests_failed_total{retryable="false",signal="traces",status="400"}'
    assert after[rejected] - before.get(rejected, 0) == 1
    assert after[failed] - before.get(failed, 0) == 1


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_a_span_after_2262_is_refused_by_the_real_normaliser_and_the_rest_stored(server, keys, content_type):
    dead_before = len(server.store.dead_letters())
    request = request_of(("on time", False), ("far future", False), ("far future too", False),
                         after_2262=("far future", "far future too"))
    response = post(server, keys["ingest"], request, content_type)
    assert response.status_code == 200, response.text
    answer = parsed(response, ExportTraceServiceResponse())
    assert answer.partial_success.rejected_spans == 2
    message = answer.partial_success.error_message
    assert message.startswith("2 spans refused, the rest stored: ")
    assert "'far future'" in message and "'far future too'" in message and "2262-04-11T23:47:16" in message
    assert stored_names(server, keys, request) == {"on time"}
    assert len(server.store.dead_letters()) == dead_before


def test_only_spans_after_2262_is_400(server, keys):
    dead_before = len(server.store.dead_letters())
    request = request_of(("far future alone", False), after_2262=("far future alone",))
    response = post(server, keys["ingest"], request, PROTOBUF)
    assert response.status_code == 400, response.text
    status = parsed(response, status_pb2.Status())
    assert status.message.startswith("the server cannot store this span: ") and "2262-04-11T23:47:16" in status.message
    assert stored_names(server, keys, request) == set()
    assert len(server.store.dead_letters()) == dead_before
