"""Row authentication for what the Merkle logs do not seal: API keys, secrets, dead letters.

Whoever can write the data folder (or the OpenSearch indices, or the dead-letter topic) could
otherwise move a key to another tenant or role, add a key, un-revoke one, swap the pseudonym
secret, or plant a dead letter that a routine `aitrail dlq replay` seals as genuine. Each such
row carries an HMAC-SHA256 (`mac`) over a canonical encoding of its content, made with the
row key `store-mac.key` kept beside the signing keys, outside the data folder
(aitrail.custody). A row whose MAC is missing or wrong was not written by aitrail:

- an API key row: the key does not authenticate (401, logged with the key id);
- a secret: the store stops with an error naming the secret;
- a dead letter: `aitrail dlq list` shows it as not authentic, `aitrail dlq replay` refuses it.

The encoding is JSON of ``["aitrail-row/1", kind, fields]``: the kind separates tables (a
key row's MAC is no secret's), bytes are written as ``{"b64": ...}`` so they never equal a
string, headers are an object with sorted keys. Row ids that the store assigns (SQLite's
dead-letter id, a Kafka offset) are not covered: a row is authenticated by what it says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KEY_BYTES = 32
MAC_HEADER = "aitrail-dlq-mac"  # a Kafka dead letter's MAC (dropped on replay with the other aitrail-dlq- headers)

KEY_ROW = "api_key"
SECRET_ROW = "secret"
DEAD_LETTER_ROW = "dead_letter"


def _field(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        return {str(k): _field(v) for k, v in value.items()}
    return value


def canonical(kind: str, fields: Sequence[object]) -> bytes:
    return json.dumps(
        ["aitrail-row/1", kind, [_field(f) for f in fields]], sort_keys=True, separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


@dataclass(frozen=True, slots=True)
class UnauthenticatedRow:
    """A row `aitrail verify` reports: ``view`` is the table, index or topic, ``row`` names
    the row (key id, secret name, dead-letter id), ``what`` says why."""

    view: str
    row: str
    what: str


class RowMac:
    """HMAC-SHA256 over rows, with the installation's row key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a row key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "RowMac(<key>)"

    def tag(self, kind: str, fields: Sequence[object]) -> str:
        return hmac.new(self._key, canonical(kind, fields), hashlib.sha256).hexdigest()

    def check(self, kind: str, fields: Sequence[object], tag: str | None) -> bool:
        return bool(tag) and hmac.compare_digest(self.tag(kind, fields), str(tag))

    # The rows, field by field (the order is the encoding's: never reorder).

    def key_row(self, key_id: str, key_hash: str, tenant: str, role: str, created_at: str,
                revoked_at: str | None) -> str:
        return self.tag(KEY_ROW, (key_id, key_hash, tenant, role, created_at, revoked_at))

    def key_row_ok(self, key_id: str, key_hash: str, tenant: str, role: str, created_at: str,
                   revoked_at: str | None, tag: str | None) -> bool:
        return self.check(KEY_ROW, (key_id, key_hash, tenant, role, created_at, revoked_at), tag)

    def secret_row(self, name: str, value: bytes) -> str:
        return self.tag(SECRET_ROW, (name, bytes(value)))

    def secret_row_ok(self, name: str, value: bytes, tag: str | None) -> bool:
        return self.check(SECRET_ROW, (name, bytes(value)), tag)

    def dead_letter(self, at: str, reason: str, headers: Mapping[str, str], payload: bytes) -> str:
        """`at` is the time the store recorded (SQLite); a Kafka dead letter passes "" (its
        timestamp is the broker's) and its reason is one of its headers."""
        return self.tag(DEAD_LETTER_ROW, (at, reason, dict(headers), bytes(payload)))

    def dead_letter_ok(self, at: str, reason: str, headers: Mapping[str, str], payload: bytes,
                       tag: str | None) -> bool:
        return self.check(DEAD_LETTER_ROW, (at, reason, dict(headers), bytes(payload)), tag)


def kafka_dead_letter_headers(mac: RowMac, headers: Mapping[str, str], payload: bytes) -> dict[str, str]:
    """`headers` plus the MAC header over them (without it) and the payload."""
    plain = {k: v for k, v in headers.items() if k != MAC_HEADER}
    return {**plain, MAC_HEADER: mac.dead_letter("", "", plain, payload)}


def kafka_dead_letter_ok(mac: RowMac, headers: Mapping[str, str], payload: bytes) -> bool:
    plain = {k: v for k, v in headers.items() if k != MAC_HEADER}
    return mac.dead_letter_ok("", "", plain, payload, headers.get(MAC_HEADER))
