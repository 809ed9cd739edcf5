"""`aitrail dlq list|replay` on both backends: dead letters are readable, and replayed after a
fix they are stored; those that fail again stay dead letters with the new reason; a dead
letter is replayed once; a truncated one cannot be replayed and says so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import uuid

import httpx
import pytest

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aitrail import cli
from aitrail.bus.base import BusMessage, Signal
from aitrail.collector import pipeline as collector_pipeline
from aitrail.settings import load_settings
from aitrail.store.base import Role
from tests.conftest import REPO
from tests.running import RunningServer

CAPTURES = REPO / "tests" / "fixtures" / "otlp-captures"
SPAN_CAPTURE = (CAPTURES / "otelv2-span" / "00-traces.pb").read_bytes()
REFUND_A = "Damaged items can be refunded within 30 days with a receipt."


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def broken_normaliser(real, still_broken_for: set[str]):
    """A normaliser with a bug for some tenants: the situation dead letters are replayed after."""

    def normalise(request, tenant, **kwargs):
        if tenant in still_broken_for:
            raise RuntimeError(f"normaliser bug for {tenant}")
        return real(request, tenant, **kwargs)

    return normalise


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- embedded -------------------------------------------------------------------------------


def test_embedded_list_replay_after_a_fix(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    server = RunningServer(data).start()
    try:
        auditor = server.store.create_key("acme", Role.AUDITOR)[0]
        real = collector_pipeline.normalise_traces
        monkeypatch.setattr(collector_pipeline, "normalise_traces", broken_normaliser(real, {"acme", "globex"}))
        # Onto the embedded bus as a receiver hands requests over; the collector dead-letters them
        # (an OTLP/HTTP sender would be told 400 instead and keep its data).
        request = ExportTraceServiceRequest.FromString(SPAN_CAPTURE)
        for tenant in ("acme", "globex"):
            server.call(server.bus.publish([BusMessage(signal=Signal.TRACES, payload=b"", tenant=tenant,
                                                       decoded=request)]))
        assert server.store.count("acme") == 0

        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
        assert code == 0
        listing = json.loads(out)
        assert listing["backend"] == "embedded" and listing["count"] == 2
        by_tenant = {d["tenant"]: d for d in listing["data"]}
        assert set(by_tenant) == {"acme", "globex"}
        for d in by_tenant.values():
            assert "normaliser bug for" in d["reason"]
            assert d["size"] == d["stored_bytes"] == len(SPAN_CAPTURE)
            assert d["signal"] == "traces" and d["source"] is None and d["replayed"] is None and d["replayable"]
        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json", "--tenant", "globex")
        assert [d["tenant"] for d in json.loads(out)["data"]] == ["globex"]
        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json", "--limit", "1")
        shown = json.loads(out)
        assert shown["count"] == 2 and [d["id"] for d in shown["data"]] == [by_tenant["globex"]["id"]]  # the newest
        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data))
        assert code == 0 and "2 dead letter(s)" in out and "normaliser bug for acme" in out

        # A fix for acme only; the server keeps running (its log is fenced, then reloaded).
        monkeypatch.setattr(collector_pipeline, "normalise_traces", broken_normaliser(real, {"globex"}))
        code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
        assert code == 1, (out, err)
        assert f"{by_tenant['acme']['id']}: stored" in out
        assert f"{by_tenant['globex']['id']}: failed again as dead letter" in out and "normaliser bug for globex" in out
        assert "1 stored, 1 failed again" in err
        assert server.store.count("acme") > 0

        response = httpx.get(f"{server.api}/v1/answers", params={"q": "refund"}, timeout=30,
                             headers={"Authorization": f"Bearer {auditor}"})
        assert response.status_code == 200 and response.json()["data"][0]["answer"] == REFUND_A

        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
        waiting = json.loads(out)["data"]
        assert len(waiting) == 1 and waiting[0]["tenant"] == "globex"
        assert waiting[0]["replay_of"] == by_tenant["globex"]["id"] and waiting[0]["id"] != by_tenant["globex"]["id"]
        code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json", "--all")
        every = {d["id"]: d for d in json.loads(out)["data"]}
        assert every[by_tenant["acme"]["id"]]["replayed"]["outcome"] == "stored"
        assert every[by_tenant["globex"]["id"]]["replayed"]["outcome"] == "failed_again"
        assert every[by_tenant["globex"]["id"]]["replayed"]["new_id"] == waiting[0]["id"]

        # Replayed once only: the acme dead letter is not replayed again.
        code, _, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", by_tenant["acme"]["id"])
        assert code == 2 and f"dead letter {by_tenant['acme']['id']} was already replayed" in err
        code, _, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", by_tenant["globex"]["id"])
        assert code == 2 and f"failed again as dead letter {waiting[0]['id']}: replay that one" in err
        code, _, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", "999")
        assert code == 2 and "no dead letter 999" in err

        # The whole fix: the one still waiting is stored, by its id.
        monkeypatch.setattr(collector_pipeline, "normalise_traces", real)
        code, out, _ = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", waiting[0]["id"])
        assert code == 0 and out.strip() == f"{waiting[0]['id']}: stored"
        assert server.store.count("globex") > 0
        code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
        assert code == 0 and out == "" and "none waiting" in err
    finally:
        server.stop()
    code, out, err = run_cli(capsys, "verify", "--data-dir", str(data))
    assert code == 0, (out, err)


def test_embedded_truncated_and_undecodable_dead_letters(tmp_path, capsys):
    from aitrail.store.sqlite import SqliteStore

    data = tmp_path / "data"
    store = SqliteStore.in_dir(data)
    store.add_dead_letter("not a valid OTLP payload", b"\x0a\xff\xff\xff not otlp", {
        "signal": "traces", "tenant": "acme", "aitrail-dlq-outcome": "rejected", "aitrail-dlq-record-id": "r1"})
    store.add_dead_letter("too big", SPAN_CAPTURE[:100], {
        "signal": "traces", "tenant": "acme", "aitrail-dlq-truncated": "true",
        "aitrail-dlq-payload-sha256": "ab" * 32, "aitrail-dlq-payload-bytes": str(len(SPAN_CAPTURE)),
    })
    store.close()
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
    first, truncated = json.loads(out)["data"]
    assert (first["refused"], first["record_id"]) == ("rejected", "r1")
    assert (truncated["refused"], truncated["record_id"]) == (None, None)
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data))
    assert "[rejected r1] not a valid OTLP payload" in out and "(truncated to 100: not replayable)" in out
    assert truncated["truncated"] and not truncated["replayable"]
    assert truncated["size"] == len(SPAN_CAPTURE) and truncated["stored_bytes"] == 100
    code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", truncated["id"])
    assert code == 2 and "cannot be replayed" in err

    code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
    assert code == 1
    assert f"{first['id']}: failed again as dead letter" in out and "not a valid OTLP" in out
    assert f"{truncated['id']}: not replayed: truncated to fit the dead-letter topic" in out
    # The truncated one stays waiting (nothing was done with it); the undecodable one became a new dead letter.
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
    waiting = json.loads(out)["data"]
    assert {d["id"] for d in waiting} == {truncated["id"], str(int(truncated["id"]) + 1)}
    with contextlib.closing(sqlite3.connect(data / "aitrail.db")) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 3


def test_embedded_without_a_store_cannot_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "dlq", "list", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no embedded store at" in err
    assert not (tmp_path / "nothing").exists()


# -- kafka ----------------------------------------------------------------------------------


class CollectorThread:
    """`aitrail collector` (Kafka → OpenSearch) in a background thread: the same process as the
    test, so the test can break and fix its normaliser."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def _run(self) -> None:
        from aitrail.scaleout import collector

        async def main() -> None:
            self.stop_event = asyncio.Event()
            async with collector(self.settings) as drain:
                self.ready.set()
                await self.stop_event.wait()
                await drain()

        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def start(self) -> CollectorThread:
        self.thread.start()
        assert self.ready.wait(120), "the collector did not start within 120 s"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(90)
        assert not self.thread.is_alive(), "the collector did not stop within 90 s"


