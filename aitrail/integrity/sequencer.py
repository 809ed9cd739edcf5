"""One log, one sequencer: assigns leaf indexes, seals records, signs checkpoints.

The sequencer is the only writer of its log (one per Kafka partition, one in embedded
mode). It works in two steps so that nothing is lost or forked on a crash:

1. :meth:`LogSequencer.plan` seals a batch (copies), computes every Merkle node the batch
   completes and signs the checkpoints due, without changing the sequencer;
2. the caller stores ``plan.records`` and ``plan.update`` (new state, nodes, checkpoints)
   durably, then calls :meth:`LogSequencer.commit`. If storing fails, the caller drops the
   plan: the sequencer is unchanged and the same records can be planned again, giving the
   same leaves, roots and notes (sealing and Ed25519 are deterministic).

After a restart, build the sequencer from the stored :class:`LogState` and replay the
source from ``state.source_position`` (the Kafka offset after the last sequenced record):
records already in the log must not be sequenced twice.

Checkpoint cadence: one at every multiple of ``checkpoint_every`` leaves, and one at the
end of a batch when ``checkpoint_interval_s`` has passed since the last one (so lag stays
under the interval while traffic flows, without a checkpoint per tiny batch). A periodic
timer calls :meth:`LogSequencer.pending_checkpoint` to cover the tail when traffic stops.

Not thread-safe: one sequencer per log, driven by one task.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aitrail.schemas.record import AuditRecord

from . import merkle, note
from .leaf import derive_salt, seal_with_hash

__all__ = [
    "ForkError",
    "LogSequencer",
    "LogState",
    "LogUpdate",
    "SequencePlan",
    "SignedCheckpoint",
    "StalePlanError",
    "new_log",
]

_EMPTY_RANGE = merkle.CompactRange().to_bytes()
_sha256 = hashlib.sha256


def _iso(epoch: float) -> str:
    """Epoch seconds → ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` (the record time format).

    A float epoch holds about microseconds, so that is the precision kept."""
    seconds, frac = divmod(round(epoch * 1e6), 1_000_000)
    frac *= 1000
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{frac:09d}Z"
    )


@dataclass(frozen=True, slots=True)
class LogState:
    """What a store keeps per log to resume sequencing without rehashing old leaves.

    ``compact_range`` is :meth:`merkle.CompactRange.to_bytes` of the tree of ``size``
    leaves. ``source_position`` is the source (Kafka) offset after the last sequenced
    record, when records carry one: resume consuming there.
    """

    log_id: str
    origin: str
    size: int = 0
    compact_range: bytes = _EMPTY_RANGE
    last_checkpoint_size: int = 0
    last_checkpoint_at: float = 0.0
    source_position: int | None = None

    def __post_init__(self) -> None:
        if not self.log_id:
            raise ValueError("log id must not be empty")
        rng = merkle.CompactRange.from_bytes(self.compact_range)  # raises ProofError
        if rng.size != self.size:
            raise ValueError(f"log state: compact range has size {rng.size}, state says {self.size}")
        if not 0 <= self.last_checkpoint_size <= self.size:
            raise ValueError(
                f"log state: last checkpoint size {self.last_checkpoint_size} not in [0, {self.size}]"
            )
        note.Checkpoint(self.origin, 0, merkle.EMPTY_ROOT)  # validates the origin line

    def compact(self) -> merkle.CompactRange:
        return merkle.CompactRange.from_bytes(self.compact_range)

    def root(self) -> bytes:
        """Root hash of the tree of ``size`` leaves."""
        return self.compact().root()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (compact range as hex)."""
        return {
            "log_id": self.log_id,
            "origin": self.origin,
            "size": self.size,
            "compact_range": self.compact_range.hex(),
            "last_checkpoint_size": self.last_checkpoint_size,
            "last_checkpoint_at": self.last_checkpoint_at,
            "source_position": self.source_position,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogState:
        return cls(
            log_id=data["log_id"],
            origin=data["origin"],
            size=int(data["size"]),
            compact_range=bytes.fromhex(data["compact_range"]),
            last_checkpoint_size=int(data.get("last_checkpoint_size", 0)),
            last_checkpoint_at=float(data.get("last_checkpoint_at", 0.0)),
            source_position=data.get("source_position"),
        )


def new_log(log_id: str, origin: str) -> LogState:
    """The state of an empty log."""
    return LogState(log_id=log_id, origin=origin)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A signed checkpoint as stored. Only ``note`` is authenticated: verifiers take size and
    root from the opened note and treat the other fields as an index."""

    log_id: str
    size: int
    root_hash: bytes
    note: str
    signed_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_id": self.log_id,
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "note": self.note,
            "signed_at": self.signed_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedCheckpoint:
        return cls(
            log_id=data["log_id"],
            size=int(data["size"]),
            root_hash=bytes.fromhex(data["root_hash"]),
            note=data["note"],
            signed_at=data["signed_at"],
        )


@dataclass(frozen=True, slots=True)
class LogUpdate:
    """Everything a store writes with a batch, besides the records.

    ``nodes`` is every perfect-subtree node the batch completed, as ``(level, index,
    hash)``, leaves (level 0) included: with them a store serves any inclusion or
    consistency proof via :func:`merkle.build_inclusion_proof`.
    """

    log_id: str
    state: LogState
    nodes: list[tuple[int, int, bytes]] = field(default_factory=list)
    checkpoints: list[SignedCheckpoint] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SequencePlan:
    """A sealed batch, not yet applied: store ``records`` and ``update``, then commit."""

    records: list[AuditRecord]
    update: LogUpdate
    base: LogState
    """The state the plan was computed from; :meth:`LogSequencer.commit` requires it to be current."""


class ForkError(AssertionError):
    """Signing would produce two different roots for one tree size (a fork). Never caught
    by design: it means records were re-planned differently after a dropped plan."""


class StalePlanError(RuntimeError):
    """The plan (or checkpoint) was computed from a state that is no longer the sequencer's."""


def _fold_root(nodes: Sequence[bytes]) -> bytes:
    if not nodes:
        return merkle.EMPTY_ROOT
    acc = nodes[-1]
    for n in reversed(nodes[:-1]):
        acc = _sha256(b"\x01" + n + acc).digest()
    return acc


class LogSequencer:
    """The single writer of one log. See the module docstring for the plan/commit protocol."""

    def __init__(
        self,
        state: LogState,
        signer: note.Signer,
        *,
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if checkpoint_interval_s < 0:
            raise ValueError("checkpoint_interval_s must not be negative")
        self._state = state
        self._nodes = list(state.compact().nodes)
        self._signer = signer
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._clock = clock
        # Roots signed for sizes not yet covered by a committed checkpoint (plans that may
        # have been dropped): never sign a different root for one of these sizes.
        self._signed: dict[int, bytes] = {}
        self._signed_at: dict[int, float] = {}

    @property
    def state(self) -> LogState:
        return self._state

    @property
    def log_id(self) -> str:
        return self._state.log_id

    def root(self) -> bytes:
        """Root hash of the committed tree."""
        return _fold_root(self._nodes)

    # --- signing ---------------------------------------------------------------------

    def _sign(self, size: int, root: bytes, now: float) -> SignedCheckpoint:
        previous = self._signed.get(size)
        if previous is not None and previous != root:
            raise ForkError(
                f"log {self._state.log_id}: refusing to sign a second root for size {size}"
                f" ({root.hex()} after {previous.hex()})"
            )
        text = note.sign_checkpoint(note.Checkpoint(self._state.origin, size, root), self._signer)
        self._signed[size] = root
        self._signed_at[size] = now
        return SignedCheckpoint(self._state.log_id, size, root, text, _iso(now))

    # --- batches ---------------------------------------------------------------------

    def plan(
        self, records: Iterable[AuditRecord], subject_key_for: Callable[[AuditRecord], bytes]
    ) -> SequencePlan:
        """Seal ``records`` at consecutive leaf indexes from the current size, in the given order.

        Does not change the sequencer (apart from remembering signed roots, so that no
        other root is ever signed for those sizes). ``subject_key_for(record)`` returns
        the key the record's content salt is derived from.
        """
        base = self._state
        log_id, every = base.log_id, self._every
        now = self._clock()
        nodes = list(self._nodes)
        size = base.size
        last_cp_size, last_cp_at = base.last_checkpoint_size, base.last_checkpoint_at
        sealed: list[AuditRecord] = []
        out: list[tuple[int, int, bytes]] = []
        checkpoints: list[SignedCheckpoint] = []
        source_position = base.source_position
        for record in records:
            index = size
            rec, h = seal_with_hash(
                record, log_id=log_id, leaf_index=index, salt=derive_salt(subject_key_for(record), record.record_id)
            )
            sealed.append(rec)
            if record.kafka is not None:
                source_position = record.kafka.offset + 1
            out.append((0, index, h))
            level, s = 0, index
            while s & 1:
                h = _sha256(b"\x01" + nodes.pop() + h).digest()
                s >>= 1
                level += 1
                out.append((level, s, h))
            nodes.append(h)
            size += 1
            if size % every == 0:
                checkpoints.append(self._sign(size, _fold_root(nodes), now))
                last_cp_size, last_cp_at = size, now
        if size > last_cp_size and (now - last_cp_at >= self._interval or size - last_cp_size >= every):
            checkpoints.append(self._sign(size, _fold_root(nodes), now))
            last_cp_size, last_cp_at = size, now
        state = LogState(
            log_id=log_id,
            origin=base.origin,
            size=size,
            compact_range=size.to_bytes(8, "big") + b"".join(nodes),
            last_checkpoint_size=last_cp_size,
            last_checkpoint_at=last_cp_at,
            source_position=source_position,
        )
        return SequencePlan(sealed, LogUpdate(log_id, state, out, checkpoints), base)

    def commit(self, plan: SequencePlan) -> LogState:
        """Adopt the plan's state, once its records and update are stored durably.

        Raises StalePlanError if the plan was not computed from the current state.
        """
        if plan.base is not self._state and plan.base != self._state:
            raise StalePlanError(
                f"log {self.log_id}: plan starts at size {plan.base.size}, sequencer is at {self._state.size}"
            )
        self._adopt(plan.update.state)
        return self._state

    def _adopt(self, state: LogState) -> None:
        self._state = state
        self._nodes = list(state.compact().nodes)
        done = state.last_checkpoint_size
        self._signed = {s: r for s, r in self._signed.items() if s >= done}
        self._signed_at = {s: t for s, t in self._signed_at.items() if s >= done}

    # --- periodic checkpoints --------------------------------------------------------

    def pending_checkpoint(self, now: float | None = None) -> SignedCheckpoint | None:
        """A checkpoint for the current size if some leaves are not covered and the interval has passed."""
        now = self._clock() if now is None else now
        st = self._state
        if st.size > st.last_checkpoint_size and now - st.last_checkpoint_at >= self._interval:
            return self._sign(st.size, self.root(), now)
        return None

    def commit_checkpoint(self, cp: SignedCheckpoint) -> LogState:
        """Record that ``cp`` (from :meth:`pending_checkpoint`) is stored; returns the new state to persist.

        Raises StalePlanError if ``cp`` is not for this log or not a size this sequencer signed.
        """
        st = self._state
        if cp.log_id != st.log_id or cp.size > st.size:
            raise StalePlanError(f"log {st.log_id}: checkpoint for size {cp.size} is not for this log's tree")
        if cp.size <= st.last_checkpoint_size:
            return st  # a later checkpoint was committed meanwhile: nothing to record
        if self._signed.get(cp.size) != cp.root_hash:
            raise StalePlanError(f"log {st.log_id}: checkpoint for size {cp.size} was not signed by this sequencer")
        at = self._signed_at.get(cp.size, self._clock())
        self._adopt(replace(st, last_checkpoint_size=cp.size, last_checkpoint_at=at))
        return self._state
