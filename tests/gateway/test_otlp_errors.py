"""The OTLP receivers' failures as the OTLP specification asks: `google.rpc.Status` bodies in
the request's encoding, Retry-After / RetryInfo on the retryable ones, unexpected errors
answered as retryable, and real OpenTelemetry exporters retrying until the server recovers.

The receivers run on 127.0.0.1 (uvicorn and grpc.aio, as `aitrail serve` runs them) with an
ingest callable the test scripts: fail the next calls with given errors, then accept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from aitrail.auth import Authenticator
from aitrail.bus.base import Signal
from aitrail.embedded import listen, serve_app
from aitrail.errors import BadRequest, ConfigError, InvalidInput, Unavailable
from aitrail.gateway.grpc import LOGS_SERVICE, TRACE_SERVICE, otlp_grpc_server
from aitrail.gateway.http import otlp_http_app
from aitrail.gateway.ingest import IngestAuth
from aitrail.gateway.status import RETRY_INFO_TRAILER, STATUS_DETAILS_TRAILER, UNEXPECTED
from aitrail.store.base import Principal, Role

PROTOBUF, JSON = "application/x-protobuf", "application/json"
MAX_BODY = 64 * 1024
RETRY_AFTER_S = 1  # short, so the exporters' waits stay short; the default is 5
INGEST_KEY, AUDITOR_KEY, STORE_DOWN_KEY = "atk_ingest_secret", "atk_auditor_secret", "atk_down_secret"

# google.rpc.Code values
INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, UNAUTHENTICATED = 3, 7, 8, 14, 16


class Throttled(Unavailable):
    """What a rate limit raises: retryable, and 429 rather than 503."""

    status = 429
    code = "throttled"


class ScriptedIngest:
    """Raises the queued errors one call each, then accepts."""

    def __init__(self) -> None:
        self.failures: deque[BaseException] = deque()
        self.calls = 0
        self.accepted: list[tuple[Signal, object, Principal]] = []

    def fail_next(self, *errors: BaseException) -> None:
        self.failures.extend(errors)

    def reset(self) -> None:
        self.failures.clear()
        self.calls = 0
        self.accepted.clear()

    async def __call__(self, signal, request, principal) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.popleft()
        self.accepted.append((signal, request, principal))


def lookup_key(key: str) -> Principal | None:
    if key == STORE_DOWN_KEY:
        raise Unavailable("OpenSearch http://127.0.0.1:9 is unreachable (looking up a key)")
    roles = {INGEST_KEY: Role.INGEST, AUDITOR_KEY: Role.AUDITOR}
    return Principal(key_id=key, tenant="acme", role=roles[key]) if key in roles else None


class Receivers:
    """Both OTLP receivers in a background thread with their own event loop."""

    def __init__(self) -> None:
        self.ingest = ScriptedIngest()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="otlp-receivers", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        auth = IngestAuth(Authenticator(lookup_key))
        async with contextlib.AsyncExitStack() as stack:
            sock = listen("127.0.0.1", 0)
            app = otlp_http_app(self.ingest, auth, max_body_bytes=MAX_BODY, retry_after_s=RETRY_AFTER_S)
            await serve_app(app, sock, stack)
            server, grpc_port = otlp_grpc_server(
                self.ingest, auth, host="127.0.0.1", port=0, max_body_bytes=MAX_BODY, retry_after_s=RETRY_AFTER_S
            )
            await server.start()
            stack.push_async_callback(server.stop, 1)
            self.http = f"http://127.0.0.1:{sock.getsockname()[1]}"
            self.grpc = f"127.0.0.1:{grpc_port}"
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Receivers:
        self._thread.start()
        assert self._ready.wait(30), "the OTLP receivers did not start within 30 s"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the OTLP receivers did not stop within 30 s"


@pytest.fixture(scope="module")
def receivers():
    running = Receivers().start()
    yield running
    running.stop()


@pytest.fixture
def ingest(receivers):
    receivers.ingest.reset()
    yield receivers.ingest
    receivers.ingest.reset()


@pytest.fixture(scope="module")
def channel(receivers):
    with grpc.insecure_channel(receivers.grpc) as opened:
        yield opened


def one_span_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "chat gpt-4o-mini"
    return request


def encoded(request, content_type: str) -> bytes:
    if content_type == PROTOBUF:
        return request.SerializeToString()
    body = json_format.MessageToDict(request)
    for resource in body.get("resourceSpans", []):  # OTLP/JSON writes ids as hex, not base64
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                span["traceId"], span["spanId"] = bytes(range(1, 17)).hex(), bytes(range(1, 9)).hex()
    return json.dumps(body).encode()


def post(receivers, body: bytes, content_type: str, *, key: str | None = INGEST_KEY, path="/v1/traces", **headers):
    headers["Content-Type"] = content_type
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(receivers.http + path, content=body, headers=headers, timeout=30)


def status_of(response: httpx.Response, content_type: str) -> status_pb2.Status:
    """The body as a google.rpc.Status, strictly decoded in the request's encoding."""
    assert response.headers["content-type"] == content_type, response.headers
    status = status_pb2.Status()
    if content_type == JSON:
        json_format.Parse(response.text, status)  # unknown fields would fail: a pure Status
    else:
        status.ParseFromString(response.content)
    return status


