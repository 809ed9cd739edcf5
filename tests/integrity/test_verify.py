"""Offline verification: clean logs verify; every kind of tampering is detected and named."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal

import pytest
from aitrail.schemas.canonical import canonical_json, record_from_json
from aitrail.schemas.record import AuditRecord, Cost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aitrail.integrity import merkle
from aitrail.integrity.leaf import erase, recompute
from aitrail.integrity.note import Checkpoint, Signer, sign_checkpoint
from aitrail.integrity.sequencer import LogSequencer, SignedCheckpoint, new_log
from aitrail.integrity.verify import (
    FailureKind,
    IntegrityReader,
    LogReport,
    NodeReader,
    RecordStatus,
    verify_all,
    verify_log,
    verify_record,
)
from tests.factories import completion, retrieval

SIGNER = Signer.from_skey("PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ")
VERIFIER = SIGNER.verifier()
MALLORY = Signer.generate("Log")  # same key name, different key
ORIGIN = "aitrail.local/test/p0"
ERASED_AT = "2026-11-25T00:00:00.000000000Z"


class MemoryStore:
    """An IntegrityReader over canonical JSON, like a real store: tamper by editing `rows`."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bytes]] = []  # (log the store files it under, canonical JSON)
        self.cps: dict[str, list[SignedCheckpoint]] = {}
        self.sizes: dict[str, int] = {}
        self.node_table: dict[tuple[str, int, int], bytes] = {}

    def apply(self, plan) -> None:
        log = plan.update.log_id
        self.rows += [(log, canonical_json(r)) for r in plan.records]
        self.node_table.update({(log, lvl, i): h for lvl, i, h in plan.update.nodes})
        self.cps.setdefault(log, []).extend(plan.update.checkpoints)
        self.sizes[log] = plan.update.state.size

    # IntegrityReader
    def log_ids(self) -> list[str]:
        return sorted(self.sizes)

    def checkpoints(self, log_id: str) -> list[SignedCheckpoint]:
        return sorted(self.cps.get(log_id, []), key=lambda c: c.size)

    def records_in_log(self, log_id: str) -> Iterator[AuditRecord]:
        recs = [record_from_json(body) for log, body in self.rows if log == log_id]
        return iter(sorted(recs, key=lambda r: -1 if r.leaf_index is None else r.leaf_index))

    def log_size(self, log_id: str) -> int:
        return self.sizes.get(log_id, 0)

    # tampering helpers
    def find(self, leaf_index: int, log_id: str = "p0") -> int:
        for pos, (log, body) in enumerate(self.rows):
            if log == log_id and record_from_json(body).leaf_index == leaf_index:
                return pos
        raise KeyError(leaf_index)

    def get(self, leaf_index: int, log_id: str = "p0") -> AuditRecord:
        return record_from_json(self.rows[self.find(leaf_index, log_id)][1])

    def put(self, record: AuditRecord, log_id: str = "p0") -> None:
        self.rows[self.find(record.leaf_index, log_id)] = (log_id, canonical_json(record))

    def edit(self, leaf_index: int, *, relink: bool = False, **update) -> AuditRecord:
        """Edit a stored record; with relink=True also rewrite its leaf_hash to match (a careful attacker)."""
        record = record_from_json(canonical_json(self.get(leaf_index).model_copy(update=update)))
        if relink:
            record = record.model_copy(update={"leaf_hash": recompute(record).leaf_hash.hex()})
        self.put(record)
        return record


