"""The real instrumentation packages, live: an `openai` client against a fake OpenAI-compatible
server on 127.0.0.1, spans and events captured in memory, encoded with the OTLP exporter's
encoders, normalised. Guards against newer releases changing shape under the captured fixtures.

Needs (test extras): openai, opentelemetry-instrumentation-openai-v2 (+ opentelemetry-util-genai),
openinference-instrumentation-openai, opentelemetry-instrumentation-openai (Traceloop); `make
test` installs them, and the test fails without them. Each instrumentation runs in its own process: they patch the same
functions and do not uninstrument cleanly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aitrail.collector.normalise import normalise_logs, normalise_traces
from normalise_builders import INGESTED, load_logs, load_traces

RUNNER = Path(__file__).with_name("live_runner.py")
SYSTEM = "You answer customer policy questions."
QUESTION = "What is our refund policy for damaged items?"
ANSWER = "Damaged items can be refunded within 30 days with a receipt."
RESPONSE = {
    "id": "chatcmpl-live-1",
    "object": "chat.completion",
    "created": 1795624250,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_test",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": ANSWER}}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59},
}


class _FakeOpenAI(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        body = json.dumps(RESPONSE).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _run(scenario: str, base_url: str, tmp_path: Path) -> tuple[list, list]:
    out = tmp_path / scenario
    proc = subprocess.run([sys.executable, str(RUNNER), scenario, base_url, str(out)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    spans = normalise_traces(load_traces(out / "traces.pb"), "acme", ingested_at=INGESTED)
    logs = normalise_logs(load_logs(out / "logs.pb"), "acme", ingested_at=INGESTED)
    return spans, logs


def _usage_and_model(record, scenario: str) -> None:
    assert record.kind == "completion"
    assert record.provider == "openai"
    assert (record.input_tokens, record.output_tokens) == (42, 17)
    assert record.response_model == "gpt-4o-mini-2024-07-18"
    assert record.service == f"support-bot-live-{scenario}" and record.environment == "prod"
    assert record.request_params["temperature"] == 0.2


def _content(record) -> None:
    assert record.question == QUESTION
    assert record.answer == ANSWER
    assert record.system_instructions == SYSTEM


@pytest.mark.parametrize(("scenario", "semconv"), [
    ("otelv2-span", "gen_ai"), ("openinference", "openinference"), ("openllmetry", "openllmetry"),
])
def test_content_on_the_span(scenario, semconv, base_url, tmp_path):
    spans, logs = _run(scenario, base_url, tmp_path)
    (record,) = spans
    _usage_and_model(record, scenario)
    _content(record)
    assert record.semconv == semconv and record.origin == "span"
    assert logs == []


def test_content_in_an_event_log_record(base_url, tmp_path):
    spans, logs = _run("otelv2-events", base_url, tmp_path)
    (span_record,) = spans
    (log_record,) = logs
    _usage_and_model(span_record, "otelv2-events")
    assert span_record.question is None
    _usage_and_model(log_record, "otelv2-events")
    _content(log_record)
    assert log_record.origin == "log" and log_record.semconv == "gen_ai" and log_record.cost is None
    assert (log_record.trace_id, log_record.span_id) == (span_record.trace_id, span_record.span_id)

