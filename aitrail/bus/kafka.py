"""KafkaBus: the bus of the production pipeline (aiokafka).

Wire format, as the OpenTelemetry Collector's kafka exporter writes it: the value is OTLP
`TracesData` / `LogsData` protobuf (`otlp_proto`) or its JSON form (`otlp_json`); the key is
the trace id. Our gateway adds the headers `aitrail-tenant` (from the ingest key) and
`aitrail-signal` (`traces` or `logs`); messages without them are traces of the collector's
default tenant.

Publishing uses an idempotent producer with acks=all and returns only once Kafka has
acknowledged. Consuming commits offsets only when a batch is acknowledged; a failed batch is
rewound so it is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError

from aitrail.errors import PayloadTooLarge, Unavailable
from aitrail.schemas.record import KafkaPosition
from aitrail.settings import KafkaSettings

from .base import BusMessage, Encoding, Signal

log = logging.getLogger(__name__)

TENANT_HEADER = "aitrail-tenant"
SIGNAL_HEADER = "aitrail-signal"
REASON_HEADER = "aitrail-dlq-reason"

PartitionsCallback = Callable[[set[TopicPartition]], Awaitable[None]]


def decode_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {key: (value or b"").decode("utf-8", "replace") for key, value in headers or ()}


def message_from_record(record, topic: str) -> BusMessage:
    """A consumed Kafka record as a bus message (tenant, signal and encoding worked out)."""
    headers = decode_headers(record.headers)
    value: bytes = record.value or b""
    declared = headers.get(SIGNAL_HEADER)
    signal = Signal(declared) if declared in (Signal.LOGS, Signal.RECORDS) else Signal.TRACES
    # otlp_json is a JSON object; otlp_proto starts with field 1 (0x0A). The collector falls
    # back to the other decoding when this guess fails.
    stripped = value.strip()
    encoding = Encoding.JSON if stripped[:1] == b"{" and stripped[-1:] == b"}" else Encoding.PROTO
    return BusMessage(
        signal=signal, payload=value, tenant=headers.get(TENANT_HEADER) or None, key=record.key, encoding=encoding,
        position=KafkaPosition(topic=topic, partition=record.partition, offset=record.offset),
        headers=headers, timestamp_ms=record.timestamp,
    )


async def ensure_topics(settings: KafkaSettings) -> list[str]:
    """Create the span and dead-letter topics when missing; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in (settings.topic, settings.dlq_topic) if t not in existing]
        if missing:
            config = {"max.message.bytes": str(settings.max_message_bytes + 64 * 1024)}
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=config) for t in missing]
                )
            except TopicAlreadyExistsError:  # another process created it meanwhile
                pass
            log.info("created Kafka topics %s with %d partitions", ", ".join(missing), settings.partitions)
        return missing
    except KafkaError as exc:
        raise Unavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    finally:
        await admin.close()


class KafkaBatch:
    def __init__(self, bus: KafkaBus, messages: list[BusMessage]) -> None:
        self._bus = bus
        self.messages = messages
        self._first: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        for message in messages:
            position = message.position
            tp = TopicPartition(position.topic, position.partition)
            self._first.setdefault(tp, position.offset)
            self._next[tp] = position.offset + 1

    @property
    def partitions(self) -> set[TopicPartition]:
        return set(self._next)

    async def ack(self) -> None:
        await self._bus._commit(self._next)

    async def dead_letter(self, message: BusMessage, reason: str) -> None:
        await self._bus._dead_letter(message, reason)

    async def fail(self, error: BaseException) -> None:
        log.warning("batch failed, rewinding %d partition(s): %s", len(self._first), error)
        self._bus._rewind(self._first)


