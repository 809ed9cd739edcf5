"""OTLP/gRPC receiver: the trace and logs services on one `grpc.aio` server. Status codes as
OTLP asks (`gateway.status`): UNAUTHENTICATED / PERMISSION_DENIED for keys, INVALID_ARGUMENT
for bad payloads, RESOURCE_EXHAUSTED without RetryInfo above the size limit, UNAVAILABLE with
a `google.rpc.RetryInfo` whenever the data could not be made safe, unexpected errors included
(never UNKNOWN or INTERNAL, which exporters drop). The details travel as a `google.rpc.Status`
in `grpc-status-details-bin`."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from aitrail.bus.base import Signal
from aitrail.otlp import Checked, count_log_records, decode_logs, decode_traces, drop_invalid_spans

from .ingest import Ingest, IngestAuth, export_response, with_refused
from .status import RETRY_AFTER_S, failure_of, grpc_trailers
from .telemetry import gateway_metrics

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class _Export:
    """One signal's `Export` method. It takes the request as bytes and decodes it itself: left
    to grpc, an undecodable request would answer UNKNOWN instead of INVALID_ARGUMENT."""

    def __init__(self, signal: Signal, ingest: Ingest, auth: IngestAuth, metrics, retry_after_s: int) -> None:
        self._signal, self._ingest, self._auth, self._metrics = signal, ingest, auth, metrics
        self._retry_after_s = retry_after_s
        self._counters = gateway_metrics(metrics)

    async def handle(self, body: bytes, context: grpc.aio.ServicerContext):
        try:
            principal = await self._auth.principal(_authorization(context))
            if self._signal == Signal.TRACES:
                request = decode_traces(body)
                checked = drop_invalid_spans(request)
            else:
                request = decode_logs(body)
                checked = Checked(count_log_records(request), 0, None)
            if checked.accepted:
                checked = with_refused(checked, await self._ingest(self._signal, request, principal))
        except Exception as exc:  # noqa: BLE001 (every failure answers a status; unexpected ones UNAVAILABLE)
            failure = failure_of(exc, retry_after_s=self._retry_after_s, where="OTLP/gRPC export")
            if self._counters is not None:
                self._counters.requests_failed.labels(
                    str(self._signal), str(failure.http_status), str(failure.retry_after_s is not None).lower()
                ).inc()
            await context.abort(failure.grpc_code, failure.message, trailing_metadata=grpc_trailers(failure))
        if self._metrics is not None:
            self._metrics.received(self._signal, principal.tenant, checked.accepted, checked.rejected)
        return export_response(self._signal, checked)


def _service(name: str, export: _Export, response_type) -> grpc.GenericRpcHandler:
    # a bound coroutine method: grpc.aio awaits only what `inspect.iscoroutinefunction` recognises
    handler = grpc.unary_unary_rpc_method_handler(export.handle, response_serializer=response_type.SerializeToString)
    return grpc.method_handlers_generic_handler(name, {"Export": handler})


def otlp_grpc_server(
    ingest: Ingest, auth: IngestAuth, *, host: str, port: int, max_body_bytes: int, metrics=None,
    retry_after_s: int = RETRY_AFTER_S,
) -> tuple[grpc.aio.Server, int]:
    """A started-later server and the port it bound (useful when `port` is 0)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers((
        _service(TRACE_SERVICE, _Export(Signal.TRACES, ingest, auth, metrics, retry_after_s), ExportTraceServiceResponse),
        _service(LOGS_SERVICE, _Export(Signal.LOGS, ingest, auth, metrics, retry_after_s), ExportLogsServiceResponse),
    ))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for OTLP/gRPC on {host}:{port}")
    return server, bound
