"""Realistic OTLP traffic for benchmarks: RAG traces (retrieval + completion) with multilingual
content, 1–4 KB per record, as the OpenTelemetry GenAI instrumentation shapes them."""

from __future__ import annotations

import json
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

QUESTIONS = [
    "What is our refund policy for damaged items?",
    "How many vacation days do new employees get in their first year?",
    "นโยบายการคืนเงินสำหรับสินค้าที่เสียหายคืออะไร",
    "返品ポリシーを教えてください。破損した商品はどうなりますか？",
    "我们的退款政策是什么？损坏的商品可以退货吗？",
    "Can a contractor see the board minutes from last quarter?",
]
ANSWERS = [
    "Damaged items can be refunded within 30 days with a receipt. ",
    "New employees get 15 vacation days, prorated by start month. ",
    "สินค้าที่เสียหายสามารถขอคืนเงินได้ภายใน 30 วันพร้อมใบเสร็จ ",
    "破損した商品はレシートがあれば30日以内に返金できます。",
    "损坏的商品凭收据可在30天内退款。",
    "No. Board minutes are restricted to board members. ",
]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-20241022", "gemini-2.5-flash", "mistral-large-2411"]
SERVICES = ["support-bot", "hr-assistant", "sales-copilot"]


def _kv(key: str, value) -> KeyValue:
    any_value = AnyValue()
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    elif isinstance(value, list):
        any_value.array_value.values.extend(AnyValue(string_value=v) for v in value)
    else:
        any_value.string_value = value
    return KeyValue(key=key, value=any_value)


def build_requests(
    traces: int, traces_per_request: int, *, seed: int = 1, start_ns: int = 1_795_000_000_000_000_000,
    step_ns: int = 1_000_000_000, users: int = 50, first_trace: int = 0,
):
    """`traces` RAG traces (a retrieval and a completion span each), in requests of
    `traces_per_request` traces, one every `step_ns` from `start_ns`, asked by `users` users.
    `first_trace` numbers the traces from there (to build a long run in chunks). Returns
    (serialised requests, span count)."""
    rng = random.Random(seed * 1_000_003 + first_trace)
    requests, spans = [], 0
    for first in range(first_trace, first_trace + traces, traces_per_request):
        request = ExportTraceServiceRequest()
        for service in SERVICES:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.extend(
                [_kv("service.name", service), _kv("deployment.environment.name", "prod")]
            )
            scope = resource_spans.scope_spans.add()
            scope.scope.name = "opentelemetry.instrumentation.openai_v2"
            for n in range(first, min(first + traces_per_request, first_trace + traces)):
                if SERVICES[n % len(SERVICES)] != service:
                    continue
                i = rng.randrange(len(QUESTIONS))
                trace_id = rng.getrandbits(128).to_bytes(16, "big")
                t0 = start_ns + n * step_ns
                user = f"user{rng.randrange(users)}@example.com"
                retrieval = scope.spans.add(
                    trace_id=trace_id, span_id=rng.getrandbits(64).to_bytes(8, "big"), name="retrieval policies",
                    start_time_unix_nano=t0, end_time_unix_nano=t0 + 40_000_000, kind=3,
                )
                documents = [
                    {
                        "doc_id": f"doc-{rng.randrange(1000)}", "chunk_id": f"c{k}", "doc_version": str(rng.randrange(9)),
                        "source_uri": f"s3://kb/policies/{k}.md", "content_sha256": f"{rng.getrandbits(256):064x}",
                        "score": round(rng.random(), 4), "rank": k + 1, "acl_tags": ["public"] if k else ["hr-only"],
                        "snippet": ANSWERS[(i + k) % len(ANSWERS)] * 2,
                    }
                    for k in range(3)
                ]
                retrieval.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "retrieval"), _kv("gen_ai.data_source.id", "policies"),
                        _kv("aitrail.retrieval.query", QUESTIONS[i]), _kv("aitrail.retrieval.top_k", 3),
                        _kv("aitrail.retrieval.documents", json.dumps(documents, ensure_ascii=False)),
                        _kv("enduser.id", user),
                    ]
                )
                model = MODELS[n % len(MODELS)]
                completion = scope.spans.add(
                    trace_id=trace_id, span_id=rng.getrandbits(64).to_bytes(8, "big"), name=f"chat {model}",
                    parent_span_id=b"", start_time_unix_nano=t0 + 50_000_000, end_time_unix_nano=t0 + 900_000_000, kind=3,
                )
                answer = ANSWERS[i] * rng.randrange(2, 8)
                completion.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
                        _kv("gen_ai.request.model", model), _kv("gen_ai.response.model", model),
                        _kv("gen_ai.request.temperature", 0.2), _kv("gen_ai.request.max_tokens", 512),
                        _kv("gen_ai.response.id", f"chatcmpl-{rng.getrandbits(64):x}"),
                        _kv("gen_ai.response.finish_reasons", ["stop"]),
                        _kv("gen_ai.usage.input_tokens", rng.randrange(200, 2000)),
                        _kv("gen_ai.usage.output_tokens", rng.randrange(20, 400)),
                        _kv("enduser.id", user),
                        _kv("gen_ai.system_instructions", json.dumps([{"type": "text", "content": "Answer from the policies only."}])),
                        _kv("gen_ai.input.messages", json.dumps(
                            [{"role": "user", "parts": [{"type": "text", "content": QUESTIONS[i]}]}], ensure_ascii=False)),
                        _kv("gen_ai.output.messages", json.dumps(
                            [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}],
                            ensure_ascii=False)),
                    ]
                )
                spans += 2
        requests.append(request.SerializeToString())
    return requests, spans


