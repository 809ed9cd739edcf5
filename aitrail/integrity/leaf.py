"""What a Merkle leaf commits to: a record's header plus a salted commitment of its content.

A record splits into three disjoint parts:

* **content** (:data:`CONTENT_FIELDS` and each document's ``snippet``): what people said
  to and heard from the model. It is committed to as
  ``SHA-256("aitrail-content-v1" 0x00 || salt || canonical_json(content))`` and can later
  be erased (content and salt dropped) without breaking any proof.
* **integrity** (:data:`INTEGRITY_FIELDS`): derived from the rest, never hashed.
* **header**: everything else, ``log_id`` and ``leaf_index`` included, so a record cannot
  be moved to another position or log without changing its leaf.

``leaf_data = "aitrail-leaf-v1" 0x00 || canonical_json(header) || commitment`` (32 bytes)
and ``leaf_hash = merkle.leaf_hash(leaf_data)``.

The salt is ``HMAC-SHA256(subject_key, record_id)``: deterministic (a crash and replay of
the same records yields the same leaves) and unrecoverable once the subject key is
destroyed, which is what erasure (crypto-shredding) relies on.

Schema evolution: the header is the record's canonical dict, so a field added to
:class:`AuditRecord` later MUST default to ``None`` (dropped from canonical JSON);
a field with a non-None default (``[]``, ``{}``, an enum value) would appear in the
header of every old record read back and break its leaf.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aitrail.schemas.canonical import canonical_json, record_to_dict
from aitrail.schemas.record import AuditRecord

from . import merkle

__all__ = [
    "CONTENT_FIELDS",
    "INTEGRITY_FIELDS",
    "SALT_SIZE",
    "LeafCheck",
    "LeafStatus",
    "content_commitment",
    "content_dict",
    "derive_salt",
    "erase",
    "has_content",
    "header_dict",
    "leaf_data",
    "recompute",
    "seal",
    "seal_with_hash",
    "split",
]

CONTENT_FIELDS: tuple[str, ...] = (
    "input_messages",
    "output_messages",
    "system_instructions",
    "question",
    "answer",
    "template_variables",
    "tool_arguments",
    "tool_result",
    "query_text",
    "raw_attributes",
    "template_text",
    "evaluation_explanation",
    "error_message",
)
"""Top-level content fields (anything that can carry what a person or a model wrote, and so
can be erased); each document's ``snippet`` is content too."""

INTEGRITY_FIELDS: tuple[str, ...] = ("leaf_hash", "content_commitment", "content_salt", "erased_at")
"""Derived or erasure bookkeeping fields: never part of the header."""

SALT_SIZE = 32
_CONTENT_PREFIX = b"aitrail-content-v1\x00"
_LEAF_PREFIX = b"aitrail-leaf-v1\x00"
_EMPTY_CONTENT: dict[str, Any] = {
    f: AuditRecord.model_fields[f].get_default(call_default_factory=True) for f in CONTENT_FIELDS
}


# --- the parts -------------------------------------------------------------------------


def split(record: AuditRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, content)`` from one canonical dump of the record (:func:`record_to_dict`)."""
    header = record_to_dict(record)
    content = {f: header.pop(f) for f in CONTENT_FIELDS if f in header}
    for f in INTEGRITY_FIELDS:
        header.pop(f, None)
    documents = header.get("documents")
    if documents:
        content["document_snippets"] = [d.pop("snippet", None) for d in documents]
    return header, content


def header_dict(record: AuditRecord) -> dict[str, Any]:
    """The canonical dict of the record minus content and integrity fields, documents kept without snippets."""
    return split(record)[0]


def content_dict(record: AuditRecord) -> dict[str, Any]:
    """The canonical dict of the content fields present, plus ``document_snippets`` when there are documents."""
    return split(record)[1]


def has_content(record: AuditRecord) -> bool:
    """True if any content field or document snippet is set (not None and not empty)."""
    return any(getattr(record, f) for f in CONTENT_FIELDS) or any(
        d.snippet is not None for d in record.documents
    )


def derive_salt(subject_key: bytes, record_id: str) -> bytes:
    """``HMAC-SHA256(subject_key, record_id)``: the record's 32-byte content salt."""
    if not subject_key:
        raise ValueError("subject key must not be empty")
    return hmac.new(subject_key, record_id.encode("utf-8"), hashlib.sha256).digest()


def content_commitment(record: AuditRecord, salt: bytes) -> bytes:
    """``SHA-256("aitrail-content-v1" 0x00 || salt || canonical_json(content))``."""
    return _commit(content_dict(record), salt)


def _commit(content: dict[str, Any], salt: bytes) -> bytes:
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt is {len(salt)} bytes, want {SALT_SIZE}")
    return hashlib.sha256(_CONTENT_PREFIX + salt + canonical_json(content)).digest()


def _leaf_data(header: dict[str, Any], commitment: bytes) -> bytes:
    return _LEAF_PREFIX + canonical_json(header) + commitment


def leaf_data(record: AuditRecord, commitment: bytes) -> bytes:
    """The bytes the Merkle leaf hashes: prefix, canonical header, 32-byte commitment."""
    if len(commitment) != 32:
        raise ValueError(f"commitment is {len(commitment)} bytes, want 32")
    return _leaf_data(header_dict(record), commitment)


# --- sealing and erasing ---------------------------------------------------------------


