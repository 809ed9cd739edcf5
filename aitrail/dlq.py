"""Dead letters: list them, and replay them into the normal ingest path after a fix.

Two backends, one shape (`DeadLetterView`, `ReplayOutcome`):

- **embedded** (`aitrail serve`): the SQLite `dead_letters` table. Replay runs the same
  decode → normalise → seal → store path as the embedded collector, in this process. Replays
  are kept in a table of their own, `dead_letter_replays` (one row per replayed dead letter:
  when, the outcome, the dead letter its replay became if it failed again), so the write
  path's `dead_letters` table is never updated.
- **kafka** (`aitrail collector`): the dead-letter topic `kafka.dlq_topic`. A dead letter's
  id is `<partition>:<offset>` in that topic. Replay produces the message back onto the topic
  it came from (`aitrail-source-topic` when the collector reads it, else `kafka.topic`) with
  its original key and headers (tenant, signal), minus the dead-letter headers, plus
  `aitrail-replay-of`; the running collectors ingest it as any other message. Replays are
  marked in the compacted topic `<kafka.dlq_topic>.replayed` (key: the dead letter's id,
  value: JSON, the last value wins), chosen over a consumer group's committed offset because
  `--id` replays one dead letter out of order. The message is produced before its marker: a
  crash between the two replays it again next time, which ingest's idempotence makes
  harmless (deterministic record ids, stored records skipped).

Every dead letter carries a MAC made with the installation's row key (aitrail.store.rowmac):
the `mac` column of the table, the `aitrail-dlq-mac` header on the topic. One whose MAC is
missing or wrong was written by someone else (whoever can write the data folder or the
topic): `list` shows it as not authentic, `replay` refuses it (exit 1), so a forged dead
letter is never sealed as genuine.

A dead letter the collector had to truncate to fit the dead-letter topic
(`aitrail-dlq-truncated: true`) holds only the first bytes of its message: it cannot be
replayed, and is reported with the size and SHA-256 of the original and the source position
where the original stays readable until that topic's retention removes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from aitrail.bus.base import BusMessage, Encoding, Signal
from aitrail.errors import AitrailError, Unavailable

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]  # (what, done, total or None)

REPLAY_OF_HEADER = "aitrail-replay-of"
# What the collector set aside, when it says (aitrail.bus.base): `invalid` (the message), or
# `rejected` / `conflict` (one record of it, named by the record-id header).
_OUTCOME_HEADER = "aitrail-dlq-outcome"
_RECORD_HEADER = "aitrail-dlq-record-id"
_EMBEDDED_REPLAY_OF = "replay_of"
# Headers the collector adds when it dead-letters a message; a replay drops them.
_DEAD_LETTER_HEADER_PREFIXES = ("aitrail-dlq-", "aitrail-source-")
_BATCH = 200
_SCAN_STALL_S = 30.0  # a topic read that makes no progress this long: Kafka is away


class Backend(StrEnum):
    EMBEDDED = "embedded"
    KAFKA = "kafka"


class Outcome(StrEnum):
    STORED = "stored"  # ingested: its records are in the store
    FAILED_AGAIN = "failed_again"  # dead-lettered again, with the new reason
    SUBMITTED = "submitted"  # Kafka, without waiting: produced, outcome not awaited
    NOT_REPLAYABLE = "not_replayable"  # truncated: the dead letter lacks part of the message
    NOT_AUTHENTIC = "not_authentic"  # its MAC is missing or wrong: not written by aitrail (aitrail.store.rowmac)


@dataclass
class Replayed:
    at: str
    outcome: str
    reason: str | None = None  # the new reason when it failed again
    new_id: str | None = None  # the dead letter it became when it failed again
    to: dict[str, Any] | None = None  # Kafka: where it was produced {topic, partition, offset}


@dataclass
class DeadLetterView:
    id: str
    time: str
    tenant: str
    signal: str
    reason: str
    source: dict[str, Any] | None  # {topic, partition, offset} it was read from; None in-process
    size: int  # bytes of the original message
    stored_bytes: int  # bytes this dead letter holds (less than `size` when truncated)
    truncated: bool = False
    payload_sha256: str | None = None  # of the original, when truncated
    replayed: Replayed | None = None
    replay_of: str | None = None  # the dead letter whose replay failed again as this one
    refused: str | None = None  # `invalid` (the message), `rejected` or `conflict` (one record of it)
    record_id: str | None = None  # the record refused, for `rejected` and `conflict`
    authentic: bool | None = None  # its MAC verifies; None: no row key to check it with
    not_authentic: str | None = None  # why it is not authentic

    @property
    def replayable(self) -> bool:
        return not self.truncated and self.authentic is True

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["replayable"] = self.replayable
        return out


@dataclass
class Listing:
    backend: Backend
    count: int  # every match, not only the ones shown (`--limit`)
    data: list[DeadLetterView]

    def to_json(self) -> dict[str, Any]:
        return {"backend": str(self.backend), "count": self.count, "data": [d.to_json() for d in self.data]}


@dataclass
class ReplayOutcome:
    id: str
    outcome: Outcome
    detail: str = ""  # the new reason, or why it cannot be replayed
    new_id: str | None = None


@dataclass
class ReplayReport:
    backend: Backend
    outcomes: list[ReplayOutcome] = field(default_factory=list)
    note: str | None = None  # e.g. the collector has not processed the replays yet

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)


def backend_for(settings, requested: str | None) -> Backend:
    """`--backend`, else Kafka when the pipeline is configured (`opensearch.url` set), else embedded."""
    if requested:
        return Backend(requested)
    return Backend.KAFKA if settings.opensearch.url else Backend.EMBEDDED


def list_dead_letters(
    settings, backend: Backend, *, tenant: str | None = None, limit: int | None = 50,
    include_replayed: bool = False, progress: Progress | None = None,
) -> Listing:
    """Dead letters in arrival order; `limit` keeps the newest. Without `include_replayed`
    only those still waiting for a replay."""
    if backend == Backend.EMBEDDED:
        letters = _Embedded(settings).views(tenant)
    else:
        letters = asyncio.run(_Kafka(settings).views(tenant, progress))
    if not include_replayed:
        letters = [d for d in letters if d.replayed is None]
    shown = letters if limit is None or limit <= 0 else letters[-limit:]
    return Listing(backend, len(letters), shown)


def replay_dead_letters(
    settings, backend: Backend, *, dead_letter_id: str | None = None, tenant: str | None = None,
    wait_s: float = 120.0, progress: Progress | None = None,
) -> ReplayReport:
    """Re-submit the dead letters not yet replayed (or the one `dead_letter_id`) into the
    normal ingest path and mark each replayed. Raises `AitrailError` (with a sentence) when
    it cannot run: store or Kafka away, no such dead letter, one already replayed."""
    if backend == Backend.EMBEDDED:
        return _Embedded(settings).replay(dead_letter_id, tenant, progress)
    return asyncio.run(_Kafka(settings).replay(dead_letter_id, tenant, wait_s, progress))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _iso_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _guess_encoding(payload: bytes) -> Encoding:
    stripped = payload.strip()
    return Encoding.JSON if stripped[:1] == b"{" and stripped[-1:] == b"}" else Encoding.PROTO


def _signal(value: str | None) -> Signal:
    try:
        return Signal(value) if value else Signal.TRACES
    except ValueError:
        return Signal.TRACES


def _authenticity(mac, ok: Callable[[], bool], has_mac: bool, key_path) -> tuple[bool | None, str | None]:
    if mac is None:
        return None, f"cannot be authenticated: no row key at {key_path} (the collector creates it when it starts)"
    if ok():
        return True, None
    return False, ("not authentic: " + ("it carries no MAC" if not has_mac else "its MAC does not verify")
                   + ", so it was not written by aitrail (the store or topic was altered); it is not replayed")


def _not_replayable(view: DeadLetterView) -> str:
    where = view.source
    original = (f"the original is at {where['topic']} partition {where['partition']} offset {where['offset']} "
                "until that topic's retention removes it") if where else "the original is not kept anywhere"
    return (f"truncated to fit the dead-letter topic: it holds {view.stored_bytes} of the message's {view.size} "
            f"bytes (sha256 {view.payload_sha256 or 'unknown'}), so it cannot be replayed; {original}")


# -- embedded: the SQLite dead_letters table -------------------------------------------------

_REPLAYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letter_replays (
    dead_letter_id INTEGER PRIMARY KEY,
    replayed_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    new_dead_letter_id INTEGER
)
"""