# -- normalised records, for benchmarks that fill a store directly ----------------------------

PSEUDONYM_KEY = b"bench-pseudonym-key-0123456789ab"
INGESTED = "2026-11-25T00:00:00.000000000Z"
DAY_NS = 86_400 * 1_000_000_000


def pseudonymiser():
    from aitrail.collector.pipeline import hmac_pseudonymiser

    return hmac_pseudonymiser(PSEUDONYM_KEY)


def normalised(requests: list[bytes], tenant: str):
    """The records the collector makes of `requests` (decode, normalise, price, pseudonymise)."""
    from aitrail.collector.cost import PriceTable
    from aitrail.collector.normalise import normalise_traces
    from aitrail.collector.pipeline import pricer_for
    from aitrail.otlp import decode_traces

    pricer, pseudonymise = pricer_for(PriceTable.load(None)), pseudonymiser()
    return [
        record
        for payload in requests
        for record in normalise_traces(
            decode_traces(payload), tenant, ingested_at=INGESTED, pricer=pricer, pseudonymise=pseudonymise
        )
    ]


def record_batches(
    records: int, *, tenant: str, end_ns: int, days: float, users: int, seed: int = 1, chunk: int = 10_000,
):
    """About `records` records (a retrieval and a completion per trace) spread evenly over the
    `days` before `end_ns`, in lists of about `chunk`. Yields (requests, records) per chunk."""
    for part in chunks(records, end_ns=end_ns, days=days, chunk=chunk):
        yield record_chunk(part, tenant=tenant, users=users, seed=seed)


def chunks(records: int, *, end_ns: int, days: float, chunk: int = 10_000) -> list[tuple[int, int, int, int]]:
    """The parts of a data set, each (first trace, traces, start_ns, step_ns): build each with
    `record_chunk`, in any order or process."""
    traces = max(1, records // 2)
    step = max(1, int(days * DAY_NS / traces))
    start = end_ns - traces * step
    per_chunk = max(1, chunk // 2)
    return [(first, min(per_chunk, traces - first), start, step) for first in range(0, traces, per_chunk)]


def record_chunk(part: tuple[int, int, int, int], *, tenant: str, users: int, seed: int = 1):
    first, n, start, step = part
    requests, _ = build_requests(n, 250, seed=seed, start_ns=start, step_ns=step, users=users, first_trace=first)
    return requests, normalised(requests, tenant)
