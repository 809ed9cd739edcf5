"""The bus seam: how OTLP payloads travel from the receivers to the collector.

`LocalBus` (in-process, embedded mode) and `KafkaBus` implement it. Messages carry OTLP
protobuf exactly as the OpenTelemetry Collector's kafka exporter writes it (`otlp_proto`),
so a stock collector can stand in for our gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aitrail.schemas.record import KafkaPosition


# Headers of a dead letter that say why it was set aside, on both buses (Kafka: message
# headers of the dead-letter topic; embedded: the message handed to the dead-letter sink).
OUTCOME_HEADER = "aitrail-dlq-outcome"  # invalid (the message), rejected or conflict (one record of it)
RECORD_HEADER = "aitrail-dlq-record-id"  # the record refused, for `rejected` and `conflict`


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"
    RECORDS = "records"  # aitrail's own system records (retention, erasure, access), JSON


class Encoding(StrEnum):
    PROTO = "otlp_proto"
    JSON = "otlp_json"


@dataclass
class BusMessage:
    signal: Signal
    payload: bytes  # TracesData / LogsData (same wire format as the Export*ServiceRequest)
    tenant: str | None = None  # None: the collector's default tenant
    key: bytes | None = None  # trace id, so one trace stays on one partition
    encoding: Encoding = Encoding.PROTO
    position: KafkaPosition | None = None  # set on consumption from Kafka
    headers: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int | None = None  # Kafka's timestamp: the deterministic ingest time on replay
    # In-process only: the already decoded request, so embedded mode decodes once.
    decoded: object | None = field(default=None, repr=False, compare=False)


class Batch(Protocol):
    messages: Sequence[BusMessage]

    async def ack(self) -> None:
        """Everything in the batch is durable downstream (or dead-lettered): commit. After
        this the messages are never delivered again to this consumer group."""
        ...

    async def dead_letter(self, message: BusMessage, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """Set `message` aside with the reason (and `headers`, e.g. `OUTCOME_HEADER`); it must
        be durable before this returns."""
        ...

    @property
    def stale(self) -> bool:
        """True for a batch fetched ahead of one that then failed (Kafka): writing or
        acknowledging it would move the committed position past the failed batch. The
        consumer must `discard()` it instead; it is delivered again after the failed one."""
        ...

    async def discard(self) -> None:
        """Give a stale batch back, unprocessed, to be delivered again."""
        ...

    async def pause(self) -> None:
        """The batch waits for the store: stop fetching more, but keep the consumer's place
        (Kafka: partitions paused and polled, so the group does not evict the consumer)."""
        ...

    async def resume(self) -> None:
        """Fetch again after `pause`."""
        ...

    async def fail(self, error: BaseException) -> None:
        """Processing failed and will not be retried by this consumer: publishers waiting on
        these messages (embedded mode) get the error; a Kafka consumer rewinds so the batch
        is delivered again."""
        ...


class Bus(Protocol):
    async def publish(self, messages: Sequence[BusMessage]) -> None:
        """Return only once the messages can no longer be lost: Kafka acknowledged them with
        acks=all, or (embedded) the collector stored them. Raises `Unavailable` when that
        cannot be had; the caller answers 503 and the sender retries."""
        ...

    def batches(self) -> AsyncIterator[Batch]:
        """Batches in arrival order (per partition). The next batch of a partition comes only
        after the previous one was acknowledged or failed."""
        ...
