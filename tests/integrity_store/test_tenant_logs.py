"""One Merkle log per tenant, on every backend: through the real sequencing path, a tenant's
logs hold only its records, and nothing in them (size, root, checkpoints) moves with another
tenant's traffic. Logs written before logs were per tenant still verify."""

from __future__ import annotations

import pytest

from aitrail.bus.base import BusMessage, Signal
from aitrail.collector.pipeline import Pipeline
from aitrail.collector.sequencing import LOCAL_BASE, Sequencing, log_id_for
from aitrail.errors import InvalidInput
from aitrail.integrity import merkle, system
from aitrail.integrity.note import Signer, open_checkpoint
from aitrail.integrity.sequencer import LogSequencer, new_log
from aitrail.integrity.verify import verify_all
from aitrail.schemas.record import AuditRecord, KafkaPosition
from aitrail.store.base import Role
from aitrail.tenancy import log_tenant, tenant_log_id
from tests.factories import completion, iso

SIGNER = Signer.generate("aitrail/test")
VERIFIER = SIGNER.verifier()
ACME, GLOBEX = tenant_log_id("acme", LOCAL_BASE), tenant_log_id("globex", LOCAL_BASE)
TOPIC = "t.spans"


def sequencing(store) -> Sequencing:
    return Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=4, checkpoint_interval_s=0)


def answers(tenant: str, first: int, count: int) -> list[AuditRecord]:
    return [completion(tenant, trace=first + i, time=iso(24, 7, i % 60), answer=f"{tenant} answer {i}.")
            for i in range(count)]


def at(record: AuditRecord, offset: int, partition: int = 0) -> AuditRecord:
    return record.model_copy(update={"kafka": KafkaPosition(topic=TOPIC, partition=partition, offset=offset)})


def all_verify(store) -> None:
    if hasattr(store, "settle"):
        store.settle()
    reports = verify_all(store, VERIFIER)
    assert reports and all(r.ok for r in reports), [(r.log_id, r.failures) for r in reports if not r.ok]


def leaf_root(store, log_id: str) -> tuple[int, bytes]:
    """Size and root of a log rebuilt from the leaf hashes of the records it holds."""
    leaves = [bytes.fromhex(r.leaf_hash) for r in sorted(store.records_in_log(log_id), key=lambda r: r.leaf_index)]
    return len(leaves), merkle.root_hash(leaves)


def test_each_tenant_has_logs_of_its_own(store):
    seq = sequencing(store)
    acme, globex = answers("acme", 100, 10), answers("globex", 200, 3)
    seq.write([acme[0], globex[0], *acme[1:5]])
    seq.write([globex[1], *acme[5:], globex[2]])
    seq.tick()
    assert store.log_ids() == [ACME, GLOBEX]
    for log_id, tenant, count in ((ACME, "acme", 10), (GLOBEX, "globex", 3)):
        held = list(store.records_in_log(log_id))
        assert {r.tenant for r in held} == {tenant}
        assert [r.leaf_index for r in held] == list(range(count))
        assert store.log_size(log_id) == count
        latest = store.latest_checkpoint(log_id)
        opened = open_checkpoint(latest.note, VERIFIER)
        assert opened.origin == f"aitrail/test/{log_id}" and opened.size == count
        assert (opened.size, opened.root_hash) == leaf_root(store, log_id)  # it commits to this tenant's leaves only
    all_verify(store)


def test_another_tenants_traffic_changes_nothing_in_a_tenants_log(store):
    seq = sequencing(store)
    seq.write(answers("acme", 300, 6))
    seq.tick()
    state, checkpoints = store.log_state(ACME), store.checkpoints(ACME)
    assert state.size == 6 and checkpoints[-1].size == 6

    for first in range(0, 60, 12):  # busy neighbour
        seq.write(answers("globex", 400 + first, 12))
    seq.tick()
    assert store.log_size(GLOBEX) == 60
    assert store.log_state(ACME) == state  # size, root, checkpoint position: unchanged
    assert store.checkpoints(ACME) == checkpoints and store.latest_checkpoint(ACME) == checkpoints[-1]

    seq.write(answers("acme", 500, 2))
    seq.tick()
    latest = open_checkpoint(store.latest_checkpoint(ACME).note, VERIFIER)
    assert latest.size == 8  # 6 + 2: globex's 60 leaves are nowhere in acme's tree
    assert (latest.size, latest.root_hash) == leaf_root(store, ACME)
    all_verify(store)


