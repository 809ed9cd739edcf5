"""Run one real instrumentation against a fake OpenAI-compatible server, in its own process.

    python live_runner.py SCENARIO BASE_URL OUT_DIR

Writes OUT_DIR/traces.pb (ExportTraceServiceRequest) and OUT_DIR/logs.pb
(ExportLogsServiceRequest), encoded with the OTLP exporter's own encoders. The
instrumentations patch the same openai functions, so each scenario runs alone in a process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCENARIOS = {
    # name: (environment, instrumentor)
    "otelv2-span": ({"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                     "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}, "otelv2"),
    "otelv2-events": ({"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                       "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY"}, "otelv2"),
    "openinference": ({}, "openinference"),
    "openllmetry": ({"TRACELOOP_TRACE_CONTENT": "true"}, "openllmetry"),
}

SYSTEM = "You answer customer policy questions."
QUESTION = "What is our refund policy for damaged items?"


def main(scenario: str, base_url: str, out_dir: str) -> None:
    env, which = SCENARIOS[scenario]
    os.environ.update(env)  # read by the instrumentations when they are imported / instrument

    from opentelemetry import _logs, trace
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    resource = Resource.create({"service.name": f"support-bot-live-{scenario}", "deployment.environment": "prod"})
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    log_records = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_records))
    _logs.set_logger_provider(logger_provider)

    if which == "otelv2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    elif which == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)
    else:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)

    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        temperature=0.2,
    )
    tracer_provider.force_flush()
    logger_provider.force_flush()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "traces.pb").write_bytes(encode_spans(spans.get_finished_spans()).SerializeToString())
    (out / "logs.pb").write_bytes(encode_logs(log_records.get_finished_logs()).SerializeToString())


if __name__ == "__main__":
    main(*sys.argv[1:4])
