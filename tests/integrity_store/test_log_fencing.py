"""Fencing: log states are compare-and-set, so a sequencer whose log another one advanced
(a collector that lost its partition while frozen) cannot rewind or fork it; nodes and
checkpoints already stored with another value are a fork, refused. On every backend, and the
OpenSearch-only races (a node stored with another hash, a state advanced mid-write)."""

from __future__ import annotations

import pytest

from aitrail.collector.sequencing import LOCAL_BASE, Sequencing
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import ForkError, LogSequencer, SignedCheckpoint, new_log
from aitrail.integrity.verify import verify_all
from aitrail.schemas.record import KafkaPosition
from aitrail.store.base import FencedError, WriteResult
from aitrail.tenancy import tenant_log_id
from tests.conftest import _opensearch
from tests.factories import completion, iso

SIGNER = Signer.generate("aitrail/test")
VERIFIER = SIGNER.verifier()
ACME = tenant_log_id("acme", LOCAL_BASE)
TOPIC = "t.spans"
PARTITION_LOG = tenant_log_id("acme", f"{TOPIC}.0")


def sequencing(store) -> Sequencing:
    return Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=4, checkpoint_interval_s=0)


def answers(first: int, count: int):
    return [completion("acme", trace=first + i, time=iso(24, 8, i), answer=f"answer {first + i}") for i in range(count)]


def at(record, offset: int):
    return record.model_copy(update={"kafka": KafkaPosition(topic=TOPIC, partition=0, offset=offset)})


def all_verify(store) -> None:
    if hasattr(store, "settle"):
        store.settle()
    reports = verify_all(store, VERIFIER)
    assert reports and all(r.ok for r in reports), [(r.log_id, r.failures) for r in reports if not r.ok]


def test_a_stale_sequencer_is_fenced_and_the_newer_state_stays(store):
    stale, current = sequencing(store), sequencing(store)
    stale.write(answers(100, 5))  # `stale` caches the log at size 5 ...
    current.write(answers(200, 3))  # ... and another sequencer (a new partition owner) takes it to 8
    newer = store.log_state(ACME)
    assert newer.size == 8

    late = answers(300, 2)
    with pytest.raises(FencedError, match="advanced by another sequencer") as refused:
        stale.write(late)
    assert refused.value.retriable and refused.value.log_ids == [ACME]
    assert store.log_state(ACME) == newer  # not rewound to 7
    assert store.existing([r.record_id for r in late]) == {}  # nothing of the stale batch stored

    # the stale sequencer dropped its cache: its next attempt plans from the stored state
    assert stale.write(late) == WriteResult(2, 0)
    assert sorted(r.leaf_index for r in store.records_in_log(ACME)) == list(range(10))
    with pytest.raises(FencedError):  # and now `current` is the stale one
        current.write(answers(400, 1))
    stale.tick()
    all_verify(store)


def test_the_same_plan_written_twice_is_a_no_op(store):
    sequencer = LogSequencer(new_log(ACME, f"aitrail/test/{ACME}"), SIGNER, checkpoint_every=2)
    plan = sequencer.plan(answers(500, 5), lambda record: b"subject key")
    assert store.write(plan.records, [plan.update], expected={ACME: None}) == WriteResult(5, 0)
    # the answer was lost, the writer tries again: same records, nodes, checkpoints, state
    assert store.write(plan.records, [plan.update], expected={ACME: None}) == WriteResult(0, 5)
    assert store.log_state(ACME) == plan.update.state
    sequencer.commit(plan)
    second = sequencer.plan(answers(600, 2), lambda record: b"subject key")
    store.write(second.records, [second.update], expected={ACME: plan.update.state})
    # without an expectation a write may only move a log forward: never back to size 5
    with pytest.raises(FencedError, match="refusing to rewind"):
        store.write([], [plan.update])
    assert store.log_state(ACME) == second.update.state


def test_a_checkpoint_with_another_root_for_a_stored_size_is_a_fork(store):
    seq = sequencing(store)
    seq.write(answers(700, 4))
    stored = store.latest_checkpoint(ACME)
    sequencer = LogSequencer(store.log_state(ACME), SIGNER, checkpoint_every=4)
    plan = sequencer.plan(answers(800, 1), lambda record: b"subject key")
    forged = SignedCheckpoint(ACME, stored.size, bytes(32), stored.note, stored.signed_at)
    update = type(plan.update)(ACME, plan.update.state, plan.update.nodes, [forged])
    with pytest.raises(ForkError, match=f"log {ACME} already has a different checkpoint for size 4"):
        store.write(plan.records, [update], expected={ACME: plan.base})
    assert store.log_state(ACME).size == 4 and store.checkpoints(ACME) == [stored]
    assert store.existing([r.record_id for r in plan.records]) == {}


@pytest.fixture
def opensearch(request):
    store = _opensearch(request)
    yield store
    store.close()


def test_a_node_stored_with_another_hash_is_refused_not_taken_as_the_same(opensearch):
    store = opensearch
    seq = sequencing(store)
    seq.write(answers(900, 4))
    # what a stale writer (or someone with write access to the index) left at the next leaf
    node_id = f"{ACME}/0/4"
    store._client.index(index=store.nodes_index, id=node_id, body={"log_id": ACME, "hash": "ab" * 32},
                        params={"refresh": "true"})
    with pytest.raises(ForkError, match=f"log {ACME}: Merkle node at level 0, index 4 is stored with hash ab"):
        seq.write(answers(1000, 1))
    assert store.log_state(ACME).size == 4  # the log did not move onto the forked node

    store._client.delete(index=store.nodes_index, id=node_id, params={"refresh": "true"})
    assert seq.write(answers(1000, 1)).written == 0  # its record was stored before the nodes: a duplicate now ...
    assert store.log_state(ACME).size == 5  # ... sealed into the leaf it was planned at
    seq.tick()
    all_verify(store)


def test_a_state_advanced_while_a_batch_is_written_fails_the_compare_and_set(opensearch):
    """The window between the first read and the state write: a second sequencer of the same
    partition (the new owner, replaying from the committed offset) advances the log meanwhile.
    Both planned the partition's records from the same state, so their leaves agree where they
    overlap (records and nodes are duplicates, compared and equal); the slow writer's state is
    refused and the other's stays."""
    store = opensearch
    slow, fast = sequencing(store), sequencing(store)
    slow.assign([f"{TOPIC}.0"]), fast.assign([f"{TOPIC}.0"])
    stream = [at(record, offset) for offset, record in enumerate(answers(1100, 8))]
    slow.write(stream[:3])
    write_records = store._write_records
    overtaken = []

    def overtaking(records):  # the new owner runs while the slow one is between its check and its state
        if not overtaken:
            store._write_records = write_records  # once: the fast writer's own write goes straight through
            overtaken.append(fast.write(stream))
        return write_records(records)

    store._write_records = overtaking
    try:
        with pytest.raises(FencedError, match="advanced by another sequencer while this batch was written"):
            slow.write(stream[:6])
    finally:
        store._write_records = write_records
    assert overtaken == [WriteResult(5, 3)]
    state = store.log_state(PARTITION_LOG)
    assert (state.size, state.source_position) == (8, 8)
    assert slow.write(stream) == WriteResult(0, 8)  # reloaded: everything is in the log already
    assert store.log_state(PARTITION_LOG) == state
    assert [r.kafka.offset for r in store.records_in_log(PARTITION_LOG)] == list(range(8))
    fast.tick()
    all_verify(store)
