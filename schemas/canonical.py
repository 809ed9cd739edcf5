"""Canonical JSON for records: the bytes the integrity layer hashes and the stores keep.

Sorted keys at every level, UTF-8, no insignificant white space, nulls left out, decimals as
strings and floats in their shortest round-trip form (NaN and infinities are refused by the
models). Two equal records always give the same bytes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from .record import AuditRecord

_OPTIONS = orjson.OPT_SORT_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON-serialisable in a record: {type(value).__name__}")


def record_to_dict(record: AuditRecord) -> dict[str, Any]:
    """Plain dict (nulls dropped); decimals stay `Decimal` until serialised."""
    # `model_dump(mode="python", exclude_none=True)` without its keyword plumbing: this runs
    # once per record on the collector's hot path.
    return record.__pydantic_serializer__.to_python(record, exclude_none=True)


def canonical_json(record: AuditRecord | dict[str, Any]) -> bytes:
    data = record_to_dict(record) if isinstance(record, AuditRecord) else record
    return orjson.dumps(data, default=_default, option=_OPTIONS)


def record_from_json(data: bytes | str) -> AuditRecord:
    return AuditRecord.model_validate_json(data)
