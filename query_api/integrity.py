"""Proofs for the API: inclusion proofs against signed checkpoints, and the integrity status
of records in a replay (verified / failed with the reason / erased)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aitrail.errors import NotFound, Unavailable
from aitrail.integrity import merkle
from aitrail.integrity.coverage import ErasureCoverage, ErasureStatus, covering_records
from aitrail.integrity.note import Checkpoint, NoteError, Verifier, open_note
from aitrail.integrity.sequencer import SignedCheckpoint
from aitrail.integrity.verify import RecordStatus, verify_record
from aitrail.integrity.views import answer_differences
from aitrail.schemas.record import AuditRecord, Kind, Origin
from aitrail.store.base import Answer, Store

log = logging.getLogger(__name__)


@dataclass
class Proof:
    record: AuditRecord
    checkpoint: SignedCheckpoint
    path: list[bytes]


class Proofs:
    def __init__(self, store: Store, verifier: Verifier | list[Verifier] | None) -> None:
        self.store = store
        self.verifier = verifier

    def proof(self, record: AuditRecord) -> Proof:
        """The record's inclusion proof against the newest checkpoint of its log."""
        if record.log_id is None or record.leaf_index is None:
            raise NotFound(f"record {record.record_id} is not in a Merkle log (written before integrity was on)")
        checkpoint = self.store.latest_checkpoint(record.log_id)
        if checkpoint is None or checkpoint.size <= record.leaf_index:
            raise Unavailable(
                f"record {record.record_id} is not covered by a signed checkpoint yet; one follows within seconds"
            )
        return Proof(record, checkpoint, self.path(record.log_id, record.leaf_index, checkpoint.size))

    def checkpoint_problem(self, checkpoint: SignedCheckpoint) -> str | None:
        """Why a stored checkpoint row may not be shown as its log's checkpoint, or None. Only
        the note is authenticated: it must open with a trusted key, its origin must be that
        key's name + `/` + the row's log id, and the row's size and root must be the note's.
        The reason never quotes the note's own origin (it may name another tenant's log)."""
        if not self.verifier:
            return ("no public key is configured to open its signed note "
                    "(integrity.signing_key_file, integrity.trusted_keys)")
        verifiers = [self.verifier] if isinstance(self.verifier, Verifier) else list(self.verifier)
        try:
            opened = open_note(checkpoint.note, verifiers)
            body = Checkpoint.from_text(opened.text)
        except NoteError as exc:
            return f"its signed note does not open: {exc}"
        origins = sorted({f"{s.name}/{checkpoint.log_id}" for s in opened.signatures})
        if body.origin not in origins:
            return f"its signed note is not this log's (its origin is not {' or '.join(map(repr, origins))})"
        if (body.size, body.root_hash) != (checkpoint.size, bytes(checkpoint.root_hash)):
            return (f"the stored row says size {checkpoint.size}, root {bytes(checkpoint.root_hash).hex()}; "
                    f"its signed note says size {body.size}, root {body.root_hash.hex()}")
        return None

    def path(self, log_id: str, leaf_index: int, tree_size: int) -> list[bytes]:
        # Every node the path needs, in one read (one `mget` on OpenSearch, not one per level).
        cache = dict(self.store.nodes(log_id, merkle.inclusion_proof_nodes(leaf_index, tree_size)))

        def node(level: int, index: int) -> bytes:
            if (level, index) not in cache:
                found = self.store.nodes(log_id, [(level, index)])
                if (level, index) not in found:
                    raise Unavailable(f"log {log_id} lacks tree node {level}/{index}; run `aitrail verify --log {log_id}`")
                cache.update(found)
            return cache[level, index]

        return merkle.build_inclusion_proof(node, leaf_index, tree_size)

    def status(self, record: AuditRecord, latest: dict[str, SignedCheckpoint | None] | None = None) -> dict[str, str]:
        """One record's status against the newest checkpoint of its log (``latest`` caches
        them by log), without judging erasures (see :meth:`report`)."""
        latest = {} if latest is None else latest
        if record.log_id is None or record.leaf_index is None:
            # With a key configured every record is sealed on its way in: one in no log was put
            # into the store some other way (or written while integrity was off) and proves nothing.
            return {"status": "failed", "reason": "unsealed: in no Merkle log, nothing proves this record; "
                                                  "run `aitrail verify`"}
        if record.log_id not in latest:
            latest[record.log_id] = self.store.latest_checkpoint(record.log_id)
        checkpoint = latest[record.log_id]
        if checkpoint is None or checkpoint.size <= record.leaf_index:
            return {"status": "pending", "reason": "not yet covered by a signed checkpoint"}
        try:
            path = self.path(record.log_id, record.leaf_index, checkpoint.size)
        except (Unavailable, merkle.ProofError) as exc:
            return {"status": "failed", "reason": str(exc)}
        result = verify_record(record, path, checkpoint.note, self.verifier)
        return {"status": str(result.status), "reason": result.reason}

    def erasure_coverage(self, latest: dict[str, SignedCheckpoint | None] | None = None) -> ErasureCoverage:
        """Judges erased records by the tenant's sealed erasure/retention records (read once
        per tenant), each checked like any record (aitrail.integrity.coverage)."""
        latest = {} if latest is None else latest
        return ErasureCoverage(
            lambda tenant: covering_records(self.store, tenant), lambda cover: self.status(cover, latest)["status"]
        )

    def report(self, records: list[AuditRecord]) -> dict[str, Any]:
        """Each record's status, and one status for the whole set. An erased record is
        `erased` only when a verified erasure or retention record covers it, `pending` while
        that record awaits its checkpoint, `failed` otherwise."""
        if not self.verifier:
            return {"status": "unverifiable", "reason": "no public key configured (integrity.signing_key_file)",
                    "records": {}}
        statuses: dict[str, dict[str, str]] = {}
        latest: dict[str, SignedCheckpoint | None] = {}
        coverage: ErasureCoverage | None = None
        for record in records:
            statuses[record.record_id] = status = self.status(record, latest)
            if status["status"] == RecordStatus.ERASED:
                coverage = coverage or self.erasure_coverage(latest)
                explanation = coverage.explain(record)
                if explanation.status == ErasureStatus.UNEXPLAINED:
                    statuses[record.record_id] = {"status": "failed", "reason": explanation.reason}
                elif explanation.status == ErasureStatus.PENDING:
                    statuses[record.record_id] = {"status": "pending", "reason": explanation.reason}
                else:
                    status["reason"] = explanation.reason
        values = {s["status"] for s in statuses.values()}
        if "failed" in values:
            overall = "failed"
        elif values <= {RecordStatus.VERIFIED, RecordStatus.ERASED}:
            overall = "verified" if values else "empty"
        else:
            overall = "partial"
        return {"status": overall, "records": statuses}


