"""OTLP/gRPC receiver: the trace and logs services on one `grpc.aio` server. Status codes as
OTLP asks: UNAUTHENTICATED / PERMISSION_DENIED for keys, INVALID_ARGUMENT for bad payloads,
RESOURCE_EXHAUSTED above the size limit, UNAVAILABLE (retryable) when the data could not be
made safe."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from aitrail.bus.base import Signal
from aitrail.errors import AitrailError
from aitrail.otlp import count_log_records, drop_invalid_spans

from .ingest import Ingest, IngestAuth

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


async def _abort(context: grpc.aio.ServicerContext, exc: AitrailError) -> None:
    await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, ingest: Ingest, auth: IngestAuth, metrics) -> None:
        self._ingest, self._auth, self._metrics = ingest, auth, metrics

    async def Export(self, request, context):  # noqa: N802 (generated name)
        try:
            principal = self._auth.principal(_authorization(context))
            checked = drop_invalid_spans(request)
            if checked.accepted:
                await self._ingest(Signal.TRACES, request, principal)
        except AitrailError as exc:
            await _abort(context, exc)
        if self._metrics is not None:
            self._metrics.received(Signal.TRACES, principal.tenant, checked.accepted, checked.rejected)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if checked.rejected:
            response.partial_success.rejected_spans = checked.rejected
            response.partial_success.error_message = checked.error or ""
        return response


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, ingest: Ingest, auth: IngestAuth, metrics) -> None:
        self._ingest, self._auth, self._metrics = ingest, auth, metrics

    async def Export(self, request, context):  # noqa: N802
        try:
            principal = self._auth.principal(_authorization(context))
            accepted = count_log_records(request)
            if accepted:
                await self._ingest(Signal.LOGS, request, principal)
        except AitrailError as exc:
            await _abort(context, exc)
        if self._metrics is not None:
            self._metrics.received(Signal.LOGS, principal.tenant, accepted, 0)
        return logs_service_pb2.ExportLogsServiceResponse()


def otlp_grpc_server(
    ingest: Ingest, auth: IngestAuth, *, host: str, port: int, max_body_bytes: int, metrics=None
) -> tuple[grpc.aio.Server, int]:
    """A started-later server and the port it bound (useful when `port` is 0)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ]
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(ingest, auth, metrics), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(ingest, auth, metrics), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for OTLP/gRPC on {host}:{port}")
    return server, bound
