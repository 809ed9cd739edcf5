"""Offline verification of logs and records with only the public key and read access.

:func:`verify_log` streams a log's records in leaf order, recomputes every leaf from the
record itself (header + content commitment, content checked against the commitment when
present), rebuilds the tree incrementally, and checks every signed checkpoint: signature,
origin, root equal to the recomputed root at its size, and consistency with the previous
checkpoint. It names what failed and where:

=========================  ===================================================================
tampering                   reported as
=========================  ===================================================================
answer text edited          ``CONTENT_ALTERED`` (record): content no longer matches its commitment
cost/time/model edited      ``LEAF_MISMATCH`` (record) when its stored ``leaf_hash`` was left
                            alone; ``NOT_IN_TREE`` (record) when the store's Merkle nodes are
                            available (:class:`NodeReader`); otherwise ``ROOT_MISMATCH`` naming
                            the leaf range between the last matching and first failing checkpoint
record deleted              ``MISSING`` ("leaf 17 missing")
forged record inserted      ``DUPLICATE`` (named: the signed tree decides which record holds the
                            leaf), ``BEYOND_LOG``, ``UNSEALED`` or ``WRONG_LOG``
records swapped             ``LEAF_MISMATCH`` / ``NOT_IN_TREE`` for each (the index is in the header)
checkpoint forged           ``BAD_CHECKPOINT`` (signature, key, syntax, origin, stored metadata)
checkpoints disagree        ``CONFLICTING_CHECKPOINTS`` (one size, two signed roots) and
                            ``INCONSISTENT_CHECKPOINTS`` (a signed root that is not a prefix of
                            a later signed tree the records reproduce)
content stripped            ``UNEXPLAINED_ERASURE`` (record): erased, but no sealed erasure or
                            retention record covers it (:mod:`.coverage`; with ``erasures``)
Merkle node edited          ``NODE_MISMATCH``: a stored node (what proofs are built from)
                            differs from the signed tree's
=========================  ===================================================================

Checkpoints kept outside the store (``external``: the mirror, an auditor's ``--trusted``
file, :mod:`.trusted`) are checked like stored ones, signature first, and also catch what a
store rewritten as a whole hides:

=========================  ===================================================================
log rolled back/truncated   ``ROLLED_BACK``: the store's log is shorter than a kept checkpoint
log forked or re-signed     ``FORKED``: the records rebuild a different root at a kept size
log wiped                   ``LOG_MISSING`` (:func:`verify_logs`): a known log without records
mirror entry not in store   ``MIRROR_MISSING`` / ``MIRROR_DIFFERS``: the store lost or changed a
                            checkpoint the mirror holds
=========================  ===================================================================

A kept checkpoint the records reproduce authenticates the tree at its size like a stored
one, and the consistency proof from it to the next verified checkpoint (built from the
rebuilt tree, checked against both signed roots) must verify, so every kept checkpoint is
proven to be a prefix of the store's newest verified tree.

Leaves after the last checkpoint (at most ~1 s of traffic) are checked record by record
but cannot be checked against a signature yet; :attr:`LogReport.uncovered` counts them.

Memory is O(log n) plus the leaves since the last checkpoint: logs of any length verify.

:func:`verify_record` checks one record against an inclusion proof and a signed
checkpoint (the API's replay, ``aitrail verify --record``, export bundles).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from aitrail.schemas.record import AuditRecord

from . import merkle
from .coverage import ErasureStatus, Explanation
from .leaf import LeafStatus, recompute
from .note import NoteError, Verifier, open_checkpoint
from .sequencer import SignedCheckpoint
from .trusted import ExternalCheckpoint, by_log

__all__ = [
    "Failure",
    "FailureKind",
    "IntegrityReader",
    "LogReport",
    "NodeReader",
    "RecordReport",
    "RecordStatus",
    "verify_all",
    "verify_log",
    "verify_logs",
    "verify_record",
]

_PLACEHOLDER = b"\x00" * 32  # stands for a leaf we cannot recompute; never a real leaf hash
_PROGRESS_EVERY = 4096
_NODE_BATCH = 1024  # stored Merkle nodes compared per read
_MAX_DUPLICATE_TRIALS = 64


@runtime_checkable
class IntegrityReader(Protocol):
    """Read access a verifier needs. Stores implement it; so can an export bundle."""

    def log_ids(self) -> list[str]: ...

    def checkpoints(self, log_id: str) -> list[SignedCheckpoint]:
        """Every stored checkpoint of the log, ascending size."""
        ...

    def records_in_log(self, log_id: str) -> Iterator[AuditRecord]:
        """Every record stored with this log id, ascending leaf index."""
        ...

    def log_size(self, log_id: str) -> int:
        """The stored sequencer state's size."""
        ...


