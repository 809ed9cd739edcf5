"""The collector's failure paths on the real broker: a failed batch is never overtaken by the
batch fetched behind it, and dead letters always fit the dead-letter topic."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aitrail.bus.kafka import (
    REASON_HEADER, SHA256_HEADER, SIZE_HEADER, TRUNCATED_HEADER, KafkaBus, ensure_topics, fit_dead_letter,
)
from aitrail.collector.cost import PriceTable
from aitrail.collector.pipeline import Pipeline, hmac_pseudonymiser, pricer_for, run_collector
from aitrail.collector.sequencing import Sequencing
from aitrail.errors import AitrailError
from aitrail.integrity.note import Signer
from aitrail.integrity.verify import verify_log
from aitrail.settings import KafkaSettings
from aitrail.store.sqlite import SqliteStore
from bench.data import build_requests
from tests.pipeline.conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.services


def test_dead_letter_fits_the_topic_or_is_truncated_with_hash_and_size():
    value = b"x" * 10_000
    same, headers = fit_dead_letter(value, b"k", {REASON_HEADER: "bad"}, 100_000)
    assert same == value and TRUNCATED_HEADER not in headers
    cut, headers = fit_dead_letter(value, b"k", {REASON_HEADER: "r" * 10_000}, 8_000)
    assert 0 < len(cut) < 8_000 and value.startswith(cut)
    assert headers[TRUNCATED_HEADER] == "true"
    assert headers[SHA256_HEADER] == hashlib.sha256(value).hexdigest()
    assert headers[SIZE_HEADER] == "10000"
    assert len(headers[REASON_HEADER]) == 4000  # the reason is bounded too
    framing = 1024 + 1 + sum(len(k) + len(v) + 16 for k, v in headers.items())
    assert framing + len(cut) <= 8_000


class RejectsFirstWrite:
    """The real store behind a fault: its first write fails the whole batch, not retriably,
    as OpenSearchStore does for a batch it refuses — at the worst moment, once the next batch
    has been fetched and normalised behind it."""

    def __init__(self, inner, next_batch_ready: threading.Event) -> None:
        self.inner, self.failed, self.next_batch_ready = inner, False, next_batch_ready

    def write(self, records, updates=(), **options):
        if not self.failed:
            self.failed = True
            assert self.next_batch_ready.wait(30), "the collector never fetched a second batch"
            time.sleep(0.3)  # let it reach the write queue
            raise AitrailError("refused once by the test")
        return self.inner.write(records, updates, **options)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_failed_batch_is_not_overtaken_by_the_batch_fetched_behind_it(services, tmp_path):
    """Batch N fails while N+1 is already fetched and normalised. N+1 must not be written or
    acknowledged before N is (else offsets pass N, and sequencing later skips N as covered)."""
    topic = f"f{uuid.uuid4().hex[:8]}.spans"
    settings = KafkaSettings(bootstrap_servers=services.kafka, topic=topic, dlq_topic=topic + ".dlq",
                             group_id=f"g-{topic}", partitions=1)
    asyncio.run(ensure_topics(settings))
    payloads, spans = build_requests(60, 2, seed=9)
    asyncio.run(produce(services.kafka, topic, [ExportTraceServiceRequest.FromString(p) for p in payloads]))

    store = SqliteStore(tmp_path / "aitrail.db")
    signer = Signer.generate("aitrail/test")
    normalised = threading.Event()
    flaky = RejectsFirstWrite(store, normalised)
    sequencing = Sequencing(flaky, signer, "aitrail/test", checkpoint_every=16, checkpoint_interval_s=0)
    pipeline = Pipeline(default_tenant="acme", pricer=pricer_for(PriceTable.load(None)),
                        pseudonymise=hmac_pseudonymiser(b"k" * 32))
    normalise, calls = pipeline.normalise, []

    def counting(messages):
        result = normalise(messages)
        calls.append(len(messages))
        if len(calls) >= 2:
            normalised.set()
        return result

    pipeline.normalise = counting

    async def run() -> None:
        async with KafkaBus(settings, produce=True, consume=True, max_batch=20, fetch_wait_ms=100) as bus:
            task = asyncio.create_task(run_collector(bus.batches(), pipeline, sequencing))
            try:
                for _ in range(600):  # bounded: 60 s
                    if store.count() >= spans:
                        break
                    await asyncio.sleep(0.1)
                committed = await bus._consumer.committed(TopicPartition(topic, 0))
                for _ in range(100):
                    if committed is not None and committed >= 120:  # 60 traces of 2 spans: one message per trace
                        break
                    await asyncio.sleep(0.1)
                    committed = await bus._consumer.committed(TopicPartition(topic, 0))
            finally:
                bus.stop()
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    asyncio.run(run())
    assert flaky.failed
    assert store.count() == spans, f"{store.count()} of {spans} spans stored"
    sequencing.tick()
    for log_id in store.log_ids():
        report = verify_log(store, signer.verifier(), log_id)
        assert report.ok, report.failures
    store.close()


def test_a_2mb_dead_letter_is_truncated_to_fit_and_the_partition_goes_on(pipeline):
    """The spans topic of this cluster takes 3 MB messages (a stock collector's setting); the
    dead-letter topic does not. The poison message is dead-lettered truncated, with its hash
    and size, and the messages behind it are stored."""

    async def widen_and_send() -> bytes:
        admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.kafka)
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, pipeline.topic, {"max.message.bytes": str(3 * 1024 * 1024)})]
            )
        finally:
            await admin.close()
        poison = b"\x0a\xff\xff\xff" + bytes(range(256)) * (2 * 1024 * 1024 // 256)
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.kafka, max_request_size=3 * 1024 * 1024)
        await producer.start()
        try:
            # The broker applies a topic's new limit asynchronously: until the partition's leader
            # has it, the message is refused as too large (bounded: 60 s).
            deadline = time.monotonic() + 60
            while True:
                try:
                    await producer.send_and_wait(pipeline.topic, poison, key=b"poison", partition=0,
                                                 headers=[("aitrail-tenant", b"acme")])
                    break
                except MessageSizeTooLargeError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await producer.stop()
        return poison

    poison = asyncio.run(widen_and_send())
    pipeline.collector()
    payloads, spans = build_requests(20, 5, seed=3)
    asyncio.run(produce(pipeline.kafka, pipeline.topic, [ExportTraceServiceRequest.FromString(p) for p in payloads]))
    wait_until(lambda: pipeline.stored("acme")[0] >= spans, 180, "spans stored behind the poison message")
    (dead,) = asyncio.run(read_topic(pipeline.kafka, pipeline.dlq, expected=1))
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers[TRUNCATED_HEADER] == "true"
    assert headers[SHA256_HEADER] == hashlib.sha256(poison).hexdigest()
    assert int(headers[SIZE_HEADER]) == len(poison)
    assert poison.startswith(dead.value) and 0 < len(dead.value) < len(poison)
    assert headers["aitrail-source-topic"] == pipeline.topic and headers["aitrail-source-partition"] == "0"
    assert headers[REASON_HEADER]


def test_the_checkpoint_timer_survives_any_exception():
    from aitrail.collector.pipeline import checkpoint_timer

    class Breaks:
        def __init__(self) -> None:
            self.calls = 0

        def tick(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise AitrailError("store away")
            if self.calls == 2:
                raise RuntimeError("a bug")
            return 0

    errors: list[int] = []

    async def run() -> int:
        sequencing = Breaks()
        task = asyncio.create_task(checkpoint_timer(sequencing, period_s=0.01, on_error=lambda: errors.append(1)))
        for _ in range(500):  # bounded: 5 s
            if sequencing.calls >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return sequencing.calls

    assert asyncio.run(run()) >= 4  # it went on ticking after both failures
    assert len(errors) == 2


def test_no_record_is_dropped_by_the_keepalive_poll_across_a_rebalance(services):
    """The store is away: the batch in hand waits, its partitions paused and polled so the
    consumer keeps its place. Another member joins and leaves meanwhile: the partitions
    assigned by those rebalances start unpaused, and the poll waiting out the rebalance
    returns their records. They must be given back, not dropped: once the store is back,
    every offset of the topic is delivered (nothing was committed, so all of them)."""
    topic = f"k{uuid.uuid4().hex[:8]}.spans"
    quick = dict(session_timeout_ms=6000, heartbeat_interval_ms=300)
    settings = KafkaSettings(bootstrap_servers=services.kafka, topic=topic, dlq_topic=topic + ".dlq",
                             group_id=f"g-{topic}", partitions=6, **quick)
    asyncio.run(ensure_topics(settings))
    payloads, _ = build_requests(300, 1, seed=4)
    messages = asyncio.run(produce(services.kafka, topic, [ExportTraceServiceRequest.FromString(p) for p in payloads]))

    async def until(condition, what: str, timeout: float = 60) -> None:
        for _ in range(int(timeout * 10)):  # bounded
            if condition():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def run() -> tuple[dict[int, set[int]], dict[int, int]]:
        async with KafkaBus(settings, produce=False, consume=True, max_batch=20, fetch_wait_ms=100) as bus:
            batches = bus.batches()
            held = await anext(batches)  # the batch the store is not taking
            await held.pause()
            everything = len(bus._consumer.assignment())
            async with KafkaBus(settings, produce=False, consume=True) as other:
                await until(lambda: other._consumer.assignment(), "the second member owning partitions")
            # it left: every partition comes back to the paused consumer
            await until(lambda: len(bus._consumer.assignment()) == everything, "the partitions coming back")
            await asyncio.sleep(2)  # keepalive polls run over the new assignment meanwhile
            await held.resume()
            assert held.stale  # fetched before the rebalances
            await held.discard()
            delivered: dict[int, set[int]] = {}
            while sum(map(len, delivered.values())) < messages:
                try:  # bounded: 15 s without a message is the end (offsets were dropped)
                    batch = await asyncio.wait_for(anext(batches), 15)
                except TimeoutError:
                    break
                for message in batch.messages:
                    delivered.setdefault(message.position.partition, set()).add(message.position.offset)
                await batch.ack()
            ends = await bus._consumer.end_offsets([TopicPartition(topic, p) for p in range(6)])
            return delivered, {tp.partition: end for tp, end in ends.items()}

    delivered, ends = asyncio.run(asyncio.wait_for(run(), 180))
    assert sum(ends.values()) == messages
    missing = {p: end - len(delivered.get(p, ())) for p, end in ends.items() if delivered.get(p, set()) != set(range(end))}
    assert not missing, f"offsets never delivered after the store came back (partition: count): {missing}"
