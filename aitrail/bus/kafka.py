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
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    ClusterAuthorizationFailedError, GroupAuthorizationFailedError, InvalidTopicError, KafkaError,
    MessageSizeTooLargeError, RecordTooLargeError, TopicAlreadyExistsError, TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed, UnsupportedVersionError,
)

from aitrail.errors import Fatal, PayloadTooLarge, Unavailable
from aitrail.schemas.record import KafkaPosition
from aitrail.settings import KafkaSettings
from aitrail.store.rowmac import MAC_HEADER, RowMac, kafka_dead_letter_headers

from .base import OUTCOME_HEADER, RECORD_HEADER, BusMessage, Encoding, Signal  # noqa: F401  (dead-letter headers, re-exported)

log = logging.getLogger(__name__)

TENANT_HEADER = "aitrail-tenant"
SIGNAL_HEADER = "aitrail-signal"
REASON_HEADER = "aitrail-dlq-reason"
TRUNCATED_HEADER = "aitrail-dlq-truncated"
SHA256_HEADER = "aitrail-dlq-payload-sha256"
SIZE_HEADER = "aitrail-dlq-payload-bytes"
SOURCE_TOPIC_HEADER = "aitrail-source-topic"
SOURCE_PARTITION_HEADER = "aitrail-source-partition"
SOURCE_OFFSET_HEADER = "aitrail-source-offset"

# The spans topic holds the gateway's largest message plus framing; the dead-letter topic holds
# any spans message plus the reason and source-position headers the collector adds.
TOPIC_HEADROOM = 64 * 1024
DLQ_HEADROOM = 128 * 1024
_RECORD_OVERHEAD = 1024  # record batch framing around one message, generously
_MAX_REASON = 4000
# Errors no retry can fix: stop with the message instead of looping.
_FATAL = (
    TopicAuthorizationFailedError, ClusterAuthorizationFailedError, GroupAuthorizationFailedError,
    TransactionalIdAuthorizationFailed, InvalidTopicError, UnsupportedVersionError,
)

PartitionsCallback = Callable[[set[TopicPartition]], Awaitable[None]]


def decode_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {key: (value or b"").decode("utf-8", "replace") for key, value in headers or ()}


def message_from_record(record, topic: str, logs_topic: str | None = None) -> BusMessage:
    """A consumed Kafka record as a bus message (tenant, signal and encoding worked out).
    Without an `aitrail-signal` header, a record of `logs_topic` (the stock OpenTelemetry
    Collector's logs topic) holds logs, any other traces."""
    headers = decode_headers(record.headers)
    value: bytes = record.value or b""
    declared = headers.get(SIGNAL_HEADER)
    if declared in (Signal.LOGS, Signal.RECORDS, Signal.TRACES):
        signal = Signal(declared)
    else:
        signal = Signal.LOGS if logs_topic and topic == logs_topic else Signal.TRACES
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
    """Create the span, logs and dead-letter topics when missing; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in (settings.topic, settings.logs_topic, settings.dlq_topic) if t and t not in existing]
        if missing:
            limits = {settings.topic: settings.max_message_bytes + TOPIC_HEADROOM,
                      settings.logs_topic: settings.max_message_bytes + TOPIC_HEADROOM,
                      settings.dlq_topic: settings.max_message_bytes + TOPIC_HEADROOM + DLQ_HEADROOM}
            try:
                await admin.create_topics([
                    NewTopic(t, settings.partitions, settings.replication_factor,
                             topic_configs={"max.message.bytes": str(limits[t])})
                    for t in missing
                ])
            except TopicAlreadyExistsError:  # another process created it meanwhile
                pass
            log.info("created Kafka topics %s with %d partitions", ", ".join(missing), settings.partitions)
        return missing
    except KafkaError as exc:
        raise Unavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    finally:
        await admin.close()


async def topic_max_bytes(settings: KafkaSettings, topic: str) -> int | None:
    """The topic's `max.message.bytes` as the broker reports it (None when it cannot say)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15_000)
    try:
        await admin.start()
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
        )
        for response in responses:
            for _error, _message, _type, _name, entries in response.resources:
                for name, value, *_ in entries:
                    if name == "max.message.bytes" and value:
                        return int(value)
    except (KafkaError, ValueError, TypeError) as exc:
        log.warning("cannot read max.message.bytes of %s: %s", topic, exc)
    finally:
        await admin.close()
    return None