def detail(status: status_pb2.Status, kind):
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    if not found:
        return None
    assert len(found) == 1, status
    unpacked = kind()
    found[0].Unpack(unpacked)
    return unpacked


def assert_retry_after(response: httpx.Response, status: status_pb2.Status) -> None:
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    retry = detail(status, error_details_pb2.RetryInfo)
    assert retry is not None, status
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (RETRY_AFTER_S, 0)


def assert_not_retryable(response: httpx.Response, status: status_pb2.Status) -> None:
    assert "retry-after" not in response.headers
    assert detail(status, error_details_pb2.RetryInfo) is None


ENCODINGS = pytest.mark.parametrize("content_type", [PROTOBUF, JSON])


# ---------------------------------------------------------------- OTLP/HTTP


@ENCODINGS
def test_success_answers_in_the_request_encoding(receivers, ingest, content_type):
    response = post(receivers, encoded(one_span_request(), content_type), content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert ingest.calls == 1 and ingest.accepted[0][1].resource_spans[0].scope_spans[0].spans[0].name == "chat gpt-4o-mini"


@ENCODINGS
def test_partial_success_is_unchanged(receivers, ingest, content_type):
    request = one_span_request()
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.trace_id, bad.span_id = b"\x01" * 16, b"\x02" * 3
    body = request.SerializeToString() if content_type == PROTOBUF else json.dumps({
        "resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "01" * 16, "spanId": "02" * 8, "name": "ok"},
            {"traceId": "01" * 16, "spanId": "0202", "name": "short span id"},
        ]}]}]}).encode()
    response = post(receivers, body, content_type)
    assert response.status_code == 200, response.text
    answer = ExportTraceServiceResponse()
    if content_type == JSON:
        json_format.Parse(response.text, answer)
    else:
        answer.ParseFromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span_id 8 bytes" in answer.partial_success.error_message
    assert ingest.calls == 1


