"""What a leaf commits to: header + salted content commitment, erasure, recomputation."""

from __future__ import annotations

import hashlib
import hmac
import typing
from decimal import Decimal

import pytest
from aitrail.schemas.canonical import canonical_json, record_from_json
from aitrail.schemas.record import AuditRecord, Cost
from pydantic import BaseModel

from aitrail.integrity import merkle
from aitrail.integrity.leaf import (
    CONTENT_FIELDS,
    INTEGRITY_FIELDS,
    LeafStatus,
    content_commitment,
    content_dict,
    derive_salt,
    erase,
    has_content,
    header_dict,
    leaf_data,
    recompute,
    seal,
)
from tests.factories import completion, retrieval

SALT = bytes(range(32))
OTHER_SALT = bytes(range(1, 33))


def rich(trace: int = 1, **extra) -> AuditRecord:
    return completion(
        trace=trace,
        question="คืนเงิน 退款 — refund?",
        input_messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "refund?"}],
        output_messages=[{"role": "assistant", "content": "Refunds within 30 days.", "finish_reason": "stop"}],
        system_instructions="Be brief.",
        template_variables={"lang": "th"},
        raw_attributes={"gen_ai.x": 1.5, "z": [1, 2], "nested": {"b": None, "a": True}},
        request_params={"temperature": 0.2},
        duration_ms=12.5,
        **extra,
    )


def sealed(record: AuditRecord | None = None, index: int = 7, salt: bytes = SALT) -> AuditRecord:
    return seal(record or rich(), log_id="p0", leaf_index=index, salt=salt)


# --- what is committed where -------------------------------------------------------------


def test_every_record_field_is_classified_and_new_fields_default_to_none():
    """Adding a field to AuditRecord must be a decision: content (erasable) or header.

    A new field with a non-None default would also change the header of every stored
    record read back, breaking old leaves: new fields must default to None."""
    header_fields = {
        "schema_version", "record_id", "kind", "origin", "trace_id", "span_id", "parent_span_id", "tenant",
        "service", "environment", "session_id", "conversation_id", "span_name", "operation", "feature",
        "agent_name", "agent_id", "workflow_name", "start_time", "end_time", "duration_ms", "ingested_at",
        "user_pseudonym", "user_roles", "client_ip_hash", "context_from", "provider", "request_model", "response_model",
        "request_params", "finish_reasons", "response_id", "route", "template_id", "template_version",
        "tool_name", "tool_call_id", "documents", "index_name", "top_k", "input_tokens",
        "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost", "score", "label", "evaluation_name",
        "status", "error_type", "latency_ms", "semconv",
        "collector_version", "kafka", "details", "log_id", "leaf_index",
    }  # fmt: skip
    fields = set(AuditRecord.model_fields)
    unclassified = fields - header_fields - set(CONTENT_FIELDS) - set(INTEGRITY_FIELDS)
    assert not unclassified, f"classify {sorted(unclassified)} as header or content in aitrail/integrity/leaf.py"
    assert not header_fields & set(CONTENT_FIELDS)

    non_none_defaults_v1 = {
        "AuditRecord": {"schema_version", "origin", "user_roles", "finish_reasons", "input_messages",
                        "output_messages", "documents", "status", "raw_attributes"},
        "Document": {"acl_tags"},
    }  # fmt: skip

    def models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
        seen[model.__name__] = model
        for info in model.model_fields.values():
            for arg in typing.get_args(info.annotation) + (info.annotation,):
                for inner in typing.get_args(arg) + (arg,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel) and inner.__name__ not in seen:
                        models(inner, seen)
        return seen

    for name, model in models(AuditRecord, {}).items():
        with_default = {
            f for f, info in model.model_fields.items()
            if not info.is_required() and info.get_default(call_default_factory=True) is not None
        }  # fmt: skip
        assert with_default <= non_none_defaults_v1.get(name, set()), (name, with_default)


def test_header_has_position_and_documents_without_snippets_and_no_content():
    record = sealed(retrieval(trace=1, documents=[{"doc_id": "a", "snippet": "secret"}, {"doc_id": "b"}]))
    header = header_dict(record)
    assert header["log_id"] == "p0" and header["leaf_index"] == 7
    assert header["documents"] == [{"doc_id": "a", "acl_tags": []}, {"doc_id": "b", "acl_tags": []}]
    for name in CONTENT_FIELDS + INTEGRITY_FIELDS:
        assert name not in header
    content = content_dict(record)
    assert content["document_snippets"] == ["secret", None]
    assert content["query_text"] == "refund policy"
    assert set(content) <= set(CONTENT_FIELDS) | {"document_snippets"}


