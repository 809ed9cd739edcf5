"""Tamper evidence on every backend: records sealed through the real sequencing path, then
altered behind the store's back the way an administrator could, then `verify_log`."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aitrail.collector.sequencing import LOCAL_BASE, Sequencing
from aitrail.integrity.note import Signer, sign_checkpoint
from aitrail.integrity.sequencer import SignedCheckpoint
from aitrail.integrity.verify import FailureKind, verify_log
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord
from aitrail.tenancy import tenant_log_id
from tests.factories import completion, iso

SIGNER = Signer.generate("aitrail/test")
LOCAL_LOG = tenant_log_id("acme", LOCAL_BASE)  # the log of tenant acme's records
VERIFIER = SIGNER.verifier()


class SqliteTamper:
    """What someone with write access to the SQLite file can do."""

    def __init__(self, store) -> None:
        self.conn = store._conn()
        self.conn.execute("DROP TRIGGER IF EXISTS records_append_only")

    def replace(self, record: AuditRecord) -> None:
        self.conn.execute(
            "UPDATE records SET body = ?, log_id = ?, leaf_index = ? WHERE record_id = ?",
            (canonical_json(record), record.log_id, record.leaf_index, record.record_id),
        )

    def delete(self, record_id: str) -> None:
        self.conn.execute("DELETE FROM records WHERE record_id = ?", (record_id,))

    def insert(self, record: AuditRecord) -> None:
        self.conn.execute(
            "INSERT INTO records (record_id, tenant, kind, origin, trace_id, span_id, start_time, log_id, leaf_index,"
            " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.record_id, record.tenant, record.kind, record.origin, record.trace_id, record.span_id,
             record.start_time, record.log_id, record.leaf_index, canonical_json(record)),
        )

    def replace_checkpoint(self, cp: SignedCheckpoint) -> None:
        self.conn.execute(
            "UPDATE checkpoints SET root = ?, note = ? WHERE log_id = ? AND size = ?",
            (cp.root_hash, cp.note, cp.log_id, cp.size),
        )

    def add_checkpoint(self, cp: SignedCheckpoint) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (log_id, size, root, note, signed_at) VALUES (?, ?, ?, ?, ?)",
            (cp.log_id, cp.size, cp.root_hash, cp.note, cp.signed_at),
        )


class OpenSearchTamper:
    """What someone with write access to the cluster can do (index, delete, overwrite)."""

    def __init__(self, store) -> None:
        self.store, self.client = store, store._client

    def _where(self, record_id: str) -> str:
        hits = self.client.search(index=self.store.records_pattern, body={"query": {"ids": {"values": [record_id]}}})
        return hits["hits"]["hits"][0]["_index"]

    def replace(self, record: AuditRecord) -> None:
        self.client.index(index=self._where(record.record_id), id=record.record_id, body=canonical_json(record),
                          params={"refresh": "true"})

    def delete(self, record_id: str) -> None:
        self.client.delete(index=self._where(record_id), id=record_id, params={"refresh": "true"})

    def insert(self, record: AuditRecord) -> None:
        self.client.index(index=self.store.write_alias, id=record.record_id, body=canonical_json(record),
                          params={"refresh": "true"})

    def replace_checkpoint(self, cp: SignedCheckpoint) -> None:
        self.add_checkpoint(cp)

    def add_checkpoint(self, cp: SignedCheckpoint) -> None:
        self.client.index(index=self.store.checkpoints_index, id=f"{cp.log_id}/{cp.size}", body=cp.to_dict(),
                          params={"refresh": "true"})


TAMPERERS = {"sqlite": SqliteTamper, "opensearch": OpenSearchTamper}


@pytest.fixture(params=sorted(TAMPERERS))
def store(request):
    """Every backend that has a tamperer (all of them, once each is written)."""
    from tests.conftest import BACKENDS

    instance = BACKENDS[request.param](request)
    yield instance
    instance.close()


@pytest.fixture
def sealed(store, request):
    """40 completions of acme sealed into its `acme/local` log in batches, all covered by checkpoints."""
    sequencing = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=8, checkpoint_interval_s=0)
    records = [
        completion("acme", trace=100 + i, time=iso(24, 7, i), answer=f"Answer number {i}.", user=f"u_{i % 3}")
        for i in range(40)
    ]
    for first in range(0, 40, 7):
        sequencing.write(records[first : first + 7])
    sequencing.tick()
    stored = sorted(store.records_in_log(LOCAL_LOG), key=lambda r: r.leaf_index)
    assert [r.leaf_index for r in stored] == list(range(40))
    report = verify_log(store, VERIFIER, LOCAL_LOG)
    assert report.ok, report.failures
    assert (report.records_checked, report.verified_size) == (40, 40)
    return store, TAMPERERS[request.node.callspec.params["store"]](store), stored


def failures_of(store):
    report = verify_log(store, VERIFIER, LOCAL_LOG)
    assert not report.ok
    return report.failures


def named(failures, record_id):
    return [f for f in failures if f.record_id == record_id]


def test_untouched_log_verifies(sealed):
    store, _, stored = sealed
    assert verify_log(store, VERIFIER, LOCAL_LOG).ok


def test_edited_answer_text(sealed):
    store, tamper, stored = sealed
    victim = stored[5]
    tamper.replace(victim.model_copy(update={"answer": "Refunds are never possible."}))
    (failure,) = named(failures_of(store), victim.record_id)
    assert failure.kind == FailureKind.CONTENT_ALTERED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cost", {"amount": Decimal("0.0000001"), "currency": "USD", "price_table_version": "t"}),
        ("start_time", iso(25, 1, 0)),
        ("response_model", "gpt-4o"),
    ],
    ids=["cost", "timestamp", "model"],
)
def test_edited_metadata(sealed, field, value):
    store, tamper, stored = sealed
    victim = stored[12]
    tamper.replace(AuditRecord.model_validate({**victim.model_dump(), field: value}))
    found = named(failures_of(store), victim.record_id)
    assert found and found[0].kind in (FailureKind.LEAF_MISMATCH, FailureKind.NOT_IN_TREE)


def test_edited_metadata_with_recomputed_leaf_hash(sealed):
    """A careful attacker also rewrites leaf_hash: the signed checkpoints still catch it."""
    from aitrail.integrity.leaf import recompute

    store, tamper, stored = sealed
    victim = stored[20]
    forged = victim.model_copy(update={"response_model": "gpt-4o"})
    forged = forged.model_copy(update={"leaf_hash": recompute(forged).leaf_hash.hex()})
    tamper.replace(forged)
    failures = failures_of(store)
    assert named(failures, victim.record_id) or any(f.kind == FailureKind.ROOT_MISMATCH for f in failures)


def test_deleted_record(sealed):
    store, tamper, stored = sealed
    tamper.delete(stored[17].record_id)
    failures = failures_of(store)
    assert any(f.kind == FailureKind.MISSING and f.leaf_index == 17 for f in failures)


def test_inserted_forged_record(sealed):
    store, tamper, stored = sealed
    forged = completion("acme", trace=999, answer="A forged answer.").model_copy(
        update={"log_id": LOCAL_LOG, "leaf_index": 9, "leaf_hash": stored[9].leaf_hash,
                "content_commitment": stored[9].content_commitment, "content_salt": stored[9].content_salt}
    )
    tamper.insert(forged)
    failures = failures_of(store)
    assert named(failures, forged.record_id)
    assert not named(failures, stored[9].record_id)


def test_swapped_records(sealed):
    store, tamper, stored = sealed
    a, b = stored[3], stored[30]
    tamper.replace(a.model_copy(update={"leaf_index": 30}))
    tamper.replace(b.model_copy(update={"leaf_index": 3}))
    failures = failures_of(store)
    assert named(failures, a.record_id) and named(failures, b.record_id)


def test_forged_checkpoint_signature(sealed):
    store, tamper, stored = sealed
    genuine = store.checkpoints(LOCAL_LOG)[-1]
    forger = Signer.generate("aitrail/test")  # same name, other key
    from aitrail.integrity.note import Checkpoint

    note = sign_checkpoint(Checkpoint(f"aitrail/test/{LOCAL_LOG}", genuine.size, genuine.root_hash), forger)
    tamper.replace_checkpoint(SignedCheckpoint(LOCAL_LOG, genuine.size, genuine.root_hash, note, genuine.signed_at))
    failures = failures_of(store)
    assert any(f.kind == FailureKind.BAD_CHECKPOINT and f.size == genuine.size for f in failures)


def test_checkpoint_inconsistent_with_an_earlier_one(sealed):
    """A validly signed checkpoint (key stolen, or a forked log) whose tree disagrees."""
    store, tamper, stored = sealed
    from aitrail.integrity.note import Checkpoint

    bogus_root = bytes(32)
    size = store.checkpoints(LOCAL_LOG)[1].size
    note = sign_checkpoint(Checkpoint(f"aitrail/test/{LOCAL_LOG}", size, bogus_root), SIGNER)
    tamper.replace_checkpoint(SignedCheckpoint(LOCAL_LOG, size, bogus_root, note, "2026-11-25T00:00:00.000000000Z"))
    failures = failures_of(store)
    assert any(f.kind in (FailureKind.INCONSISTENT_CHECKPOINTS, FailureKind.ROOT_MISMATCH,
                          FailureKind.CONFLICTING_CHECKPOINTS) for f in failures)


def test_replay_is_deterministic(store):
    """A crash and replay of the same records yields the same leaves and roots."""
    records = [completion("acme", trace=300 + i, time=iso(24, 8, i)) for i in range(20)]
    first = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=8, checkpoint_interval_s=0)
    first.write(records[:10])
    leaves_before = {r.record_id: r.leaf_hash for r in store.records_in_log(LOCAL_LOG)}
    # the process dies; a new one resumes from the stored state and is handed everything again
    second = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=8, checkpoint_interval_s=0)
    result = second.write(records)
    assert (result.written, result.duplicates) == (10, 10)
    stored = {r.record_id: r for r in store.records_in_log(LOCAL_LOG)}
    assert {rid: stored[rid].leaf_hash for rid in leaves_before} == leaves_before
    assert sorted(r.leaf_index for r in stored.values()) == list(range(20))
    second.tick()
    assert verify_log(store, VERIFIER, LOCAL_LOG).ok
    assert store.log_state(LOCAL_LOG).size == 20