def fit_dead_letter(value: bytes, key: bytes | None, headers: dict[str, str], limit: int) -> tuple[bytes, dict[str, str]]:
    """The value and headers of a dead letter that fits in `limit` bytes: the whole payload
    when it fits, else its first bytes plus its SHA-256 and size, marked truncated (the
    source position headers say where the original still is)."""
    headers = {**headers, REASON_HEADER: headers.get(REASON_HEADER, "")[:_MAX_REASON]}
    framing = _RECORD_OVERHEAD + len(key or b"") + sum(len(k) + len(v.encode()) + 16 for k, v in headers.items())
    if framing + len(value) <= limit:
        return value, headers
    marks = {TRUNCATED_HEADER: "true", SHA256_HEADER: hashlib.sha256(value).hexdigest(), SIZE_HEADER: str(len(value))}
    framing += sum(len(k) + len(v) + 16 for k, v in marks.items())
    return value[: max(0, limit - framing)], {**headers, **marks}


class KafkaBatch:
    def __init__(self, bus: KafkaBus, messages: list[BusMessage]) -> None:
        self._bus = bus
        self.messages = messages
        self.generation = bus._generation  # fetched before or after the last rewind
        self.assignment = bus._assignment  # fetched before or after the last rebalance
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

    async def dead_letter(self, message: BusMessage, reason: str, headers: Mapping[str, str] | None = None) -> None:
        await self._bus._dead_letter(message, reason, headers)

    @property
    def stale(self) -> bool:
        """Fetched before a batch ahead of it failed and rewound, or before a rebalance (its
        partitions may have had another owner since, and come back): it must be neither
        written nor acknowledged (that would commit offsets past records nobody stored);
        `discard()` it. Checked again just before a batch is acknowledged."""
        return self.generation < self._bus._generation or self.assignment != self._bus._assignment

    async def fail(self, error: BaseException) -> None:
        log.warning("batch failed, rewinding %d partition(s): %s", len(self._first), error)
        self._bus._rewind(self._first, new_generation=True, seek=self.assignment == self._bus._assignment)

    async def pause(self) -> None:
        await self._bus._pause()

    async def resume(self) -> None:
        await self._bus._resume()

    async def discard(self) -> None:
        """Drop a stale batch: its partitions are rewound (never past the failed batch's start)
        so that Kafka delivers its messages again, after the failed batch's."""
        # After a rebalance the consumer restarts every partition at its committed offset
        # already: seeking to this batch's start could skip what lies before it.
        self._bus._rewind(self._first, new_generation=False, seek=self.assignment == self._bus._assignment)