class _Embedded:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.path = Path(settings.data_dir) / "aitrail.db"
        self.default_tenant = settings.collector.default_tenant
        self.mac = None

    def _attach_row_key(self) -> None:
        """The row key (created, and the store's rows authenticated, if it is missing: as
        `aitrail serve` does), once the store is known to exist."""
        from aitrail.custody import attach_row_key
        from aitrail.store.sqlite import SqliteStore

        store = SqliteStore(self.path)
        try:
            self.mac = attach_row_key(store, self.settings)
        finally:
            store.close()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise AitrailError(f"no embedded store at {self.path} (set --data-dir, or --backend kafka for the pipeline)")
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute(_REPLAYS_SCHEMA)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the embedded store {self.path}: {exc}") from exc
        return conn

    def _rows(self, conn: sqlite3.Connection, dead_letter_id: int | None = None) -> list[sqlite3.Row]:
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("SELECT 1 FROM dead_letters LIMIT 0")
        except sqlite3.OperationalError:
            return []  # a store made before dead letters existed has none
        sql = ("SELECT d.*, r.replayed_at AS r_at, r.outcome AS r_outcome, r.reason AS r_reason, "
               "r.new_dead_letter_id AS r_new FROM dead_letters d "
               "LEFT JOIN dead_letter_replays r ON r.dead_letter_id = d.id")
        if dead_letter_id is not None:
            return conn.execute(sql + " WHERE d.id = ?", (dead_letter_id,)).fetchall()
        return conn.execute(sql + " ORDER BY d.id").fetchall()

    def _view(self, row: sqlite3.Row) -> DeadLetterView:
        headers = json.loads(row["headers"] or "{}")
        payload = row["payload"] or b""
        source = None
        if "aitrail-source-topic" in headers:
            source = {"topic": headers["aitrail-source-topic"],
                      "partition": int(headers.get("aitrail-source-partition", -1)),
                      "offset": int(headers.get("aitrail-source-offset", -1))}
        replayed = None
        if row["r_at"] is not None:
            replayed = Replayed(at=row["r_at"], outcome=row["r_outcome"], reason=row["r_reason"],
                                new_id=None if row["r_new"] is None else str(row["r_new"]))
        truncated = headers.get("aitrail-dlq-truncated") == "true"
        from aitrail.custody import row_key_path
        from aitrail.store.sqlite import _dead_letter_ok

        tag = row["mac"] if "mac" in row.keys() else None
        fields = (row["id"], row["at"], row["reason"], row["headers"], payload, tag)
        authentic, why = _authenticity(self.mac, lambda: _dead_letter_ok(self.mac, fields), tag is not None,
                                       row_key_path(self.settings))
        return DeadLetterView(
            authentic=authentic, not_authentic=why,
            id=str(row["id"]), time=row["at"], tenant=self._tenant(headers) or self.default_tenant,
            signal=str(_signal(headers.get("signal") or headers.get("aitrail-signal"))), reason=row["reason"],
            source=source, size=int(headers.get("aitrail-dlq-payload-bytes", len(payload))) if truncated else len(payload),
            stored_bytes=len(payload), truncated=truncated, payload_sha256=headers.get("aitrail-dlq-payload-sha256"),
            replayed=replayed, replay_of=headers.get(_EMBEDDED_REPLAY_OF), refused=headers.get(_OUTCOME_HEADER),
            record_id=headers.get(_RECORD_HEADER),
        )

    @staticmethod
    def _tenant(headers: dict[str, str]) -> str | None:
        return headers.get("tenant") or headers.get("aitrail-tenant") or None

    def views(self, tenant: str | None) -> list[DeadLetterView]:
        conn = self._connect()
        try:
            self._attach_row_key()
            views = [self._view(row) for row in self._rows(conn)]
        finally:
            conn.close()
        return [v for v in views if tenant is None or v.tenant == tenant]

    def replay(self, dead_letter_id: str | None, tenant: str | None, progress: Progress | None) -> ReplayReport:
        from aitrail.collector.cost import PriceTable
        from aitrail.collector.pipeline import Pipeline, hmac_pseudonymiser, pricer_for
        from aitrail.collector.sequencing import open_sequencing
        from aitrail.store.sqlite import SqliteStore

        conn = self._connect()
        try:
            self._attach_row_key()
            rows = self._select(conn, dead_letter_id, tenant)
            report = ReplayReport(Backend.EMBEDDED)
            replayable = []
            for row, view in rows:
                if view.truncated:
                    report.outcomes.append(ReplayOutcome(view.id, Outcome.NOT_REPLAYABLE, _not_replayable(view)))
                elif view.authentic is not True:
                    log.warning("dead letter %s refused: %s", view.id, view.not_authentic)
                    report.outcomes.append(ReplayOutcome(view.id, Outcome.NOT_AUTHENTIC, view.not_authentic or ""))
                else:
                    replayable.append(row)
            if not replayable:
                return report
            store = SqliteStore(self.path)
            store.row_mac = self.mac  # the dead letters it writes again carry MACs; its secrets are checked
            try:
                pipeline = Pipeline(
                    default_tenant=self.default_tenant, pricer=pricer_for(PriceTable.load(self.settings.prices_file)),
                    pseudonymise=hmac_pseudonymiser(store.secret("pseudonym")),
                )
                # Every batch under a checkpoint of its own: this process ends right after.
                sealing = self.settings.model_copy(
                    update={"integrity": self.settings.integrity.model_copy(update={"checkpoint_every": 1})}
                )
                sequencing = open_sequencing(sealing, store, create_key=True)  # as `aitrail serve` does
                writer = sequencing or store
                done = 0
                for start in range(0, len(replayable), _BATCH):
                    chunk = replayable[start:start + _BATCH]
                    report.outcomes += self._replay_chunk(conn, store, writer, pipeline, chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("replaying dead letters", done, len(replayable))
            finally:
                store.close()
            return report
        finally:
            conn.close()

    def _select(self, conn, dead_letter_id: str | None, tenant: str | None) -> list[tuple[sqlite3.Row, DeadLetterView]]:
        if dead_letter_id is not None:
            if not dead_letter_id.isdigit():
                raise AitrailError(f"no dead letter {dead_letter_id}: embedded dead-letter ids are numbers "
                                   "(see `aitrail dlq list`)")
            rows = self._rows(conn, int(dead_letter_id))
            if not rows:
                raise AitrailError(f"no dead letter {dead_letter_id} in {self.path}")
            view = self._view(rows[0])
            if view.replayed is not None:
                raise AitrailError(_already(view))
            if view.truncated:
                raise AitrailError(f"dead letter {view.id} is {_not_replayable(view)}")
            return [(rows[0], view)]  # one not authentic is refused by the caller (exit 1)
        out = []
        for row in self._rows(conn):
            view = self._view(row)
            if view.replayed is None and (tenant is None or view.tenant == tenant):
                out.append((row, view))
        return out

    def _replay_chunk(self, conn, store, writer, pipeline, rows) -> list[ReplayOutcome]:
        messages = []
        for row in rows:
            headers = {**json.loads(row["headers"] or "{}"), _EMBEDDED_REPLAY_OF: str(row["id"])}
            payload = row["payload"] or b""
            messages.append(BusMessage(
                signal=_signal(headers.get("signal") or headers.get("aitrail-signal")), payload=payload,
                tenant=self._tenant(headers), encoding=_guess_encoding(payload), headers=headers,
            ))
        # One message at a time through the normaliser, so every record and every refusal is
        # traced back to the dead letter it came from.
        records, origin, produced = [], {}, set()
        refusals: list[tuple[int, BusMessage, str, dict[str, str]]] = []
        for index, message in enumerate(messages):
            result = pipeline.normalise([message])
            refusals += [(index, dead, reason, {_OUTCOME_HEADER: "invalid"}) for dead, reason in result.dead]
            for record in result.records:
                origin.setdefault(record.record_id, index)
                records.append(record)
                produced.add(index)
        for record_id, (outcome, why) in _write(writer, records).items():  # refused by the store, per record
            if record_id in origin:
                index = origin[record_id]
                refusals.append((index, messages[index], f"{outcome}: record {record_id}: {why}",
                                 {_OUTCOME_HEADER: outcome, _RECORD_HEADER: record_id}))
        failed: dict[int, tuple[str, str | None]] = {}
        for index, dead, reason, marks in refusals:
            source = messages[index]
            # Dead-lettered again through the store's own dead-letter path, with the new reason.
            payload = dead.payload or (dead.decoded.SerializeToString() if dead.decoded is not None else source.payload)
            store.add_dead_letter(reason, payload, {
                "signal": str(dead.signal), "tenant": dead.tenant or "", _EMBEDDED_REPLAY_OF: str(rows[index]["id"]),
                **marks,
            })
            if index not in failed:
                found = conn.execute(
                    "SELECT max(id) FROM dead_letters WHERE json_extract(headers, '$.replay_of') = ?",
                    (str(rows[index]["id"]),),
                ).fetchone()
                failed[index] = (reason, None if found[0] is None else str(found[0]))
        outcomes = []
        for index, row in enumerate(rows):
            reason, new_id = failed.get(index, (None, None))
            outcome = Outcome.FAILED_AGAIN if index in failed else Outcome.STORED
            conn.execute(
                "INSERT OR REPLACE INTO dead_letter_replays (dead_letter_id, replayed_at, outcome, reason, "
                "new_dead_letter_id) VALUES (?, ?, ?, ?, ?)",
                (row["id"], _now(), str(outcome), reason, None if new_id is None else int(new_id)),
            )
            detail = reason or ("" if index in produced else "nothing in it to store: no span or log record "
                                                              "aitrail records")
            outcomes.append(ReplayOutcome(str(row["id"]), outcome, detail, new_id))
        return outcomes


def _write(writer, records, attempts: int = 8) -> dict[str, tuple[str, str]]:
    """Store with the collector's idempotent write; returns the records the store refused
    (record id → (`rejected` or `conflict`, reason)). A log another process advanced meanwhile (`aitrail serve` running:
    `FencedError`) or a busy store is retried a few times; a sealed batch the store refuses
    records of (an error naming them in `rejected`) is written again without them."""
    pending, refused, delay = list(records), {}, 0.1
    for attempt in range(attempts):
        try:
            result = writer.write(pending)
        except AitrailError as exc:
            named = getattr(exc, "rejected", None)
            if named and attempt < attempts - 1:
                refused.update({record_id: ("rejected", why) for record_id, why in named.items()})
                pending = [r for r in pending if r.record_id not in named]
                continue
            if not exc.retriable or attempt == attempts - 1:
                raise
            log.warning("store busy, retrying in %.1fs: %s", delay, exc.message)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        for record_id, (outcome, reason) in (getattr(result, "refused", None) or {}).items():
            refused[record_id] = (str(outcome), reason)
        return refused
    raise Unavailable("the store kept refusing the replayed records")


def _already(view: DeadLetterView) -> str:
    replayed = view.replayed
    text = f"dead letter {view.id} was already replayed at {replayed.at} ({replayed.outcome})"
    if replayed.outcome == Outcome.FAILED_AGAIN and replayed.new_id:
        return text + f"; it failed again as dead letter {replayed.new_id}: replay that one"
    return text + "; a dead letter is replayed once"


# -- kafka: the dead-letter topic ------------------------------------------------------------


def marker_topic(settings) -> str:
    """The compacted topic where replays are marked: `<kafka.dlq_topic>.replayed`."""
    return f"{settings.kafka.dlq_topic}.replayed"


def _kafka_id(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def _parse_kafka_id(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise AitrailError(f"no dead letter {text}: Kafka dead-letter ids are <partition>:<offset> "
                           "(see `aitrail dlq list`)")
    return int(partition), int(offset)


async def _stop(consumer) -> None:
    """aiokafka's group-less consumer can raise CancelledError from stop(); nothing is lost then."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # we are being cancelled (Ctrl-C): let it through
            raise
        log.debug("Kafka consumer stop was cancelled")


class _Kafka:
    def __init__(self, settings) -> None:
        from aitrail.bus.kafka import DLQ_HEADROOM, TOPIC_HEADROOM

        self.settings = settings
        self.kafka = settings.kafka
        self.default_tenant = settings.collector.default_tenant
        self.markers_topic = marker_topic(settings)
        self.fetch_bytes = self.kafka.max_message_bytes + TOPIC_HEADROOM + DLQ_HEADROOM + 64 * 1024
        self.max_request = self.kafka.max_message_bytes + TOPIC_HEADROOM
        from aitrail.custody import load_row_key, row_key_path

        self.mac, self.key_path = load_row_key(settings), row_key_path(settings)

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach Kafka at {self.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}")

    def consumed_topics(self) -> set[str]:
        """The topics the collectors read: where a replay may go back to."""
        return {self.kafka.topic} | ({self.kafka.logs_topic} if self.kafka.logs_topic else set())

    async def _topics(self) -> set[str]:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=15_000)
        try:
            await admin.start()
            return set(await admin.list_topics())
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await admin.close()

    async def _ensure_marker_topic(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError, TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=15_000)
        try:
            await admin.start()
            if self.markers_topic in set(await admin.list_topics()):
                return
            try:
                await admin.create_topics([NewTopic(self.markers_topic, 1, self.kafka.replication_factor,
                                                    topic_configs={"cleanup.policy": "compact"})])
            except TopicAlreadyExistsError:
                pass
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await admin.close()

    async def _scan(self, topic: str, *, start: dict[int, int] | None = None, progress: Progress | None = None,
                    what: str = "", keep: Callable[[Any], Any] | None = None) -> list:
        """Every record of `topic` (from `start` offsets per partition, else the beginning) up
        to its end as it is now; with `keep`, what it returns for each record, None left out
        (so that payloads not needed are not held)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=self.fetch_bytes, fetch_max_bytes=self.fetch_bytes,
            request_timeout_ms=30_000,
        )
        try:
            await consumer.start()
            partitions = await consumer._client.fetch_all_metadata()  # noqa: SLF001 (aiokafka exposes no public call)
            numbers = sorted(partitions.partitions_for_topic(topic) or ())
            tps = [TopicPartition(topic, p) for p in numbers]
            if not tps:
                return []
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            firsts = await consumer.beginning_offsets(tps)
            begin = {tp: max(firsts[tp], (start or {}).get(tp.partition, 0)) for tp in tps}
            for tp in tps:
                consumer.seek(tp, begin[tp])
            pending = {tp for tp in tps if begin[tp] < ends[tp]}
            total = sum(max(0, ends[tp] - begin[tp]) for tp in tps)
            records, scanned, last_progress = [], 0, time.monotonic()
            while pending:
                fetched = await consumer.getmany(*pending, timeout_ms=500)
                if fetched:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > _SCAN_STALL_S:
                    raise Unavailable(f"reading {topic} from Kafka at {self.kafka.bootstrap_servers} made no "
                                      f"progress for {_SCAN_STALL_S:.0f} s")
                for tp, batch in fetched.items():
                    for record in batch:
                        if record.offset >= ends[tp]:
                            continue
                        scanned += 1
                        item = record if keep is None else keep(record)
                        if item is not None:
                            records.append(item)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                if progress is not None and what:
                    progress(what, min(scanned, total), total)
            return records
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await _stop(consumer)

    async def _end_offsets(self, topic: str) -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False)
        try:
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()  # noqa: SLF001
            tps = [TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(tps) if tps else {}
            return {tp.partition: offset for tp, offset in ends.items()}
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await _stop(consumer)

    async def _markers(self, topics: set[str]) -> dict[str, Replayed]:
        if self.markers_topic not in topics:
            return {}
        markers: dict[str, Replayed] = {}
        for record in await self._scan(self.markers_topic):
            if record.key is None:
                continue
            if record.value is None:  # a tombstone: the marker was removed by hand
                markers.pop(record.key.decode(), None)
                continue
            try:
                value = json.loads(record.value)
                markers[record.key.decode()] = Replayed(
                    at=value["at"], outcome=value["outcome"], reason=value.get("reason"), new_id=value.get("new_id"),
                    to=value.get("to"),
                )
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable replay marker at %s offset %d, ignored", self.markers_topic, record.offset)
        return markers

    def _view(self, record, markers: dict[str, Replayed]) -> DeadLetterView:
        from aitrail.bus.kafka import (
            REASON_HEADER, SHA256_HEADER, SIZE_HEADER, TENANT_HEADER, TRUNCATED_HEADER, decode_headers,
        )

        headers = decode_headers(record.headers)
        value = record.value or b""
        truncated = headers.get(TRUNCATED_HEADER) == "true"
        source = None
        if "aitrail-source-topic" in headers:
            source = {"topic": headers["aitrail-source-topic"],
                      "partition": int(headers.get("aitrail-source-partition", -1)),
                      "offset": int(headers.get("aitrail-source-offset", -1))}
        ident = _kafka_id(record.partition, record.offset)
        from aitrail.store.rowmac import MAC_HEADER, kafka_dead_letter_ok

        authentic, why = _authenticity(self.mac, lambda: kafka_dead_letter_ok(self.mac, headers, value),
                                       MAC_HEADER in headers, self.key_path)
        return DeadLetterView(
            authentic=authentic, not_authentic=why,
            id=ident, time=_iso_ms(record.timestamp), tenant=headers.get(TENANT_HEADER) or self.default_tenant,
            signal=str(self._signal(headers, source)), reason=headers.get(REASON_HEADER, ""), source=source,
            size=int(headers.get(SIZE_HEADER, len(value))) if truncated else len(value), stored_bytes=len(value),
            truncated=truncated, payload_sha256=headers.get(SHA256_HEADER), replayed=markers.get(ident),
            replay_of=headers.get(REPLAY_OF_HEADER, "").removeprefix(f"{self.kafka.dlq_topic}:") or None,
            refused=headers.get(_OUTCOME_HEADER), record_id=headers.get(_RECORD_HEADER),
        )

    def _signal(self, headers: dict[str, str], source: dict[str, Any] | None) -> Signal:
        """As the collector told it: the header, else a message of the logs topic holds logs."""
        from aitrail.bus.kafka import SIGNAL_HEADER

        if headers.get(SIGNAL_HEADER):
            return _signal(headers[SIGNAL_HEADER])
        from_logs = bool(self.kafka.logs_topic) and source is not None and source["topic"] == self.kafka.logs_topic
        return Signal.LOGS if from_logs else Signal.TRACES

    async def views(self, tenant: str | None, progress: Progress | None) -> list[DeadLetterView]:
        topics = await self._topics()
        if self.kafka.dlq_topic not in topics:
            return []
        markers = await self._markers(topics)
        def keep(record) -> DeadLetterView | None:
            view = self._view(record, markers)
            return view if tenant is None or view.tenant == tenant else None

        views = await self._scan(self.kafka.dlq_topic, progress=progress, what=f"reading {self.kafka.dlq_topic}",
                                 keep=keep)
        return sorted(views, key=lambda v: (v.time, *map(int, v.id.split(":"))))

    async def _one(self, partition: int, offset: int):
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        tp = TopicPartition(self.kafka.dlq_topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers, group_id=None, enable_auto_commit=False,
            max_partition_fetch_bytes=self.fetch_bytes, fetch_max_bytes=self.fetch_bytes,
        )
        try:
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()  # noqa: SLF001
            if partition not in (metadata.partitions_for_topic(self.kafka.dlq_topic) or ()):
                return None
            consumer.assign([tp])
            first, end = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
            if not first <= offset < end:
                return None
            consumer.seek(tp, offset)
            deadline = time.monotonic() + _SCAN_STALL_S
            while time.monotonic() < deadline:
                for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.offset == offset:
                        return record
                    if record.offset > offset:  # compacted or transaction marker: not there
                        return None
            raise Unavailable(f"reading {self.kafka.dlq_topic} from Kafka made no progress for {_SCAN_STALL_S:.0f} s")
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await _stop(consumer)

    def _replay_target(self, headers: dict[str, str]) -> str:
        source = headers.get("aitrail-source-topic")
        return source if source in self.consumed_topics() else self.kafka.topic

    async def replay(self, dead_letter_id: str | None, tenant: str | None, wait_s: float,
                     progress: Progress | None) -> ReplayReport:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from aitrail.bus.kafka import decode_headers

        topics = await self._topics()
        markers = await self._markers(topics)
        report = ReplayReport(Backend.KAFKA)
        if dead_letter_id is not None:
            partition, offset = _parse_kafka_id(dead_letter_id)
            record = await self._one(partition, offset) if self.kafka.dlq_topic in topics else None
            if record is None:
                raise AitrailError(f"no dead letter {dead_letter_id} in {self.kafka.dlq_topic}")
            view = self._view(record, markers)
            if view.replayed is not None:
                raise AitrailError(_already(view))
            if view.truncated:
                raise AitrailError(f"dead letter {view.id} is {_not_replayable(view)}")
            if view.authentic is not True:
                log.warning("dead letter %s refused: %s", view.id, view.not_authentic)
                report.outcomes.append(ReplayOutcome(view.id, Outcome.NOT_AUTHENTIC, view.not_authentic or ""))
                return report
            chosen = [(record, view)]
        else:
            if self.kafka.dlq_topic not in topics:
                return report

            def waiting(record):
                view = self._view(record, markers)
                if view.replayed is not None or (tenant is not None and view.tenant != tenant):
                    return None
                return (record if view.replayable else None), view  # a payload not replayed is not needed

            chosen = []
            found = await self._scan(self.kafka.dlq_topic, progress=progress, what=f"reading {self.kafka.dlq_topic}",
                                     keep=waiting)
            for record, view in sorted(found, key=lambda item: (item[1].time, *map(int, item[1].id.split(":")))):
                if view.truncated:
                    report.outcomes.append(ReplayOutcome(view.id, Outcome.NOT_REPLAYABLE, _not_replayable(view)))
                elif view.authentic is not True:
                    log.warning("dead letter %s refused: %s", view.id, view.not_authentic)
                    report.outcomes.append(ReplayOutcome(view.id, Outcome.NOT_AUTHENTIC, view.not_authentic or ""))
                else:
                    chosen.append((record, view))
        if not chosen:
            return report

        await self._ensure_marker_topic()
        dlq_before = await self._end_offsets(self.kafka.dlq_topic)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers, acks="all", enable_idempotence=True,
            max_request_size=self.max_request, request_timeout_ms=10_000, retry_backoff_ms=200, linger_ms=5,
        )
        produced: dict[str, tuple[str, int, int]] = {}  # dead letter id -> (topic, partition, offset)
        try:
            await producer.start()
            for start in range(0, len(chosen), _BATCH):
                chunk = chosen[start:start + _BATCH]
                sends = []
                for record, view in chunk:
                    headers = {k: v for k, v in decode_headers(record.headers).items()
                               if not k.startswith(_DEAD_LETTER_HEADER_PREFIXES)}
                    headers[REPLAY_OF_HEADER] = f"{self.kafka.dlq_topic}:{view.id}"
                    target = self._replay_target(decode_headers(record.headers))
                    sends.append((view, target, await producer.send(
                        target, value=record.value or b"", key=record.key,
                        headers=[(k, v.encode()) for k, v in headers.items()],
                    )))
                for view, target, future in sends:
                    metadata = await future
                    produced[view.id] = (target, metadata.partition, metadata.offset)
                # Marked only once the broker holds the replay (see the module docstring).
                marks = [await producer.send(self.markers_topic, key=view.id.encode(), value=self._marker(
                    Outcome.SUBMITTED, produced[view.id])) for view, _, _ in sends]
                await asyncio.gather(*marks)
                if progress is not None:
                    progress("replaying dead letters", len(produced), len(chosen))

            if wait_s <= 0:
                report.outcomes += [ReplayOutcome(i, Outcome.SUBMITTED, f"produced to {t} partition {p} offset {o}")
                                    for i, (t, p, o) in produced.items()]
                return report
            if not await self._wait_committed(produced.values(), wait_s, progress):
                report.outcomes += [ReplayOutcome(i, Outcome.SUBMITTED, f"produced to {t} partition {p} offset {o}")
                                    for i, (t, p, o) in produced.items()]
                report.note = (f"the collectors (consumer group {self.kafka.group_id}) have not processed the "
                               f"replayed messages within {wait_s:.0f} s, so their outcome is unknown: is a collector "
                               "running? Those that fail again appear in `aitrail dlq list`")
                return report
            again = await self._failed_again(dlq_before, produced)
            for ident, position in produced.items():
                if ident in again:
                    new_id, reason = again[ident]
                    report.outcomes.append(ReplayOutcome(ident, Outcome.FAILED_AGAIN, reason, new_id))
                    value = self._marker(Outcome.FAILED_AGAIN, position, reason=reason, new_id=new_id)
                else:
                    report.outcomes.append(ReplayOutcome(ident, Outcome.STORED))
                    value = self._marker(Outcome.STORED, position)
                await producer.send(self.markers_topic, key=ident.encode(), value=value)
            await producer.flush()
            return report
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await producer.stop()

    @staticmethod
    def _marker(outcome: Outcome, position: tuple[str, int, int], *, reason: str | None = None,
                new_id: str | None = None) -> bytes:
        topic, partition, offset = position
        return json.dumps({
            "at": _now(), "outcome": str(outcome), "reason": reason, "new_id": new_id,
            "to": {"topic": topic, "partition": partition, "offset": offset},
        }, sort_keys=True).encode()

    async def _wait_committed(self, positions: Iterable[tuple[str, int, int]], wait_s: float,
                              progress: Progress | None) -> bool:
        """Wait until the collectors' group has committed past every replayed message: each
        was then stored or dead-lettered again (a dead letter is durable before the commit)."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        needed: dict[TopicPartition, int] = {}
        for topic, partition, offset in positions:
            tp = TopicPartition(topic, partition)
            needed[tp] = max(needed.get(tp, 0), offset + 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=15_000)
        deadline = time.monotonic() + wait_s
        try:
            await admin.start()
            while True:
                committed = await admin.list_consumer_group_offsets(self.kafka.group_id, partitions=list(needed))
                behind = [tp for tp, offset in needed.items()
                          if tp not in committed or committed[tp].offset < offset]
                if progress is not None:
                    progress("waiting for the collectors", len(needed) - len(behind), len(needed))
                if not behind:
                    return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.5)
        except KafkaError as exc:
            raise self._unavailable(exc) from exc
        finally:
            await admin.close()

    async def _failed_again(self, dlq_before: dict[int, int],
                            produced: dict[str, tuple[str, int, int]]) -> dict[str, tuple[str, str]]:
        """Dead letters written since the replay started whose source is a replayed message:
        {replayed dead letter id: (new dead letter id, new reason)}."""
        from aitrail.bus.kafka import REASON_HEADER, decode_headers

        by_position = {position: ident for ident, position in produced.items()}
        out: dict[str, tuple[str, str]] = {}
        for record in await self._scan(self.kafka.dlq_topic, start=dlq_before):
            headers = decode_headers(record.headers)
            try:
                position = (headers.get("aitrail-source-topic"), int(headers.get("aitrail-source-partition", "")),
                            int(headers.get("aitrail-source-offset", "")))
            except ValueError:
                position = None
            ident = by_position.get(position)
            if ident is None:
                replay_of = headers.get(REPLAY_OF_HEADER, "")
                candidate = replay_of.removeprefix(f"{self.kafka.dlq_topic}:")
                ident = candidate if replay_of and candidate in produced else None
            if ident is not None and ident not in out:
                out[ident] = (_kafka_id(record.partition, record.offset), headers.get(REASON_HEADER, ""))
        return out


def exit_code(report: ReplayReport) -> int:
    """0: every dead letter replayed was stored (or submitted, without waiting); 1: some
    failed again or cannot be replayed (truncated, or not authentic); 2: the outcome could not be learnt."""
    if report.note is not None:
        return 2
    if any(report.count(o) for o in (Outcome.FAILED_AGAIN, Outcome.NOT_REPLAYABLE, Outcome.NOT_AUTHENTIC)):
        return 1
    return 0


def summary(report: ReplayReport) -> str:
    parts = [f"{report.count(o)} {str(o).replace('_', ' ')}" for o in Outcome if report.count(o)]
    return f"replayed {len(report.outcomes)} dead letter(s): " + (", ".join(parts) if parts else "none waiting")


def outcome_lines(outcomes: Sequence[ReplayOutcome]) -> list[str]:
    lines = []
    for o in outcomes:
        if o.outcome == Outcome.FAILED_AGAIN:
            lines.append(f"{o.id}: failed again" + (f" as dead letter {o.new_id}" if o.new_id else "") + f": {o.detail}")
        elif o.outcome in (Outcome.NOT_REPLAYABLE, Outcome.NOT_AUTHENTIC):
            lines.append(f"{o.id}: not replayed: {o.detail}")
        elif o.outcome == Outcome.SUBMITTED:
            lines.append(f"{o.id}: submitted ({o.detail})")
        else:
            lines.append(f"{o.id}: stored" + (f" ({o.detail})" if o.detail else ""))
    return lines