@runtime_checkable
class NodeReader(Protocol):
    """Optional: the Merkle nodes a store kept from :class:`~.sequencer.LogUpdate`.

    Nodes are only trusted once they reproduce a signed root. With them, :func:`verify_log`
    names a record whose leaf differs from the signed tree even when the attacker also
    rewrote its ``leaf_hash``, and keeps checking after a deleted record.
    """

    def nodes(self, log_id: str, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        """The stored hashes for the ``(level, index)`` keys that exist (missing keys left out)."""
        ...


class FailureKind(StrEnum):
    CONTENT_ALTERED = "content_altered"
    LEAF_MISMATCH = "leaf_mismatch"
    NOT_IN_TREE = "not_in_tree"
    MISSING = "missing"
    DUPLICATE = "duplicate"
    BEYOND_LOG = "beyond_log"
    UNSEALED = "unsealed"
    WRONG_LOG = "wrong_log"
    LOG_STATE = "log_state"
    ROOT_MISMATCH = "root_mismatch"
    BAD_CHECKPOINT = "bad_checkpoint"
    CONFLICTING_CHECKPOINTS = "conflicting_checkpoints"
    INCONSISTENT_CHECKPOINTS = "inconsistent_checkpoints"
    UNEXPLAINED_ERASURE = "unexplained_erasure"
    ROLLED_BACK = "rolled_back"
    FORKED = "forked"
    LOG_MISSING = "log_missing"
    MIRROR_MISSING = "mirror_missing"
    MIRROR_DIFFERS = "mirror_differs"
    NODE_MISMATCH = "node_mismatch"


@runtime_checkable
class ErasureJudge(Protocol):
    """Says whether an erased record's absent content has a sealed reason
    (:class:`.coverage.ErasureCoverage`)."""

    def explain(self, record: AuditRecord) -> Explanation: ...


_CHANGES_LEAF = frozenset(
    {FailureKind.LEAF_MISMATCH, FailureKind.WRONG_LOG, FailureKind.UNSEALED, FailureKind.DUPLICATE}
)
"""Per-record findings that can explain a checkpoint root mismatch (content edits cannot)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One finding. ``record_id``/``leaf_index`` say where when known; ``size`` is the
    checkpoint's tree size for checkpoint findings."""

    record_id: str | None
    leaf_index: int | None
    what: str
    kind: FailureKind
    size: int | None = None

    def __str__(self) -> str:
        where = []
        if self.record_id is not None:
            where.append(f"record {self.record_id}")
        if self.leaf_index is not None:
            where.append(f"leaf {self.leaf_index}")
        if self.size is not None and self.leaf_index is None:
            where.append(f"checkpoint size {self.size}")
        return f"[{self.kind}] {' '.join(where) + ': ' if where else ''}{self.what}"


@dataclass(slots=True)
class LogReport:
    log_id: str
    size: int = 0
    """The stored log size (sequencer state)."""
    records_checked: int = 0
    checkpoints_checked: int = 0
    failures: list[Failure] = field(default_factory=list)
    erased: int = 0
    verified_size: int = 0
    """Largest tree size whose signed root the records reproduce."""
    uncovered: int = 0
    """Leaves past the largest valid checkpoint: checked record by record only."""
    external_checked: int = 0
    """Validly signed checkpoints kept outside the store (mirror, trusted files) compared."""
    erasures_pending: int = 0
    """Erased records whose covering record no checkpoint covers yet (counted in ``erased``)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def of_kind(self, kind: FailureKind) -> list[Failure]:
        return [f for f in self.failures if f.kind == kind]


# --- whole logs -------------------------------------------------------------------------


@dataclass(slots=True)
class _Cand:
    record_id: str
    leaf: bytes
    stored_ok: bool


@dataclass(slots=True)
class _Cp:
    size: int
    root: bytes
    origin: str
    source: str | None = None
    """Where a checkpoint kept outside the store came from; None for the store's own."""


@dataclass(slots=True)
class _Run:
    """Consecutive checkpoints the recomputed tree does not reproduce."""

    failure_at: int
    start_leaf: int
    sizes: list[int]


def _compact_keys(size: int) -> list[tuple[int, int]]:
    keys, start = [], 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys


class _LogVerifier:
    def __init__(
        self,
        reader: IntegrityReader,
        verifier: Verifier,
        log_id: str,
        origin: str | None,
        progress: Callable[[int, int], None] | None,
        external: Sequence[ExternalCheckpoint] = (),
        erasures: ErasureJudge | None = None,
    ) -> None:
        self.reader, self.verifier, self.log_id = reader, verifier, log_id
        self.origin, self.progress = origin, progress
        self.external, self.erasures = list(external), erasures
        self.stored_notes: dict[int, set[str]] = {}
        self.stored_times: dict[tuple[int, str], set[str]] = {}  # (size, note) -> signed_at as stored
        self.beyond: list[_Cp] = []  # kept checkpoints larger than the store's log
        self.forks: dict[str, tuple[int, list[int]]] = {}  # source -> (failure index, sizes)
        self.max_index = -1
        self.node_reader = reader if isinstance(reader, NodeReader) else None
        self.report = LogReport(log_id)
        self.base = merkle.CompactRange()
        self.base_authentic = True  # base is the signed tree (reproduced the last checkpoint)
        self.pending: dict[int, list[_Cand]] = {}
        self.missing: list[list[int]] = []  # merged [start, end) ranges
        self.flagged: dict[int, str] = {}  # leaf index -> record id whose leaf may be wrong
        self.run: _Run | None = None
        self.good: tuple[int, bytes] = (0, merkle.EMPTY_ROOT)
        self.conflicts: set[int] = set()

    # -- helpers ------------------------------------------------------------------------

    def fail(self, kind: FailureKind, what: str, record_id: str | None = None, leaf_index: int | None = None,
             size: int | None = None) -> None:
        self.report.failures.append(Failure(record_id, leaf_index, what, kind, size))
        if record_id is not None and leaf_index is not None and kind in _CHANGES_LEAF:
            self.flagged.setdefault(leaf_index, record_id)

    def add_missing(self, index: int) -> None:
        if self.missing and self.missing[-1][1] == index:
            self.missing[-1][1] = index + 1
        else:
            self.missing.append([index, index + 1])

    def stored_size(self) -> int:
        """The stored log state's size; a state that cannot be read (edited into something
        that does not parse) is a failure of this log, read as size 0, never an abort."""
        if not hasattr(self, "_stored_size"):
            try:
                self._stored_size = self.reader.log_size(self.log_id)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self.fail(FailureKind.LOG_STATE, f"the stored log state cannot be read: {type(exc).__name__}: {exc}")
                self._stored_size = 0
        return self._stored_size

    def stored_nodes(self, keys: list[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        if self.node_reader is None or not keys:
            return {}
        try:
            found = self.node_reader.nodes(self.log_id, keys)
        except Exception:  # noqa: BLE001 - nodes are optional help; never let them break verification
            return {}
        return {k: bytes(v) for k, v in found.items() if len(v) == merkle.HASH_SIZE}

    def root_with(self, leaves: Sequence[bytes | None]) -> bytes:
        rng = self.base.copy()
        rng.extend(_PLACEHOLDER if h is None else h for h in leaves)
        return rng.root()

    # -- checkpoints --------------------------------------------------------------------

    def open_checkpoints(self) -> list[_Cp]:
        opened: list[_Cp] = []
        for sc in self.reader.checkpoints(self.log_id):
            self.report.checkpoints_checked += 1
            self.stored_notes.setdefault(sc.size, set()).add(sc.note)
            self.stored_times.setdefault((sc.size, sc.note), set()).add(str(sc.signed_at))
            try:
                cp = open_checkpoint(sc.note, self.verifier)
            except NoteError as e:
                self.fail(FailureKind.BAD_CHECKPOINT, f"checkpoint (stored size {sc.size}) rejected: {e}", size=sc.size)
                continue
            if (sc.size, bytes(sc.root_hash), sc.log_id) != (cp.size, cp.root_hash, self.log_id):
                self.fail(
                    FailureKind.BAD_CHECKPOINT,
                    f"stored checkpoint fields (log {sc.log_id}, size {sc.size}, root {bytes(sc.root_hash).hex()}) "
                    f"disagree with its signed note (size {cp.size}, root {cp.root_hash.hex()}); the note is used",
                    size=cp.size,
                )
            opened.append(_Cp(cp.size, cp.root_hash, cp.origin))
        if not opened:
            return []
        want = self.origin or Counter(c.origin for c in opened).most_common(1)[0][0]
        kept = []
        for c in opened:
            if c.origin != want:
                self.fail(
                    FailureKind.BAD_CHECKPOINT,
                    f"checkpoint for size {c.size} has origin {c.origin!r}, this log's is {want!r}",
                    size=c.size,
                )
            else:
                kept.append(c)
        kept.sort(key=lambda c: c.size)
        roots: dict[int, set[bytes]] = {}
        for c in kept:
            roots.setdefault(c.size, set()).add(c.root)
        for size, rs in roots.items():
            if len(rs) > 1:
                self.conflicts.add(size)
                self.fail(
                    FailureKind.CONFLICTING_CHECKPOINTS,
                    f"{len(rs)} validly signed checkpoints for size {size} with different roots: "
                    + ", ".join(sorted(r.hex() for r in rs)),
                    size=size,
                )
        return kept

    def open_external(self, log_size: int) -> list[_Cp]:
        """Kept checkpoints: the mirror's must be in the store unchanged; each must be signed
        by a trusted key; those larger than the store's log are set aside (rolled back)."""
        missing: dict[str, list[int]] = {}
        opened: list[_Cp] = []
        for item in self.external:
            sc = item.checkpoint
            if item.mirrored:
                stored = self.stored_notes.get(sc.size)
                if not stored:
                    missing.setdefault(item.source, []).append(sc.size)
                elif sc.note not in stored:
                    self.fail(FailureKind.MIRROR_DIFFERS,
                              f"checkpoint for size {sc.size} differs between the store and {item.source}", size=sc.size)
                elif str(sc.signed_at) not in (times := self.stored_times.get((sc.size, sc.note), set())):
                    # the note does not hold the time: the mirror's copy is what the API's time is checked against
                    self.fail(FailureKind.MIRROR_DIFFERS,
                              f"checkpoint for size {sc.size} was signed at {sc.signed_at} says {item.source}, the store "
                              f"says {', '.join(sorted(times))}", size=sc.size)
            try:
                cp = open_checkpoint(sc.note, self.verifier)
            except NoteError as e:
                self.fail(FailureKind.BAD_CHECKPOINT, f"checkpoint for size {sc.size} kept in {item.source} rejected: {e}",
                          size=sc.size)
                continue
            if not cp.origin.endswith("/" + self.log_id):
                self.fail(FailureKind.BAD_CHECKPOINT,
                          f"checkpoint kept in {item.source} has origin {cp.origin!r}, not one of log {self.log_id!r}",
                          size=cp.size)
                continue
            self.report.external_checked += 1
            kept = _Cp(cp.size, cp.root_hash, cp.origin, item.source)
            (self.beyond if cp.size > log_size else opened).append(kept)
        for source, sizes in missing.items():
            sizes = sorted(set(sizes))
            listed = ", ".join(map(str, sizes[:8])) + (" ..." if len(sizes) > 8 else "")
            self.fail(FailureKind.MIRROR_MISSING,
                      f"{len(sizes)} checkpoint(s) in {source} missing from the store: size(s) {listed}", size=sizes[-1])
        return opened

    def forked(self, cp: _Cp, leaves: list[bytes | None]) -> None:
        """A kept checkpoint the records do not reproduce: one finding per source."""
        assert cp.source is not None
        entry = self.forks.get(cp.source)
        if entry is None:
            entry = self.forks[cp.source] = (len(self.report.failures), [])
            self.report.failures.append(Failure(None, None, "", FailureKind.FORKED, cp.size))
        at, sizes = entry
        sizes.append(cp.size)
        which = f"size {sizes[0]}" if len(sizes) == 1 else f"{len(sizes)} sizes {sizes[0]}..{sizes[-1]}"
        self.report.failures[at] = Failure(
            None, None,
            f"the log rebuilt from the stored records does not reproduce the root signed at {which} in the "
            f"checkpoint(s) kept in {cp.source}: the log was forked or rewritten (re-signed, or records altered: "
            "see the other findings)",
            FailureKind.FORKED, sizes[0],
        )
        if leaves:
            self.base.extend(_PLACEHOLDER if h is None else h for h in leaves)
            self.base_authentic = False

    def choose(self, index: int) -> tuple[bytes | None, list[_Cand]]:
        """The leaf to use at ``index`` and all its candidate records (chosen first)."""
        cands = self.pending.pop(index, [])
        if not cands:
            self.add_missing(index)
            return None, []
        if len(cands) > 1:
            cands.sort(key=lambda c: not c.stored_ok)
        return cands[0].leaf, cands

    def process(self, cp: _Cp) -> None:
        start, size = self.base.size, cp.size
        chosen = [self.choose(i) for i in range(start, size)]
        leaves: list[bytes | None] = [leaf for leaf, _ in chosen]
        holes = [start + i for i, h in enumerate(leaves) if h is None]
        if holes:  # deleted or unsealed: the store's leaf node, when it kept one, stands in
            found = self.stored_nodes([(0, i) for i in holes])
            for i in holes:
                leaves[i - start] = found.get((0, i))

        if self.root_with(leaves) == cp.root:
            return self.matched(cp, leaves, chosen)
        if not leaves and self.base_authentic:
            # The tree at this size is already authenticated (by another checkpoint, or it
            # is empty): this signed root contradicts it. Conflicts were reported already.
            if cp.source is not None:
                self.forked(cp, leaves)
            elif size not in self.conflicts:
                self.fail(
                    FailureKind.INCONSISTENT_CHECKPOINTS,
                    f"signed root {cp.root.hex()} differs from the log's verified root at this size",
                    size=size,
                )
            return None
        if self.try_duplicates(cp, leaves, chosen) or self.try_stored_leaves(cp, leaves, chosen):
            return None
        self.mismatch(cp, leaves)
        return None

    def matched(self, cp: _Cp, leaves: list[bytes | None], chosen: list[tuple[bytes | None, list[_Cand]]]) -> None:
        start = self.base.size
        if self.base_authentic and leaves:
            self.check_consistency(self.base, leaves, cp)
        for i, (_, cands) in enumerate(chosen):
            holder = next((c for c in cands if c.leaf == leaves[i]), None)
            for c in cands:
                if c is not holder:
                    self.fail(
                        FailureKind.DUPLICATE,
                        f"claims leaf {start + i}, which the signed tree gives to "
                        + (f"record {holder.record_id}" if holder else "another record"),
                        c.record_id, start + i,
                    )
        # All real hashes: they reproduced a signed root. Every node they complete is checked
        # against the store's copy, which inclusion and consistency proofs are built from.
        self.check_nodes(self.base.extend_nodes(leaves))  # type: ignore[arg-type]
        if self.run is not None:
            self.close_run(later=cp)
        self.base_authentic = True
        self.good = (cp.size, cp.root)
        self.report.verified_size = max(self.report.verified_size, cp.size)

    def check_nodes(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        """Compare authenticated tree nodes with the stored ones, a batch at a time: a stored
        node that differs would make the API serve proofs of another tree. Nodes the store
        does not keep are not a failure (proofs are then built from the records)."""
        if self.node_reader is None:
            for _ in nodes:
                pass
            return
        batch: dict[tuple[int, int], bytes] = {}
        for level, index, digest in nodes:
            batch[level, index] = digest
            if len(batch) >= _NODE_BATCH:
                self.compare_nodes(batch)
                batch = {}
        self.compare_nodes(batch)

    def compare_nodes(self, batch: dict[tuple[int, int], bytes]) -> None:
        if not batch or self.node_reader is None:
            return
        try:
            found = self.node_reader.nodes(self.log_id, list(batch))
        except (ValueError, TypeError) as exc:
            self.fail(FailureKind.NODE_MISMATCH, f"the stored Merkle nodes cannot be read: {exc}")
            return
        missing = 0
        for key in sorted(batch):
            stored = found.get(key)
            if stored is None:
                missing += 1  # every node a sequencer completes is stored with its batch
                continue
            if bytes(stored) != batch[key]:
                level, index = key
                span = f"leaf {index}" if level == 0 else f"leaves {index << level}..{((index + 1) << level) - 1}"
                self.fail(
                    FailureKind.NODE_MISMATCH,
                    f"stored Merkle node (level {level}, index {index}) over {span} is {bytes(stored).hex()[:16]}…, "
                    f"the signed tree has {batch[key].hex()[:16]}…: proofs served from it would not verify",
                    leaf_index=index << level,
                )
        if missing:
            first = min(k for k in batch if k not in found)
            self.fail(
                FailureKind.NODE_MISMATCH,
                f"{missing} Merkle node(s) of the signed tree are missing from the store (first: level {first[0]}, "
                f"index {first[1]}): the API cannot build proofs through them",
                leaf_index=first[1] << first[0],
            )

    def check_consistency(self, base: merkle.CompactRange, leaves: list[bytes | None], cp: _Cp) -> None:
        """Consistency proof old → new built from the recomputed tree, verified against both signed roots."""
        old, cmap = base.size, dict(zip(_compact_keys(base.size), base.nodes, strict=True))
        new_leaves: list[bytes] = leaves  # type: ignore[assignment]  # all real: they reproduced a signed root

        def get_node(level: int, index: int) -> bytes:
            node = cmap.get((level, index))
            if node is not None:
                return node
            lo, hi = index << level, (index + 1) << level
            if lo < old or hi > old + len(new_leaves):
                raise merkle.ProofError(f"node ({level}, {index}) is not in the recomputed range")
            return merkle.root_hash(new_leaves[lo - old : hi - old])

        try:
            proof = merkle.build_consistency_proof(get_node, old, cp.size)
            merkle.verify_consistency(old, cp.size, proof, self.good[1], cp.root)
        except merkle.ProofError as e:
            self.fail(
                FailureKind.INCONSISTENT_CHECKPOINTS,
                f"not consistent with the checkpoint at size {old}: {e}",
                size=cp.size,
            )

    def try_duplicates(
        self, cp: _Cp, leaves: list[bytes | None], chosen: list[tuple[bytes | None, list[_Cand]]]
    ) -> bool:
        trials = 0
        for i, (_, cands) in enumerate(chosen):
            for alt in cands[1:]:
                if trials >= _MAX_DUPLICATE_TRIALS:
                    return False
                trials += 1
                trial = list(leaves)
                trial[i] = alt.leaf
                if self.root_with(trial) == cp.root:
                    cands.remove(alt)
                    cands.insert(0, alt)
                    self.matched(cp, trial, chosen)
                    return True
        return False

    def try_stored_leaves(
        self, cp: _Cp, leaves: list[bytes | None], chosen: list[tuple[bytes | None, list[_Cand]]]
    ) -> bool:
        """With the store's nodes: find the authentic leaves and name each record that differs."""
        if self.node_reader is None:
            return False
        start, size = self.base.size, cp.size
        if self.base_authentic:
            found = self.stored_nodes([(0, i) for i in range(start, size)])
            stored = [found.get((0, i)) for i in range(start, size)]
            if all(h is not None for h in stored) and self.root_with(stored) == cp.root:
                for i, (_, cands) in enumerate(chosen):
                    authentic = stored[i]
                    if leaves[i] == authentic or not cands:
                        continue  # equal, or missing (already reported)
                    holder = next((c for c in cands if c.leaf == authentic), None)
                    if holder is not None:
                        cands.remove(holder)
                        cands.insert(0, holder)
                        continue  # the duplicate check in matched() names the others
                    for c in cands:
                        self.fail(
                            FailureKind.NOT_IN_TREE,
                            "leaf recomputed from the record differs from the signed tree's "
                            "(header or commitment edited, or record replaced)",
                            c.record_id, start + i,
                        )
                    cands.clear()
                self.matched(cp, stored, chosen)  # type: ignore[arg-type]
                return True
        # Re-base on the stored compact range at this size, if it reproduces the signed root:
        # later checkpoints are then checked independently of this damage.
        keys = _compact_keys(size)
        found = self.stored_nodes(keys)
        if len(found) == len(keys):
            rng = merkle.CompactRange(size, [found[k] for k in keys])
            if rng.root() == cp.root:
                self.mismatch(cp, leaves)
                self.close_run(later=None)
                self.base = rng
                self.base_authentic = True
                self.good = (cp.size, cp.root)
                return True
        return False

    def mismatch(self, cp: _Cp, leaves: list[bytes | None]) -> None:
        if cp.source is not None:
            return self.forked(cp, leaves)
        if self.run is None:
            self.run = _Run(len(self.report.failures), self.base.size, [cp.size])
            self.report.failures.append(Failure(None, None, "", FailureKind.ROOT_MISMATCH, cp.size))
        else:
            self.run.sizes.append(cp.size)
        self.base.extend(_PLACEHOLDER if h is None else h for h in leaves)
        self.base_authentic = False
        self.describe_run(FailureKind.ROOT_MISMATCH)

    def describe_run(self, kind: FailureKind, later: _Cp | None = None) -> None:
        run = self.run
        assert run is not None
        sizes = run.sizes
        which = (
            f"checkpoint at size {sizes[0]}"
            if len(sizes) == 1
            else f"{len(sizes)} checkpoints at sizes {sizes[0]}..{sizes[-1]}"
        )
        if kind == FailureKind.INCONSISTENT_CHECKPOINTS and later is not None:
            what = (
                f"{which}: signed root(s) not consistent with the checkpoint at size {later.size}, "
                "whose root the records reproduce (forked or forged signature)"
            )
            record_id = None
        else:
            lo, hi = run.start_leaf, sizes[0] - 1
            suspects = sorted(i for i in self.flagged if lo <= i <= hi)
            gaps = [r for r in self.missing if r[0] <= hi and r[1] > lo]
            what = (
                f"{which}: the records do not reproduce the signed root; "
                f"the first difference is among leaves {lo}..{hi}"
            )
            if suspects:
                what += "; records flagged there: " + ", ".join(
                    f"{self.flagged[i]} (leaf {i})" for i in suspects[:5]
                ) + (" ..." if len(suspects) > 5 else "")
            if gaps:
                what += "; missing leaves there: " + ", ".join(
                    f"{a}" if b == a + 1 else f"{a}..{b - 1}" for a, b in gaps[:5]
                )
            record_id = self.flagged[suspects[0]] if len(suspects) == 1 and not gaps else None
        self.report.failures[run.failure_at] = Failure(record_id, None, what, kind, sizes[0])

    def close_run(self, later: _Cp | None) -> None:
        if self.run is None:
            return
        if later is not None:
            # A later signed root is reproduced by the records, so every leaf before it is
            # authentic: the earlier mismatching roots are what is wrong.
            self.describe_run(FailureKind.INCONSISTENT_CHECKPOINTS, later)
        self.run = None

    # -- records ------------------------------------------------------------------------

    def check_record(self, record: AuditRecord) -> None:
        self.report.records_checked += 1
        check = recompute(record)
        rid, index = record.record_id, record.leaf_index
        if index is not None:
            self.max_index = max(self.max_index, index)
        if check.erased and check.content_ok is not False:
            self.check_erasure(record)
        if record.log_id is not None and record.log_id != self.log_id:
            self.fail(
                FailureKind.WRONG_LOG, f"record says log {record.log_id!r}, stored in log {self.log_id!r}", rid, index
            )
        if check.status == LeafStatus.UNSEALED:
            self.fail(FailureKind.UNSEALED, check.reason, rid, index)
        else:
            if check.content_ok is False:
                self.fail(FailureKind.CONTENT_ALTERED, check.reason.split(";")[0], rid, index)
            if not check.stored_leaf_matches:
                self.fail(
                    FailureKind.LEAF_MISMATCH,
                    "recomputed leaf hash differs from the stored leaf_hash (header or commitment edited)",
                    rid, index,
                )
        if index is None:
            return
        if index < self.base.size:
            self.fail(
                FailureKind.DUPLICATE,
                f"claims leaf {index}, which an earlier record already holds (or the records are out of order)",
                rid, index,
            )
            return
        if check.leaf_hash is not None:  # an unsealed record holds no leaf (reported above)
            self.pending.setdefault(index, []).append(_Cand(rid, check.leaf_hash, check.stored_leaf_matches))

    def check_erasure(self, record: AuditRecord) -> None:
        if self.erasures is None:
            self.report.erased += 1
            return
        explanation = self.erasures.explain(record)
        if explanation.status == ErasureStatus.UNEXPLAINED:
            self.fail(FailureKind.UNEXPLAINED_ERASURE, explanation.reason, record.record_id, record.leaf_index)
            return
        self.report.erased += 1
        if explanation.status == ErasureStatus.PENDING:
            self.report.erasures_pending += 1

    def run_all(self) -> LogReport:
        cps = self.open_checkpoints()
        total = self.stored_size()
        if self.external:
            # Stored checkpoints first at equal sizes: a kept one is then compared with the
            # store's signed tree at that size.
            cps = sorted(cps + self.open_external(total), key=lambda c: (c.size, c.source is not None))
        k = 0
        for record in self.reader.records_in_log(self.log_id):
            index = record.leaf_index
            if index is not None:
                while k < len(cps) and cps[k].size <= index:
                    self.process(cps[k])
                    k += 1
            self.check_record(record)
            if self.progress is not None and self.report.records_checked % _PROGRESS_EVERY == 0:
                self.progress(self.report.records_checked, total)
        while k < len(cps):
            self.process(cps[k])
            k += 1
        self.finish(cps)
        if self.progress is not None:
            self.progress(self.report.records_checked, max(total, self.report.records_checked))
        return self.report

    def finish(self, cps: list[_Cp]) -> None:
        size = self.stored_size()
        covered = cps[-1].size if cps else 0
        self.report.size = size
        if size < covered:
            self.fail(
                FailureKind.LOG_STATE,
                f"stored log size {size} is smaller than the signed checkpoint size {covered} (log truncated?)",
                size=covered,
            )
        end = max(size, covered)
        for index in sorted(self.pending):
            cands = self.pending[index]
            if index >= end:
                for c in cands:
                    what = f"leaf {index} is beyond the log (size {end})"
                    self.fail(FailureKind.BEYOND_LOG, what, c.record_id, index)
                continue
            if len(cands) > 1:
                found = self.stored_nodes([(0, index)]).get((0, index))
                cands.sort(key=lambda c: (c.leaf != found, not c.stored_ok))
                for c in cands[1:]:
                    self.fail(
                        FailureKind.DUPLICATE,
                        f"claims leaf {index}, also claimed by record {cands[0].record_id}"
                        + ("" if found else " (no checkpoint covers it yet to tell which is authentic)"),
                        c.record_id, index,
                    )
        self.report.uncovered = max(0, size - covered)
        for index in range(self.base.size, end):
            if index not in self.pending:
                self.add_missing(index)
        for a, b in self.missing:
            what = f"leaf {a} missing" if b == a + 1 else f"leaves {a}..{b - 1} missing ({b - a} records)"
            self.report.failures.append(Failure(None, a, what, FailureKind.MISSING))
        if self.run is not None:
            self.describe_run(FailureKind.ROOT_MISMATCH)
        largest: dict[str, int] = {}
        for cp in self.beyond:
            largest[cp.source or ""] = max(largest.get(cp.source or "", 0), cp.size)
        for source, kept in sorted(largest.items()):
            held = f"{size} leaves" + (f" (records up to leaf {self.max_index})" if self.max_index >= 0 else ", no records")
            self.fail(
                FailureKind.ROLLED_BACK,
                f"log is shorter than the checkpoint for size {kept} kept in {source}: the store's log has {held}; "
                "it was rolled back (an older copy restored) or truncated",
                size=kept,
            )


def verify_log(
    reader: IntegrityReader,
    verifier: Verifier | Sequence[Verifier],
    log_id: str,
    *,
    origin: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    external: Sequence[ExternalCheckpoint] = (),
    erasures: ErasureJudge | None = None,
) -> LogReport:
    """Verify one log end to end; see the module docstring for what is detected.

    ``origin``: the checkpoint origin line the log must use (default: the one most of its
    checkpoints carry). ``progress(records_checked, log_size)`` is called every few
    thousand records and at the end. Reads checkpoints first, then streams records, then
    reads the log size: on a live log, records appended meanwhile past the read log size
    are reported as ``BEYOND_LOG``; verify a quiet log or rerun to confirm.

    ``external``: this log's checkpoints kept outside the store (read them before the
    store: whatever the mirror holds, a live store already holds). ``erasures``: judges
    every erased record (``UNEXPLAINED_ERASURE`` unless covered); without it erased
    records are only counted (``aitrail verify`` always passes one).
    """
    return _LogVerifier(reader, verifier, log_id, origin, progress, external, erasures).run_all()


def verify_logs(
    reader: IntegrityReader,
    verifier: Verifier | Sequence[Verifier],
    *,
    log_ids: Sequence[str] | None = None,
    external: Sequence[ExternalCheckpoint] = (),
    erasures: ErasureJudge | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[LogReport]:
    """:func:`verify_log` for the union of the logs the store knows and the logs the
    ``external`` checkpoints name (or only ``log_ids``). A log with no records fails
    (``LOG_MISSING``) once the store or a validly signed kept checkpoint names it: wiping a
    log, or the whole store, is loss."""
    kept = by_log(external)
    stored = set(reader.log_ids())
    ids = list(log_ids) if log_ids is not None else sorted(stored | set(kept))
    reports = []
    for log_id in ids:
        cb = (lambda done, total, _l=log_id: progress(_l, done, total)) if progress else None
        report = verify_log(reader, verifier, log_id, progress=cb, external=kept.get(log_id, ()), erasures=erasures)
        if report.records_checked == 0 and (log_id in stored or report.external_checked):
            sources = sorted({e.source for e in kept.get(log_id, ())})
            if log_id in stored:
                what = f"the store knows this log (size {report.size}) but holds none of its records"
            else:
                what = "log is missing from the store entirely (no records, no log state)"
                # every kept checkpoint is "beyond" and "missing from" an absent log: say it once
                report.failures = [
                    f for f in report.failures if f.kind not in (FailureKind.ROLLED_BACK, FailureKind.MIRROR_MISSING)
                ]
            if sources:
                what += "; named by " + ", ".join(sources)
            report.failures.append(Failure(None, None, what + ": wiped or deleted", FailureKind.LOG_MISSING))
        reports.append(report)
    return reports


def verify_all(
    reader: IntegrityReader,
    verifier: Verifier,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[LogReport]:
    """:func:`verify_log` for every log the reader knows."""
    reports = []
    for log_id in reader.log_ids():
        cb = (lambda done, total, _l=log_id: progress(_l, done, total)) if progress else None
        reports.append(verify_log(reader, verifier, log_id, progress=cb))
    return reports


# --- single records ---------------------------------------------------------------------


class RecordStatus(StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    ERASED = "erased"
    """Header and commitment are in the signed tree; the content was erased."""


@dataclass(frozen=True, slots=True)
class RecordReport:
    record_id: str
    status: RecordStatus
    reason: str
    log_id: str | None = None
    leaf_index: int | None = None
    tree_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != RecordStatus.FAILED


def verify_record(
    record: AuditRecord,
    proof: Sequence[bytes],
    checkpoint_note: str,
    verifier: Verifier,
    *,
    origin: str | None = None,
) -> RecordReport:
    """Check one record against an inclusion proof and a signed checkpoint.

    Verified means: the checkpoint is signed by ``verifier`` (with ``origin`` if given),
    the record's content matches its commitment (unless erased), and the leaf recomputed
    from the record is at ``record.leaf_index`` in the signed tree. Never raises on bad data.
    """
    rid = record.record_id

    def failed(reason: str, size: int | None = None) -> RecordReport:
        return RecordReport(rid, RecordStatus.FAILED, reason, record.log_id, record.leaf_index, size)

    try:
        cp = open_checkpoint(checkpoint_note, verifier, origin=origin)
    except NoteError as e:
        return failed(f"checkpoint rejected: {e}")
    check = recompute(record)
    if check.status == LeafStatus.UNSEALED or check.leaf_hash is None:
        return failed(check.reason, cp.size)
    if check.content_ok is False:
        return failed(check.reason, cp.size)
    index = record.leaf_index
    assert index is not None  # sealed
    if index >= cp.size:
        return failed(f"leaf {index} is not covered by the checkpoint (size {cp.size}) yet", cp.size)
    try:
        merkle.verify_inclusion(check.leaf_hash, index, cp.size, list(proof), cp.root_hash)
    except merkle.ProofError as e:
        return failed(f"record is not in the signed tree (header or commitment altered, or wrong proof): {e}", cp.size)
    if not check.stored_leaf_matches:
        return failed("record is in the signed tree but its stored leaf_hash field was altered", cp.size)
    if check.erased:
        return RecordReport(rid, RecordStatus.ERASED, check.reason, record.log_id, index, cp.size)
    return RecordReport(rid, RecordStatus.VERIFIED, f"leaf {index} is in the signed tree of size {cp.size}",
                        record.log_id, index, cp.size)