@pytest.fixture
def kafka_env(services, tmp_path, monkeypatch, capsys):
    """Settings (as AITRAIL_* variables, which the CLI reads) of a pipeline of this test's own:
    topics, consumer group and index prefix."""
    from aitrail.bus.kafka import ensure_topics
    from tests.conftest import drop_opensearch_layout
    from tests.pipeline.conftest import free_port

    tag = uuid.uuid4().hex[:8]
    env = {
        "AITRAIL_KAFKA__BOOTSTRAP_SERVERS": services.kafka, "AITRAIL_KAFKA__TOPIC": f"d{tag}.spans",
        "AITRAIL_KAFKA__DLQ_TOPIC": f"d{tag}.spans.dlq", "AITRAIL_KAFKA__LOGS_TOPIC": f"d{tag}.logs",
        "AITRAIL_KAFKA__GROUP_ID": f"g-d{tag}",
        "AITRAIL_OPENSEARCH__URL": services.opensearch, "AITRAIL_OPENSEARCH__INDEX_PREFIX": f"d{tag}",
        "AITRAIL_OPENSEARCH__REFRESH_INTERVAL": "100ms", "AITRAIL_DATA_DIR": str(tmp_path / "data"),
        "AITRAIL_COLLECTOR__DEFAULT_TENANT": "stock", "AITRAIL_COLLECTOR__HTTP_PORT": str(free_port()),
        "AITRAIL_COLLECTOR__BATCH_MAX_WAIT_MS": "50",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    asyncio.run(ensure_topics(settings.kafka))
    assert cli.main(["keys", "signing", "--create"]) == 0
    capsys.readouterr()
    yield settings
    with contextlib.suppress(Exception):
        drop_opensearch_layout(services.opensearch, f"d{tag}")


def stored(settings, tenant: str) -> int:
    from aitrail.store import open_store

    store = open_store(settings)
    try:
        store.settle()
        return store.count(tenant)
    finally:
        store.close()


def kafka_listing(capsys, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "dlq", "list", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


async def produce_dead_letter(settings, payload: bytes, reason: str, limit: int) -> None:
    """A dead letter as the collector writes it when the message is too big for the topic."""
    from aiokafka import AIOKafkaProducer

    from aitrail.bus.kafka import REASON_HEADER, TENANT_HEADER, fit_dead_letter
    from aitrail.custody import load_row_key
    from aitrail.store.rowmac import kafka_dead_letter_headers

    value, headers = fit_dead_letter(payload, b"k", {TENANT_HEADER: "acme", REASON_HEADER: reason,
                                                     "aitrail-dlq-outcome": "invalid",
                                                     "aitrail-source-topic": settings.kafka.topic,
                                                     "aitrail-source-partition": "0", "aitrail-source-offset": "7"},
                                     limit)
    # With the MAC the collector adds (aitrail.store.rowmac): a dead letter without it is not authentic.
    headers = kafka_dead_letter_headers(load_row_key(settings), headers, value)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka.dlq_topic, value, key=b"k",
                                     headers=[(k, v.encode()) for k, v in headers.items()])
    finally:
        await producer.stop()


@pytest.mark.services
def test_kafka_list_replay_after_a_fix(kafka_env, monkeypatch, capsys):
    from tests.pipeline.conftest import produce

    settings = kafka_env
    real = collector_pipeline.normalise_traces
    monkeypatch.setattr(collector_pipeline, "normalise_traces", broken_normaliser(real, {"acme", "globex"}))
    request = ExportTraceServiceRequest.FromString(SPAN_CAPTURE)
    running = CollectorThread(settings).start()
    try:
        for tenant in ("acme", "globex"):
            asyncio.run(produce(settings.kafka.bootstrap_servers, settings.kafka.topic, [request], tenant=tenant))
        listing = wait_until(lambda: (found := kafka_listing(capsys))["count"] == 2 and found, 60, "two dead letters")
        assert listing["backend"] == "kafka"  # opensearch.url is set: the pipeline's dead letters
        by_tenant = {d["tenant"]: d for d in listing["data"]}
        for d in by_tenant.values():
            partition, offset = d["id"].split(":")
            assert partition.isdigit() and offset.isdigit()
            assert "normaliser bug for" in d["reason"] and d["signal"] == "traces" and d["replayable"]
            assert d["source"]["topic"] == settings.kafka.topic and d["source"]["partition"] in range(6)
            assert d["size"] == d["stored_bytes"] == len(request.SerializeToString())
        asyncio.run(produce_dead_letter(settings, SPAN_CAPTURE * 40, "too big for the topic", 20_000))
        truncated = wait_until(lambda: [d for d in kafka_listing(capsys)["data"] if d["truncated"]], 30, "truncated")[0]
        assert truncated["size"] == len(SPAN_CAPTURE) * 40 and truncated["stored_bytes"] < 20_000
        assert not truncated["replayable"] and len(truncated["payload_sha256"]) == 64
        assert truncated["refused"] == "invalid" and truncated["record_id"] is None
        code, out, _ = run_cli(capsys, "dlq", "list", "--tenant", "globex")
        assert code == 0 and "1 dead letter(s)" in out and "normaliser bug for globex" in out

        code, _, err = run_cli(capsys, "dlq", "replay", "--id", truncated["id"])
        assert code == 2 and "cannot be replayed" in err and f"{settings.kafka.topic} partition 0 offset 7" in err

        # A fix for acme only, in the running collector.
        monkeypatch.setattr(collector_pipeline, "normalise_traces", broken_normaliser(real, {"globex"}))
        code, out, err = run_cli(capsys, "dlq", "replay", "--wait", "90")
        assert code == 1, (out, err)
        assert f"{by_tenant['acme']['id']}: stored" in out
        assert f"{by_tenant['globex']['id']}: failed again as dead letter" in out and "normaliser bug for globex" in out
        assert f"{truncated['id']}: not replayed: truncated" in out
        assert "1 stored, 1 failed again, 1 not replayable" in err
        assert wait_until(lambda: stored(settings, "acme"), 30, "acme's records") > 0
        assert stored(settings, "globex") == 0

        waiting = {d["id"]: d for d in kafka_listing(capsys)["data"]}
        again = [d for d in waiting.values() if d["replay_of"] == by_tenant["globex"]["id"]]
        assert set(waiting) == {truncated["id"], again[0]["id"]}
        assert again[0]["tenant"] == "globex" and again[0]["source"]["topic"] == settings.kafka.topic
        every = {d["id"]: d for d in kafka_listing(capsys, "--all")["data"]}
        assert every[by_tenant["acme"]["id"]]["replayed"]["outcome"] == "stored"
        assert every[by_tenant["globex"]["id"]]["replayed"]["new_id"] == again[0]["id"]

        code, _, err = run_cli(capsys, "dlq", "replay", "--id", by_tenant["acme"]["id"])
        assert code == 2 and "was already replayed" in err

        monkeypatch.setattr(collector_pipeline, "normalise_traces", real)
        code, out, err = run_cli(capsys, "dlq", "replay", "--id", again[0]["id"], "--wait", "90")
        assert code == 0 and out.strip() == f"{again[0]['id']}: stored", (out, err)
        assert wait_until(lambda: stored(settings, "globex"), 30, "globex's records") > 0
    finally:
        running.stop()

    # No collector running: the replay is submitted, but its outcome cannot be learnt.
    asyncio.run(produce_dead_letter(settings, SPAN_CAPTURE, "normalisation failed: an old bug", 1_000_000))
    code, out, err = run_cli(capsys, "dlq", "replay", "--tenant", "acme", "--wait", "2")
    assert code == 2 and ": submitted (produced to" in out and "have not processed" in err
    (submitted,) = [line.split(": ")[0] for line in out.splitlines() if ": submitted (produced to" in line]
    code, out, err = run_cli(capsys, "dlq", "replay", "--tenant", "acme", "--wait", "0")
    # Marked when it was produced: never replayed twice; only the truncated one is still waiting.
    assert code == 1 and f"{submitted}:" not in out and out.strip().endswith("until that topic's retention removes it")
    assert "1 not replayable" in err and "submitted" not in err


@pytest.mark.services
def test_kafka_unreachable_cannot_run(monkeypatch, capsys, tmp_path):
    from tests.pipeline.conftest import free_port

    monkeypatch.setenv("AITRAIL_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("AITRAIL_DATA_DIR", str(tmp_path))
    code, _, err = run_cli(capsys, "dlq", "list", "--backend", "kafka")
    assert code == 2 and "cannot reach Kafka" in err


def test_embedded_replay_records_the_store_refuses_fail_again(tmp_path, monkeypatch, capsys):
    """A record the store refuses on replay (rejected, or a conflict with what is stored) makes
    its dead letter fail again, with the outcome and the record id, and nothing of it is lost."""
    from types import SimpleNamespace

    from aitrail.collector import sequencing as sequencing_module
    from aitrail.store.sqlite import SqliteStore

    data = tmp_path / "data"
    store = SqliteStore.in_dir(data)
    store.add_dead_letter("normalisation failed: an old bug", SPAN_CAPTURE, {"signal": "traces", "tenant": "acme"})
    store.close()
    real_open = sequencing_module.open_sequencing
    refused: list[str] = []

    class Refusing:
        def __init__(self, inner) -> None:
            self.inner = inner

        def write(self, records):
            first, rest = records[0], records[1:]
            refused.append(first.record_id)
            self.inner.write(rest)
            return SimpleNamespace(refused={first.record_id: ("conflict", "stored with other content")})

    monkeypatch.setattr(sequencing_module, "open_sequencing", lambda *a, **k: Refusing(real_open(*a, **k)))
    code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
    assert code == 1, (out, err)
    assert f"1: failed again as dead letter 2: conflict: record {refused[0]}: stored with other content" in out
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
    (again,) = json.loads(out)["data"]
    assert (again["refused"], again["record_id"], again["replay_of"]) == ("conflict", refused[0], "1")
    assert again["size"] == len(SPAN_CAPTURE)  # the whole source message, to replay once the conflict is resolved


def test_embedded_replay_says_when_a_dead_letter_held_nothing_to_store(tmp_path, capsys):
    from aitrail.store.sqlite import SqliteStore

    data = tmp_path / "data"
    store = SqliteStore.in_dir(data)
    store.add_dead_letter("normalisation failed: an old bug", b"", {"signal": "logs", "tenant": "acme"})
    store.close()
    code, out, _ = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
    assert code == 0 and out.strip() == "1: stored (nothing in it to store: no span or log record aitrail records)"
