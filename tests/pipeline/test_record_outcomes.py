"""Per-record outcomes of a batch, on every backend: stored, duplicate (same id, same
content), rejected with the store's reason, conflict (same id, other content). A refused
record never takes a leaf (every log still verifies), it is dead-lettered as its source
message with the reason, and only then is the batch acknowledged."""

from __future__ import annotations

import asyncio

import orjson

from aitrail.bus.base import OUTCOME_HEADER, RECORD_HEADER, BusMessage, Signal
from aitrail.bus.local import LocalBus
from aitrail.collector.pipeline import Pipeline, hmac_pseudonymiser, run_collector
from aitrail.collector.sequencing import Sequencing
from aitrail.integrity.note import Signer
from aitrail.integrity.verify import verify_all
from aitrail.schemas.record import AuditRecord, KafkaPosition
from aitrail.store.base import Outcome
from aitrail.store.sqlite import SqliteStore
from aitrail.tenancy import tenant_log_id
from tests.factories import completion, iso

SIGNER = Signer.generate("aitrail/test")
TOPIC = "t.spans"
LOG = tenant_log_id("acme", f"{TOPIC}.0")
# A completion claiming 2^63 input tokens: beyond SQLite's INTEGER and OpenSearch's long.
TOO_MANY_TOKENS = 2**63


def sequencing(store) -> Sequencing:
    return Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=2, checkpoint_interval_s=0)


def at(record: AuditRecord, offset: int) -> AuditRecord:
    return record.model_copy(update={"kafka": KafkaPosition(topic=TOPIC, partition=0, offset=offset)})


def batch(count: int, *, bad: set[int] = frozenset(), first: int = 0) -> list[AuditRecord]:
    return [
        at(completion(trace=first + i, time=iso(24, 8, i), answer=f"answer {first + i}",
                      **({"input_tokens": TOO_MANY_TOKENS} if i in bad else {})), first + i)
        for i in range(count)
    ]


def assert_all_verify(store) -> None:
    if hasattr(store, "settle"):
        store.settle()
    reports = verify_all(store, SIGNER.verifier())
    assert reports and all(r.ok for r in reports), [(r.log_id, r.failures) for r in reports if not r.ok]


def test_a_rejected_record_takes_no_leaf_and_the_others_are_sealed(store):
    seq = sequencing(store)
    records = batch(7, bad={1, 4})
    result = seq.write(records)
    refused = {records[1].record_id, records[4].record_id}
    assert set(result.rejected) == refused and all(result.rejected.values())
    assert (result.written, result.duplicates, result.conflicts) == (5, 0, {})
    assert [result.outcome(r.record_id) for r in records] == [
        Outcome.REJECTED if r.record_id in refused else Outcome.STORED for r in records
    ]
    assert store.existing(list(refused)) == {}
    sealed = list(store.records_in_log(LOG))
    assert [r.leaf_index for r in sealed] == list(range(5))  # consecutive leaves, no hole
    assert [r.kafka.offset for r in sealed] == [0, 2, 3, 5, 6]
    seq.tick()
    assert_all_verify(store)

    # Delivered again (a crash before the commit, maybe before the dead letters): the stored
    # ones are duplicates, the rejected ones rejected again (to be dead-lettered again, as their
    # log passed their offsets without them), and the log does not move.
    state = store.log_state(LOG)
    again = seq.write(records)
    assert (again.written, again.duplicates, set(again.rejected)) == (0, 5, refused)
    assert all("the store refused this record" in why for why in again.rejected.values())
    assert store.log_state(LOG) == state
    # A fresh sequencer (another collector) agrees.
    assert set(sequencing(store).write(records).rejected) == refused
    assert store.log_state(LOG) == state

    # The next batch continues the log where the sealed records end.
    assert sequencing(store).write(batch(3, first=7)).written == 3
    assert [r.leaf_index for r in store.records_in_log(LOG)] == list(range(8))
    assert_all_verify(store)


def test_a_batch_of_only_rejected_records_leaves_the_log_untouched(store):
    seq = sequencing(store)
    seq.write(batch(2))
    state = store.log_state(LOG)
    records = batch(2, bad={0, 1}, first=2)
    result = seq.write(records)
    assert (result.written, len(result.rejected)) == (0, 2)
    assert store.log_state(LOG) == state
    assert_all_verify(store)


def test_a_duplicate_is_acknowledged_and_not_stored_twice(store):
    seq = sequencing(store)
    records = batch(3)
    assert seq.write(records).written == 3
    # The same span sent again by its service: a new Kafka message, a new ingestion time.
    resent = at(records[1].model_copy(update={"ingested_at": "2026-11-25T00:00:00.000000000Z"}), 10)
    result = seq.write([resent])
    assert (result.written, result.duplicates, result.rejected, result.conflicts) == (0, 1, {}, {})
    assert result.outcome(resent.record_id) == Outcome.DUPLICATE
    assert [r.record_id for r in store.records_in_log(LOG)] == [r.record_id for r in records]
    assert_all_verify(store)