def seal_with_hash(
    record: AuditRecord, *, log_id: str, leaf_index: int, salt: bytes
) -> tuple[AuditRecord, bytes]:
    """:func:`seal`, also returning the leaf hash as bytes (what the sequencer appends)."""
    if record.erased_at is not None:
        raise ValueError(f"record {record.record_id} is erased; it cannot be sealed again")
    if not isinstance(leaf_index, int) or isinstance(leaf_index, bool) or leaf_index < 0:
        raise ValueError(f"leaf index must be a non-negative integer, got {leaf_index!r}")
    if not log_id:
        raise ValueError("log id must not be empty")
    header, content = split(record)
    commitment = _commit(content, salt)
    header["log_id"], header["leaf_index"] = log_id, leaf_index
    leaf = merkle.leaf_hash(_leaf_data(header, commitment))
    sealed = record.model_copy(
        update={
            "log_id": log_id,
            "leaf_index": leaf_index,
            "content_salt": salt.hex(),
            "content_commitment": commitment.hex(),
            "leaf_hash": leaf.hex(),
        }
    )
    return sealed, leaf


def seal(record: AuditRecord, *, log_id: str, leaf_index: int, salt: bytes) -> AuditRecord:
    """A copy of ``record`` placed at ``leaf_index`` of ``log_id`` with its salt, commitment and leaf hash set.

    Raises ValueError for an erased record, a bad index, an empty log id or a salt that is not 32 bytes.
    """
    return seal_with_hash(record, log_id=log_id, leaf_index=leaf_index, salt=salt)[0]


def erase(record: AuditRecord, at: str) -> AuditRecord:
    """A copy without content, snippets and salt, with ``erased_at`` set; its leaf hash is unchanged.

    Raises ValueError if the record is not sealed (no commitment to keep the leaf verifiable).
    """
    if record.content_commitment is None or record.leaf_hash is None:
        raise ValueError(f"record {record.record_id} is not sealed; erase the record itself instead")
    update: dict[str, Any] = {f: _copy_empty(v) for f, v in _EMPTY_CONTENT.items()}
    update["documents"] = [d.model_copy(update={"snippet": None}) for d in record.documents]
    update["content_salt"] = None
    update["erased_at"] = at
    return record.model_copy(update=update)


def _copy_empty(value: Any) -> Any:
    return type(value)() if isinstance(value, (list, dict)) else value


# --- checking --------------------------------------------------------------------------


class LeafStatus(StrEnum):
    OK = "ok"
    """Content matches its commitment and the recomputed leaf equals the stored ``leaf_hash``."""
    CONTENT_ALTERED = "content_altered"
    """Content does not match its commitment (or is present without a salt)."""
    HEADER_ALTERED = "header_altered"
    """The recomputed leaf differs from the stored ``leaf_hash`` (header or commitment edited).
    Whether the recomputed leaf is in the signed tree is decided by :mod:`.verify`."""
    ERASED = "erased"
    """Content and salt erased (``erased_at`` set); the header and commitment still give the leaf."""
    UNSEALED = "unsealed"
    """No (or incomplete) integrity fields: there is no leaf to check."""


@dataclass(frozen=True, slots=True)
class LeafCheck:
    """The result of :func:`recompute`.

    ``leaf_hash`` is recomputed from the header and the stored ``content_commitment`` (the
    value the tree committed to, unless that field was edited); None when unsealed or the
    commitment is malformed. ``stored_leaf_matches`` compares it with the record's own
    ``leaf_hash`` field. ``content_ok`` is None when there is no content to check (erased).
    """

    status: LeafStatus
    leaf_hash: bytes | None
    reason: str
    content_ok: bool | None = None
    erased: bool = False
    stored_leaf_matches: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (LeafStatus.OK, LeafStatus.ERASED)


def _hex32(value: str | None) -> bytes | None:
    if value is None or len(value) != 64:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def recompute(record: AuditRecord) -> LeafCheck:
    """Recompute the record's leaf and check its content against its commitment. Never raises on bad data."""
    missing = [f for f in ("log_id", "leaf_index", "leaf_hash", "content_commitment") if getattr(record, f) is None]
    if missing:
        return LeafCheck(LeafStatus.UNSEALED, None, f"not sealed: no {', '.join(missing)}")
    commitment = _hex32(record.content_commitment)
    if commitment is None:
        return LeafCheck(LeafStatus.HEADER_ALTERED, None, "content_commitment is not 64 hex digits")
    header, content = split(record)
    leaf = merkle.leaf_hash(_leaf_data(header, commitment))
    stored_matches = _hex32(record.leaf_hash) == leaf

    problems: list[str] = []
    content_ok: bool | None
    erased = False
    if record.content_salt is not None:
        salt = _hex32(record.content_salt)
        if salt is None:
            content_ok = False
            problems.append("content_salt is not 64 hex digits")
        else:
            content_ok = _commit(content, salt) == commitment
            if not content_ok:
                problems.append("content does not match its commitment")
            elif record.erased_at is not None:  # an erasure removes the salt with the content
                content_ok = False
                problems.append("erased_at set on a record that still has its content and salt")
    elif record.erased_at is not None:
        erased = True
        content_ok = None if not has_content(record) else False
        if content_ok is False:
            problems.append("erased record carries content")
    else:
        content_ok = False
        problems.append("content_salt missing on a record that is not erased")

    if not stored_matches:
        problems.append("recomputed leaf hash differs from the stored leaf_hash (header or commitment edited)")
    if content_ok is False:
        status = LeafStatus.CONTENT_ALTERED
    elif not stored_matches:
        status = LeafStatus.HEADER_ALTERED
    elif erased:
        status = LeafStatus.ERASED
    else:
        status = LeafStatus.OK
    reason = "; ".join(problems) or ("content erased at " + str(record.erased_at) if erased else "ok")
    return LeafCheck(status, leaf, reason, content_ok, erased, stored_matches)
