"""Build OTLP protobuf requests in tests, shaped the way the instrumentations emit them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "tests" / "fixtures" / "otlp-captures"  # copy of ../shared/fixtures/otlp-captures
SHARED_CAPTURES = REPO / ".." / "shared" / "fixtures" / "otlp-captures"

T0 = 1_795_624_250_000_000_000  # 2026-11-25T16:30:50Z
INGESTED = "2026-11-25T16:31:00.000000000Z"
RESOURCE = {"service.name": "support-bot", "deployment.environment.name": "prod", "service.version": "1.4.2"}

_ids = itertools.count(1)


def any_value(value: Any) -> AnyValue:
    v = AnyValue()
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    elif isinstance(value, str):
        v.string_value = value
    elif isinstance(value, bytes):
        v.bytes_value = value
    elif isinstance(value, dict):
        v.kvlist_value.values.extend(kv(k, x) for k, x in value.items())
    elif isinstance(value, (list, tuple)):
        v.array_value.values.extend(any_value(x) for x in value)
    elif value is not None:
        raise TypeError(type(value))
    return v


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [kv(k, v) for k, v in attrs.items()]


def new_ids() -> tuple[bytes, bytes]:
    n = next(_ids)
    return (0xA1 << 120 | n).to_bytes(16, "big"), (0xB2 << 56 | n).to_bytes(8, "big")


def span(
    attrs: dict[str, Any],
    *,
    name: str = "span",
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    parent: bytes = b"",
    start: int = T0,
    duration_ns: int = 250_000_000,
    status: int = 0,
    status_message: str = "",
    events: list[tuple[str, dict[str, Any]]] | None = None,
) -> Span:
    if trace_id is None or span_id is None:
        t, s = new_ids()
        trace_id = trace_id or t
        span_id = span_id or s
    sp = Span(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start, end_time_unix_nano=start + duration_ns,
        status=Status(code=status, message=status_message),
    )
    sp.attributes.extend(kvs(attrs))
    for i, (ev_name, ev_attrs) in enumerate(events or []):
        ev = sp.events.add(name=ev_name, time_unix_nano=start + 1000 * (i + 1))
        ev.attributes.extend(kvs(ev_attrs))
    return sp


def traces(*spans: Span, resource: dict[str, Any] | None = None, scope: str = "tests", version: str = "1.0"):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs(RESOURCE if resource is None else resource))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.scope.version = version
    ss.spans.extend(spans)
    return req


def log_record(
    event_name: str,
    attrs: dict[str, Any] | None = None,
    *,
    body: Any = None,
    trace_id: bytes = b"",
    span_id: bytes = b"",
    time: int = T0,
    event_name_as_attribute: bool = False,
) -> LogRecord:
    lr = LogRecord(time_unix_nano=time, observed_time_unix_nano=time + 5, trace_id=trace_id, span_id=span_id)
    attrs = dict(attrs or {})
    if event_name_as_attribute:
        attrs["event.name"] = event_name
    else:
        lr.event_name = event_name
    lr.attributes.extend(kvs(attrs))
    if body is not None:
        lr.body.CopyFrom(any_value(body))
    return lr


def logs(*records: LogRecord, resource: dict[str, Any] | None = None, scope: str = "tests"):
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(kvs(RESOURCE if resource is None else resource))
    sl = rl.scope_logs.add()
    sl.scope.name = scope
    sl.log_records.extend(records)
    return req


def load_traces(path: Path) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    req.ParseFromString(path.read_bytes())
    return req


def load_logs(path: Path) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    req.ParseFromString(path.read_bytes())
    return req