def test_the_same_id_with_other_content_is_a_conflict_never_a_success(store):
    seq = sequencing(store)
    records = batch(3)
    seq.write(records)
    state = store.log_state(LOG)
    forged = at(records[2].model_copy(update={"answer": "Refunds are never possible."}), 11)
    fresh = batch(1, first=12)[0]
    result = seq.write([forged, fresh])
    assert result.written == 1 and list(result.conflicts) == [forged.record_id]
    assert "answer differ" in result.conflicts[forged.record_id] and f"sealed in {LOG} at leaf 2" in result.conflicts[forged.record_id]
    assert result.outcome(forged.record_id) == Outcome.CONFLICT
    assert store.get("acme", forged.record_id).answer == records[2].answer  # the stored one stays
    assert store.log_state(LOG).size == state.size + 1  # only the fresh record took a leaf
    # Twice in one batch with different content: the first copy is stored, the second a conflict.
    one = batch(1, first=20)[0]
    other = one.model_copy(update={"answer": "something else"})
    twice = seq.write([one, other])
    assert twice.written == 1 and list(twice.conflicts) == [one.record_id]
    assert store.get("acme", one.record_id).answer == one.answer
    assert_all_verify(store)


# -- through the collector: dead letters, then the acknowledgement ----------------------------


class RecordsPipeline(Pipeline):
    """The collector's pipeline with a test decoder: a message is a JSON list of records, so
    a test can send exactly the records a store refuses."""

    def _normalise_one(self, message, tenant, ingested_at):
        return [AuditRecord.model_validate(item) for item in orjson.loads(message.payload)]


def _message(records: list[AuditRecord]) -> BusMessage:
    return BusMessage(signal=Signal.TRACES, payload=orjson.dumps([r.model_dump(mode="json") for r in records]), tenant="acme")


def test_the_collector_dead_letters_refused_records_then_acknowledges(tmp_path):
    """Embedded mode (LocalBus, SQLite, the dead-letter table): the publisher's call returns
    (the batch is acknowledged) only once the good records are stored and the refused ones
    are in the dead-letter table with outcome, record id and the store's reason."""
    store = SqliteStore(tmp_path / "aitrail.db")
    seq = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=2, checkpoint_interval_s=0)
    good = [completion(trace=100 + i, answer=f"good {i}") for i in range(4)]
    bad = completion(trace=200, input_tokens=TOO_MANY_TOKENS)
    forged = good[0].model_copy(update={"answer": "forged"})
    counted: list[str] = []

    async def sink(message: BusMessage, reason: str) -> None:
        store.add_dead_letter(reason, message.payload, dict(message.headers))

    async def run() -> None:
        bus = LocalBus(sink)
        pipeline = RecordsPipeline(default_tenant="acme", pricer=None, pseudonymise=hmac_pseudonymiser(b"k" * 32))
        task = asyncio.create_task(run_collector(bus.batches(), pipeline, seq, on_dead_letter=counted.append))
        try:
            await asyncio.wait_for(bus.publish([_message(good[:2]), _message([bad, good[2]])]), 30)
            await asyncio.wait_for(bus.publish([_message([forged, good[3]]), _message([good[1]])]), 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert store.count() == 4
    assert {r.record_id for r in store.records_in_log(tenant_log_id("acme", "local"))} == {r.record_id for r in good}
    letters = store.dead_letters()
    assert [(d.headers[OUTCOME_HEADER], d.headers[RECORD_HEADER]) for d in letters] == [
        ("rejected", bad.record_id), ("conflict", forged.record_id),
    ]
    rejected, conflict = letters
    assert rejected.reason.startswith(f"rejected: record {bad.record_id} (completion, trace {bad.trace_id}")
    assert "SQLite refused the record" in rejected.reason
    assert "answer differ" in conflict.reason
    # The payload is the source message as sent, so it can be replayed once the cause is fixed.
    assert [r["record_id"] for r in orjson.loads(rejected.payload)] == [bad.record_id, good[2].record_id]
    assert len(counted) == 2
    seq.tick()
    assert_all_verify(store)
    store.close()


def test_without_integrity_the_store_reports_rejections_and_the_collector_dead_letters_them(tmp_path):
    store = SqliteStore(tmp_path / "aitrail.db")
    good, bad = completion(trace=300), completion(trace=301, input_tokens=TOO_MANY_TOKENS)
    letters: list[tuple[str, dict]] = []

    async def sink(message: BusMessage, reason: str) -> None:
        letters.append((reason, dict(message.headers)))

    async def run() -> None:
        bus = LocalBus(sink)
        pipeline = RecordsPipeline(default_tenant="acme", pricer=None, pseudonymise=hmac_pseudonymiser(b"k" * 32))
        task = asyncio.create_task(run_collector(bus.batches(), pipeline, store))
        try:
            await asyncio.wait_for(bus.publish([_message([good, bad])]), 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert store.count() == 1 and store.get("acme", good.record_id) == good
    ((reason, headers),) = letters
    assert headers[OUTCOME_HEADER] == "rejected" and headers[RECORD_HEADER] == bad.record_id
    assert reason.startswith(f"rejected: record {bad.record_id}")
    store.close()