def test_leaf_data_layout():
    record = sealed()
    commitment = bytes.fromhex(record.content_commitment)
    data = leaf_data(record, commitment)
    assert data == b"aitrail-leaf-v1\x00" + canonical_json(header_dict(record)) + commitment
    assert merkle.leaf_hash(data).hex() == record.leaf_hash
    want = hashlib.sha256(b"aitrail-content-v1\x00" + SALT + canonical_json(content_dict(record))).digest()
    assert content_commitment(record, SALT) == want == commitment
    assert record.content_salt == SALT.hex()


def test_golden_leaf_hash():
    """Pins the leaf format: changing it breaks every stored log."""
    record = seal(
        AuditRecord(
            record_id="r1", kind="completion", tenant="acme", start_time="2026-11-24T07:30:00.000000000Z",
            request_model="gpt-4o-mini", question="q?", answer="a.", cost={"amount": Decimal("0.0000165")},
        ),
        log_id="p0", leaf_index=3, salt=SALT,
    )  # fmt: skip
    # spelled out by hand: what an independent verifier implements
    content = b'{"answer":"a.","input_messages":[],"output_messages":[],"question":"q?","raw_attributes":{}}'
    commitment = hashlib.sha256(b"aitrail-content-v1\x00" + SALT + content).digest()
    header = (
        b'{"cost":{"amount":"0.0000165"},"documents":[],"finish_reasons":[],"kind":"completion","leaf_index":3,'
        b'"log_id":"p0","origin":"span","record_id":"r1","request_model":"gpt-4o-mini","schema_version":1,'
        b'"start_time":"2026-11-24T07:30:00.000000000Z","status":"unset","tenant":"acme","user_roles":[]}'
    )
    leaf = hashlib.sha256(b"\x00aitrail-leaf-v1\x00" + header + commitment).digest()
    assert record.content_commitment == commitment.hex() == (
        "41e8c6a973568c056377666300533b36b2834519f6a0f971c464c137140267eb"
    )
    assert record.leaf_hash == leaf.hex() == "fe70a1776512e9bc29cadabeaf0a6aad2bb0f9831885382bdefae36d303622e0"


# --- salt and determinism ------------------------------------------------------------------


def test_salt_is_hmac_of_record_id_under_subject_key():
    key = b"k" * 32
    assert derive_salt(key, "r1") == hmac.new(key, b"r1", hashlib.sha256).digest()
    assert derive_salt(key, "r1") != derive_salt(key, "r2")
    assert derive_salt(key, "r1") != derive_salt(b"j" * 32, "r1")
    with pytest.raises(ValueError):
        derive_salt(b"", "r1")


def test_same_record_and_salt_give_the_same_leaf():
    record = rich()
    a, b = sealed(record), sealed(record.model_copy())
    assert a == b and a.leaf_hash == b.leaf_hash
    assert canonical_json(a) == canonical_json(b)


def test_different_salt_gives_different_commitment_and_leaf():
    record = rich()
    a, b = sealed(record), sealed(record, salt=OTHER_SALT)
    assert a.content_commitment != b.content_commitment
    assert a.leaf_hash != b.leaf_hash


def test_position_is_bound():
    record = rich()
    assert sealed(record, index=7).leaf_hash != sealed(record, index=8).leaf_hash
    assert sealed(record).leaf_hash != seal(record, log_id="p1", leaf_index=7, salt=SALT).leaf_hash


def test_seal_does_not_touch_the_input_and_rejects_bad_arguments():
    record = rich()
    before = canonical_json(record)
    sealed(record)
    assert canonical_json(record) == before
    with pytest.raises(ValueError):
        seal(record, log_id="p0", leaf_index=0, salt=b"short")
    with pytest.raises(ValueError):
        seal(record, log_id="p0", leaf_index=-1, salt=SALT)
    with pytest.raises(ValueError):
        seal(record, log_id="", leaf_index=0, salt=SALT)
    with pytest.raises(ValueError):
        seal(erase(sealed(record), "2026-11-25T00:00:00.000000000Z"), log_id="p0", leaf_index=0, salt=SALT)


def test_leaf_survives_a_store_round_trip():
    record = sealed(rich(cost="0.00001650"))
    back = record_from_json(canonical_json(record))
    check = recompute(back)
    assert check.status == LeafStatus.OK and check.ok
    assert check.leaf_hash.hex() == record.leaf_hash
    assert check.stored_leaf_matches and check.content_ok


# --- recomputation ---------------------------------------------------------------------------


def test_recompute_ok():
    record = sealed()
    check = recompute(record)
    assert (check.status, check.reason, check.erased) == (LeafStatus.OK, "ok", False)
    assert check.leaf_hash == bytes.fromhex(record.leaf_hash)