@ENCODINGS
@pytest.mark.parametrize(
    ("case", "http_status", "code", "message"),
    [
        ("no key", 401, UNAUTHENTICATED, "missing credentials"),
        ("unknown key", 401, UNAUTHENTICATED, "unknown or revoked key"),
        ("auditor key", 403, PERMISSION_DENIED, "needs role 'ingest'"),
        ("undecodable", 400, INVALID_ARGUMENT, "body is not a valid OTLP"),
        ("bad gzip", 400, INVALID_ARGUMENT, "not valid gzip"),
        ("invalid input", 400, INVALID_ARGUMENT, "start time is after 2262"),
        ("too large", 413, RESOURCE_EXHAUSTED, f"the limit is {MAX_BODY} bytes"),
    ],
)
def test_client_errors_are_status_bodies_without_retry(receivers, ingest, content_type, case, http_status, code, message):
    body, kwargs = encoded(one_span_request(), content_type), {}
    if case == "no key":
        kwargs["key"] = None
    elif case == "unknown key":
        kwargs["key"] = "atk_nobody_nothing"
    elif case == "auditor key":
        kwargs["key"] = AUDITOR_KEY
    elif case == "undecodable":
        body = b"\x0a\x05hello-not-otlp\xff\xff" if content_type == PROTOBUF else b"{not json"
    elif case == "bad gzip":
        kwargs["Content-Encoding"] = "gzip"
    elif case == "invalid input":
        ingest.fail_next(InvalidInput("start time is after 2262; the store cannot hold it"))
    elif case == "too large":
        body = b"\x00" * (MAX_BODY + 1)
    response = post(receivers, body, content_type, **kwargs)
    assert response.status_code == http_status, response.text
    status = status_of(response, content_type)
    assert status.code == code and message in status.message, status
    assert_not_retryable(response, status)
    if http_status == 400:
        bad = detail(status, error_details_pb2.BadRequest)
        assert bad is not None and message in bad.field_violations[0].description
    assert ingest.accepted == []


def test_unknown_content_type_answers_415_as_protobuf(receivers, ingest):
    response = post(receivers, b"hello", "text/plain")
    assert response.status_code == 415
    status = status_of(response, PROTOBUF)
    assert status.code == INVALID_ARGUMENT and "unsupported Content-Type 'text/plain'" in status.message
    assert_not_retryable(response, status)
    assert ingest.calls == 0


@ENCODINGS
@pytest.mark.parametrize(
    ("case", "http_status", "code", "message"),
    [
        ("bus down", 503, UNAVAILABLE, "Kafka did not acknowledge the data"),
        ("store down at auth", 503, UNAVAILABLE, "OpenSearch http://127.0.0.1:9 is unreachable"),
        ("throttled", 429, RESOURCE_EXHAUSTED, "over the tenant's ingest rate"),
        ("server-side error that is not retriable", 503, UNAVAILABLE, "prices file is unreadable"),
        ("unexpected exception", 503, UNAVAILABLE, UNEXPECTED),
    ],
)
def test_server_side_failures_are_retryable(receivers, ingest, caplog, content_type, case, http_status, code, message):
    key = INGEST_KEY
    if case == "bus down":
        ingest.fail_next(Unavailable("Kafka did not acknowledge the data: KafkaTimeoutError"))
    elif case == "store down at auth":
        key = STORE_DOWN_KEY
    elif case == "throttled":
        ingest.fail_next(Throttled("over the tenant's ingest rate; slow down"))
    elif case == "server-side error that is not retriable":
        ingest.fail_next(ConfigError("prices file is unreadable"))
    else:
        ingest.fail_next(RuntimeError("boom: a bug in the ingest path"))
    with caplog.at_level(logging.ERROR, logger="aitrail.gateway.status"):
        response = post(receivers, encoded(one_span_request(), content_type), content_type, key=key)
    assert response.status_code == http_status, response.text
    status = status_of(response, content_type)
    assert status.code == code and message in status.message, status
    assert_retry_after(response, status)
    if case == "unexpected exception":
        assert "boom" not in response.text and b"boom" not in response.content  # no internals to clients
        logged = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
        assert logged and "OTLP/HTTP export failed unexpectedly" in logged[0].getMessage()


