"""The collector's work on one batch: decode → normalise (+ cost, pseudonyms) → store.

The same code runs behind the in-process bus (`aitrail serve`) and behind Kafka
(`aitrail collector`). Messages that can never be ingested go to the dead-letter sink with
their reason (a message with spans the normaliser refuses is dead-lettered with the reason
naming them, and its other spans are stored); a store that is unavailable makes the whole
batch fail retriably (no commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aitrail.schemas.record import AuditRecord
from aitrail.schemas.timefmt import ns_to_iso

from aitrail import __version__
from aitrail.bus.base import OUTCOME_HEADER, RECORD_HEADER, Batch, BusMessage, Encoding, Signal
from aitrail.errors import AitrailError, BadRequest, Fatal, Unavailable
from aitrail.integrity import system
from aitrail.otlp import decode_logs, decode_traces
from aitrail.store.base import RecordWriter, WriteResult
from aitrail.tenancy import check_tenant

from .context import inherit_context, reader_behind
from .normalise import SpansRefused, normalise_logs, normalise_traces

log = logging.getLogger(__name__)


def hmac_pseudonymiser(secret: bytes) -> Callable[[str], str]:
    """Keyed pseudonyms: stable for one installation, not reversible without the key."""

    def pseudonymise(raw: str) -> str:
        return "u_" + hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()[:20]

    return pseudonymise


def pricer_for(table) -> Callable:
    """The normaliser's pricer: (provider, model, input, output, cached, at) → CostResult."""

    def price(provider, model, input_tokens, output_tokens, cached_input_tokens, at):
        return table.compute_cost(provider, model, input_tokens, output_tokens, cached_input_tokens, at=at)

    return price


@dataclass
class BatchResult:
    records: list[AuditRecord] = field(default_factory=list)
    dead: list[tuple[BusMessage, str]] = field(default_factory=list)
    # record_id -> the message it was normalised from (the last one, for an id sent twice)
    sources: dict[str, BusMessage] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        *,
        default_tenant: str,
        pricer: Callable | None,
        pseudonymise: Callable[[str], str],
    ) -> None:
        self.default_tenant = default_tenant
        self.pricer = pricer
        self.pseudonymise = pseudonymise

    def normalise(self, messages: list[BusMessage]) -> BatchResult:
        result = BatchResult()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        for message in messages:
            tenant = message.tenant or self.default_tenant
            # Kafka's timestamp makes a replay after a crash yield the very same records.
            ingested_at = now if message.timestamp_ms is None else ns_to_iso(message.timestamp_ms * 1_000_000)
            try:
                records = self._normalise_one(message, tenant, ingested_at)
            except SpansRefused as exc:  # the spans no store can hold: the message is dead-lettered for them
                result.dead.append((message, exc.message))
                records = exc.records  # and every other span of it is stored
            except AitrailError as exc:
                result.dead.append((message, exc.message))
                continue
            except Exception as exc:  # a bug or a shape we never saw: keep the input, say why
                log.exception("normalisation failed")
                result.dead.append((message, f"normalisation failed: {type(exc).__name__}: {exc}"))
                continue
            for record in records:
                if message.position is not None:
                    record.kafka = message.position
                result.sources[record.record_id] = message
            result.records.extend(records)
        return result

    def _normalise_one(self, message: BusMessage, tenant: str, ingested_at: str) -> list[AuditRecord]:
        common = dict(
            ingested_at=ingested_at, pricer=self.pricer, pseudonymise=self.pseudonymise,
            collector_version=__version__,
        )
        if message.signal == Signal.RECORDS:
            records = system.decode(message.payload)
            for record in records:
                check_tenant(record.tenant)
            return records
        # The tenant (the aitrail-tenant header, else the default) names the record's Merkle
        # log: one that could not be a log id is dead-lettered with the reason, never sealed.
        check_tenant(tenant)
        if message.signal == Signal.TRACES:
            return normalise_traces(message.decoded or _decode(decode_traces, message), tenant, **common)
        if message.signal == Signal.LOGS:
            return normalise_logs(message.decoded or _decode(decode_logs, message), tenant, **common)
        raise BadRequest(f"unknown signal {message.signal!r}")