@pytest.mark.parametrize(
    "update",
    [
        {"answer": "Refunds are never possible."},
        {"question": None},
        {"raw_attributes": {"gen_ai.x": 1.5}},
        {"output_messages": []},
        {"template_variables": {"lang": "en"}},
    ],
)
def test_content_edit_is_content_altered_and_leaf_unchanged(update):
    record = sealed()
    check = recompute(record.model_copy(update=update))
    assert check.status == LeafStatus.CONTENT_ALTERED and not check.ok
    assert check.content_ok is False
    assert check.leaf_hash.hex() == record.leaf_hash  # the header is intact


def test_snippet_edit_is_content_altered():
    record = sealed(retrieval(trace=1, documents=[{"doc_id": "a", "snippet": "s"}]))
    edited = record.model_copy(update={"documents": [record.documents[0].model_copy(update={"snippet": "t"})]})
    assert recompute(edited).status == LeafStatus.CONTENT_ALTERED


@pytest.mark.parametrize(
    "update",
    [
        {"request_model": "gpt-4o"},
        {"start_time": "2026-11-24T07:31:00.000000000Z"},
        {"cost": Cost(amount=Decimal("0.0000001"), currency="USD", price_table_version="t")},
        {"leaf_index": 8},
        {"log_id": "p1"},
        {"user_pseudonym": "u_bob"},
    ],
)
def test_header_edit_changes_the_leaf(update):
    record = sealed()
    edited = record_from_json(canonical_json(record.model_copy(update=update)))
    check = recompute(edited)
    assert check.status == LeafStatus.HEADER_ALTERED and not check.stored_leaf_matches
    assert check.leaf_hash.hex() != record.leaf_hash
    # with leaf_hash rewritten to match, only the tree can tell (see test_verify)
    forged = edited.model_copy(update={"leaf_hash": check.leaf_hash.hex()})
    assert recompute(forged).status == LeafStatus.OK


def test_document_metadata_is_header():
    record = sealed(retrieval(trace=1))
    doc = record.documents[1].model_copy(update={"acl_tags": ["public"]})
    assert recompute(record.model_copy(update={"documents": [record.documents[0], doc]})).status == (
        LeafStatus.HEADER_ALTERED
    )


def test_unsealed_and_malformed():
    assert recompute(rich()).status == LeafStatus.UNSEALED
    assert recompute(rich()).leaf_hash is None
    record = sealed()
    assert recompute(record.model_copy(update={"content_commitment": "zz"})).status == LeafStatus.HEADER_ALTERED
    assert recompute(record.model_copy(update={"content_salt": "zz"})).status == LeafStatus.CONTENT_ALTERED
    # an edited commitment no longer matches the content (and changes the leaf)
    other = recompute(record.model_copy(update={"content_commitment": "00" * 32}))
    assert other.status == LeafStatus.CONTENT_ALTERED and not other.stored_leaf_matches
    missing_salt = recompute(record.model_copy(update={"content_salt": None}))
    assert missing_salt.status == LeafStatus.CONTENT_ALTERED and "salt" in missing_salt.reason


# --- erasure ---------------------------------------------------------------------------------


def test_erase_keeps_the_leaf_and_drops_content_snippets_and_salt():
    record = sealed(retrieval(trace=1, documents=[{"doc_id": "a", "snippet": "secret"}], raw_attributes={"x": 1}))
    erased = erase(record, "2026-11-25T00:00:00.000000000Z")
    assert not has_content(erased) and has_content(record)
    assert erased.content_salt is None and erased.erased_at == "2026-11-25T00:00:00.000000000Z"
    assert erased.documents[0].snippet is None and erased.documents[0].doc_id == "a"
    assert erased.leaf_hash == record.leaf_hash and erased.content_commitment == record.content_commitment
    back = record_from_json(canonical_json(erased))
    check = recompute(back)
    assert check.status == LeafStatus.ERASED and check.ok and check.erased
    assert check.leaf_hash.hex() == record.leaf_hash
    assert b"secret" not in canonical_json(back) and b"refund policy" not in canonical_json(back)


def test_erased_record_is_still_header_checked():
    erased = erase(sealed(), "2026-11-25T00:00:00.000000000Z")
    assert recompute(erased.model_copy(update={"request_model": "x"})).status == LeafStatus.HEADER_ALTERED
    readded = recompute(erased.model_copy(update={"answer": "new words"}))
    assert readded.status == LeafStatus.CONTENT_ALTERED and "erased" in readded.reason


def test_erase_requires_a_sealed_record():
    with pytest.raises(ValueError):
        erase(rich(), "2026-11-25T00:00:00.000000000Z")
