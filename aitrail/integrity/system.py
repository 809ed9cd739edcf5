"""System records: what aitrail itself does to the trail (retention deletions, erasures, reads)
appended to the same Merkle logs as the records it concerns, so the evidence covers them too.

They travel the ordinary path (bus → collector → sequencer → store): the log's one sequencer
stays the only writer. In the Kafka pipeline they share the key `aitrail-system`, so they
form one ordered stream in one partition's log.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from aitrail.bus.base import Bus, BusMessage, Signal
from aitrail.errors import AitrailError, InvalidInput
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord, Kind, Origin

SYSTEM_KINDS = (Kind.RETENTION, Kind.ERASURE, Kind.ACCESS, Kind.CHECKPOINT)
SYSTEM_KEY = b"aitrail-system"


def system_record(kind: Kind | str, tenant: str, details: dict[str, Any], *, at: str | None = None) -> AuditRecord:
    """A system record; its id is derived from its content, so re-appending it is a no-op."""
    kind = Kind(kind)
    if kind not in SYSTEM_KINDS:
        raise InvalidInput(f"{kind} is not a system record kind; use one of {', '.join(SYSTEM_KINDS)}")
    at = at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    seed = canonical_json({"kind": kind, "tenant": tenant, "at": at, "details": details})
    return AuditRecord(
        record_id=hashlib.sha256(seed).hexdigest()[:32], kind=kind, origin=Origin.SYSTEM, tenant=tenant,
        start_time=at, end_time=at, ingested_at=at, details=details, semconv="aitrail.system",
    )


def encode(records: list[AuditRecord]) -> bytes:
    return orjson.dumps([orjson.loads(canonical_json(r)) for r in records])


def decode(payload: bytes) -> list[AuditRecord]:
    """The records of a `records` message; only system kinds are accepted."""
    try:
        items = orjson.loads(payload)
        records = [AuditRecord.model_validate(item) for item in items]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a list of system records: {exc}") from None
    for record in records:
        if record.kind not in SYSTEM_KINDS or record.origin != Origin.SYSTEM:
            raise InvalidInput(f"record {record.record_id} of kind {record.kind} is not a system record")
    return records


async def append_system_records(bus: Bus, records: list[AuditRecord], verdicts=None) -> None:
    """Append to the trail; returns once the records are as safe as any acknowledged span
    (embedded: stored and sealed; Kafka: acknowledged by the broker). With the embedded
    collector's `verdicts` (`aitrail.gateway.ingest.Verdicts`), records the collector refuses
    (the store rejected one, or holds its id with other content) raise `AitrailError` with the
    store's reason instead of being set aside as a dead letter: an access entry that is not in
    the trail must stop the read it stands for."""
    if not records:
        return
    message = BusMessage(signal=Signal.RECORDS, payload=encode(records), tenant=records[0].tenant, key=SYSTEM_KEY)
    if verdicts is None:
        await bus.publish([message])
        return
    message.decoded = records  # what `verdicts` knows the message by (the collector decodes the payload)
    refused = await verdicts.publish(bus, [message])
    if refused:
        raise AitrailError(f"the collector refused the {records[0].kind} record(s): {refused[0]}")
