"""Trace context at write time: a record whose span set no user, session or conversation id
takes them from its nearest ancestor span (`aitrail.store.context` says how it is found),
when that ancestor is in the same batch or already stored, before the record is sealed.

The record keeps the ancestor's pseudonym as it is (pseudonymised when the ancestor was
normalised) and names the ancestor span of each value in `context_from`. A record that has
its own values is not touched, so its id and leaf are what they would be without this step.

Replays stay replays: a record already stored is given exactly the context its stored copy
has (inherited or not), never a newer one, so a batch delivered again after a crash yields
the same records and the sequencer sees duplicates, not conflicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aitrail.schemas.record import AuditRecord
from aitrail.store.context import INHERITED, Inherited, SpanContext, can_inherit, trees, with_context


class ContextReader(Protocol):
    def span_contexts(
        self, traces: Sequence[tuple[str, str]], record_ids: Sequence[str] = ()
    ) -> list[SpanContext]: ...


def reader_behind(writer) -> ContextReader:
    """The store a collector writes to: the sequencing's store, or the store itself."""
    return getattr(writer, "store", writer)


def inherit_context(reader: ContextReader, records: list[AuditRecord]) -> list[AuditRecord]:
    """`records` with the context each lacks filled in from its ancestors: one read of the
    traces concerned and, in real time, of the stored copies of the records that lack some
    (a replay keeps what its stored copy has)."""
    wanting = [r for r in records if can_inherit(r)]
    if not wanting:
        return records
    stored = reader.span_contexts(
        sorted({(r.tenant, r.trace_id) for r in wanting}), sorted({r.record_id for r in wanting})
    )
    stored_by_id = {c.record_id: c for c in stored}
    batch = [SpanContext.of(r) for r in records if r.trace_id and r.record_id not in stored_by_id]
    known = trees([*stored, *batch])
    filled: dict[str, dict[str, Inherited]] = {}
    for record in wanting:
        copy = stored_by_id.get(record.record_id)
        found = _as_stored(copy) if copy is not None else known[(record.tenant, record.trace_id)].resolve(
            SpanContext.of(record)
        )
        if found:
            filled[record.record_id] = found
    if not filled:
        return records
    return [with_context(r, filled[r.record_id]) if r.record_id in filled else r for r in records]


def _as_stored(copy: SpanContext) -> dict[str, Inherited]:
    return {
        f: Inherited(value, source)
        for f, value, source in zip(INHERITED, copy.values, copy.sources, strict=True)
        if value is not None and source is not None
    }
