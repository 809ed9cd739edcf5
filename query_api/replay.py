"""Reconstruction of one trace for replay: fragments merged, causal order, role views."""

from __future__ import annotations

from typing import Any

from aitrail.integrity import leaf
from aitrail.schemas.canonical import record_to_dict
from aitrail.schemas.record import AuditRecord, Kind, Origin
from aitrail.store.base import Role
from aitrail.store.context import INHERITED, SYSTEM_KINDS, SpanContext, TraceTree

# What an analyst may not read: the words people and models exchanged, which is exactly what a
# Merkle leaf commits to as content (and erasure removes): the same list, never a copy of it.
CONTENT_FIELDS = leaf.CONTENT_FIELDS
DOCUMENT_CONTENT = "snippet"  # each retrieved document's text is content too
# With them a guess at the content can be confirmed: the salt of the content commitment (the
# commitment stays: without its salt it tells nothing, and inclusion proofs need it) and each
# document's content_sha256, the plain hash of its text.
CONTENT_HASHES = ("content_salt",)
DOCUMENT_HASHES = ("content_sha256",)


def merge_fragments(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """One view per (span, kind): a span record with the content its instrumentation sent as
    log events folded in. The span's own values win; `fragments` lists every record id.
    Evaluations are never merged (each result of a span is a view of its own), nor are two
    span records claiming one span and kind: every record of the trace is in exactly one view."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    views: list[dict[str, Any]] = []
    for record in sorted(records, key=lambda r: r.origin != Origin.SPAN):
        data = record_to_dict(record)
        data["fragments"] = [record.record_id]
        key = (record.span_id, record.kind) if record.span_id and record.kind != Kind.EVALUATION else None
        target = merged.get(key) if key is not None else None
        if target is None or record.origin == Origin.SPAN:
            views.append(data)
            if key is not None and target is None:
                merged[key] = data
            continue
        target["fragments"].append(record.record_id)
        for field, value in data.items():
            if target.get(field) in (None, [], {}) and value not in (None, [], {}):
                target[field] = value
    return causal_order(views)


def _by_time(view: dict[str, Any]) -> tuple[str, str]:
    return view.get("start_time") or "", view.get("record_id") or ""


def _span_first(view: dict[str, Any]) -> tuple[bool, str, str]:
    return (view.get("origin") != Origin.SPAN or view.get("kind") == Kind.EVALUATION, *_by_time(view))


def causal_order(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before children, siblings by start time (depth-first, like a timeline). Views
    of one span (its record, then the evaluations of it) stay together. Every view is shown
    once: where parents form a cycle (A parent of B, B parent of A) nothing in it is a root, so
    its earliest view starts it and the others follow as its descendants."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for view in views:
        span_id = view.get("span_id")
        groups.setdefault(span_id if span_id else id(view), []).append(view)
    for members in groups.values():
        members.sort(key=_span_first)
    roots: list[Any] = []
    children: dict[Any, list[Any]] = {}
    for key, members in groups.items():
        parent = next((m["parent_span_id"] for m in members if m.get("parent_span_id")), None)
        if parent is None or parent == key or parent not in groups:
            roots.append(key)
        else:
            children.setdefault(parent, []).append(key)

    def first(key: Any) -> tuple[str, str]:
        return _by_time(groups[key][0])

    roots.sort(key=first)
    for siblings in children.values():
        siblings.sort(key=first)
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()

    def visit(root: Any) -> None:
        stack = [root]
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            out.extend(groups[key])
            stack.extend(reversed(children.get(key, ())))

    for root in roots:
        visit(root)
    if len(seen) < len(groups):  # cycles: start each at its earliest view
        for key in sorted((k for k in groups if k not in seen), key=first):
            visit(key)
    return out


def for_role(view: dict[str, Any], role: Role) -> dict[str, Any]:
    """The view (a record's dict, or a replay view) as `role` may see it: for the analyst
    role without the content fields, the content salt, and document snippets and content
    hashes, which `redacted` names (every such field, present or not, so a missing field never
    reads as "there was none")."""
    if role != Role.ANALYST:
        return view
    redacted = {k: v for k, v in view.items() if k not in CONTENT_FIELDS and k not in CONTENT_HASHES}
    hidden = (DOCUMENT_CONTENT, *DOCUMENT_HASHES)
    if redacted.get("documents"):
        redacted["documents"] = [{k: v for k, v in d.items() if k not in hidden} for d in redacted["documents"]]
    redacted["redacted"] = [*CONTENT_FIELDS, *CONTENT_HASHES] + (
        [f"documents.{f}" for f in hidden] if redacted.get("documents") else []
    )
    return redacted


def admits(acl_tags: list[str], tags: tuple[str, ...]) -> bool:
    """A document with no ACL tags admits everyone; otherwise one shared tag suffices."""
    return not acl_tags or any(tag in tags for tag in acl_tags)


def only_visible(view: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    """The view with only the documents a principal holding `tags` may see."""
    documents = view.get("documents") or []
    shown = [d for d in documents if admits(d.get("acl_tags") or [], tags)]
    return {**view, "documents": shown, "documents_hidden": len(documents) - len(shown)}


def with_inherited_context(views: list[dict[str, Any]], records: list[AuditRecord]) -> list[dict[str, Any]]:
    """Each view's user / session / conversation that its span did not set but an ancestor
    span did, under `inherited`: `{field: {"value", "span_id", "resolved"}}` with the
    ancestor's span id, `resolved` "ingest" (the sealed record carries it: `context_from`) or
    "query" (the ancestor was sealed after this record, so only this reading joins them; the
    record's own fields stay as sealed)."""
    tree = TraceTree(SpanContext.of(r) for r in records if r.trace_id and r.kind not in SYSTEM_KINDS)
    for view in views:
        found: dict[str, dict[str, str]] = {}
        sources = view.get("context_from") or {}
        for field, span_id in sources.items():
            if view.get(field) is not None:
                found[field] = {"value": view[field], "span_id": span_id, "resolved": "ingest"}
        if view.get("span_id") and view.get("trace_id") and view.get("kind") not in SYSTEM_KINDS:
            context = SpanContext.from_fields(
                view.get("tenant", ""), view["trace_id"], view["span_id"], view.get("parent_span_id"),
                view.get("record_id", ""), view.get("origin", Origin.SPAN), [view.get(f) for f in INHERITED], sources,
            )
            for field, inherited in tree.resolve(context).items():
                found[field] = {"value": inherited.value, "span_id": inherited.source, "resolved": "query"}
        if found:
            view["inherited"] = found
    return views
