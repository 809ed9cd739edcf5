"""OTLP payload handling shared by the receivers and the collector: decoding protobuf and
OTLP/JSON (hex ids), validation with partial success, and splitting a request per trace."""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogsData
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from aitrail.errors import BadRequest, PayloadTooLarge

_ID_FIELDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(node: object) -> object:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64 for bytes."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
                except ValueError:
                    raise BadRequest(f"{key} {value!r} is not hex") from None
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def _decode(body: bytes, is_json: bool, message: TracesData | LogsData, what: str):
    try:
        if is_json:
            json_format.ParseDict(_hex_ids_to_base64(orjson.loads(body)), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except (DecodeError, json_format.ParseError, orjson.JSONDecodeError, RecursionError) as exc:
        kind = "OTLP/JSON" if is_json else "OTLP protobuf"
        raise BadRequest(f"body is not a valid {kind} {what}: {exc}") from None
    return message


def decode_traces(body: bytes, *, is_json: bool = False) -> ExportTraceServiceRequest:
    return _decode(body, is_json, ExportTraceServiceRequest(), "trace export request")


def decode_logs(body: bytes, *, is_json: bool = False) -> ExportLogsServiceRequest:
    return _decode(body, is_json, ExportLogsServiceRequest(), "logs export request")


@dataclass
class Checked:
    accepted: int
    rejected: int
    error: str | None


def drop_invalid_spans(request: ExportTraceServiceRequest) -> Checked:
    """Remove spans whose ids are malformed (a trace id must be 16 bytes, a span id 8) and
    say how many went, for OTLP's partial-success answer."""
    accepted = rejected = 0
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            bad = [s for s in scope_spans.spans if len(s.trace_id) != 16 or len(s.span_id) != 8]
            for span in bad:
                scope_spans.spans.remove(span)
            rejected += len(bad)
            accepted += len(scope_spans.spans)
    error = f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes" if rejected else None
    return Checked(accepted, rejected, error)


def count_log_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


_FIELDS = {
    "TracesData": ("resource_spans", "scope_spans", "spans"),
    "ExportTraceServiceRequest": ("resource_spans", "scope_spans", "spans"),
    "LogsData": ("resource_logs", "scope_logs", "log_records"),
    "ExportLogsServiceRequest": ("resource_logs", "scope_logs", "log_records"),
}


def _items(request) -> list[tuple[object, object, object]]:
    """(resource container, scope container, item) for every span or log record."""
    resources_field, scopes_field, items_field = _FIELDS[type(request).__name__]
    return [
        (resource, scope, item)
        for resource in getattr(request, resources_field)
        for scope in getattr(resource, scopes_field)
        for item in getattr(scope, items_field)
    ]


def _assemble(container_type, triples) -> object:
    """A TracesData/LogsData holding `triples`, grouped under copies of their resource and scope."""
    resources_field, scopes_field, items_field = _FIELDS[container_type.__name__]
    out = container_type()
    resources: dict[int, object] = {}
    scopes: dict[int, object] = {}
    for resource, scope, item in triples:
        target_resource = resources.get(id(resource))
        if target_resource is None:
            target_resource = resources[id(resource)] = getattr(out, resources_field).add()
            target_resource.resource.CopyFrom(resource.resource)
            target_resource.schema_url = resource.schema_url
        target_scope = scopes.get(id(scope))
        if target_scope is None:
            target_scope = scopes[id(scope)] = getattr(target_resource, scopes_field).add()
            target_scope.scope.CopyFrom(scope.scope)
            target_scope.schema_url = scope.schema_url
        getattr(target_scope, items_field).add().CopyFrom(item)
    return out


def split_by_trace(request, max_bytes: int) -> list[tuple[bytes, object]]:
    """(trace id, TracesData/LogsData) messages, one trace per message so a trace stays on one
    partition, each at most `max_bytes` serialised (a large trace is cut into several).
    Log records outside any trace share the key b""."""
    container = TracesData if type(request).__name__ in ("TracesData", "ExportTraceServiceRequest") else LogsData
    by_trace: dict[bytes, list] = defaultdict(list)
    for triple in _items(request):
        by_trace[triple[2].trace_id].append(triple)
    out: list[tuple[bytes, object]] = []
    for trace_id, triples in by_trace.items():
        pending = [triples]
        while pending:
            part = pending.pop()
            data = _assemble(container, part)
            if data.ByteSize() <= max_bytes:
                out.append((trace_id, data))
            elif len(part) == 1:
                kind = "span" if container is TracesData else "log record"
                raise PayloadTooLarge(
                    f"one {kind} is {data.ByteSize()} bytes, over the message limit of {max_bytes} bytes"
                )
            else:
                middle = len(part) // 2
                pending += [part[middle:], part[:middle]]
    return out
