"""Absent content needs a sealed reason: which erased records a tenant's sealed `erasure` and
`retention` records explain.

A record whose content was removed (``erased_at`` set, no salt, no content: see
:func:`.leaf.erase`) still reproduces its leaf, so the Merkle tree alone cannot tell an
erasure from an operator who stripped a record to hide what it said. The reason must be
sealed too, as a system record of the same tenant (:func:`.system.system_record`), and that
record must itself be in the signed tree.

The coverage contract (what `aitrail erase` and retention write, what verification accepts):

=============  =======================================================  =========================================
kind           ``details``                                              covers, in the same tenant
=============  =======================================================  =========================================
``erasure``    ``{"subject": <user_pseudonym>, "record_ids": [...]}``   every record of that ``user_pseudonym``
               (``record_ids`` optional, ``subject`` optional when      sealed before the erasure record (a lower
               ``record_ids`` is given)                                 leaf index in the same log; an earlier
                                                                        ``start_time`` in the tenant's other logs),
                                                                        and every record listed in ``record_ids``
``retention``  ``{"record_ids": [...]}``                                every record listed
=============  =======================================================  =========================================

A covering record must be a sealed system record (``origin`` ``system``) and must verify
(its leaf in a signed checkpoint); one no checkpoint covers yet makes the erasure
``pending``, one that does not verify explains nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aitrail.schemas.record import AuditRecord, Kind, Origin

__all__ = [
    "COVERING_KINDS",
    "ErasureCoverage",
    "ErasureStatus",
    "Explanation",
    "covering_records",
    "covers",
]

COVERING_KINDS = (Kind.ERASURE, Kind.RETENTION)
_PAGE = 1000


class ErasureStatus(StrEnum):
    COVERED = "covered"
    """A verified erasure or retention record explains the absent content."""
    PENDING = "pending"
    """Only a covering record that no signed checkpoint covers yet (one follows within seconds)."""
    UNEXPLAINED = "unexplained"
    """Nothing sealed explains the absent content: tampering."""


@dataclass(frozen=True, slots=True)
class Explanation:
    status: ErasureStatus
    reason: str
    by: str | None = None
    """The covering record's id."""


def _ids(details: dict[str, Any]) -> frozenset[str]:
    ids = details.get("record_ids")
    if not isinstance(ids, list):
        return frozenset()
    return frozenset(i for i in ids if isinstance(i, str))


def covers(cover: AuditRecord, record: AuditRecord) -> bool:
    """Whether the system record ``cover`` explains ``record``'s absent content (the contract
    in the module docstring). Checks the shape only, not that ``cover`` verifies."""
    if (
        cover.kind not in COVERING_KINDS
        or cover.origin != Origin.SYSTEM
        or cover.tenant != record.tenant
        or cover.record_id == record.record_id
    ):
        return False
    details = cover.details if isinstance(cover.details, dict) else {}
    if record.record_id in _ids(details):
        return True
    subject = details.get("subject")
    if cover.kind != Kind.ERASURE or not isinstance(subject, str) or not subject:
        return False
    if record.user_pseudonym != subject:
        return False
    if record.log_id is not None and record.log_id == cover.log_id:
        return record.leaf_index is not None and cover.leaf_index is not None and record.leaf_index < cover.leaf_index
    return bool(record.start_time and cover.start_time and record.start_time < cover.start_time)


def covering_records(reader: Any, tenant: str) -> Iterator[AuditRecord]:
    """Every `erasure` and `retention` record of the tenant, through
    :meth:`aitrail.store.base.RecordReader.list_records` (paged)."""
    from aitrail.store.base import RecordQuery

    for kind in COVERING_KINDS:
        after: tuple[str, str] | None = None
        while True:
            page = reader.list_records(RecordQuery(tenant, kind=str(kind), limit=_PAGE, after=after))
            yield from page
            if len(page) < _PAGE:
                break
            after = (page[-1].start_time or "", page[-1].record_id)


class ErasureCoverage:
    """Explains erased records. ``load(tenant)`` yields the tenant's candidate covering
    records (read once per tenant, e.g. :func:`covering_records`); ``check(record)`` says
    whether one is in the signed tree: ``"verified"``, ``"pending"`` (not yet under a
    checkpoint) or anything else (does not verify). Each candidate is checked at most once."""

    def __init__(self, load: Callable[[str], Iterable[AuditRecord]], check: Callable[[AuditRecord], str]) -> None:
        self._load, self._check = load, check
        self._by_tenant: dict[str, list[AuditRecord]] = {}
        self._status: dict[str, str] = {}

    def _status_of(self, cover: AuditRecord) -> str:
        status = self._status.get(cover.record_id)
        if status is None:
            try:
                status = str(self._check(cover))
            except Exception as exc:  # noqa: BLE001 - a cover that cannot be checked explains nothing
                status = f"unverifiable ({exc})"
            self._status[cover.record_id] = status
        return status

    def explain(self, record: AuditRecord) -> Explanation:
        tenant = record.tenant
        if tenant not in self._by_tenant:
            self._by_tenant[tenant] = [c for c in self._load(tenant) if c.kind in COVERING_KINDS]
        candidates = [c for c in self._by_tenant[tenant] if covers(c, record)]
        pending = rejected = None
        for cover in candidates:
            status = self._status_of(cover)
            if status == "verified":
                if _earlier(record.erased_at, cover.start_time):
                    return Explanation(
                        ErasureStatus.UNEXPLAINED,
                        f"erased_at {record.erased_at} is before the {cover.kind} record {cover.record_id} that would "
                        f"explain it ({cover.start_time}): content is removed after its sealed reason, never before",
                    )
                return Explanation(ErasureStatus.COVERED, f"content erased, explained by {cover.kind} record "
                                   f"{cover.record_id}", cover.record_id)
            if status == "pending":
                pending = pending or cover
            else:
                rejected = rejected or (cover, status)
        if pending is not None:
            return Explanation(
                ErasureStatus.PENDING,
                f"content erased; its {pending.kind} record {pending.record_id} is not yet covered by a signed "
                "checkpoint (one follows within seconds: check again)",
                pending.record_id,
            )
        if rejected is not None:
            cover, status = rejected
            return Explanation(
                ErasureStatus.UNEXPLAINED,
                f"content removed; the {cover.kind} record {cover.record_id} that would explain it does not verify "
                f"({status})",
            )
        return Explanation(
            ErasureStatus.UNEXPLAINED,
            "content removed (erased_at set) but no sealed erasure or retention record of the tenant covers it",
        )


def _earlier(erased_at: str | None, reason_at: str | None) -> bool:
    """Whether the erasure is dated before its reason (both ISO 8601; unreadable: not earlier,
    the leaf check reports an unreadable time)."""
    from aitrail.schemas.timefmt import iso_to_ns

    if not erased_at or not reason_at:
        return False
    try:
        return iso_to_ns(erased_at) < iso_to_ns(reason_at)
    except (ValueError, TypeError):
        return False
