"""Values the stores cannot hold: what the normaliser refuses, and how it makes the rest fit.

**Times** are refused. OpenSearch `date_nanos` holds nanoseconds since the epoch in a signed
64-bit long, so nothing after 2262-04-11T23:47:16.854775807Z (:data:`MAX_TIME_NS`); OTLP
times are unsigned (nothing before 1970 arrives) and 0 means "not set". A span (or GenAI log
record) with a start or end time past it, or a span event of it past it, cannot be stored
without changing what it says, so it is refused: the normaliser raises :class:`SpansRefused`
naming each refused span and the time, carrying the records of the others, and the collector
stores those and dead-letters the message with the reason (replaying the dead letter later
writes the stored ones again as no-ops: their ids are deterministic).

OpenSearch indexes every string inside a free-form object (`flat_object`: `raw_attributes`,
`request_params`, `template_variables`, message `parts` and `tool_calls`, document
`metadata`) as one Lucene term made of its key path and its value, and a term holds at most
32,766 bytes of UTF-8: one string too long and the whole record is rejected ("immense term
in field raw_attributes._valueAndPath"). Measured on OpenSearch 2.19, the term is the field
name twice, the key path and the value plus 3 bytes; list positions are not part of a path.

The normaliser keeps the record and shortens what does not fit, on every backend (a record
is the same whichever store holds it, so are its proofs):

* a string whose UTF-8 bytes plus its dotted path (`raw_attributes.input.value`) exceed
  :data:`FLAT_BUDGET` becomes ``{"truncated": <its first bytes>, "sha256": <hex SHA-256 of
  the whole value's UTF-8>, "utf8_length": <bytes of the whole value>}``: still findable by
  its beginning, and the value as sent can be matched against the hash;
* a key whose path exceeds :data:`MAX_KEY_PATH` bytes is replaced by
  ``aitrail.long_key.<first 32 hex digits of its SHA-256>`` holding ``{"key": <the key,
  truncated as above>, "value": <its value>}``;
* documents are OpenSearch `nested` objects, at most 10,000 to a record
  (`index.mapping.nested_objects.limit`): beyond, the first :data:`MAX_DOCUMENTS` are kept
  and ``raw_attributes["aitrail.documents_truncated"]`` says how many there were and holds
  the SHA-256 of the canonical JSON of the rest.

Free text (`question`, `answer`, message `content`, document `snippet`, tool arguments …) is
analysed into words, so it has no such limit and is never shortened.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from aitrail.errors import InvalidInput
from aitrail.schemas.timefmt import ns_to_iso

__all__ = [
    "FLAT_BUDGET", "MAX_DOCUMENTS", "MAX_KEY_PATH", "MAX_TIME_NS", "SpansRefused", "fit_flat", "fit_record",
    "truncated",
]

MAX_TIME_NS = 2**63 - 1
"""The last instant both stores hold, in ns since the epoch: 2262-04-11T23:47:16.854775807Z."""
MAX_TIME = ns_to_iso(MAX_TIME_NS)
_REASONS_SHOWN = 3  # a dead letter's reason travels in a Kafka header: name a few, count the rest


class TimeOutOfRange(Exception):
    """Raised inside the normaliser for one span or log record; see :class:`SpansRefused`."""

    def __init__(self, what: str, field: str, ns: int) -> None:
        super().__init__(f"{what}: {field} {ns_to_iso(ns)} is after {MAX_TIME}, the last instant the store holds")


class SpansRefused(InvalidInput):
    """Some spans (or GenAI log records) of one request hold what no store can: refused with
    the reason, to be dead-lettered. `records` holds the records of everything else in the
    request, to be stored as usual; `refused` is one reason per refused span."""

    def __init__(self, refused: list[str], records: list) -> None:
        shown = "; ".join(refused[:_REASONS_SHOWN])
        more = len(refused) - _REASONS_SHOWN
        kept = f"; the request's {len(records)} other records are stored" if records else ""
        super().__init__(
            f"{len(refused)} refused: {shown}" + (f"; and {more} more" if more > 0 else "") + kept
        )
        self.refused = refused
        self.records = records


FLAT_BUDGET = 32_000
"""Path plus value, UTF-8 bytes. OpenSearch needs 2 × field + key path + value + 3 ≤ 32,766;
with the longest field name (`output_messages.tool_calls`, 26 bytes) this leaves ~700 bytes."""
MAX_KEY_PATH = 4_096
"""A key path longer than this (UTF-8 bytes, field name included) is replaced."""
MAX_DOCUMENTS = 10_000
"""Documents one record holds (OpenSearch's default `index.mapping.nested_objects.limit`)."""
_TRUNCATED_LEAF = len(".truncated") + 1  # the prefix's own path grows by this, plus "="

_STR, _DICT, _LIST = str, dict, list
_DEEP = frozenset((str, dict, list))

# Message and document fields held as `flat_object`, and their paths' length.
_MESSAGE_FLAT = ("parts", "tool_calls")
_MESSAGES = ("input_messages", "output_messages")


def truncated(data: bytes, path_bytes: int) -> dict[str, Any]:
    """The stand-in for a value too long: its first bytes (cut on a character boundary), the
    SHA-256 and length of the whole."""
    keep = max(FLAT_BUDGET - path_bytes - _TRUNCATED_LEAF, 0)
    return {
        "truncated": data[:keep].decode("utf-8", "ignore"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "utf8_length": len(data),
    }


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _fit_value(value: Any, path_bytes: int) -> Any:
    """`value` (at a path of `path_bytes`) as it may be stored: itself when it fits, else a
    copy with what is too long replaced. Never changes `value`."""
    t = type(value)
    if t is _STR:
        if path_bytes + 1 + 4 * len(value) <= FLAT_BUDGET:
            return value
        data = _utf8(value)
        return value if path_bytes + 1 + len(data) <= FLAT_BUDGET else truncated(data, path_bytes)
    if t is _DICT:
        return fit_flat(value, path_bytes)
    if t is _LIST:
        if _DEEP.isdisjoint(map(type, value)):  # numbers (an embedding vector …): nothing to do
            return value
        out = None
        for i, item in enumerate(value):
            fitted = _fit_value(item, path_bytes)
            if fitted is not item:
                if out is None:
                    out = list(value)
                out[i] = fitted
        return value if out is None else out
    return value


def fit_flat(obj: dict[str, Any], path_bytes: int) -> dict[str, Any]:
    """A free-form object at a path of `path_bytes` (its field name, e.g. 14 for
    `raw_attributes`) as it may be stored: `obj` itself when everything fits (the usual case,
    checked without encoding anything), else a copy with the long values and keys replaced."""
    changes: list[tuple[str, str, Any]] | None = None
    for k, v in obj.items():
        n = len(k)
        t = type(v)
        if 4 * n + path_bytes < MAX_KEY_PATH:
            if t is _STR:
                if path_bytes + 2 + 4 * (n + len(v)) <= FLAT_BUDGET:
                    continue
            elif t is not _DICT and t is not _LIST:
                continue
        key_bytes = path_bytes + 1 + (n if k.isascii() else len(_utf8(k)))
        if key_bytes > MAX_KEY_PATH:
            new_key = "aitrail.long_key." + hashlib.sha256(_utf8(k)).hexdigest()[:32]
            at = path_bytes + 1 + len(new_key)
            fitted: Any = {"key": truncated(_utf8(k), at + 4), "value": _fit_value(v, at + 6)}
        else:
            new_key = k
            fitted = _fit_value(v, key_bytes)
            if fitted is v:
                continue
        if changes is None:
            changes = []
        changes.append((k, new_key, fitted))
    if changes is None:
        return obj
    out = dict(obj)
    for k, new_key, fitted in changes:
        if new_key != k:
            del out[k]
        out[new_key] = fitted
    return out


def fit_record(rec: dict[str, Any]) -> None:
    """Make the free-form objects of a record (as a dict, before validation) fit, in place."""
    raw = rec.get("raw_attributes")
    if raw:
        rec["raw_attributes"] = fit_flat(raw, 14)
    for field in ("request_params", "template_variables"):
        value = rec.get(field)
        if value:
            rec[field] = fit_flat(value, len(field))
    for field in _MESSAGES:
        messages = rec.get(field)
        if not messages:
            continue
        for msg in messages:
            if "parts" in msg or "tool_calls" in msg:
                for sub in _MESSAGE_FLAT:
                    value = msg.get(sub)
                    if value:
                        msg[sub] = _fit_value(value, len(field) + 1 + len(sub))
    documents = rec.get("documents")
    if documents:
        if len(documents) > MAX_DOCUMENTS:
            rest = documents[MAX_DOCUMENTS:]
            rec["documents"] = documents = documents[:MAX_DOCUMENTS]
            raw = rec.setdefault("raw_attributes", {})
            raw["aitrail.documents_truncated"] = {
                "kept": MAX_DOCUMENTS, "count": MAX_DOCUMENTS + len(rest),
                "sha256": hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest(),
            }
        for doc in documents:
            metadata = doc.get("metadata")
            if metadata:
                doc["metadata"] = fit_flat(metadata, 18)  # documents.metadata