class KafkaBus:
    """Producer and/or consumer. Use as an async context manager."""

    # The installation's row key (set by the collector): dead letters then carry `aitrail-dlq-mac`.
    row_mac: RowMac | None = None

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
        self._dlq_producer: AIOKafkaProducer | None = None
        self._dlq_limit = settings.max_message_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        # Rewinds: batches fetched before the last one are stale; `_floor` is where each
        # rewound partition restarts (the lowest first offset of the failed and stale batches).
        self._generation = 0
        self._floor: dict[TopicPartition, int] = {}
        self._assignment = 0  # rebalances seen (revocations and assignments)
        # While the store is away: partitions paused, polled anyway so the group keeps us.
        self._poll_lock = asyncio.Lock()
        self._keepalive: asyncio.Task | None = None
        self._keepalive_stop = asyncio.Event()

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
            if self._produce and self._consume:
                # Dead letters carry any spans message plus headers: sized to the topic's own limit.
                self._dlq_limit = await topic_max_bytes(self.settings, self.settings.dlq_topic) or (
                    self.settings.max_message_bytes + TOPIC_HEADROOM
                )
                self._dlq_producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers, acks="all", enable_idempotence=True,
                    max_request_size=self._dlq_limit + _RECORD_OVERHEAD, request_timeout_ms=10_000,
                    retry_backoff_ms=200,
                )
                await self._dlq_producer.start()
            if self._consume:
                self._consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.group_id,
                    enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=self._max_batch,
                    session_timeout_ms=self.settings.session_timeout_ms,
                    heartbeat_interval_ms=self.settings.heartbeat_interval_ms, max_poll_interval_ms=self.settings.max_poll_interval_ms,
                )
                topics = [self.settings.topic] + ([self.settings.logs_topic] if self.settings.logs_topic else [])
                self._consumer.subscribe(topics, listener=_Listener(self))
                await self._consumer.start()
        except KafkaError as exc:
            await self.close()
            raise Unavailable(f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._resume()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._dlq_producer is not None:
            await self._dlq_producer.stop()
            self._dlq_producer = None

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

    async def _dead_letter(self, message: BusMessage, reason: str, extra: Mapping[str, str] | None = None) -> None:
        """Durable before it returns: the offset is committed after it. Too big for the
        dead-letter topic → truncated with hash and size; a broker that is away → retried with
        back-off (the partition waits, as it does for the store); an error no retry can fix
        (authorisation, a missing or invalid topic) → `Fatal`, and the collector stops."""
        producer = self._dlq_producer or self._producer
        assert producer is not None, "dead letters need a producer"
        headers = {**message.headers, **(extra or {})}
        headers[REASON_HEADER] = reason
        if message.position is not None:
            headers[SOURCE_TOPIC_HEADER] = message.position.topic
            headers[SOURCE_PARTITION_HEADER] = str(message.position.partition)
            headers[SOURCE_OFFSET_HEADER] = str(message.position.offset)
        if self.row_mac is not None:
            headers[MAC_HEADER] = "0" * 64  # its size counts in the fitting; its value is made below
        limit = self._dlq_limit if producer is self._dlq_producer else self.settings.max_message_bytes
        delay = 0.5
        while True:
            value, fitted = fit_dead_letter(message.payload, message.key, headers, limit)
            if self.row_mac is not None:  # over what is sent, truncated or not (aitrail.store.rowmac)
                fitted = kafka_dead_letter_headers(self.row_mac, fitted, value)
            try:
                await producer.send_and_wait(
                    self.settings.dlq_topic, value=value, key=message.key,
                    headers=[(k, v.encode()) for k, v in fitted.items()],
                )
                if TRUNCATED_HEADER in fitted:
                    log.warning("dead letter of %d bytes truncated to %d to fit %s", len(message.payload), len(value),
                                self.settings.dlq_topic)
                return
            except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
                if limit <= 4096:
                    raise Fatal(f"the dead-letter topic {self.settings.dlq_topic} refuses even a 4 KB message: {exc}")
                limit //= 2  # the topic's limit is lower than it said: halve until it fits
                log.warning("dead letter too large for %s, retrying at %d bytes: %s", self.settings.dlq_topic, limit, exc)
            except _FATAL as exc:
                raise Fatal(f"cannot write the dead-letter topic {self.settings.dlq_topic}: {type(exc).__name__}: {exc}")
            except KafkaError as exc:
                log.warning("dead-letter topic unavailable, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- consuming ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop handing out batches (the one in flight still completes)."""
        self._stopping.set()

    async def batches(self) -> AsyncIterator[KafkaBatch]:
        assert self._consumer is not None, "KafkaBus was not opened for consuming"
        while not self._stopping.is_set():
            async with self._poll_lock:
                fetched = await self._consumer.getmany(timeout_ms=self._fetch_wait_ms, max_records=self._max_batch)
            messages = [
                message_from_record(record, tp.topic, self.settings.logs_topic)
                for tp, records in sorted(fetched.items(), key=lambda item: item[0].partition)
                for record in records
            ]
            if messages:
                yield KafkaBatch(self, messages)

    async def _pause(self) -> None:
        """Stop fetching from every assigned partition but keep polling, so that the consumer
        stays in its group (max_poll_interval_ms) and keeps its partitions while the batch in
        hand waits for the store. Partitions assigned meanwhile are paused as they come."""
        if self._keepalive is not None or self._consumer is None:
            return
        self._consumer.pause(*self._consumer.assignment())
        log.info("partitions paused while the store is unavailable: %s", sorted(map(tuple, self._consumer.paused())))

        stop = self._keepalive_stop = asyncio.Event()

        async def poll_while_paused() -> None:
            while not stop.is_set():
                async with self._poll_lock:
                    self._consumer.pause(*self._consumer.assignment())
                    self._give_back(await self._consumer.getmany(timeout_ms=500))

        self._keepalive = asyncio.create_task(poll_while_paused())

    def _give_back(self, fetched: Mapping[TopicPartition, Sequence]) -> None:
        """Records a keepalive poll returned are not ours to drop: each partition goes back to
        its first one, so they are delivered again once the store is back. (A poll that waits
        out a rebalance returns records of the partitions just assigned, which start unpaused:
        dropping them skipped hundreds of acknowledged spans whose offsets were then committed
        past.) Synchronous after the poll, so the position is exactly the one before it."""
        for tp, records in fetched.items():
            if records:
                self._consumer.seek(tp, records[0].offset)
                log.info("keepalive poll returned %d record(s) of %s:%d, given back at offset %d",
                         len(records), tp.topic, tp.partition, records[0].offset)

    def _assigned_while_paused(self, assigned: set[TopicPartition]) -> None:
        """Partitions assigned while the store is away are paused before anything is fetched."""
        if self._keepalive is not None and assigned and self._consumer is not None:
            self._consumer.pause(*assigned)

    async def _resume(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is None or self._consumer is None:
            return
        # Let the poll in progress end by itself (it returns within its timeout): cancelling it
        # in the middle of a group rejoin can leave the consumer out of its group, and the
        # group rebalancing without it until max_poll_interval_ms.
        self._keepalive_stop.set()
        try:
            await task
        except Exception:  # noqa: BLE001 - a failed poll ends the keepalive either way
            log.warning("the keepalive poll ended with an error", exc_info=True)
        self._consumer.resume(*self._consumer.paused())
        log.info("partitions resumed")

    @property
    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused()) if self._consumer is not None else set()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except KafkaError as exc:  # e.g. a rebalance took the partition: the new owner replays
            log.warning("offset commit failed (the messages will be delivered again): %s", exc)

    def _rewind(self, offsets: dict[TopicPartition, int], *, new_generation: bool, seek: bool = True) -> None:
        if new_generation:
            self._generation += 1
            self._floor = {}
        if not seek:
            return
        assigned = self._consumer.assignment()
        for tp, offset in offsets.items():
            start = min(offset, self._floor.get(tp, offset))
            self._floor[tp] = start
            if tp in assigned:
                self._consumer.seek(tp, start)

    def _rebalanced(self) -> None:
        """Every batch fetched so far is stale; partitions restart at their committed offsets."""
        self._assignment += 1
        self._floor = {}

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
        self._bus._rebalanced()
        if revoked and self._bus._on_revoked is not None:
            await self._bus._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        self._bus._rebalanced()
        self._bus._assigned_while_paused(set(assigned))
        if assigned and self._bus._on_assigned is not None:
            await self._bus._on_assigned(set(assigned))