async def checkpoint_timer(sequencing, period_s: float = 0.25, on_error: Callable[[], None] | None = None) -> None:
    """Cover the last leaves with a signed checkpoint when traffic stops (lag ≤ interval).
    Survives any exception (logged, counted with `on_error`): checkpoints must not stop."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await asyncio.to_thread(sequencing.tick)
        except AitrailError as exc:
            log.warning("checkpoint not stored, will retry: %s", exc.message)
            if on_error is not None:
                on_error()
        except Exception:
            log.exception("checkpoint timer failed, will retry")
            if on_error is not None:
                on_error()


def _decode(decode, message: BusMessage):
    """Decode as the message says; a Kafka message carries no content type, so on failure
    try the other OTLP encoding before giving up with the first error."""
    is_json = message.encoding == Encoding.JSON
    try:
        return decode(message.payload, is_json=is_json)
    except BadRequest as first:
        if message.position is None:
            raise
        try:
            return decode(message.payload, is_json=not is_json)
        except BadRequest:
            raise first from None


async def run_collector(
    batches,
    pipeline: Pipeline,
    store: RecordWriter,
    *,
    on_written: Callable[[BatchResult, WriteResult, float], None] | None = None,
    on_retry: Callable[[], None] | None = None,
    on_dead_letter: Callable[[str], None] | None = None,
    max_backoff_s: float = 30.0,
    give_up_after_s: float | None = None,
) -> None:
    """Consume batches until the bus stops (or the task is cancelled), in two overlapping stages: normalising batch N+1
    (Python) runs while batch N is written (SQLite and the network release the GIL).

    A retriable store error backs off and writes the same records again (writes are
    idempotent); a batch is acknowledged only once stored, its refused records (rejected by
    the store, or conflicts) dead-lettered first, and batches are acknowledged in order. With
    `give_up_after_s` (embedded mode, where senders wait on the batch) a batch that still
    cannot be stored fails and its senders get 503 and retry; without it (Kafka) the
    collector retries until the store is back, committing nothing meanwhile."""
    ready: asyncio.Queue[tuple[Batch, BatchResult | None] | None] = asyncio.Queue(maxsize=1)

    async def normalise_stage() -> None:
        async for batch in batches:
            try:
                result = await asyncio.to_thread(pipeline.normalise, list(batch.messages))
            except Exception:  # never let one batch stop the collector
                log.exception("normalising a batch failed unexpectedly")
                result = None
            await ready.put((batch, result))
        await ready.put(None)  # the bus stopped: the write stage finishes what it has, then ends

    async def write_stage() -> None:
        while (item := await ready.get()) is not None:
            batch, result = item
            if batch.stale:  # fetched ahead of a batch that failed: it is delivered again after it
                await batch.discard()
                continue
            try:
                if result is None:
                    raise Unavailable("normalisation failed unexpectedly; see the collector log")
                for message, reason in result.dead:
                    log.warning("dead letter (%s): %s", _where(message), reason)
                    await batch.dead_letter(message, reason, {OUTCOME_HEADER: "invalid"})
                    if on_dead_letter is not None:
                        on_dead_letter(reason)
                written = await _write_with_retries(store, result, batch, on_written, on_retry, max_backoff_s, give_up_after_s)
                if written is not None:
                    await _dead_letter_refused(batch, result, written, on_dead_letter)
                    if batch.stale:  # a rebalance while it was written: the records written stay
                        await batch.discard()  # (redelivery finds them), the offsets are not committed
                    else:
                        await batch.ack()
            except (asyncio.CancelledError, Fatal):
                raise
            except Exception as exc:
                log.exception("batch failed unexpectedly")
                await batch.fail(exc if isinstance(exc, AitrailError) else Unavailable(f"ingest failed: {exc}"))

    async with asyncio.TaskGroup() as group:
        group.create_task(normalise_stage())
        group.create_task(write_stage())


def _where(message: BusMessage) -> str:
    position = message.position
    return "in-process" if position is None else f"{position.topic}/{position.partition}@{position.offset}"


async def _dead_letter_refused(
    batch: Batch, result: BatchResult, written: WriteResult, on_dead_letter: Callable[[str], None] | None
) -> None:
    """Each record the store refused goes to the dead letters as its source message, with the
    outcome, the record id and the store's reason; durable before the batch is acknowledged."""
    records = {r.record_id: r for r in result.records}
    for record_id, (outcome, why) in sorted(written.refused.items()):
        message = result.sources.get(record_id)
        if message is None:  # every record comes from a message of the batch
            raise AssertionError(f"the store refused record {record_id}, which no message of the batch holds")
        record = records[record_id]
        reason = (f"{outcome}: record {record_id} ({record.kind}, trace {record.trace_id}, span {record.span_id}, "
                  f"tenant {record.tenant}): {why}")
        log.warning("record %s refused by the store (%s), dead-lettered (%s): %s", record_id, outcome, _where(message), why)
        await batch.dead_letter(message, reason, {OUTCOME_HEADER: str(outcome), RECORD_HEADER: record_id})
        if on_dead_letter is not None:
            on_dead_letter(reason)


async def _write_with_retries(
    store, result, batch, on_written, on_retry, max_backoff_s, give_up_after_s
) -> WriteResult | None:
    try:
        return await _retry_write(store, result, batch, on_written, on_retry, max_backoff_s, give_up_after_s)
    finally:
        await batch.resume()


async def _retry_write(store, result, batch, on_written, on_retry, max_backoff_s, give_up_after_s) -> WriteResult | None:
    """The batch's write result once stored (rejections and conflicts included); None when
    it failed for good (`batch.fail` was called)."""
    delay, first_failure = 0.1, None
    while True:
        started = time.perf_counter()
        try:
            # Trace context from ancestors already stored: read here, once the batch before is.
            result.records = await asyncio.to_thread(inherit_context, reader_behind(store), result.records)
            written = await asyncio.to_thread(store.write, result.records)
        except AitrailError as exc:
            now = time.monotonic()
            first_failure = first_failure or now
            if not exc.retriable or (give_up_after_s is not None and now - first_failure > give_up_after_s):
                log.error("batch failed: %s", exc.message)
                await batch.fail(exc)
                return None
            log.warning("store unavailable, retrying in %.1fs: %s", delay, exc.message)
            if first_failure == now:
                await batch.pause()  # keep our partitions and our place in the group meanwhile
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
            continue
        if on_written is not None:
            on_written(result, written, time.perf_counter() - started)
        return written
