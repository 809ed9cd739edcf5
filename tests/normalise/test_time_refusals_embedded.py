"""A span whose time no store can hold, sent to `aitrail serve`: the sender is told (OTLP
partial success naming the span and the time), the other spans of the request are stored,
and nothing lands in the dead letters (issue 9; the embedded refusals are in
tests/gateway/test_embedded_refusals.py)."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from aitrail.store.base import Role
from normalise_builders import new_ids, span, traces
from tests.running import RunningServer

YEAR_2300 = 10_413_792_000 * 10**9
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("serve-times")).start()
    try:
        yield running
    finally:
        running.stop()


def test_a_span_after_2262_is_refused_to_the_sender_and_the_rest_stored(server):
    ingest, _ = server.store.create_key("acme", Role.INGEST)
    auditor, _ = server.store.create_key("acme", Role.AUDITOR)
    late_trace, late_span = new_ids()
    ok_trace, ok_span = new_ids()
    request = traces(span(CHAT, name="late", trace_id=late_trace, span_id=late_span, start=YEAR_2300),
                     span(CHAT, name="on time", trace_id=ok_trace, span_id=ok_span))
    response = httpx.post(server.otlp_http + "/v1/traces", content=request.SerializeToString(), timeout=30,
                          headers={"Authorization": f"Bearer {ingest}", "Content-Type": "application/x-protobuf"})
    assert response.status_code == 200, response.text
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 1
    assert f"span {late_trace.hex()}/{late_span.hex()} 'late': start time 2300-01-01T00:00:00.000000000Z is after " \
           "2262-04-11T23:47:16.854775807Z" in partial.error_message

    def names(trace_id: bytes) -> list[str]:
        answer = httpx.get(f"{server.api}/v1/traces/{trace_id.hex()}", timeout=30,
                           headers={"Authorization": f"Bearer {auditor}"})
        return [] if answer.status_code == 404 else [r["span_name"] for r in answer.json()["records"]]

    assert names(ok_trace) == ["on time"] and names(late_trace) == []
    assert server.store.dead_letters() == []