# --- derived views against the sealed records --------------------------------------------

_FOREIGN = "sealed as another tenant's or trace's record and left out; run `aitrail verify`"


def sealed_answer_records(
    tenant: str, found: dict[tuple[str, str], list[AuditRecord]]
) -> tuple[dict[tuple[str, str], list[AuditRecord]], dict[tuple[str, str], int]]:
    """The records a store found under each (trace_id, span_id) of an answers page, split
    into those whose sealed body is a completion of that span of this tenant and a count of
    the others (found through store columns an operator edited; never shown)."""
    sealed: dict[tuple[str, str], list[AuditRecord]] = {}
    strays: dict[tuple[str, str], int] = {}
    for key, records in found.items():
        for record in records:
            if record.tenant == tenant and record.kind == Kind.COMPLETION and (record.trace_id, record.span_id) == key:
                sealed.setdefault(key, []).append(record)
            else:
                strays[key] = strays.get(key, 0) + 1
    return sealed, strays


def answer_integrity(
    row: Answer, records: list[AuditRecord], merged: dict[str, Any] | None, strays: int, report: dict[str, Any]
) -> dict[str, str | None]:
    """The integrity of one answer of `/v1/answers`: that of its sealed records (`report`,
    from :meth:`Proofs.report`), failed when the derived row the search found differs from
    what they derive, or when a record found under it is sealed as another's."""
    if merged is None:
        return {"status": "failed", "reason": "no sealed completion record behind the derived answers row"}
    checked = [(r, report["records"][r.record_id]) for r in records if r.record_id in report["records"]]
    checks = [c for _, c in checked]
    failed = [c for c in checks if c["status"] == "failed"]
    if failed:
        return dict(failed[0])
    if strays:
        return {"status": "failed", "reason": f"{strays} record(s) found under this answer are {_FOREIGN}"}
    differences = answer_differences(merged, row)
    if differences:
        return {"status": "failed",
                "reason": f"derived answers row differs from the sealed record: {', '.join(differences)}"}
    if not checks:  # no public key: nothing was checked
        return {"status": report["status"], "reason": report.get("reason")}
    span = [c for r, c in checked if r.origin == Origin.SPAN]
    return dict(span[0] if span else checks[0])


def without_strays(records: list[AuditRecord], tenant: str, trace_id: str) -> tuple[list[AuditRecord], list[AuditRecord]]:
    """A trace's records split into those whose sealed body is of this tenant and trace, and
    the others (found through store columns an operator edited)."""
    kept = [r for r in records if r.tenant == tenant and r.trace_id == trace_id]
    return kept, [r for r in records if not (r.tenant == tenant and r.trace_id == trace_id)]


def report_strays(report: dict[str, Any], strays: list[AuditRecord], tenant: str) -> dict[str, Any]:
    """`report` failed for the records left out of a replay. Another tenant's record is only
    counted, never named: nothing about it reaches this tenant."""
    if not strays:
        return report
    records = dict(report.get("records") or {})
    for record in strays:
        if record.tenant == tenant:
            records[record.record_id] = {"status": "failed", "reason": f"stored under this trace but {_FOREIGN}"}
    log.warning("%d record(s) stored under a trace of tenant %s are sealed as another's: %s", len(strays), tenant,
                ", ".join(r.record_id for r in strays))
    return {**report, "status": "failed", "reason": f"{len(strays)} record(s) stored under this trace are {_FOREIGN}",
            "records": records}
