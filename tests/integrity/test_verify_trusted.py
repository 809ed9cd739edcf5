"""Checkpoints kept outside the store (mirror, --trusted files) and the erasure-coverage contract,
at the library level: parsing, the log-id mapping, and verify_log / verify_logs against them."""

from __future__ import annotations

import json

import pytest

from aitrail.collector.sequencing import Sequencing
from aitrail.custody import CheckpointMirror
from aitrail.integrity import merkle
from aitrail.integrity.coverage import ErasureCoverage, ErasureStatus, covers
from aitrail.integrity.note import Checkpoint, Signer, sign_checkpoint
from aitrail.integrity.sequencer import SignedCheckpoint
from aitrail.integrity.system import system_record
from aitrail.integrity.trusted import (
    ExternalCheckpoint,
    TrustedFileError,
    log_id_of,
    mirrored_checkpoints,
    parse_trusted,
)
from aitrail.integrity.verify import FailureKind, verify_log, verify_logs
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion, iso

NAME = "aitrail/0123456789ab"
SIGNER = Signer.generate(NAME)
VERIFIER = SIGNER.verifier()


@pytest.fixture
def sealed(tmp_path):
    """40 completions sealed through the real sequencing path (checkpoints every 8 leaves),
    the mirror written beside; returns (store, log id, mirror)."""
    store = SqliteStore(tmp_path / "aitrail.db")
    mirror = CheckpointMirror(tmp_path / "mirror")
    sequencing = Sequencing(store, SIGNER, NAME, checkpoint_every=8, checkpoint_interval_s=0, checkpoint_file=mirror)
    records = [completion("acme", trace=500 + i, time=iso(24, 7, i), user=f"u_{i % 3}") for i in range(40)]
    for first in range(0, 40, 8):
        sequencing.write(records[first : first + 8])
    (log_id,) = store.log_ids()
    yield store, log_id, mirror
    store.close()


def kinds(report) -> set[FailureKind]:
    return {f.kind for f in report.failures}


def kept(store, log_id, source="trusted file t.json", mirrored=False) -> list[ExternalCheckpoint]:
    return [ExternalCheckpoint(source, cp, mirrored) for cp in store.checkpoints(log_id)]


# --- parsing -------------------------------------------------------------------------------


def test_log_id_of_takes_the_longest_prefix():
    assert log_id_of(f"{NAME}/acme/local", [NAME]) == "acme/local"
    assert log_id_of(f"{NAME}/acme/local", ["aitrail", NAME]) == "acme/local"
    assert log_id_of("aitrail/other/acme/local", [NAME]) is None
    assert log_id_of(f"{NAME}/", [NAME]) is None


def test_trusted_json_and_signed_notes_give_the_same_checkpoints(sealed):
    store, log_id, _ = sealed
    cps = store.checkpoints(log_id)
    body = {"data": [cp.to_dict() for cp in cps]}
    from_json = parse_trusted(json.dumps(body), "a.json", [NAME])
    from_list = parse_trusted(json.dumps(body["data"]), "a.json", [NAME])
    # notes one after another, as saved by hand: blank lines between some, CRLF line ends
    notes = "".join(cp.note + ("\n" if i % 2 else "") for i, cp in enumerate(cps)).replace("\n", "\r\n")
    from_notes = parse_trusted(notes, "n.txt", [NAME])
    want = [(log_id, cp.size, cp.root_hash, cp.note) for cp in cps]
    for found in (from_json, from_list, from_notes):
        assert [(e.checkpoint.log_id, e.checkpoint.size, e.checkpoint.root_hash, e.checkpoint.note) for e in found] == want
        assert not any(e.mirrored for e in found)


def test_trusted_log_id_comes_from_the_signed_origin_not_the_fields_beside_it(sealed):
    store, log_id, _ = sealed
    entry = store.checkpoints(log_id)[0].to_dict() | {"log_id": "someone/else", "size": 999}
    (found,) = parse_trusted(json.dumps({"data": [entry]}), "a.json", [NAME])
    assert (found.checkpoint.log_id, found.checkpoint.size) == (log_id, 8)