@ENCODINGS
def test_logs_endpoint_answers_the_same_way(receivers, ingest, content_type):
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
    body = request.SerializeToString() if content_type == PROTOBUF else json_format.MessageToJson(request).encode()
    ingest.fail_next(RuntimeError("boom"))
    response = post(receivers, body, content_type, path="/v1/logs")
    assert response.status_code == 503
    status = status_of(response, content_type)
    assert status.code == UNAVAILABLE and status.message == UNEXPECTED
    assert_retry_after(response, status)
    again = post(receivers, body, content_type, path="/v1/logs")
    assert again.status_code == 200 and again.headers["content-type"] == content_type
    assert [signal for signal, _, _ in ingest.accepted] == [Signal.LOGS]


# ---------------------------------------------------------------- OTLP/gRPC


def export_raw(channel, body: bytes, *, key: str | None = INGEST_KEY, service=TRACE_SERVICE):
    call = channel.unary_unary(f"/{service}/Export")
    metadata = [("authorization", f"Bearer {key}")] if key is not None else []
    return call(body, metadata=metadata, timeout=30)


def grpc_failure(channel, body: bytes, **kwargs) -> tuple[grpc.RpcError, status_pb2.Status | None, dict]:
    with pytest.raises(grpc.RpcError) as raised:
        export_raw(channel, body, **kwargs)
    error = raised.value
    trailers = dict(error.trailing_metadata() or ())
    status = None
    if STATUS_DETAILS_TRAILER in trailers:
        status = status_pb2.Status.FromString(trailers[STATUS_DETAILS_TRAILER])
        # the details must agree with the status line, as grpcio-status checks
        assert status.code == error.code().value[0] and status.message == error.details()
    return error, status, trailers


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("no key", grpc.StatusCode.UNAUTHENTICATED, "missing credentials"),
        ("unknown key", grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked key"),
        ("auditor key", grpc.StatusCode.PERMISSION_DENIED, "needs role 'ingest'"),
        ("undecodable", grpc.StatusCode.INVALID_ARGUMENT, "body is not a valid OTLP protobuf trace export request"),
        ("invalid input", grpc.StatusCode.INVALID_ARGUMENT, "start time is after 2262"),
    ],
)
def test_grpc_client_errors_carry_no_retry_info(channel, ingest, case, code, message):
    body, kwargs = one_span_request().SerializeToString(), {}
    if case == "no key":
        kwargs["key"] = None
    elif case == "unknown key":
        kwargs["key"] = "atk_nobody_nothing"
    elif case == "auditor key":
        kwargs["key"] = AUDITOR_KEY
    elif case == "undecodable":
        body = b"\x0a\x05hello-not-otlp\xff\xff"
    else:
        ingest.fail_next(InvalidInput("start time is after 2262; the store cannot hold it"))
    error, status, trailers = grpc_failure(channel, body, **kwargs)
    assert error.code() == code and message in error.details()
    assert status is not None and detail(status, error_details_pb2.RetryInfo) is None
    assert RETRY_INFO_TRAILER not in trailers
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = detail(status, error_details_pb2.BadRequest)
        assert bad is not None and message in bad.field_violations[0].description
    assert ingest.accepted == []


