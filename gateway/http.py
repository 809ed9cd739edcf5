"""OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON, optionally
gzip-compressed. Answers as the OTLP specification asks: 200 with an Export*ServiceResponse
(partial success when some spans were rejected); a failure answers a `google.rpc.Status` in
the request's encoding, with the status codes and retry advice of `gateway.status` (400 for
a payload that does not decode, 401/403 for keys, 413 above the size limit, 415 for an unknown
Content-Type, 503 + Retry-After whenever the data could not be made safe, so the exporter
keeps it and retries)."""

from __future__ import annotations

import logging
import zlib

import orjson
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aitrail.bus.base import Signal
from aitrail.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from aitrail.otlp import Checked, count_log_records, decode_logs, decode_traces, drop_invalid_spans

from .ingest import Ingest, IngestAuth, export_response, with_refused
from .status import RETRY_AFTER_S, failure_of
from .telemetry import gateway_metrics

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


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(request: Request) -> bool:
    """How to encode the answer: JSON for JSON requests, protobuf otherwise (unknown types too)."""
    return _media_type(request) == "application/json"


def _check_media_type(request: Request) -> None:
    media_type = _media_type(request)
    if media_type not in ("application/json", PROTOBUF, "application/protobuf", "application/octet-stream"):
        raise UnsupportedMediaType(f"unsupported Content-Type {media_type!r}; use {PROTOBUF} or application/json")


def _answer(message, is_json: bool, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    if is_json:
        body = json_format.MessageToJson(message, indent=None) if message.ByteSize() else "{}"
        return Response(body, status_code, headers, media_type="application/json")
    return Response(message.SerializeToString(), status_code, headers, media_type=PROTOBUF)


def failure_response(exc: BaseException, is_json: bool, *, retry_after_s: int = RETRY_AFTER_S) -> Response:
    """A `google.rpc.Status` in the request's encoding; Retry-After when the sender should retry."""
    failure = failure_of(exc, retry_after_s=retry_after_s, where="OTLP/HTTP export")
    headers = {"Retry-After": str(failure.retry_after_s)} if failure.retry_after_s is not None else None
    return _answer(failure.status(), is_json, failure.http_status, headers)


def otlp_http_app(
    ingest: Ingest, auth: IngestAuth, *, max_body_bytes: int, metrics=None, extra_routes: list[Route] = (),
    retry_after_s: int = RETRY_AFTER_S,
) -> Starlette:
    counters = gateway_metrics(metrics)

    async def handle(request: Request, signal: Signal) -> Response:
        is_json = _is_json(request)
        try:
            principal = await auth.principal(request.headers.get("authorization"))
            _check_media_type(request)
            body = await read_body(request, max_body_bytes)
            if signal == Signal.TRACES:
                export = decode_traces(body, is_json=is_json)
                checked = drop_invalid_spans(export)
            else:
                export = decode_logs(body, is_json=is_json)
                checked = Checked(count_log_records(export), 0, None)
            if checked.accepted:
                checked = with_refused(checked, await ingest(signal, export, principal))
        except Exception as exc:  # noqa: BLE001 (every failure answers a Status; unexpected ones 503)
            response = failure_response(exc, is_json, retry_after_s=retry_after_s)
            if counters is not None:
                counters.requests_failed.labels(
                    str(signal), str(response.status_code), str("retry-after" in response.headers).lower()
                ).inc()
            return response
        if metrics is not None:
            metrics.received(signal, principal.tenant, checked.accepted, checked.rejected)
        return _answer(export_response(signal, checked), is_json)

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