def test_other_installations_entries_are_left_out(sealed):
    other = Signer.generate("aitrail/ffffffffffff")
    note = sign_checkpoint(Checkpoint("aitrail/ffffffffffff/acme/local", 3, bytes(32)), other)
    assert parse_trusted(note, "n.txt", [NAME]) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ('{"items": []}', 'without a "data" list'),
        ('{"data": [{"size": 3}]}', 'has no "note"'),
        ('{"data": [{"note": "garbage"}]}', "not a signed checkpoint"),
        (f"{NAME}/acme/local\n3\nAAAA\n\nno signature here\n", "no signature lines"),
        (f"{NAME}/acme/local\nthree\n{'A' * 43}=\n\n\u2014 {NAME} AAAAAAAA\n", "not a checkpoint"),
    ],
)
def test_unreadable_trusted_text_is_an_error_naming_the_file(text, message):
    with pytest.raises(TrustedFileError, match=message) as caught:
        parse_trusted(text, "trusted file x.txt", [NAME])
    assert "x.txt" in str(caught.value)


def test_mirror_entries_are_mirrored_and_a_bad_line_is_an_error(sealed, tmp_path):
    store, log_id, mirror = sealed
    found = mirrored_checkpoints(CheckpointMirror(mirror.directory, create=False), [NAME])
    assert [e.checkpoint.size for e in found] == [8, 16, 24, 32, 40] and all(e.mirrored for e in found)
    (path,) = mirror.directory.glob("*.jsonl")
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(TrustedFileError, match="cannot read the checkpoint mirror"):
        mirrored_checkpoints(mirror, [NAME])
    missing = CheckpointMirror(tmp_path / "nowhere", create=False)
    assert mirrored_checkpoints(missing, [NAME]) == [] and not (tmp_path / "nowhere").exists()


# --- verify_log against kept checkpoints -------------------------------------------------------


def test_kept_checkpoints_the_store_extends_verify(sealed):
    store, log_id, mirror = sealed
    external = kept(store, log_id) + mirrored_checkpoints(mirror, [NAME])
    report = verify_log(store, VERIFIER, log_id, external=external)
    assert report.ok, report.failures
    assert report.external_checked == 10 and report.verified_size == 40


def test_a_kept_checkpoint_beyond_the_store_is_a_rollback(sealed, tmp_path):
    store, log_id, _ = sealed
    saved = kept(store, log_id)
    conn = store._conn()
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute("DELETE FROM records WHERE leaf_index >= 24")
    conn.execute("DELETE FROM checkpoints WHERE size > 24")
    conn.execute("DELETE FROM merkle_nodes WHERE (idx + 1) << level > 24")
    state = store.log_state(log_id)
    rng = merkle.CompactRange()
    rng.extend(bytes.fromhex(r.leaf_hash) for r in store.records_in_log(log_id))
    from dataclasses import replace

    truncated = replace(state, size=24, compact_range=rng.to_bytes(), last_checkpoint_size=24)
    conn.execute("UPDATE logs SET state = ? WHERE log_id = ?", (json.dumps(truncated.to_dict()), log_id))
    assert verify_log(store, VERIFIER, log_id).ok  # a clean truncation: the store alone cannot tell
    report = verify_log(store, VERIFIER, log_id, external=saved)
    (failure,) = report.failures
    assert failure.kind == FailureKind.ROLLED_BACK and failure.size == 40
    assert "t.json" in failure.what and "24 leaves" in failure.what


def test_a_kept_checkpoint_the_records_do_not_reproduce_is_a_fork(sealed):
    store, log_id, _ = sealed
    evil = Signer.generate(NAME)  # same name, new key: the store's checkpoints re-signed
    forged = []
    for cp in store.checkpoints(log_id)[2:]:
        other = bytes(32) if cp.size == 24 else cp.root_hash
        note = sign_checkpoint(Checkpoint(f"{NAME}/{log_id}", cp.size, other), SIGNER)  # what the auditor kept
        forged.append(ExternalCheckpoint("trusted file t.json", SignedCheckpoint(log_id, cp.size, other, note, "")))
    report = verify_log(store, VERIFIER, log_id, external=forged)
    (failure,) = report.failures
    assert failure.kind == FailureKind.FORKED and failure.size == 24 and "t.json" in failure.what
    # a kept checkpoint not signed by a trusted key is rejected, named by its source
    bad = sign_checkpoint(Checkpoint(f"{NAME}/{log_id}", 8, store.checkpoints(log_id)[0].root_hash), evil)
    report = verify_log(store, VERIFIER, log_id, external=[
        ExternalCheckpoint("trusted file t.json", SignedCheckpoint(log_id, 8, bytes(32), bad, ""))])
    assert kinds(report) == {FailureKind.BAD_CHECKPOINT} and "t.json" in report.failures[0].what
    assert report.external_checked == 0