def test_grpc_too_large_is_resource_exhausted_without_retry_info(channel, ingest):
    request = one_span_request()
    request.resource_spans[0].scope_spans[0].spans[0].name = "x" * (MAX_BODY + 1)
    error, status, trailers = grpc_failure(channel, request.SerializeToString())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc's own receive limit
    assert RETRY_INFO_TRAILER not in trailers
    assert status is None or detail(status, error_details_pb2.RetryInfo) is None
    assert ingest.calls == 0


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("bus down", grpc.StatusCode.UNAVAILABLE, "Kafka did not acknowledge the data"),
        ("store down at auth", grpc.StatusCode.UNAVAILABLE, "OpenSearch http://127.0.0.1:9 is unreachable"),
        ("throttled", grpc.StatusCode.RESOURCE_EXHAUSTED, "over the tenant's ingest rate"),
        ("server-side error that is not retriable", grpc.StatusCode.UNAVAILABLE, "prices file is unreadable"),
        ("unexpected exception", grpc.StatusCode.UNAVAILABLE, UNEXPECTED),
        ("unexpected exception on logs", grpc.StatusCode.UNAVAILABLE, UNEXPECTED),
    ],
)
def test_grpc_server_side_failures_carry_retry_info(channel, ingest, caplog, case, code, message):
    key, service, body = INGEST_KEY, TRACE_SERVICE, one_span_request().SerializeToString()
    if case == "bus down":
        ingest.fail_next(Unavailable("Kafka did not acknowledge the data: KafkaTimeoutError"))
    elif case == "store down at auth":
        key = STORE_DOWN_KEY
    elif case == "throttled":
        ingest.fail_next(Throttled("over the tenant's ingest rate; slow down"))
    elif case == "server-side error that is not retriable":
        ingest.fail_next(ConfigError("prices file is unreadable"))
    else:
        ingest.fail_next(RuntimeError("boom: a bug in the ingest path"))
    if case == "unexpected exception on logs":
        logs = ExportLogsServiceRequest()
        logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
        service, body = LOGS_SERVICE, logs.SerializeToString()
    with caplog.at_level(logging.ERROR, logger="aitrail.gateway.status"):
        error, status, trailers = grpc_failure(channel, body, key=key, service=service)
    assert error.code() == code and message in error.details()
    retry = detail(status, error_details_pb2.RetryInfo)
    assert retry is not None and (retry.retry_delay.seconds, retry.retry_delay.nanos) == (RETRY_AFTER_S, 0)
    # the trailer the Python OpenTelemetry exporter reads carries the same delay
    assert error_details_pb2.RetryInfo.FromString(trailers[RETRY_INFO_TRAILER]).retry_delay.seconds == RETRY_AFTER_S
    if case.startswith("unexpected"):
        assert "boom" not in error.details()
        assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def test_grpc_partial_success_is_unchanged(channel, ingest):
    request = one_span_request()
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.trace_id, bad.span_id = b"\x01" * 16, b"\x02" * 3
    answer = ExportTraceServiceResponse.FromString(export_raw(channel, request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 1
    assert len(ingest.accepted) == 1


# ---------------------------------------------------------------- real exporters


def finished_span():
    provider = TracerProvider()
    span = provider.get_tracer("test").start_span("chat gpt-4o-mini")
    span.end()
    return span


def exporter_for(receivers, transport: str):
    headers = {"authorization": f"Bearer {INGEST_KEY}"}
    if transport == "http":
        return HttpExporter(endpoint=receivers.http + "/v1/traces", headers=headers, timeout=30)
    return GrpcExporter(endpoint=receivers.grpc, insecure=True, headers=headers, timeout=30)


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    "failures",
    [
        pytest.param(lambda: [Unavailable("Kafka did not acknowledge the data")] * 2, id="bus down twice"),
        pytest.param(lambda: [RuntimeError("boom")], id="unexpected exception"),
    ],
)
def test_a_real_exporter_retries_and_succeeds_when_the_server_recovers(receivers, ingest, transport, failures):
    span = finished_span()
    errors = failures()
    ingest.fail_next(*errors)
    exporter = exporter_for(receivers, transport)
    try:
        assert exporter.export([span]) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert ingest.calls == len(errors) + 1  # it retried exactly until the server took it
    [(signal, request, principal)] = ingest.accepted
    exported = request.resource_spans[0].scope_spans[0].spans[0]
    assert (signal, principal.tenant, exported.name) == (Signal.TRACES, "acme", "chat gpt-4o-mini")
    assert exported.span_id == span.get_span_context().span_id.to_bytes(8, "big")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_real_exporter_does_not_retry_bad_data(receivers, ingest, transport):
    ingest.fail_next(BadRequest("span 1 has no name"))
    exporter = exporter_for(receivers, transport)
    try:
        assert exporter.export([finished_span()]) == SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert ingest.calls == 1 and ingest.accepted == []
