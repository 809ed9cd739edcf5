"""Reconstruction of one trace for replay: fragments merged, causal order, role views."""

from __future__ import annotations

from typing import Any

from aitrail.integrity import leaf
from aitrail.schemas.canonical import record_to_dict
from aitrail.schemas.record import AuditRecord, Origin
from aitrail.store.base import Role

# What an analyst may not read: the words people and models exchanged, which is exactly what a
# Merkle leaf commits to as content (and erasure removes): the same list, never a copy of it.
CONTENT_FIELDS = leaf.CONTENT_FIELDS
DOCUMENT_CONTENT = "snippet"  # each retrieved document's text is content too


def merge_fragments(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """One view per (span, kind): a span record with the content its instrumentation sent as
    a log event folded in. The span's own values win; `fragments` lists every record id."""
    merged: dict[tuple, dict[str, Any]] = {}
    order: list[tuple] = []
    for record in sorted(records, key=lambda r: r.origin != Origin.SPAN):
        key = (record.span_id, record.kind) if record.span_id else (record.record_id,)
        data = record_to_dict(record)
        if key not in merged:
            data["fragments"] = [record.record_id]
            merged[key] = data
            order.append(key)
            continue
        target = merged[key]
        target["fragments"].append(record.record_id)
        for field, value in data.items():
            if target.get(field) in (None, [], {}) and value not in (None, [], {}):
                target[field] = value
    return causal_order([merged[k] for k in order])


def causal_order(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before children, siblings by start time (depth-first, like a timeline)."""
    by_span = {v.get("span_id"): v for v in views if v.get("span_id")}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for view in views:
        parent = view.get("parent_span_id")
        if parent not in by_span or parent == view.get("span_id"):
            parent = None
        children.setdefault(parent, []).append(view)
    for siblings in children.values():
        siblings.sort(key=lambda v: (v.get("start_time") or "", v.get("record_id")))
    out: list[dict[str, Any]] = []
    stack = list(reversed(children.get(None, [])))
    seen: set[int] = set()
    while stack:
        view = stack.pop()
        if id(view) in seen:
            continue
        seen.add(id(view))
        out.append(view)
        stack.extend(reversed(children.get(view.get("span_id"), [])) if view.get("span_id") else ())
    return out


def for_role(view: dict[str, Any], role: Role) -> dict[str, Any]:
    """The view (a record's dict, or a replay view) as `role` may see it: for the analyst
    role without the content fields and document snippets, which `redacted` names (every
    content field, present or not, so a missing field never reads as "there was none")."""
    if role != Role.ANALYST:
        return view
    redacted = {k: v for k, v in view.items() if k not in CONTENT_FIELDS}
    if redacted.get("documents"):
        redacted["documents"] = [{k: v for k, v in d.items() if k != DOCUMENT_CONTENT} for d in redacted["documents"]]
    redacted["redacted"] = list(CONTENT_FIELDS) + ([f"documents.{DOCUMENT_CONTENT}"] if redacted.get("documents") else [])
    return redacted


def admits(acl_tags: list[str], tags: tuple[str, ...]) -> bool:
    """A document with no ACL tags admits everyone; otherwise one shared tag suffices."""
    return not acl_tags or any(tag in tags for tag in acl_tags)


def only_visible(view: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    """The view with only the documents a principal holding `tags` may see."""
    documents = view.get("documents") or []
    shown = [d for d in documents if admits(d.get("acl_tags") or [], tags)]
    return {**view, "documents": shown, "documents_hidden": len(documents) - len(shown)}