class NodeStore(MemoryStore):
    """A store that also serves the Merkle nodes it kept."""

    def nodes(self, log_id: str, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        return {k: self.node_table[(log_id, *k)] for k in keys if (log_id, *k) in self.node_table}


def key_for(record: AuditRecord) -> bytes:
    return b"subject:" + (record.user_pseudonym or "").encode()


def build(store: MemoryStore, n: int = 300, *, every: int = 64, batch: int = 37, log_id: str = "p0") -> MemoryStore:
    """n records in batches, a checkpoint every `every` leaves and one per batch after >= 1 s."""
    t = [1_000_000.0]
    seq = LogSequencer(new_log(log_id, ORIGIN if log_id == "p0" else f"aitrail.local/test/{log_id}"), SIGNER,
                       checkpoint_every=every, clock=lambda: t[0])
    for start in range(0, n, batch):
        recs = []
        for i in range(start, min(n, start + batch)):
            if i % 5 == 0:
                recs.append(retrieval(trace=i, documents=[{"doc_id": f"d{i}", "snippet": f"snippet {i}"}]))
            else:
                recs.append(completion(trace=i, user=f"u{i % 3}", answer=f"answer {i}"))
        plan = seq.plan(recs, key_for)
        store.apply(plan)
        seq.commit(plan)
        t[0] += 0.6
    return store


@pytest.fixture(params=["records", "records+nodes"])
def store(request) -> MemoryStore:
    return build(NodeStore() if request.param == "records+nodes" else MemoryStore())


def check(store: MemoryStore, log_id: str = "p0") -> LogReport:
    return verify_log(store, VERIFIER, log_id)


def kinds(report: LogReport) -> set[FailureKind]:
    return {f.kind for f in report.failures}


def named(report: LogReport, kind: FailureKind) -> set[str | None]:
    return {f.record_id for f in report.failures if f.kind == kind}


# --- clean logs ------------------------------------------------------------------------------


def test_protocols():
    assert isinstance(MemoryStore(), IntegrityReader)
    assert not isinstance(MemoryStore(), NodeReader)
    assert isinstance(NodeStore(), NodeReader)


def test_clean_log_verifies(store):
    calls = []
    report = verify_log(store, VERIFIER, "p0", progress=lambda done, total: calls.append((done, total)))
    assert report.ok, report.failures
    assert report.records_checked == report.size == 300
    sizes = [c.size for c in store.checkpoints("p0")]
    assert report.checkpoints_checked == len(sizes) and 64 in sizes and 37 in sizes
    assert report.verified_size == sizes[-1] and report.uncovered == 300 - sizes[-1]
    assert calls[-1] == (300, 300)


def test_verify_all_and_origin():
    store = build(build(MemoryStore(), 50, log_id="p0"), 40, log_id="p1")
    reports = verify_all(store, VERIFIER)
    assert [(r.log_id, r.ok, r.records_checked) for r in reports] == [("p0", True, 50), ("p1", True, 40)]
    wrong = verify_log(store, VERIFIER, "p0", origin="aitrail.local/test/p1")
    assert kinds(wrong) == {FailureKind.BAD_CHECKPOINT}


def test_erased_record_is_reported_erased_not_failed(store):
    store.put(erase(store.get(12), ERASED_AT))
    store.put(erase(store.get(15), ERASED_AT))  # a retrieval: snippet erased too
    report = check(store)
    assert report.ok, report.failures
    assert report.erased == 2


# --- tampering with records ------------------------------------------------------------------


def test_answer_edited_is_content_altered(store):
    victim = store.edit(41, answer="Refunds are never possible.")
    report = check(store)
    assert [(f.kind, f.record_id, f.leaf_index) for f in report.failures] == [
        (FailureKind.CONTENT_ALTERED, victim.record_id, 41)
    ]


def test_snippet_edited_is_content_altered(store):
    record = store.get(40)
    victim = store.edit(40, documents=[record.documents[0].model_copy(update={"snippet": "forged"})])
    assert named(check(store), FailureKind.CONTENT_ALTERED) == {victim.record_id}


@pytest.mark.parametrize(
    "update",
    [
        {"cost": Cost(amount=Decimal("0.0000001"), currency="USD", price_table_version="t")},
        {"start_time": "2026-11-24T09:00:00.000000000Z"},
        {"request_model": "gpt-4o", "response_model": "gpt-4o"},
    ],
    ids=["cost", "timestamp", "model"],
)
def test_header_edited_is_named(store, update):
    victim = store.edit(70, **update)
    report = check(store)
    assert named(report, FailureKind.LEAF_MISMATCH) == {victim.record_id}
    if isinstance(store, NodeStore):  # the authentic leaf comes from the signed tree: exact
        assert named(report, FailureKind.NOT_IN_TREE) == {victim.record_id}
        assert FailureKind.ROOT_MISMATCH not in kinds(report)
    else:  # the checkpoint after the edit no longer matches
        (mismatch,) = report.of_kind(FailureKind.ROOT_MISMATCH)
        assert mismatch.size == 128 and mismatch.record_id == victim.record_id
        assert "leaves 64..127" in mismatch.what


def test_header_edited_with_leaf_hash_rewritten_is_still_caught(store):
    victim = store.edit(70, relink=True, request_model="gpt-4o")
    report = check(store)
    assert FailureKind.LEAF_MISMATCH not in kinds(report)
    if isinstance(store, NodeStore):
        assert [(f.kind, f.record_id, f.leaf_index) for f in report.failures] == [
            (FailureKind.NOT_IN_TREE, victim.record_id, 70)
        ]
    else:
        (mismatch,) = report.failures
        assert mismatch.kind == FailureKind.ROOT_MISMATCH and mismatch.record_id is None
        assert "leaves 64..127" in mismatch.what  # between the last good and first bad checkpoint


def test_two_separate_edits_are_both_named_with_nodes():
    store = build(NodeStore())
    a = store.edit(3, relink=True, request_model="x")
    b = store.edit(250, relink=True, input_tokens=1)
    report = check(store)
    assert named(report, FailureKind.NOT_IN_TREE) == {a.record_id, b.record_id}
    assert kinds(report) == {FailureKind.NOT_IN_TREE}


def test_deleted_record_is_a_missing_leaf(store):
    del store.rows[store.find(17)]
    report = check(store)
    missing = report.of_kind(FailureKind.MISSING)
    assert [(f.leaf_index, f.what) for f in missing] == [(17, "leaf 17 missing")]
    if isinstance(store, NodeStore):  # the stored leaf node stands in: later checkpoints still verify
        assert kinds(report) == {FailureKind.MISSING}
    else:
        assert "missing leaves there: 17" in report.of_kind(FailureKind.ROOT_MISMATCH)[0].what


def test_deleted_range_and_truncated_log():
    store = build(MemoryStore())
    for i in (20, 21, 22):
        del store.rows[store.find(i)]
    assert report_missing(check(store)) == [(20, "leaves 20..22 missing (3 records)")]
    store = build(MemoryStore())
    last = max(c.size for c in store.checkpoints("p0"))
    for i in range(last - 5, 300):
        del store.rows[store.find(i)]
    store.sizes["p0"] = last - 5  # state rolled back too
    report = check(store)
    assert FailureKind.LOG_STATE in kinds(report)
    assert report_missing(report) == [(last - 5, f"leaves {last - 5}..{last - 1} missing (5 records)")]


def report_missing(report: LogReport) -> list[tuple[int | None, str]]:
    return [(f.leaf_index, f.what) for f in report.of_kind(FailureKind.MISSING)]


def forged_copy(store: MemoryStore, like: int, **update) -> AuditRecord:
    """A record modelled on leaf `like`, crafted to look sealed: self-consistent commitment and leaf hash."""
    model = store.get(like).model_copy(update={"answer": "I approve the transfer.", **update})
    from aitrail.integrity.leaf import seal

    return seal(model, log_id="p0", leaf_index=model.leaf_index, salt=bytes(32))


@pytest.mark.parametrize("forged_first", [True, False])
def test_forged_record_with_a_duplicate_index_is_named(store, forged_first):
    forged = forged_copy(store, 100, record_id="f" * 32)
    row = ("p0", canonical_json(forged))
    pos = store.find(100)
    store.rows.insert(pos if forged_first else pos + 1, row)
    report = check(store)
    assert [(f.kind, f.record_id, f.leaf_index) for f in report.failures] == [
        (FailureKind.DUPLICATE, forged.record_id, 100)
    ]


def test_forged_record_replacing_the_original_is_caught(store):
    original = store.get(100)
    forged = forged_copy(store, 100)
    store.put(forged)
    report = check(store)
    if isinstance(store, NodeStore):
        assert named(report, FailureKind.NOT_IN_TREE) == {original.record_id}
    else:
        assert report.of_kind(FailureKind.ROOT_MISMATCH)


def test_forged_record_beyond_the_log(store):
    forged = forged_copy(store, 299, record_id="f" * 32, leaf_index=300)
    store.rows.append(("p0", canonical_json(forged)))
    report = check(store)
    assert [(f.kind, f.record_id, f.leaf_index) for f in report.failures] == [
        (FailureKind.BEYOND_LOG, forged.record_id, 300)
    ]


def test_unsealed_record_in_the_log(store):
    forged = completion(trace=9999, answer="planted")
    store.rows.append(("p0", canonical_json(forged.model_copy(update={"log_id": "p0"}))))
    planted_at = completion(trace=9998).model_copy(update={"log_id": "p0", "leaf_index": 5})
    store.rows.append(("p0", canonical_json(planted_at)))
    report = check(store)
    assert named(report, FailureKind.UNSEALED) == {forged.record_id, planted_at.record_id}
    assert kinds(report) == {FailureKind.UNSEALED}


def test_record_filed_under_another_log():
    store = build(build(MemoryStore(), 50, log_id="p0"), 40, log_id="p1")
    moved = store.get(10, "p0")
    store.rows.append(("p1", canonical_json(moved)))
    report = check(store, "p1")
    assert named(report, FailureKind.WRONG_LOG) == {moved.record_id}


def test_swapped_records_are_both_named(store):
    a, b = store.get(30), store.get(31)
    store.put(a.model_copy(update={"leaf_index": 31}))
    store.rows[store.find(30)] = ("p0", canonical_json(b.model_copy(update={"leaf_index": 30})))
    report = check(store)
    assert {a.record_id, b.record_id} <= named(report, FailureKind.LEAF_MISMATCH)
    if isinstance(store, NodeStore):
        assert named(report, FailureKind.NOT_IN_TREE) == {a.record_id, b.record_id}


def test_swapped_records_with_leaf_hashes_rewritten(store):
    (a, pa), (b, pb) = (store.get(30), store.find(30)), (store.get(31), store.find(31))
    for rec, idx, pos in ((a, 31, pa), (b, 30, pb)):
        moved = rec.model_copy(update={"leaf_index": idx})
        moved = moved.model_copy(update={"leaf_hash": recompute(moved).leaf_hash.hex()})
        store.rows[pos] = ("p0", canonical_json(moved))
    report = check(store)
    assert not report.ok
    if isinstance(store, NodeStore):
        assert named(report, FailureKind.NOT_IN_TREE) == {a.record_id, b.record_id}


# --- tampering with checkpoints ----------------------------------------------------------------


def forged_note(size: int, root: bytes, signer: Signer = SIGNER, origin: str = ORIGIN) -> str:
    return sign_checkpoint(Checkpoint(origin, size, root), signer)


def test_checkpoint_signed_by_another_key(store):
    cp = store.cps["p0"][3]
    store.cps["p0"][3] = SignedCheckpoint("p0", cp.size, cp.root_hash, forged_note(cp.size, cp.root_hash, MALLORY),
                                          cp.signed_at)
    (failure,) = check(store).failures
    assert failure.kind == FailureKind.BAD_CHECKPOINT and failure.size == cp.size


def test_checkpoint_note_edited(store):
    cp = store.cps["p0"][2]
    text = cp.note.replace(f"\n{cp.size}\n", f"\n{cp.size + 1}\n")
    store.cps["p0"][2] = SignedCheckpoint("p0", cp.size + 1, cp.root_hash, text, cp.signed_at)
    assert kinds(check(store)) == {FailureKind.BAD_CHECKPOINT}


def test_checkpoint_index_fields_edited(store):
    cp = store.cps["p0"][2]
    store.cps["p0"][2] = SignedCheckpoint("p0", cp.size + 3, cp.root_hash, cp.note, cp.signed_at)
    report = check(store)
    assert kinds(report) == {FailureKind.BAD_CHECKPOINT} and "disagree" in report.failures[0].what


def test_checkpoint_from_another_log(store):
    cp = store.cps["p0"][2]
    store.cps["p0"].append(SignedCheckpoint("p0", cp.size, cp.root_hash,
                                            forged_note(cp.size, cp.root_hash, origin="other"), cp.signed_at))
    assert kinds(check(store)) == {FailureKind.BAD_CHECKPOINT}


def test_two_signed_roots_for_one_size(store):
    cp = store.cps["p0"][2]
    bogus = bytes(32)
    store.cps["p0"].append(SignedCheckpoint("p0", cp.size, bogus, forged_note(cp.size, bogus), cp.signed_at))
    report = check(store)
    (conflict,) = report.of_kind(FailureKind.CONFLICTING_CHECKPOINTS)
    assert conflict.size == cp.size
    assert kinds(report) == {FailureKind.CONFLICTING_CHECKPOINTS}


def test_signed_root_inconsistent_with_a_later_checkpoint(store):
    bogus = b"\x07" * 32
    store.cps["p0"].append(SignedCheckpoint("p0", 100, bogus, forged_note(100, bogus), "x"))
    report = check(store)
    (failure,) = report.failures
    assert failure.kind == FailureKind.INCONSISTENT_CHECKPOINTS and failure.size == 100
    assert report.verified_size == max(c.size for c in store.checkpoints("p0"))


def test_inconsistent_root_at_the_tail_is_a_root_mismatch():
    store = build(MemoryStore())
    assert store.cps["p0"].pop().size == 300  # no later checkpoint to tell which side is wrong
    bogus = b"\x07" * 32
    store.cps["p0"].append(SignedCheckpoint("p0", 299, bogus, forged_note(299, bogus), "x"))
    assert kinds(check(store)) == {FailureKind.ROOT_MISMATCH}


# --- single records --------------------------------------------------------------------------


def proof_for(store: MemoryStore, record: AuditRecord) -> tuple[list[bytes], str]:
    cp = store.checkpoints("p0")[-2]
    leaves = [bytes.fromhex(r.leaf_hash) for r in store.records_in_log("p0")][: cp.size]
    return merkle.inclusion_proof(record.leaf_index, leaves), cp.note


def test_verify_record():
    store = build(MemoryStore())
    record = store.get(42)
    proof, note = proof_for(store, record)
    assert verify_record(record, proof, note, VERIFIER).status == RecordStatus.VERIFIED
    assert verify_record(record, proof, note, VERIFIER, origin=ORIGIN).ok

    erased = verify_record(erase(record, ERASED_AT), proof, note, VERIFIER)
    assert erased.status == RecordStatus.ERASED and erased.ok

    failed = [
        verify_record(record.model_copy(update={"answer": "x"}), proof, note, VERIFIER),
        verify_record(record.model_copy(update={"request_model": "x"}), proof, note, VERIFIER),
        verify_record(forged := record.model_copy(update={"request_model": "x"}), proof, note, VERIFIER),
        verify_record(record.model_copy(update={"leaf_hash": "00" * 32}), proof, note, VERIFIER),
        verify_record(record, proof[:-1], note, VERIFIER),
        verify_record(record, proof, forged_note(300, bytes(32), MALLORY), VERIFIER),
        verify_record(record, proof, note, VERIFIER, origin="elsewhere"),
        verify_record(completion(trace=1), proof, note, VERIFIER),
    ]
    assert forged.leaf_hash == record.leaf_hash
    for report in failed:
        assert report.status == RecordStatus.FAILED and not report.ok and report.reason
    tail = store.get(299)
    assert "not covered" in verify_record(tail, proof, note, VERIFIER).reason


# --- properties and speed ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 150), every=st.integers(1, 40), batch=st.integers(1, 50))
def test_any_cadence_verifies(n, every, batch):
    """Exercises the consistency check between every pair of successive checkpoint sizes."""
    report = check(build(MemoryStore(), n, every=every, batch=batch))
    assert report.ok, report.failures
    assert report.records_checked == n


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(victim=st.integers(0, 119), field=st.sampled_from(["service", "input_tokens", "tenant", "span_id"]))
def test_any_header_edit_with_relinked_leaf_is_located_by_nodes(victim, field):
    store = build(NodeStore(), 120, every=16, batch=7)
    record = store.get(victim)
    value = {"service": "svc-x", "input_tokens": 123456, "tenant": "globex", "span_id": "ab" * 8}[field]
    store.edit(victim, relink=True, **{field: value})
    report = check(store)
    if victim < max(c.size for c in store.checkpoints("p0")):
        assert [(f.kind, f.record_id) for f in report.failures] == [(FailureKind.NOT_IN_TREE, record.record_id)]
    else:  # not covered by a checkpoint yet: nothing signed to compare with
        assert report.ok


def test_verify_throughput():
    store = build(MemoryStore(), 3000, every=256, batch=500)
    start = time.perf_counter()
    report = check(store)
    rate = report.records_checked / (time.perf_counter() - start)
    assert report.ok and rate > 2_000, f"{rate:.0f} records/s"