def test_mirror_checkpoints_must_be_in_the_store_unchanged(sealed):
    store, log_id, mirror = sealed
    conn = store._conn()
    conn.execute("DELETE FROM checkpoints WHERE size IN (16, 40)")
    report = verify_log(store, VERIFIER, log_id, external=mirrored_checkpoints(mirror, [NAME]))
    (failure,) = report.failures
    assert failure.kind == FailureKind.MIRROR_MISSING and "size(s) 16, 40" in failure.what
    assert report.verified_size == 40  # the mirror's signed checkpoints still cover the log


def test_verify_logs_covers_the_union_and_a_wiped_log_is_loss(sealed, tmp_path):
    store, log_id, mirror = sealed
    external = mirrored_checkpoints(mirror, [NAME])
    empty = SqliteStore(tmp_path / "empty.db")
    (report,) = verify_logs(empty, VERIFIER, external=external)
    assert report.log_id == log_id and kinds(report) == {FailureKind.LOG_MISSING}
    assert "missing from the store entirely" in report.failures[0].what
    assert verify_logs(empty, VERIFIER) == []
    # a log the store knows, with its records gone
    conn = store._conn()
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute("DELETE FROM records")
    (report,) = verify_logs(store, VERIFIER)
    assert FailureKind.LOG_MISSING in kinds(report) and "holds none of its records" in " ".join(
        f.what for f in report.failures)
    # entries nobody can vouch for (a forged signature) do not invent a log
    evil = Signer.generate(NAME)
    note = sign_checkpoint(Checkpoint(f"{NAME}/ghost/local", 4, bytes(32)), evil)
    ghost = ExternalCheckpoint("trusted file t", SignedCheckpoint("ghost/local", 4, bytes(32), note, ""))
    (report,) = verify_logs(empty, VERIFIER, external=[ghost])
    assert kinds(report) == {FailureKind.BAD_CHECKPOINT}
    empty.close()


# --- erasure coverage ----------------------------------------------------------------------------


def sealed_copy(record, log_id, leaf_index, start_time=None):
    return record.model_copy(update={"log_id": log_id, "leaf_index": leaf_index,
                                     **({"start_time": start_time} if start_time else {})})


def test_coverage_contract():
    alice = sealed_copy(completion("acme", trace=1, user="u_alice"), "acme/local", 3)
    erasure = sealed_copy(system_record("erasure", "acme", {"subject": "u_alice"}, at=iso(25, 0)), "acme/local", 10)
    assert covers(erasure, alice)
    assert not covers(erasure, sealed_copy(alice, "acme/local", 11))  # sealed after the erasure
    assert covers(erasure, sealed_copy(alice, "acme/p.0", 50, iso(24, 7)))  # other log: earlier start time
    assert not covers(erasure, sealed_copy(alice, "acme/p.0", 1, iso(26, 7)))
    assert not covers(erasure, completion("acme", trace=2, user="u_bob"))
    assert not covers(erasure, completion("other", trace=1, user="u_alice"))  # another tenant
    listed = system_record("retention", "acme", {"record_ids": [alice.record_id]})
    assert covers(listed, alice) and not covers(listed, completion("acme", trace=3))
    assert covers(system_record("erasure", "acme", {"record_ids": [alice.record_id]}), alice)
    retention_subject = system_record("retention", "acme", {"subject": "u_alice"})
    assert not covers(retention_subject, alice)  # retention covers listed ids only
    not_system = erasure.model_copy(update={"origin": "span"})
    assert not covers(not_system, alice)


def test_coverage_requires_a_verified_cover():
    record = completion("acme", trace=1, user="u_alice")
    cover = system_record("retention", "acme", {"record_ids": [record.record_id]})
    checked = []

    def judge(status):
        return ErasureCoverage(lambda tenant: [cover] if tenant == "acme" else [],
                               lambda c: checked.append(c.record_id) or status)

    assert judge("verified").explain(record).status == ErasureStatus.COVERED
    assert judge("pending").explain(record).status == ErasureStatus.PENDING
    failed = judge("failed").explain(record)
    assert failed.status == ErasureStatus.UNEXPLAINED and cover.record_id in failed.reason
    none = judge("verified").explain(completion("acme", trace=9))
    assert none.status == ErasureStatus.UNEXPLAINED and "no sealed erasure" in none.reason
    checked.clear()
    coverage = judge("verified")
    for _ in range(3):
        assert coverage.explain(record).by == cover.record_id
    assert checked == [cover.record_id]  # each cover is checked once
