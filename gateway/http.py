"""OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON, optionally
gzip-compressed. Answers as the OTLP specification asks: 200 with an Export*ServiceResponse
(partial success when some spans were rejected), 400 for a payload that does not decode,
401/403 for keys, 413 above the size limit, 503 with Retry-After when the data could not be
made safe (the exporter retries)."""

from __future__ import annotations

import logging
import zlib

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aitrail.bus.base import Signal
from aitrail.errors import AitrailError, BadRequest, PayloadTooLarge, UnsupportedMediaType
from aitrail.otlp import Checked, count_log_records, decode_logs, decode_traces, drop_invalid_spans

from .ingest import Ingest, IngestAuth

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped, refusing more than `limit` bytes before or after."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid gzip: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    elif encoding not in ("identity", ""):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    return body


def _content_kind(request: Request) -> bool:
    """True for JSON, False for protobuf."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return True
    if content_type in (PROTOBUF, "application/protobuf", "application/octet-stream"):
        return False
    raise UnsupportedMediaType(f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or application/json")


def _answer(message, is_json: bool) -> Response:
    if is_json:
        body = json_format.MessageToJson(message, indent=None) if message.ByteSize() else "{}"
        return Response(body, media_type="application/json")
    return Response(message.SerializeToString(), media_type=PROTOBUF)


def error_response(exc: AitrailError) -> JSONResponse:
    headers = {"Retry-After": "5"} if exc.retriable else None
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status, headers=headers)


def otlp_http_app(
    ingest: Ingest, auth: IngestAuth, *, max_body_bytes: int, metrics=None, extra_routes: list[Route] = ()
) -> Starlette:
    async def handle(request: Request, signal: Signal) -> Response:
        try:
            principal = auth.principal(request.headers.get("authorization"))
            is_json = _content_kind(request)
            body = await read_body(request, max_body_bytes)
            if signal == Signal.TRACES:
                export = decode_traces(body, is_json=is_json)
                checked = drop_invalid_spans(export)
            else:
                export = decode_logs(body, is_json=is_json)
                checked = Checked(count_log_records(export), 0, None)
            if checked.accepted:
                await ingest(signal, export, principal)
        except AitrailError as exc:
            return error_response(exc)
        if metrics is not None:
            metrics.received(signal, principal.tenant, checked.accepted, checked.rejected)
        if signal == Signal.LOGS:
            return _answer(ExportLogsServiceResponse(), is_json)
        response = ExportTraceServiceResponse()
        if checked.rejected:
            response.partial_success.rejected_spans = checked.rejected
            response.partial_success.error_message = checked.error or ""
        return _answer(response, is_json)

    async def traces(request: Request) -> Response:
        return await handle(request, Signal.TRACES)

    async def logs(request: Request) -> Response:
        return await handle(request, Signal.LOGS)

    async def not_found(request: Request, exc: Exception) -> Response:
        message = f"no OTLP endpoint at {request.method} {request.url.path}; use POST /v1/traces or POST /v1/logs"
        status = 405 if request.url.path in ("/v1/traces", "/v1/logs") else 404
        return Response(orjson.dumps({"error": {"code": "not_found", "message": message}}), status,
                        media_type="application/json")

    return Starlette(
        routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/v1/logs", logs, methods=["POST"]), *extra_routes],
        exception_handlers={404: not_found, 405: not_found},
    )
