"""Putting records into their Merkle logs on the way to the store.

One log per Kafka partition (the partition's owner is its only sequencer; offset order is
leaf order), one log (`local`) in embedded mode. A batch is planned, stored together with
its log update, and only then committed to the in-memory sequencer; if storing fails, the
plan is dropped and the same records are planned again, giving the same leaves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from aitrail.custody import CheckpointMirror
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import LogSequencer, LogUpdate, SignedCheckpoint, new_log
from aitrail.schemas.record import AuditRecord
from aitrail.store.base import Store, WriteResult

log = logging.getLogger(__name__)

LOCAL_LOG = "local"


def log_id_for(record: AuditRecord, default: str = LOCAL_LOG) -> str:
    position = record.kafka
    return default if position is None else f"{position.topic}.{position.partition}"


class Sequencing:
    """Seals records into their logs and stores them with the log updates. Thread-safe: one
    lock serialises batches and timer checkpoints (each log has one writer)."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        origin: str,
        *,
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 1.0,
        checkpoint_file: CheckpointMirror | None = None,
        default_log: str = LOCAL_LOG,
    ) -> None:
        self.store = store
        self.default_log = default_log  # the log of records that did not come through Kafka
        self.signer = signer
        self.origin = origin
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._file = checkpoint_file
        self._sequencers: dict[str, LogSequencer] = {}
        self._subject_keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        # Kafka mode: the logs (partitions) this process owns; None means every log (embedded).
        self._owned: set[str] | None = None

    def _sequencer(self, log_id: str) -> LogSequencer:
        sequencer = self._sequencers.get(log_id)
        if sequencer is None:
            state = self.store.log_state(log_id) or new_log(log_id, f"{self.origin}/{log_id}")
            sequencer = LogSequencer(
                state, self.signer, checkpoint_every=self._every, checkpoint_interval_s=self._interval
            )
            self._sequencers[log_id] = sequencer
        return sequencer

    def resume_position(self, log_id: str) -> int | None:
        """Where the source should resume for this log: the offset after its last leaf."""
        with self._lock:
            return self._sequencer(log_id).state.source_position

    def assign(self, log_ids: Iterable[str]) -> None:
        """This process now owns these logs (partitions assigned); it resumes each from its
        stored state."""
        with self._lock:
            self._owned = (self._owned or set()) | set(log_ids)
            for log_id in log_ids:
                self._sequencers.pop(log_id, None)  # reload: another owner may have advanced it

    def forget(self, log_ids: Iterable[str]) -> None:
        """This process no longer owns these logs (partitions revoked): batches still in
        flight for them are not sequenced here (the new owner replays them)."""
        with self._lock:
            for log_id in log_ids:
                self._sequencers.pop(log_id, None)
                if self._owned is not None:
                    self._owned.discard(log_id)

    def subject_key(self, record: AuditRecord) -> bytes:
        """The key a record's content salt derives from: one per data subject, so erasing a
        subject destroys one key (crypto-shredding)."""
        subject = (record.tenant, record.user_pseudonym or "-")
        key = self._subject_keys.get(subject)
        if key is None:
            key = self._subject_keys[subject] = self.store.secret(f"subject:{subject[0]}:{subject[1]}")
        return key

    def write(self, records: Sequence[AuditRecord]) -> WriteResult:
        """Sequence and store `records`. Duplicates: records already sealed into a leaf that
        their log's stored state covers, and Kafka messages below the log's resume position
        (sequenced before a crash). A record a failed write stored beyond its log's state is
        planned again; the same batch from the same state gets the same leaves, so the
        partial write is completed, never forked."""
        with self._lock:
            stored = self.store.existing([r.record_id for r in records])
            by_log: dict[str, list[AuditRecord]] = {}
            seen: set[str] = set()
            for record in records:
                if record.record_id in seen or self._committed(stored.get(record.record_id)):
                    continue
                log_id = log_id_for(record, self.default_log)
                if self._owned is not None and log_id not in self._owned:
                    continue
                resume = self._sequencer(log_id).state.source_position
                if record.kafka is not None and resume is not None and record.kafka.offset < resume:
                    continue
                seen.add(record.record_id)
                by_log.setdefault(log_id, []).append(record)
            plans = [self._sequencer(log_id).plan(batch, self.subject_key) for log_id, batch in by_log.items()]
            sealed = [r for plan in plans for r in plan.records]
            result = self.store.write(sealed, [plan.update for plan in plans])
            for plan in plans:
                self._sequencers[plan.update.log_id].commit(plan)
            self._keep([cp for plan in plans for cp in plan.update.checkpoints])
            return WriteResult(result.written, len(records) - result.written)

    def _committed(self, position: tuple[str | None, int | None] | None) -> bool:
        if position is None:
            return False
        log_id, leaf_index = position
        if log_id is None or leaf_index is None:
            return True  # stored before integrity was on: never sealed again
        sequencer = self._sequencers.get(log_id)
        state = sequencer.state if sequencer is not None else self.store.log_state(log_id)
        return state is not None and leaf_index < state.size

    def tick(self) -> int:
        """Sign a checkpoint for every log with leaves not yet covered for longer than the
        interval (traffic stopped); returns how many were signed."""
        with self._lock:
            signed: list[SignedCheckpoint] = []
            for sequencer in self._sequencers.values():
                cp = sequencer.pending_checkpoint()
                if cp is None:
                    continue
                state = sequencer.commit_checkpoint(cp)
                self.store.write([], [LogUpdate(cp.log_id, state, [], [cp])])
                signed.append(cp)
            self._keep(signed)
            return len(signed)

    def _keep(self, checkpoints: list[SignedCheckpoint]) -> None:
        if checkpoints and self._file is not None:
            self._file.append(checkpoints)


def open_sequencing(
    settings, store: Store, *, create_key: bool, default_log: str = LOCAL_LOG, key_path: Path | None = None
) -> Sequencing | None:
    """The sequencing of this process, or None when integrity is switched off. Services that
    must share one key (collector replicas) do not create it: `aitrail keys signing --create`.
    `key_path`: another key than the logs' (`aitrail api` signs its access log with its own)."""
    from aitrail.custody import CheckpointMirror, ensure_key, ensure_signing_key, load_key, signing_key_path
    from aitrail.errors import ConfigError

    if not settings.integrity.enabled:
        return None
    path = key_path or signing_key_path(settings)
    if create_key:
        signer = ensure_key(path, name=settings.integrity.origin) if key_path else ensure_signing_key(settings)
    elif not path.exists():
        raise ConfigError(
            f"no checkpoint signing key at {path}; create it once with `aitrail keys signing --create` "
            "and give every collector the same file (integrity.signing_key_file)"
        )
    else:
        signer = load_key(path, "checkpoint signing key")
    return Sequencing(
        store, signer, settings.integrity.origin or signer.name,
        checkpoint_every=settings.integrity.checkpoint_every,
        checkpoint_interval_s=settings.integrity.checkpoint_interval_ms / 1000,
        checkpoint_file=CheckpointMirror(settings.integrity.checkpoint_dir), default_log=default_log,
    )