class KafkaBus:
    """Producer and/or consumer. Use as an async context manager."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        produce: bool = True,
        consume: bool = False,
        max_batch: int = 500,
        fetch_wait_ms: int = 200,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
        publish_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self._produce, self._consume = produce, consume
        self._max_batch = max_batch
        self._fetch_wait_ms = fetch_wait_ms
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._publish_timeout_s = publish_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> KafkaBus:
        await ensure_topics(self.settings)
        try:
            if self._produce:
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers, acks="all", enable_idempotence=True,
                    max_request_size=self.settings.max_message_bytes, linger_ms=5, request_timeout_ms=10_000,
                    retry_backoff_ms=200,
                )
                await self._producer.start()
            if self._consume:
                self._consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.group_id,
                    enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=self._max_batch,
                    session_timeout_ms=10_000, heartbeat_interval_ms=1_000, max_poll_interval_ms=300_000,
                )
                self._consumer.subscribe([self.settings.topic], listener=_Listener(self))
                await self._consumer.start()
        except KafkaError as exc:
            await self.close()
            raise Unavailable(f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ping(self) -> bool:
        """True when a broker answers a metadata request within 5 s."""
        if self._producer is not None:
            client = self._producer.client
        elif self._consumer is not None:
            client = self._consumer._client  # aiokafka keeps the consumer's client private
        else:
            return False
        try:
            await asyncio.wait_for(client.fetch_all_metadata(), 5)
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    # -- producing ------------------------------------------------------------------------

    async def publish(self, messages: Sequence[BusMessage]) -> None:
        assert self._producer is not None, "KafkaBus was not opened for producing"
        try:
            futures = [
                await self._producer.send(
                    self.settings.topic, value=m.payload, key=m.key,
                    headers=[(TENANT_HEADER, (m.tenant or "").encode()), (SIGNAL_HEADER, str(m.signal).encode())],
                )
                for m in messages
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self._publish_timeout_s)
        except MessageSizeTooLargeError as exc:
            raise PayloadTooLarge(
                f"a message exceeds Kafka's limit of {self.settings.max_message_bytes} bytes: {exc}"
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            raise Unavailable(f"Kafka did not acknowledge the data: {type(exc).__name__}: {exc}") from exc

    async def _dead_letter(self, message: BusMessage, reason: str) -> None:
        assert self._producer is not None, "dead letters need a producer"
        headers = dict(message.headers)
        headers[REASON_HEADER] = reason[:4000]
        if message.position is not None:
            headers["aitrail-source-topic"] = message.position.topic
            headers["aitrail-source-partition"] = str(message.position.partition)
            headers["aitrail-source-offset"] = str(message.position.offset)
        while True:  # a dead letter must not be lost: the offset is committed after it
            try:
                await self._producer.send_and_wait(
                    self.settings.dlq_topic, value=message.payload, key=message.key,
                    headers=[(k, v.encode()) for k, v in headers.items()],
                )
                return
            except KafkaError as exc:
                log.warning("dead-letter topic unavailable, retrying: %s", exc)
                await asyncio.sleep(1)

    # -- consuming ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop handing out batches (the one in flight still completes)."""
        self._stopping.set()

    async def batches(self) -> AsyncIterator[KafkaBatch]:
        assert self._consumer is not None, "KafkaBus was not opened for consuming"
        while not self._stopping.is_set():
            fetched = await self._consumer.getmany(timeout_ms=self._fetch_wait_ms, max_records=self._max_batch)
            messages = [
                message_from_record(record, tp.topic)
                for tp, records in sorted(fetched.items(), key=lambda item: item[0].partition)
                for record in records
            ]
            if messages:
                yield KafkaBatch(self, messages)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except KafkaError as exc:  # e.g. a rebalance took the partition: the new owner replays
            log.warning("offset commit failed (the messages will be delivered again): %s", exc)

    async def seek_forward(self, tp: TopicPartition, offset: int) -> None:
        """Start consuming `tp` at `offset` if the committed position is behind it (records up
        to there are already stored: a crash came between storing and committing)."""
        committed = await self._consumer.committed(tp)
        if committed is None or committed < offset:
            log.info("resuming %s at offset %d (committed: %s)", tp, offset, committed)
            self._consumer.seek(tp, offset)

    def _rewind(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

    async def lag(self) -> dict[TopicPartition, int]:
        """Messages between each assigned partition's position and its end."""
        consumer = self._consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)  # None until the first fetch from that partition
            out[tp] = 0 if end is None else max(0, end - await consumer.position(tp))
        return out


class _Listener(ConsumerRebalanceListener):
    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus

    async def on_partitions_revoked(self, revoked) -> None:
        if revoked and self._bus._on_revoked is not None:
            await self._bus._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        if assigned and self._bus._on_assigned is not None:
            await self._bus._on_assigned(set(assigned))
