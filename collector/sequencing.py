"""Putting records into their Merkle logs on the way to the store.

One log per tenant and source, so a checkpoint, a proof or a log's size says nothing about
another tenant's traffic: `<tenant>/local` in embedded mode, `<tenant>/<topic>.<partition>`
behind Kafka (the partition's owner is the only sequencer of each tenant's log of it; offset
order is leaf order within each), `<tenant>/access.<instance>` for `aitrail api`'s access
records. A batch is planned, stored together with its log updates, and only then committed
to the in-memory sequencers; if storing fails, the plan is dropped and the same records are
planned again, giving the same leaves.

Log states are stored compare-and-set (`RecordWriter.write`'s `expected`): a sequencer whose
log another process advanced (a collector that lost its partition while frozen) has its
write refused with `FencedError`, drops what it cached and, if it still owns the partition,
plans again from the stored state. Logs written before logs were per tenant (`local`,
`<topic>.<partition>`) are left as they are and still verify.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from aitrail.custody import CheckpointMirror
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import ForkError, LogSequencer, LogState, LogUpdate, SignedCheckpoint, new_log
from aitrail.schemas.record import AuditRecord
from aitrail.store.base import FencedError, RecordsRejected, Store, WriteResult, conflict_reason, same_content
from aitrail.tenancy import check_tenant, log_tenant, tenant_log_id

log = logging.getLogger(__name__)

LOCAL_BASE = "local"  # embedded mode: every tenant's log is `<tenant>/local`


def source_of(record: AuditRecord, default: str = LOCAL_BASE) -> str:
    """Where a record came from: its Kafka partition `<topic>.<partition>`, else `default`.
    The unit a process owns (a partition) and the part of a log id after the tenant."""
    position = record.kafka
    return default if position is None else f"{position.topic}.{position.partition}"


def log_id_for(record: AuditRecord, default: str = LOCAL_BASE) -> str:
    """The log a record is sealed into: `<tenant>/<source>`. Raises InvalidInput for a tenant
    name that could not be part of a log id (the pipeline dead-letters those before)."""
    return tenant_log_id(check_tenant(record.tenant), source_of(record, default))


def _source_of_log(log_id: str) -> str:
    return log_id.partition("/")[2] if log_tenant(log_id) is not None else log_id


class Sequencing:
    """Seals records into their logs and stores them with the log updates. Thread-safe: one
    lock serialises batches, timer checkpoints and partition (re)assignments."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        origin: str,
        *,
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 1.0,
        checkpoint_file: CheckpointMirror | None = None,
        default_log: str = LOCAL_BASE,
    ) -> None:
        self.store = store
        # The source of records that did not come through Kafka: their logs are `<tenant>/<default_log>`.
        self.default_log = default_log
        self.signer = signer
        self.origin = origin
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._file = checkpoint_file
        self._sequencers: dict[str, LogSequencer] = {}
        self._subject_keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        # Kafka mode: the sources (partitions, `<topic>.<partition>`) this process owns; None
        # means every source (embedded, the API). Each holds the logs of several tenants.
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

    def _drop(self, sources: set[str]) -> None:
        for log_id in [l for l in self._sequencers if _source_of_log(l) in sources]:
            del self._sequencers[log_id]

    def assign(self, sources: Iterable[str]) -> None:
        """This process now owns these partitions; each of their tenant logs is reloaded from
        the store on its next batch (another owner may have advanced it)."""
        sources = set(sources)
        with self._lock:
            self._owned = (self._owned or set()) | sources
            self._drop(sources)

    def forget(self, sources: Iterable[str]) -> None:
        """This process no longer owns these partitions (revoked): batches still in flight for
        them are not sequenced here (the new owner replays them). Takes the lock, so a batch
        being written when the partition is revoked completes first and none starts after."""
        sources = set(sources)
        with self._lock:
            self._drop(sources)
            if self._owned is not None:
                self._owned -= sources

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
        their log's stored state covers, and Kafka messages below their log's resume position
        (sequenced before a crash; each tenant log of a partition keeps its own position). A
        record a failed write stored beyond its log's state is planned again; the same batch
        from the same state gets the same leaves, so the partial write is completed, never
        forked. `FencedError` (another sequencer advanced a log) or `ForkError`: nothing of
        this batch is committed here, and its logs are reloaded from the store next time.

        Never a leaf for a record the store will not hold: a record whose id is stored with
        other content is a conflict, found before planning; a record the store rejects
        (`RecordsRejected`: nothing of the plan was kept) is left out and the rest is planned
        again from the same state, by sequencers reloaded from the store (the dropped plan's
        signatures never left this process). The result names both, for the dead letters."""
        with self._lock:
            stored = self.store.existing([r.record_id for r in records])
            bodies = self.store.records_by_id(list(stored)) if stored else {}
            candidates: dict[str, list[AuditRecord]] = {}
            first: dict[str, AuditRecord] = {}
            conflicts: dict[str, str] = {}
            rejected: dict[str, str] = {}
            conflicting_copies = 0
            for record in records:
                rid = record.record_id
                earlier = first.get(rid) or bodies.get(rid)
                if earlier is not None and not same_content(earlier, record):
                    conflicts[rid] = conflict_reason(earlier, record)
                    conflicting_copies += 1
                    continue
                if rid in first:
                    continue
                first[rid] = record
                if self._committed(stored.get(rid)):
                    continue
                if self._owned is not None and source_of(record, self.default_log) not in self._owned:
                    continue
                log_id = log_id_for(record, self.default_log)
                resume = self._sequencer(log_id).state.source_position
                if record.kafka is not None and resume is not None and record.kafka.offset < resume:
                    if rid not in stored:
                        # Its log passed this offset without it: the store refused it then (delivered
                        # again after a crash before the commit). Dead-lettered again, never sealed late.
                        rejected[rid] = (
                            f"not stored: the store refused this record when log {log_id} sequenced offset "
                            f"{record.kafka.offset} (the dead letter written then carries the store's reason)"
                        )
                    continue
                candidates.setdefault(log_id, []).append(record)
            for _attempt in range(sum(map(len, candidates.values())) + 1):  # each retry leaves out one record or more
                plans = [
                    self._sequencer(log_id).plan(batch, self.subject_key) for log_id, batch in candidates.items() if batch
                ]
                try:
                    result = self._store(plans)
                except RecordsRejected as exc:
                    planned = {r.record_id for plan in plans for r in plan.records}
                    refused = {rid: why for rid, why in exc.rejected.items() if rid in planned}
                    if not refused:
                        raise
                    for plan in plans:  # nothing of these plans is stored: plan again from the stored state
                        self._sequencers.pop(plan.update.log_id, None)
                    rejected.update(refused)
                    candidates = {
                        log_id: [r for r in batch if r.record_id not in refused] for log_id, batch in candidates.items()
                    }
                    log.warning("%d record(s) rejected by the store, sequencing the batch again without them: %s",
                                len(refused), exc.message)
                    continue
                break
            else:  # unreachable: every attempt leaves out a record, and an empty plan is not refused
                raise AssertionError("the store kept rejecting a batch with no records left")
            for plan in plans:
                self._sequencers[plan.update.log_id].commit(plan)
            self._keep([cp for plan in plans for cp in plan.update.checkpoints])
            conflicts.update(result.conflicts)
            planned = {r.record_id for plan in plans for r in plan.records}
            skipped = {rid for rid in first if rid not in planned and rid not in rejected and rid not in conflicts}
            duplicates = len(records) - result.written - len(rejected) - conflicting_copies - len(result.conflicts)
            return WriteResult(
                result.written, duplicates, rejected, conflicts, frozenset(skipped | result.duplicate_ids)
            )

    def _store(self, plans) -> WriteResult:
        sealed = [r for plan in plans for r in plan.records]
        try:
            return self.store.write(
                sealed, [plan.update for plan in plans],
                expected={plan.update.log_id: _stored_base(plan.base) for plan in plans},
            )
        except (FencedError, ForkError) as exc:
            # Another writer's state (or nodes) is in the store: what this process cached
            # of these logs is stale. Reload them on the next attempt, which, if the
            # partitions were revoked meanwhile, `forget` turns into skipping them.
            for plan in plans:
                self._sequencers.pop(plan.update.log_id, None)
            log.warning("batch not sequenced, its logs will be reloaded: %s", exc)
            raise

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
            try:
                for log_id, sequencer in list(self._sequencers.items()):
                    cp = sequencer.pending_checkpoint()
                    if cp is None:
                        continue
                    base = sequencer.state
                    state = sequencer.commit_checkpoint(cp)
                    try:
                        self.store.write([], [LogUpdate(cp.log_id, state, [], [cp])], expected={log_id: _stored_base(base)})
                    except BaseException:
                        # The sequencer adopted a state the store may not hold: reload it.
                        self._sequencers.pop(log_id, None)
                        raise
                    signed.append(cp)
            finally:
                self._keep(signed)
            return len(signed)

    def _keep(self, checkpoints: list[SignedCheckpoint]) -> None:
        if checkpoints and self._file is not None:
            self._file.append(checkpoints)


def _stored_base(state: LogState) -> LogState | None:
    """What the store must hold for a plan from `state` to be written: None for a log that
    has no leaves yet (never stored), else that state."""
    return None if state.size == 0 else state


def open_sequencing(
    settings, store: Store, *, create_key: bool, default_log: str = LOCAL_BASE, key_path: Path | None = None
) -> Sequencing | None:
    """The sequencing of this process, or None when integrity is switched off. Services that
    must share one key (collector replicas) do not create it: `aitrail keys signing --create`.
    `default_log`: the source of records that do not come through Kafka (`local`,
    `access.<instance>`). `key_path`: another key than the logs' (`aitrail api` signs its
    access log with its own)."""
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