def test_partition_logs_per_tenant_keep_offset_order_and_their_own_resume_position(store):
    source = f"{TOPIC}.0"
    acme_log, globex_log = tenant_log_id("acme", source), tenant_log_id("globex", source)
    seq = sequencing(store)
    seq.assign([source])
    acme, globex = answers("acme", 600, 4), answers("globex", 700, 3)
    # one partition, the tenants' messages interleaved: offsets 0..6
    stream = [at(acme[0], 0), at(globex[0], 1), at(acme[1], 2), at(acme[2], 3), at(globex[1], 4),
              at(globex[2], 5), at(acme[3], 6)]
    assert seq.write(stream).written == 7
    assert [r.kafka.offset for r in store.records_in_log(acme_log)] == [0, 2, 3, 6]
    assert [r.kafka.offset for r in store.records_in_log(globex_log)] == [1, 4, 5]
    assert (store.log_state(acme_log).source_position, store.log_state(globex_log).source_position) == (7, 6)

    # the partition delivered again from an older offset: no-ops, for every tenant's log
    seq.assign([source])  # (a rebalance: states are reloaded from the store)
    replayed = seq.write(stream)
    assert (replayed.written, replayed.duplicates) == (0, 7)
    # a message below a log's resume position was sequenced before (a record id it yields
    # now that is not stored, e.g. a changed normaliser, is not sealed a second time)
    assert seq.write([at(answers("globex", 800, 1)[0], 3)]).written == 0
    # above it: appended, in order
    assert seq.write([at(answers("globex", 801, 1)[0], 7)]).written == 1
    assert store.log_size(globex_log) == 4 and store.log_size(acme_log) == 4

    # revoked: batches still in flight for the partition are not sequenced here
    seq.forget([source])
    late = seq.write([at(answers("acme", 900, 1)[0], 8)])
    assert late.written == 0 and store.log_size(acme_log) == 4
    seq.tick()
    all_verify(store)


def test_logs_from_before_per_tenant_logs_still_verify(store):
    """A store written by an older version: one `local` log and one partition log holding
    every tenant. New records go to the tenants' logs; the old logs stay and verify."""
    key = store.secret("subject:legacy")
    legacy = {}
    for log_id, records in (("local", answers("acme", 1000, 3) + answers("globex", 1100, 2)),
                            (f"{TOPIC}.1", [at(r, i, 1) for i, r in enumerate(answers("acme", 1200, 3))])):
        sequencer = LogSequencer(new_log(log_id, f"aitrail/test/{log_id}"), SIGNER, checkpoint_every=1)
        plan = sequencer.plan(records, lambda record: key)
        store.write(plan.records, [plan.update])
        sequencer.commit(plan)
        legacy[log_id] = plan.records
    assert log_tenant("local") is None and log_tenant(f"{TOPIC}.1") is None

    seq = sequencing(store)
    resent = legacy["local"][0].model_copy(update={"log_id": None, "leaf_index": None, "leaf_hash": None,
                                                   "content_commitment": None, "content_salt": None})
    result = seq.write([resent, *answers("acme", 1300, 2)])
    assert (result.written, result.duplicates) == (2, 1)  # the re-sent record keeps its legacy leaf
    seq.tick()
    assert store.log_ids() == sorted([ACME, f"{TOPIC}.1", "local"])
    assert store.log_size(ACME) == 2 and store.log_size("local") == 5
    all_verify(store)


def test_keys_take_only_valid_tenant_names(store):
    for bad in ("", "a/b", "../etc", "-x", "x" * 65, "acme corp", "ünicode"):
        with pytest.raises(InvalidInput, match="invalid tenant name"):
            store.create_key(bad, Role.INGEST)
    assert store.list_keys() == []
    key, info = store.create_key("acme.eu-1_prod", Role.INGEST)
    assert info.tenant == "acme.eu-1_prod" and store.authenticate(key).tenant == "acme.eu-1_prod"


def test_an_invalid_tenant_is_dead_lettered_with_the_reason_never_sealed():
    pipeline = Pipeline(default_tenant="default", pricer=None, pseudonymise=lambda raw: "u_" + raw)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes(range(16)), span_id=b"\1" * 8, name="chat", start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    payload = request.SerializeToString()
    forged = system.system_record("access", "acme", {"n": 1}).model_copy(update={"tenant": "acme/../globex"})
    result = pipeline.normalise([
        BusMessage(Signal.TRACES, payload, tenant="acme/local"),  # the aitrail-tenant header
        BusMessage(Signal.RECORDS, system.encode([forged])),
        BusMessage(Signal.TRACES, payload, tenant="acme"),
    ])
    assert [message.tenant for message, _ in result.dead] == ["acme/local", None]
    assert all("invalid tenant name" in reason for _, reason in result.dead)
    assert result.records and {r.tenant for r in result.records} == {"acme"}
    with pytest.raises(InvalidInput):
        log_id_for(forged)
