"""Trace context by ancestry: which user, session and conversation a record belongs to when
its own span did not say, taken from the nearest ancestor span that did.

Services often set `user.id`, `session.id` or `gen_ai.conversation.id` on the root span of a
request only (web frameworks, OpenInference's `using_user` / `using_session` on a chain).
The collector copies such values into the records under that span when it knows the ancestor
at write time (`aitrail.collector.context`), and says so in the record (`context_from`);
when the ancestor arrives after its descendants were sealed, readers resolve the same way at
query time (answers, replay). Both use `TraceTree` below, so both give the same answer.

The walk: from a record's parent span up the `parent_span_id` chain through the records known
for the trace; the first span whose records carry the field gives it (the span that set it,
if that record inherited it in turn). A chain that breaks at a span with no record (a plain
HTTP or function span) continues at the trace's root record when the trace has exactly one:
a root span is an ancestor of every span of its trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aitrail.schemas.record import AuditRecord, ContextFrom, Kind, Origin

INHERITED: tuple[str, ...] = ("user_pseudonym", "session_id", "conversation_id")
"""The record fields a span inherits from its ancestors, in this order everywhere below."""

SYSTEM_KINDS = frozenset({Kind.CHECKPOINT, Kind.RETENTION, Kind.ERASURE, Kind.ACCESS})
_MAX_DEPTH = 1024  # a parent chain longer than this is a loop someone sent us


@dataclass(frozen=True)
class SpanContext:
    """What context inheritance needs of one record: its place in the trace and its values.
    `sources[i]` is the span id `values[i]` was inherited from, None for the span's own value."""

    tenant: str
    trace_id: str
    span_id: str | None
    parent_span_id: str | None
    record_id: str
    origin: str
    values: tuple[str | None, ...]
    sources: tuple[str | None, ...]

    @classmethod
    def of(cls, record: AuditRecord) -> SpanContext:
        return cls.from_fields(
            record.tenant, record.trace_id or "", record.span_id, record.parent_span_id, record.record_id,
            str(record.origin), [getattr(record, f) for f in INHERITED],
            record.context_from.model_dump() if record.context_from is not None else None,
        )

    @classmethod
    def from_fields(
        cls, tenant: str, trace_id: str, span_id: str | None, parent_span_id: str | None, record_id: str,
        origin: str, values: Iterable[str | None], context_from: Mapping[str, str | None] | None,
    ) -> SpanContext:
        values = tuple(values)
        sources = tuple((context_from or {}).get(f) if v is not None else None for f, v in zip(INHERITED, values))
        return cls(tenant, trace_id, span_id, parent_span_id, record_id, origin, values, sources)

    def lacks(self) -> bool:
        return any(v is None for v in self.values)


@dataclass(frozen=True)
class Inherited:
    value: str
    source: str  # span id of the ancestor record that set the value


def can_inherit(record: AuditRecord) -> bool:
    return (
        record.kind not in SYSTEM_KINDS and bool(record.trace_id) and bool(record.span_id)
        and any(getattr(record, f) is None for f in INHERITED)
    )


class TraceTree:
    """The records known of one trace, by span."""

    def __init__(self, contexts: Iterable[SpanContext]) -> None:
        self.spans: dict[str, list[SpanContext]] = {}
        roots: set[str] = set()
        for context in contexts:
            if context.span_id is None:
                continue
            self.spans.setdefault(context.span_id, []).append(context)
            if context.parent_span_id is None and context.origin == Origin.SPAN:
                roots.add(context.span_id)
        self.root = next(iter(roots)) if len(roots) == 1 else None

    def parent(self, span_id: str) -> str | None:
        for context in self.spans.get(span_id, ()):
            if context.parent_span_id is not None:
                return context.parent_span_id
        return None

    def value(self, span_id: str, field: int) -> Inherited | None:
        """The span's value of one field: its own (a span record's first), else what it inherited."""
        found: Inherited | None = None
        for context in sorted(self.spans.get(span_id, ()), key=lambda c: (c.origin != Origin.SPAN, c.record_id)):
            value = context.values[field]
            if value is None:
                continue
            source = context.sources[field]
            if source is None:
                return Inherited(value, span_id)
            found = found or Inherited(value, source)
        return found

    def ancestors(self, context: SpanContext) -> Iterator[str]:
        """Span ids of the record's known ancestors, nearest first."""
        seen = {context.span_id}
        current = context.parent_span_id or (self.parent(context.span_id) if context.span_id else None)
        while current is not None and current not in seen and len(seen) < _MAX_DEPTH:
            seen.add(current)
            if current not in self.spans:  # no record of this span: the chain breaks here
                if self.root is not None and self.root not in seen:
                    yield self.root
                return
            yield current
            current = self.parent(current)

    def resolve(self, context: SpanContext) -> dict[str, Inherited]:
        """The fields the record lacks that an ancestor carries, each from the nearest."""
        missing = [i for i, v in enumerate(context.values) if v is None]
        out: dict[str, Inherited] = {}
        for span_id in self.ancestors(context):
            for i in list(missing):
                found = self.value(span_id, i)
                if found is not None:
                    out[INHERITED[i]] = found
                    missing.remove(i)
            if not missing:
                break
        return out


def trees(contexts: Iterable[SpanContext]) -> dict[tuple[str, str], TraceTree]:
    by_trace: dict[tuple[str, str], list[SpanContext]] = {}
    for context in contexts:
        by_trace.setdefault((context.tenant, context.trace_id), []).append(context)
    return {key: TraceTree(group) for key, group in by_trace.items()}


def with_context(record: AuditRecord, found: Mapping[str, Inherited]) -> AuditRecord:
    """The record with the inherited values it lacks filled in and their sources named."""
    update = {f: i.value for f, i in found.items() if getattr(record, f) is None}
    if not update:
        return record
    sources = record.context_from.model_dump(exclude_none=True) if record.context_from is not None else {}
    sources.update({f: found[f].source for f in update})
    return record.model_copy(update={**update, "context_from": ContextFrom(**sources)})


def inherited_users(
    contexts: Iterable[SpanContext], spans: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Inherited]:
    """For answers whose records carry no user, (tenant, trace_id, span_id): the user each
    inherits from its ancestors among `contexts` (the records of their traces), if any."""
    known = trees(contexts)
    out: dict[tuple[str, str, str], Inherited] = {}
    for key in spans:
        tree = known.get(key[:2])
        records = tree.spans.get(key[2]) if tree is not None else None
        if not records:
            continue
        own = min(records, key=lambda c: (c.origin != Origin.SPAN, c.record_id))
        found = tree.resolve(own).get("user_pseudonym")
        if found is not None:
            out[key] = found
    return out
