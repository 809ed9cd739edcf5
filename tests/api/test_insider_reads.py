"""What the query API shows when someone with write access to the store (the SQLite data folder,
the OpenSearch indices) edits it: a record moved to another tenant by its `tenant` column, a
checkpoints row that is not what its signed note says, and what an analyst could learn from the
integrity fields of the content it may not read."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from aitrail.integrity.note import Checkpoint, Signer, sign_checkpoint
from aitrail.tenancy import tenant_log_id
from tests.api.tenants import SIGNER, build

ACME_LOG = tenant_log_id("acme", "local")
GLOBEX_LOG = tenant_log_id("globex", "local")


@pytest.fixture
def tenants(tmp_path):
    built = build(tmp_path)
    yield built
    built.store.close()


def _insider(tenants, statement: str, *params) -> None:
    """What someone holding the data folder can do: edit the SQLite file directly."""
    conn = sqlite3.connect(tenants.store.path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS records_append_only")
        conn.execute(statement, params)
    finally:
        conn.close()


def _globex_record_id(tenants) -> str:
    (record,) = tenants.store.trace("globex", tenants.globex_trace_id)
    return record.record_id


def _shape(response, asked: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(asked, "<id>")


def test_a_record_moved_to_another_tenant_by_its_column_has_no_proof_for_it(tenants):
    victim = _globex_record_id(tenants)
    assert tenants.get(f"/v1/records/{victim}/proof", "other_tenant").json()["log_id"] == GLOBEX_LOG
    _insider(tenants, "UPDATE records SET tenant = 'acme' WHERE record_id = ?", victim)
    missing = "f" * 32
    for caller in ("auditor", "analyst", "admin"):
        record, proof = (tenants.get(path.format(victim), caller) for path in
                         ("/v1/records/{}", "/v1/records/{}/proof"))
        assert record.status_code == proof.status_code == 404, (caller, proof.text[:300])
        assert _shape(proof, victim) == _shape(tenants.get(f"/v1/records/{missing}/proof", caller), missing)
        assert GLOBEX_LOG not in proof.text and "Globex" not in proof.text


def _row(tenants, log_id: str, size: int, root: bytes, note: str) -> None:
    _insider(tenants, "INSERT INTO checkpoints (log_id, size, root, note, signed_at) VALUES (?, ?, ?, ?, ?)",
             log_id, size, root, note, "2026-11-24T07:30:00.000000000Z")


def _latest(tenants, caller: str = "auditor", **params):
    response = tenants.get("/v1/checkpoints/latest", caller, **params)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def test_checkpoints_served_are_the_signed_notes_own(tenants):
    body = _latest(tenants)
    assert body["problems"] == []
    (local,) = [c for c in body["data"] if c["log_id"] == ACME_LOG]
    note = Checkpoint.from_text(local["note"][: local["note"].rfind("\n\n") + 1])
    assert note.origin == f"{SIGNER.name}/{ACME_LOG}"
    assert (local["size"], local["root_hash"]) == (note.size, note.root_hash.hex())


def test_another_tenants_note_in_a_checkpoints_row_is_not_served(tenants):
    (globex,) = _latest(tenants, "other_tenant")["data"]
    acme_before = {c["log_id"]: c for c in _latest(tenants)["data"]}[ACME_LOG]
    _row(tenants, ACME_LOG, 1000, bytes.fromhex(globex["root_hash"]), globex["note"])
    for params in ({}, {"log": ACME_LOG}):
        body = _latest(tenants, **params)
        shown = [c for c in body["data"] if c["log_id"] == ACME_LOG]
        assert shown == [], shown
        assert globex["note"] not in str(body) and 1000 not in [c["size"] for c in body["data"]]
        (problem,) = [p for p in body["problems"] if p["log_id"] == ACME_LOG]
        assert "not served" in problem["reason"] and "origin" in problem["reason"], problem
    assert acme_before["size"] != 1000


def test_a_validly_signed_note_of_another_log_is_not_served(tenants):
    wrong = sign_checkpoint(Checkpoint(f"{SIGNER.name}/{GLOBEX_LOG}", 1000, b"\x07" * 32), SIGNER)
    _row(tenants, ACME_LOG, 1000, b"\x07" * 32, wrong)
    (problem,) = [p for p in _latest(tenants)["problems"] if p["log_id"] == ACME_LOG]
    assert f"{SIGNER.name}/{ACME_LOG}" in problem["reason"] and GLOBEX_LOG not in problem["reason"]


def test_a_note_signed_by_an_untrusted_key_is_not_served(tenants):
    forger = Signer.generate(SIGNER.name)  # the same name, another key
    forged = sign_checkpoint(Checkpoint(f"{SIGNER.name}/{ACME_LOG}", 1000, b"\x07" * 32), forger)
    _row(tenants, ACME_LOG, 1000, b"\x07" * 32, forged)
    body = _latest(tenants)
    assert ACME_LOG not in [c["log_id"] for c in body["data"]]
    (problem,) = [p for p in body["problems"] if p["log_id"] == ACME_LOG]
    assert "known key" in problem["reason"]


def test_a_row_whose_size_or_root_is_not_its_notes_is_not_served(tenants):
    real = {c["log_id"]: c for c in _latest(tenants)["data"]}[ACME_LOG]
    _row(tenants, ACME_LOG, 1000, bytes.fromhex(real["root_hash"]), real["note"])
    body = _latest(tenants)
    assert all(c["size"] != 1000 for c in body["data"]) and ACME_LOG not in [c["log_id"] for c in body["data"]]
    (problem,) = [p for p in body["problems"] if p["log_id"] == ACME_LOG]
    assert "1000" in problem["reason"] and str(real["size"]) in problem["reason"]


def test_another_tenants_logs_problems_are_never_shown(tenants):
    (globex,) = _latest(tenants, "other_tenant")["data"]
    _row(tenants, GLOBEX_LOG, 1000, bytes.fromhex(globex["root_hash"]), globex["note"])
    assert _latest(tenants, "other_tenant")["problems"][0]["log_id"] == GLOBEX_LOG
    body = _latest(tenants)
    assert GLOBEX_LOG not in str(body) and body["problems"] == []
    missing = tenants.get("/v1/checkpoints/latest", "auditor", log="globex/nothing.9")
    other = tenants.get("/v1/checkpoints/latest", "auditor", log=GLOBEX_LOG)
    assert other.status_code == missing.status_code == 404
    assert _shape(other, GLOBEX_LOG) == _shape(missing, "globex/nothing.9")


def test_analysts_get_no_salt_and_no_document_hash(tenants):
    """With the salt a guess at the content could be confirmed against the commitment; a
    document's content_sha256 is the plain hash of its text. The commitment itself stays:
    without the salt it tells nothing, and the analyst can still check inclusion proofs."""
    record = tenants.get(f"/v1/records/{tenants.record_id}", "auditor").json()
    assert record["content_salt"] and record["content_commitment"]
    for path in (f"/v1/records/{tenants.record_id}", f"/v1/traces/{tenants.trace_id}"):
        auditor, analyst = tenants.get(path, "auditor").json(), tenants.get(path, "analyst").json()
        views = analyst.get("records", [analyst])
        assert views and all("content_salt" not in v and "content_salt" in v["redacted"] for v in views)
        assert all(v["content_commitment"] for v in views)
        assert auditor["records" if "records" in auditor else "record_id"]
        assert all(v.get("content_salt") for v in auditor.get("records", [auditor]))
    replay = tenants.get(f"/v1/traces/{tenants.trace_id}", "analyst").json()
    (lookup,) = [r for r in replay["records"] if r["kind"] == "retrieval"]
    assert lookup["documents"] and all("content_sha256" not in d for d in lookup["documents"])
    assert "documents.content_sha256" in lookup["redacted"] and "documents.snippet" in lookup["redacted"]
    assert lookup["documents"][0]["doc_id"] == "handbook"
    full = tenants.get(f"/v1/traces/{tenants.trace_id}", "auditor").json()
    (seen,) = [r for r in full["records"] if r["kind"] == "retrieval"]
    assert seen["documents"][0]["content_sha256"] == hashlib.sha256(b"SECRET snippet").hexdigest()
