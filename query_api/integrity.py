"""Proofs for the API: inclusion proofs against signed checkpoints, and the integrity status
of records in a replay (verified / failed with the reason / erased)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aitrail.errors import NotFound, Unavailable
from aitrail.integrity import merkle
from aitrail.integrity.note import Verifier
from aitrail.integrity.sequencer import SignedCheckpoint
from aitrail.integrity.verify import RecordStatus, verify_record
from aitrail.schemas.record import AuditRecord
from aitrail.store.base import Store


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

    def report(self, records: list[AuditRecord]) -> dict[str, Any]:
        """Each record's status, and one status for the whole set."""
        if not self.verifier:
            return {"status": "unverifiable", "reason": "no public key configured (integrity.signing_key_file)",
                    "records": {}}
        statuses: dict[str, dict[str, str]] = {}
        latest: dict[str, SignedCheckpoint | None] = {}
        for record in records:
            if record.log_id is None or record.leaf_index is None:
                statuses[record.record_id] = {"status": "unsealed", "reason": "not in a Merkle log"}
                continue
            if record.log_id not in latest:
                latest[record.log_id] = self.store.latest_checkpoint(record.log_id)
            checkpoint = latest[record.log_id]
            if checkpoint is None or checkpoint.size <= record.leaf_index:
                statuses[record.record_id] = {"status": "pending", "reason": "not yet covered by a signed checkpoint"}
                continue
            try:
                path = self.path(record.log_id, record.leaf_index, checkpoint.size)
            except (Unavailable, merkle.ProofError) as exc:
                statuses[record.record_id] = {"status": "failed", "reason": str(exc)}
                continue
            result = verify_record(record, path, checkpoint.note, self.verifier)
            statuses[record.record_id] = {"status": str(result.status), "reason": result.reason}
        values = {s["status"] for s in statuses.values()}
        if "failed" in values:
            overall = "failed"
        elif values <= {RecordStatus.VERIFIED, RecordStatus.ERASED}:
            overall = "verified" if values else "empty"
        else:
            overall = "partial"
        return {"status": overall, "records": statuses}
