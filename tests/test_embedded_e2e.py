"""End to end on the embedded server: real OTLP exporters (HTTP and gRPC) → serve → API."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from aitrail.store.base import Role
from tests.conftest import REPO
from tests.running import RunningServer

CAPTURES = REPO / "tests" / "fixtures" / "otlp-captures"
REFUND_Q = "What is our refund policy for damaged items?"
REFUND_A = "Damaged items can be refunded within 30 days with a receipt."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("serve")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(server):
    made = {}
    for tenant in ("acme", "globex"):
        for role in Role:
            made[tenant, role.value] = server.store.create_key(tenant, role)[0]
    return made


def get(server, keys, path, tenant="acme", role="auditor", **params):
    headers = {"Authorization": f"Bearer {keys[tenant, role]}"}
    return httpx.get(server.api + path, params=params, headers=headers, timeout=30)


def chat_span(provider: TracerProvider, question: str, answer: str, *, model="gpt-4o-mini", user="alice@example.com"):
    tracer = provider.get_tracer("test-instrumentation")
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
                "gen_ai.response.model": f"{model}-2024-07-18", "gen_ai.usage.input_tokens": 42,
                "gen_ai.usage.output_tokens": 17, "enduser.id": user,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": question}]}]),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}]
                ),
            }
        )
        return format(span.get_span_context().trace_id, "032x")


def wait_for_answer(server, keys, q, tenant="acme", count=1):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = get(server, keys, "/v1/answers", tenant=tenant, q=q).json()
        assert "count" in body, body
        if body["count"] >= count:
            return body
        time.sleep(0.05)
    raise AssertionError(f"no answer for {q!r} within 30 s")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_real_exporter_to_answer_and_replay(server, keys, transport):
    headers = {"authorization": f"Bearer {keys['acme', 'ingest']}"}
    if transport == "http":
        exporter = HttpExporter(endpoint=server.otlp_http + "/v1/traces", headers=headers)
    else:
        exporter = GrpcExporter(endpoint=server.otlp_grpc, insecure=True, headers=headers)
    provider = TracerProvider(resource=Resource.create({"service.name": f"bot-{transport}"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    question = f"How long is the warranty over {transport}?"
    trace_id = chat_span(provider, question, "Two years for every item.")
    provider.shutdown()

    body = wait_for_answer(server, keys, f"warranty {transport}")
    (answer,) = body["data"]
    assert answer["trace_id"] == trace_id
    assert (answer["question"], answer["answer"]) == (question, "Two years for every item.")
    assert (answer["provider"], answer["model"], answer["service"]) == ("openai", "gpt-4o-mini-2024-07-18", f"bot-{transport}")
    assert (answer["input_tokens"], answer["output_tokens"]) == (42, 17)
    assert answer["cost"] == {"amount": "0.0000165000", "currency": "USD"}
    assert answer["user"].startswith("u_") and "alice" not in answer["user"]

    replay = get(server, keys, f"/v1/traces/{trace_id}").json()
    assert replay["trace_id"] == trace_id
    assert [r["kind"] for r in replay["records"]] == ["completion"]
    assert replay["records"][0]["answer"] == "Two years for every item."
    assert "alice@example.com" not in json.dumps(replay)


# google.rpc.Code of each HTTP status the OTLP receiver answers (gateway/status.py)
GRPC_CODE_OF = {400: 3, 401: 16, 403: 7, 413: 8, 415: 3}


def otlp_status(response: httpx.Response) -> status_pb2.Status:
    status = status_pb2.Status()
    if response.headers["content-type"].startswith("application/json"):
        json_format.Parse(response.text, status)
    else:
        status.ParseFromString(response.content)
    return status


def post_otlp(server, keys, path, body: bytes, *, key_of=("acme", "ingest"), content_type="application/x-protobuf", **headers):
    if key_of is not None:
        headers["Authorization"] = f"Bearer {keys[key_of]}"
    headers["Content-Type"] = content_type
    return httpx.post(server.otlp_http + path, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("capture", ["openinference", "openllmetry", "otelv2-span"])
def test_real_captures_are_found(server, keys, capture):
    tenant = "globex"
    response = post_otlp(server, keys, "/v1/traces", (CAPTURES / capture / "00-traces.pb").read_bytes(),
                         key_of=(tenant, "ingest"))
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = get(server, keys, "/v1/answers", tenant=tenant, q="refund damaged", limit=50).json()["data"]
        mine = [a for a in data if capture in (a["service"] or "")]
        if mine:
            break
        time.sleep(0.05)
    (answer,) = mine
    assert (answer["question"], answer["answer"]) == (REFUND_Q, REFUND_A)
    assert (answer["input_tokens"], answer["output_tokens"]) == (42, 17)


def test_log_event_content_joins_its_span(server, keys):
    """otelv2 EVENT_ONLY: the content arrives as an OTLP log record before the span."""
    logs = post_otlp(server, keys, "/v1/logs", (CAPTURES / "otelv2-events" / "00-logs.pb").read_bytes())
    traces = post_otlp(server, keys, "/v1/traces", (CAPTURES / "otelv2-events" / "01-traces.pb").read_bytes())
    assert (logs.status_code, traces.status_code) == (200, 200)
    body = wait_for_answer(server, keys, "refund damaged receipt")
    (answer,) = [a for a in body["data"] if a["model"] == "gpt-4o-mini-2024-07-18"]
    assert (answer["question"], answer["answer"]) == (REFUND_Q, REFUND_A)
    assert answer["cost"]["amount"] == "0.0000165000"  # the span's usage priced once
    replay = get(server, keys, f"/v1/traces/{answer['trace_id']}").json()
    (completion,) = replay["records"]
    assert completion["answer"] == REFUND_A and len(completion["fragments"]) == 2


def test_otlp_json_with_hex_ids_and_gzip(server, keys):
    trace_id = "5b8efff798038103d269b633813fc60c"
    payload = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-bot"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "chat gpt-4o",
                "startTimeUnixNano": "1795624254235577375", "endTimeUnixNano": "1795624255235577375",
                "attributes": [
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                    {"key": "gen_ai.prompt.0.role", "value": {"stringValue": "user"}},
                    {"key": "gen_ai.prompt.0.content", "value": {"stringValue": "Is shipping free to Chiang Mai?"}},
                    {"key": "gen_ai.completion.0.role", "value": {"stringValue": "assistant"}},
                    {"key": "gen_ai.completion.0.content", "value": {"stringValue": "Yes, above 500 baht."}},
                ],
            }]}],
        }]
    }
    response = post_otlp(server, keys, "/v1/traces", gzip.compress(json.dumps(payload).encode()),
                         content_type="application/json", **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = wait_for_answer(server, keys, "Chiang Mai")
    assert body["data"][0]["trace_id"] == trace_id


def test_partial_success_names_rejected_spans(server, keys):
    payload = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "00", "spanId": "01", "name": "bad ids",
         "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]},
    ]}]}]}
    response = post_otlp(server, keys, "/v1/traces", json.dumps(payload).encode(), content_type="application/json")
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "trace_id must be 16 bytes" in response.json()["partialSuccess"]["errorMessage"]


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no key", 401, "missing credentials"),
        ("unknown key", 401, "unknown or revoked key"),
        ("auditor key", 403, "needs role 'ingest'"),
        ("garbage protobuf", 400, "not a valid OTLP protobuf"),
        ("garbage json", 400, "not a valid OTLP/JSON"),
        ("bad gzip", 400, "not valid gzip"),
        ("wrong content type", 415, "unsupported Content-Type"),
        ("too large", 413, "limit is 8388608 bytes"),
        ("gzip bomb", 413, "limit of 8388608 bytes"),
    ],
)
def test_bad_ingest_gets_a_clear_error(server, keys, case, status, message):
    body, kwargs = b"\x0a\x05hello-not-otlp\xff\xff", {}
    if case == "no key":
        kwargs["key_of"] = None
    elif case == "unknown key":
        kwargs = {"key_of": None, "Authorization": "Bearer atk_nope_nope"}
    elif case == "auditor key":
        kwargs["key_of"] = ("acme", "auditor")
    elif case == "garbage json":
        body, kwargs["content_type"] = b"{not json", "application/json"
    elif case == "bad gzip":
        kwargs["Content-Encoding"] = "gzip"
    elif case == "wrong content type":
        kwargs["content_type"] = "text/plain"
    elif case == "too large":
        body = b"\x00" * (8 * 1024 * 1024 + 1)
    elif case == "gzip bomb":
        body, kwargs["Content-Encoding"] = gzip.compress(b"\x00" * (9 * 1024 * 1024)), "gzip"
    response = post_otlp(server, keys, "/v1/traces", body, **kwargs)
    assert response.status_code == status, response.text
    failure = otlp_status(response)
    # a google.rpc.Status in the request's encoding (protobuf unless the request was JSON)
    assert response.headers["content-type"] == kwargs.get("content_type", "application/x-protobuf") \
        if case != "wrong content type" else response.headers["content-type"] == "application/x-protobuf"
    assert failure.code == GRPC_CODE_OF[status] and message in failure.message, failure
    assert failure.message[0].isalpha() and " " in failure.message  # a sentence, not a code
    assert "Retry-After" not in response.headers  # the sender's fault: do not retry
    # and the server keeps serving
    assert httpx.get(server.api + "/healthz", timeout=10).status_code == 200


def test_api_errors_and_tenancy(server, keys):
    trace_id = wait_for_answer(server, keys, "warranty http")["data"][0]["trace_id"]
    assert get(server, keys, f"/v1/traces/{trace_id}", tenant="globex").status_code == 404
    missing = get(server, keys, "/v1/traces/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    record_id = get(server, keys, f"/v1/traces/{trace_id}").json()["records"][0]["record_id"]
    assert get(server, keys, f"/v1/records/{record_id}").json()["record_id"] == record_id
    assert get(server, keys, f"/v1/records/{record_id}", tenant="globex").status_code == 404
    assert get(server, keys, "/v1/answers", tenant="globex", q="warranty http").json()["count"] == 0
    assert httpx.get(server.api + "/v1/answers", timeout=10).status_code == 401
    assert get(server, keys, "/v1/answers", role="ingest").status_code == 403
    bad_time = get(server, keys, "/v1/answers", at="the day after never")
    assert bad_time.status_code == 400 and "cannot read the time" in bad_time.json()["error"]["message"]
    assert get(server, keys, "/v1/answers", at="2026-11-24T14:30", tz="Mars/Base").status_code == 400
    assert get(server, keys, "/v1/answers", limit=0).status_code == 400


def test_analyst_sees_no_content(server, keys):
    trace_id = wait_for_answer(server, keys, "warranty grpc")["data"][0]["trace_id"]
    answers = get(server, keys, "/v1/answers", role="analyst").json()["data"]
    assert answers and all(a["question"] is None and a["answer"] is None for a in answers)
    record = get(server, keys, f"/v1/traces/{trace_id}", role="analyst").json()["records"][0]
    assert "answer" not in record and "input_messages" not in record and "raw_attributes" not in record
    assert record["input_tokens"] == 42


def test_answers_at_time_window(server, keys):
    # the captures were made at 1795624254 s = 2026-11-25T…; search around that instant
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(1795624254, UTC).isoformat()
    body = get(server, keys, "/v1/answers", at=at, window="1m").json()
    assert body["count"] >= 1 and all(at[:10] in a["time"] for a in body["data"])
    assert get(server, keys, "/v1/answers", at="2020-01-01T00:00:00", window="1m").json()["count"] == 0


def test_costs_endpoint(server, keys):
    wait_for_answer(server, keys, "warranty http")
    body = get(server, keys, "/v1/costs", group_by="service,model").json()
    rows = {(r["group"]["service"], r["group"]["model"]): r for r in body["data"]}
    row = rows["bot-http", "gpt-4o-mini-2024-07-18"]
    assert (row["calls"], row["input_tokens"], row["cost"]["amount"]) == (1, 42, "0.0000165000")
    assert get(server, keys, "/v1/costs", group_by="colour").status_code == 400


def test_health_docs_and_page(server, keys):
    assert httpx.get(server.api + "/readyz", timeout=10).json() == {"status": "ready"}
    spec = httpx.get(server.api + "/openapi.json", timeout=10).json()
    assert {"/v1/answers", "/v1/traces/{trace_id}", "/v1/records/{record_id}", "/v1/costs"} <= set(spec["paths"])
    page = httpx.get(server.api + "/", timeout=10)
    assert page.status_code == 200 and "aitrail" in page.text and "/v1/answers" in page.text
    # metrics are the operators' (an admin of operator_tenant, here the default tenant), without tenant labels
    assert httpx.get(server.api + "/metrics", timeout=10).status_code == 401
    assert get(server, keys, "/metrics", role="admin").status_code == 403
    operator = server.store.create_key(server.settings.operator_tenant, Role.ADMIN)[0]
    metrics = httpx.get(server.api + "/metrics", headers={"Authorization": f"Bearer {operator}"}, timeout=10).text
    assert "aitrail_otlp_items_received_total" in metrics and "tenant=" not in metrics and "acme" not in metrics


def wait_verified(server, keys, trace_id):
    def verified():
        body = get(server, keys, f"/v1/traces/{trace_id}").json()
        return body if body["integrity"]["status"] == "verified" else None

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (body := verified()) is not None:
            return body
        time.sleep(0.1)
    raise AssertionError("the trace was not covered by a signed checkpoint within 30 s")


def test_replay_reports_integrity_and_proofs_verify_offline(server, keys):
    from aitrail.custody import public_key_path
    from aitrail.integrity import merkle
    from aitrail.integrity.keys import load_verifier
    from aitrail.integrity.note import open_checkpoint

    trace_id = wait_for_answer(server, keys, "warranty http")["data"][0]["trace_id"]
    replay = wait_verified(server, keys, trace_id)
    (record,) = replay["records"]
    assert record["integrity"]["status"] == "verified"
    assert record["log_id"] == "acme/local" and isinstance(record["leaf_index"], int)  # acme's own log

    proof = get(server, keys, f"/v1/records/{record['record_id']}/proof").json()
    assert proof["status"] == "verified" and proof["tree_size"] > proof["leaf_index"]
    verifier = load_verifier(public_key_path(server.settings))
    checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    assert checkpoint.root_hash.hex() == proof["root_hash"] and checkpoint.size == proof["tree_size"]
    merkle.verify_inclusion(bytes.fromhex(proof["leaf_hash"]), proof["leaf_index"], proof["tree_size"],
                            [bytes.fromhex(h) for h in proof["inclusion_proof"]], checkpoint.root_hash)
    assert get(server, keys, f"/v1/records/{record['record_id']}/proof", tenant="globex").status_code == 404

    # checkpoints: only the caller's tenant's logs; another tenant's log answers as a missing one
    from aitrail.tenancy import log_tenant

    latest = get(server, keys, "/v1/checkpoints/latest").json()["data"]
    assert log_tenant(proof["log_id"]) == "acme"
    assert [c["log_id"] for c in latest] == [proof["log_id"]] and latest[0]["size"] >= proof["tree_size"]
    assert get(server, keys, "/v1/checkpoints/latest", log="nope").status_code == 404
    assert proof["log_id"] not in str(get(server, keys, "/v1/checkpoints/latest", tenant="globex").json())
    assert get(server, keys, "/v1/checkpoints/latest", tenant="globex", log=proof["log_id"]).status_code == 404


def test_verify_cli_on_the_running_store(server, keys, capsys):
    from aitrail.cli import main

    wait_verified(server, keys, wait_for_answer(server, keys, "warranty grpc")["data"][0]["trace_id"])
    data_dir = str(server.settings.data_dir)
    assert main(["verify", "--data-dir", data_dir]) == 0
    out = capsys.readouterr()
    assert "log acme/local: OK" in out.err + out.out
    record_id = get(server, keys, "/v1/answers", q="warranty grpc").json()["data"][0]["record_id"]
    assert main(["verify", "--record", record_id, "--tenant", "acme", "--data-dir", data_dir]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["keys", "signing", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out.startswith("aitrail/")


def test_system_records_join_the_log(server, keys, capsys):
    from aitrail.cli import main
    from aitrail.integrity.system import append_system_records, system_record

    record = system_record("retention", "acme", {"action": "delete", "index": "aitrail-records-000001", "count": 12})
    server.call(append_system_records(server.bus, [record]))
    stored = server.store.get("acme", record.record_id)
    assert stored.kind == "retention" and stored.origin == "system" and stored.details["count"] == 12
    assert stored.log_id == "acme/local" and stored.leaf_hash is not None
    server.call(append_system_records(server.bus, [record]))  # appending again is a no-op
    assert [r.record_id for r in server.store.records_in_log("acme/local")].count(record.record_id) == 1
    deadline = time.monotonic() + 30
    while server.store.latest_checkpoint("acme/local").size <= stored.leaf_index:
        assert time.monotonic() < deadline, "no checkpoint covered the system record"
        time.sleep(0.1)
    assert main(["verify", "--log", "acme/local", "--data-dir", str(server.settings.data_dir)]) == 0
    capsys.readouterr()


def test_a_read_whose_access_entry_the_store_refuses_is_not_served(tmp_path, monkeypatch):
    """`aitrail serve`: the access entry goes through the bus like a span. A store that refuses
    it (a per-record outcome, not a failed write) must stop the read with 503, as a failed
    write does; the entry is not set aside as a dead letter (the reader is told instead)."""
    from aitrail.store.base import RecordsRejected
    from aitrail.store.sqlite import SqliteStore

    running = RunningServer(tmp_path / "serve").start()
    try:
        key = running.store.create_key("acme", Role.AUDITOR)[0]
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(running.api + "/v1/answers", headers=headers, timeout=30).status_code == 200

        real_write = SqliteStore.write

        def refusing(self, records, *args, **kwargs):  # as the stores refuse a sealed record
            if any(r.kind == "access" for r in records):
                raise RecordsRejected({r.record_id: "value out of range" for r in records if r.kind == "access"},
                                      len(records))
            return real_write(self, records, *args, **kwargs)

        monkeypatch.setattr(SqliteStore, "write", refusing)
        response = httpx.get(running.api + "/v1/answers", params={"q": "refund"}, headers=headers, timeout=60)
        assert response.status_code == 503, response.text
        assert "could not be written to the access log" in response.text and "value out of range" in response.text
        assert "data" not in response.json()
        monkeypatch.setattr(SqliteStore, "write", real_write)
        assert running.store.dead_letters() == []  # refused back to the reader, not set aside
    finally:
        running.stop()
