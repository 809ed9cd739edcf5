"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and incremental state, with SHA-256.

Pure computation: no I/O, no other aitrail imports. Hashes are 32-byte ``bytes``; a tree
is its list of leaf hashes ``D[0:n]`` and ``n`` is its ``tree_size``.

Failure contract (the same everywhere in this module): every bad input (a hash that is
not 32 bytes, an index or size out of range, stored state that does not fit) and every
proof that does not verify raise :class:`ProofError` (a ``ValueError``) whose message
says what is wrong. The ``verify_*`` functions return
``True`` on success and never return ``False``, so both ``verify_inclusion(...)`` as a
statement and ``if verify_inclusion(...):`` are safe.

Producing roots and proofs, by cost:

* :func:`root_hash`, :func:`inclusion_proof`, :func:`consistency_proof` take the whole
  leaf-hash list: O(n) hashing per call, no state. Fine for tests and small trees.
* :class:`CompactRange` keeps only the right edge of the tree (one perfect-subtree root
  per set bit of the size): amortised O(1) hashes per append, O(log n) per root, and it
  can be persisted as ``(size, nodes)`` and resumed without rehashing. No proofs.
* :class:`MerkleTreeIndex` keeps every perfect-subtree hash in memory (~64 bytes per
  leaf): n - 1 hashes to build, amortised O(1) per append, then O(log n) per root or
  proof for *any* tree size up to its own.
* :func:`build_inclusion_proof` / :func:`build_consistency_proof` run the same O(log n)
  algorithm over any store of perfect-subtree hashes given as ``get_node(level, index)``;
  :func:`inclusion_proof_nodes` / :func:`consistency_proof_nodes` list the nodes they
  will read so a store can fetch them in one query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleTreeIndex",
    "NodeGetter",
    "ProofError",
    "build_consistency_proof",
    "build_inclusion_proof",
    "consistency_proof",
    "consistency_proof_nodes",
    "inclusion_proof",
    "inclusion_proof_nodes",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "split_point",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: SHA-256 of the empty string."""

_sha256 = hashlib.sha256

NodeGetter = Callable[[int, int], bytes]
"""``get_node(level, index)`` returns the hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes."""


class ProofError(ValueError):
    """A proof failed to verify, or an argument (hash length, index, size, state) is invalid."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``. No length checks."""
    return _sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The RFC 6962 split ``k``: the largest power of two strictly less than ``n`` (``n >= 2``)."""
    if n < 2:
        raise ProofError(f"split point needs n >= 2, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, want {HASH_SIZE}")


def _checked_list(leaf_hashes: Iterable[bytes]) -> list[bytes]:
    hashes = [bytes(h) for h in leaf_hashes]
    for i, h in enumerate(hashes):
        _check_hash(h, f"leaf hash [{i}]")
    return hashes


def _root(hashes: Sequence[bytes]) -> bytes:
    # Pairing bottom-up and promoting an odd last node unchanged yields exactly the
    # RFC 6962 MTH (left subtree = largest power of two < n), with n - 1 hashes.
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        up = [
            _sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) & 1:
            up.append(level[-1])
        level = up
    return level[0]


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH(D[0:n])`` of the given leaf hashes (``EMPTY_ROOT`` for none); n - 1 hashes.

    Raises ProofError if a leaf hash is not 32 bytes.
    """
    return _root(_checked_list(leaf_hashes))


# --- proof generation over perfect-subtree hashes -----------------------------------


def subtree_root(get_node: NodeGetter, start: int, end: int) -> bytes:
    """``MTH(D[start:end])`` assembled from perfect-subtree hashes read via ``get_node``.

    For the ranges RFC proofs use (``start`` a multiple of the left part's size) this
    reads at most ~2·log2(n) nodes and hashes at most log2(n) times; any other range is
    still computed correctly, splitting down to leaves where nodes are misaligned.
    """
    n = end - start
    if n <= 0:
        if n == 0:
            return EMPTY_ROOT
        raise ProofError(f"empty or reversed range [{start}, {end})")
    if n & (n - 1) == 0 and start % n == 0:
        return get_node(n.bit_length() - 1, start // n)
    k = split_point(n)
    return node_hash(
        subtree_root(get_node, start, start + k), subtree_root(get_node, start + k, end)
    )


def build_inclusion_proof(
    get_node: NodeGetter, leaf_index: int, tree_size: int
) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(leaf_index, D[0:tree_size])``, leaf-side first.

    ``get_node`` must serve every perfect subtree inside ``[0, tree_size)``. O(log n)
    reads and hashes. Raises ProofError unless ``0 <= leaf_index < tree_size``.
    """
    if not 0 <= leaf_index < tree_size:
        raise ProofError(
            f"leaf index {leaf_index} out of range for tree size {tree_size}"
        )
    proof: list[bytes] = []
    start, end, m = 0, tree_size, leaf_index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            proof.append(subtree_root(get_node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(get_node, start, start + k))
            start, m = start + k, m - k
    proof.reverse()
    return proof


def build_consistency_proof(
    get_node: NodeGetter, old_size: int, new_size: int
) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[0:new_size])`` (the RFC 6962 SUBPROOF algorithm).

    Empty when ``old_size`` is 0 or equals ``new_size``. ``get_node`` must serve every
    perfect subtree inside ``[0, new_size)``. O(log n) reads and hashes. Raises
    ProofError unless ``0 <= old_size <= new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} not in [0, new size {new_size}]")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            proof.append(subtree_root(get_node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(get_node, start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(subtree_root(get_node, start, end))
    proof.reverse()
    return proof


def _recorded_nodes(build: Callable[[NodeGetter], object]) -> list[tuple[int, int]]:
    seen: dict[tuple[int, int], None] = {}

    def record(level: int, index: int) -> bytes:
        seen[(level, index)] = None
        return EMPTY_ROOT

    build(record)
    return list(seen)


def inclusion_proof_nodes(leaf_index: int, tree_size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` nodes :func:`build_inclusion_proof` reads, without duplicates."""
    return _recorded_nodes(
        lambda get: build_inclusion_proof(get, leaf_index, tree_size)
    )


def consistency_proof_nodes(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` nodes :func:`build_consistency_proof` reads, without duplicates."""
    return _recorded_nodes(lambda get: build_consistency_proof(get, old_size, new_size))


def _list_getter(hashes: Sequence[bytes]) -> NodeGetter:
    return lambda level, index: _root(hashes[index << level : (index + 1) << level])


def inclusion_proof(leaf_index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Inclusion proof for ``leaf_index`` in the tree of all ``leaf_hashes``.

    Stateless, about n hashes per call; use :class:`MerkleTreeIndex` for O(log n).
    Raises ProofError on a bad index or a leaf hash that is not 32 bytes.
    """
    hashes = _checked_list(leaf_hashes)
    return build_inclusion_proof(_list_getter(hashes), leaf_index, len(hashes))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Consistency proof from the first ``old_size`` leaves to the tree of all ``leaf_hashes``.

    Stateless, about n hashes per call; use :class:`MerkleTreeIndex` for O(log n).
    Raises ProofError on a bad size or a leaf hash that is not 32 bytes.
    """
    hashes = _checked_list(leaf_hashes)
    return build_consistency_proof(_list_getter(hashes), old_size, len(hashes))


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ----------------------------------


def _inclusion_proof_size(leaf_index: int, tree_size: int) -> int:
    inner = (leaf_index ^ (tree_size - 1)).bit_length()
    return inner + (leaf_index >> inner).bit_count()


def root_from_inclusion_proof(
    leaf_hash: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` implies for ``leaf_hash`` at ``leaf_index`` in a tree of ``tree_size``.

    Raises ProofError if the index is out of range, a hash is not 32 bytes, or the
    proof has the wrong number of hashes for that position.
    """
    if not 0 <= leaf_index < tree_size:
        raise ProofError(
            f"leaf index {leaf_index} out of range for tree size {tree_size}"
        )
    _check_hash(leaf_hash, "leaf hash")
    want = _inclusion_proof_size(leaf_index, tree_size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes, want {want} for leaf {leaf_index} in tree size {tree_size}"
        )
    fn, sn, r = leaf_index, tree_size - 1, bytes(leaf_hash)
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
        if sn == 0:  # unreachable given the length check; kept as the RFC's guard
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof too short")
    return r


def verify_inclusion(
    leaf_hash: bytes,
    leaf_index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> Literal[True]:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree of ``tree_size`` with ``root``.

    Returns True; raises ProofError (never returns False) on any mismatch. The index is
    bound by the proof, but the size is only bound through ``root``: take both from the
    same signed checkpoint (a proof can verify for another size whose hash path has the
    same shape).
    """
    _check_hash(root, "root")
    got = root_from_inclusion_proof(leaf_hash, leaf_index, tree_size, proof)
    if got != root:
        raise ProofError(
            f"inclusion proof for leaf {leaf_index} in tree size {tree_size} yields root {got.hex()}, want {bytes(root).hex()}"
        )
    return True


def _consistency_proof_size(old_size: int, new_size: int) -> int:
    level = (old_size & -old_size).bit_length() - 1  # trailing zeros of old_size
    index = (old_size - 1) >> level
    return _inclusion_proof_size(index, ((new_size - 1) >> level) + 1) + (
        1 if index else 0
    )


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
) -> Literal[True]:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the tree of ``new_size`` with ``new_root``.

    Sizes must satisfy ``0 <= old_size <= new_size``. Equal sizes need an empty proof and
    equal roots; ``old_size == 0`` needs an empty proof and ``old_root == EMPTY_ROOT``.
    Returns True; raises ProofError (never returns False) on any mismatch. As for
    inclusion, the sizes are only bound through the roots: take each (size, root) pair
    from a signed checkpoint.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} not in [0, new size {new_size}]")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} must be empty, has {len(proof)} hashes"
            )
        if old_size == new_size and old_root != new_root:
            raise ProofError(
                f"roots differ for equal tree sizes {old_size}: {bytes(old_root).hex()} != {bytes(new_root).hex()}"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                f"old root {bytes(old_root).hex()} is not the empty-tree root"
            )
        return True
    want = _consistency_proof_size(old_size, new_size)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes, want {want} from size {old_size} to {new_size}"
        )
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # unreachable given the length check; kept as the RFC's guard
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof too short")
    if fr != old_root:
        raise ProofError(
            f"consistency proof yields old root {fr.hex()}, want {bytes(old_root).hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof yields new root {sr.hex()}, want {bytes(new_root).hex()}"
        )
    return True


# --- incremental structures ----------------------------------------------------------


class CompactRange:
    """The right edge of a growing tree: roots of the perfect subtrees covering ``[0, size)``.

    ``nodes`` holds one 32-byte hash per set bit of ``size``, largest subtree first.
    :meth:`append` costs amortised 1 hash (at most log2(n)); :meth:`root` costs
    popcount(size) - 1 hashes and is cached until the next append. Persist
    :attr:`size` and :attr:`nodes` (or :meth:`to_bytes`) and resume with
    ``CompactRange(size, nodes)`` / :meth:`from_bytes`: no rehashing of old leaves.
    Not thread-safe.
    """

    __slots__ = ("_nodes", "_root", "_size")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        """Resume from stored state; raises ProofError if ``nodes`` does not fit ``size``."""
        node_list = [bytes(n) for n in nodes]
        if size < 0:
            raise ProofError(f"negative tree size {size}")
        if len(node_list) != size.bit_count():
            raise ProofError(
                f"tree size {size} needs {size.bit_count()} subtree roots, got {len(node_list)}"
            )
        for i, n in enumerate(node_list):
            _check_hash(n, f"subtree root [{i}]")
        self._size, self._nodes, self._root = size, node_list, None

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """Perfect-subtree roots, largest (leftmost) first."""
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> int:
        """Append a 32-byte leaf hash; returns its leaf index."""
        _check_hash(leaf_hash, "leaf hash")
        h, s, nodes = bytes(leaf_hash), self._size, self._nodes
        while s & 1:
            h = _sha256(b"\x01" + nodes.pop() + h).digest()
            s >>= 1
        nodes.append(h)
        self._root = None
        self._size += 1
        return self._size - 1

    def append_data(self, data: bytes) -> int:
        """Append ``leaf_hash(data)``; returns its leaf index."""
        return self.append(leaf_hash(data))

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order."""
        for h in leaf_hashes:
            self.append(h)

    def extend_nodes(self, leaf_hashes: Iterable[bytes]) -> Iterator[tuple[int, int, bytes]]:
        """Append several leaf hashes in order, yielding every perfect-subtree node each one
        completes as ``(level, index, hash)``: the leaf itself at level 0, then each parent
        it closes. Over a whole log these are all the tree's nodes, each once."""
        for leaf in leaf_hashes:
            _check_hash(leaf, "leaf hash")
            h, s, nodes = bytes(leaf), self._size, self._nodes
            level, index = 0, s
            yield 0, index, h
            while s & 1:
                h = _sha256(b"\x01" + nodes.pop() + h).digest()
                s >>= 1
                level, index = level + 1, index >> 1
                yield level, index, h
            nodes.append(h)
            self._root = None
            self._size += 1

    def root(self) -> bytes:
        """``MTH`` of all leaves so far (``EMPTY_ROOT`` when empty)."""
        if self._root is None:
            if not self._nodes:
                self._root = EMPTY_ROOT
            else:
                acc = self._nodes[-1]
                for n in reversed(self._nodes[:-1]):
                    acc = _sha256(b"\x01" + n + acc).digest()
                self._root = acc
        return self._root

    def to_bytes(self) -> bytes:
        """Serialise as 8-byte big-endian size followed by the concatenated nodes."""
        return self._size.to_bytes(8, "big") + b"".join(self._nodes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Inverse of :meth:`to_bytes`; raises ProofError on malformed input."""
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ProofError(f"compact range encoding has bad length {len(data)}")
        nodes = [data[i : i + HASH_SIZE] for i in range(8, len(data), HASH_SIZE)]
        return cls(int.from_bytes(data[:8], "big"), nodes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self._size, self._nodes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, nodes=[{', '.join(n.hex()[:8] for n in self._nodes)}])"


class MerkleTreeIndex:
    """Every perfect-subtree hash of a tree, held in memory for O(log n) roots and proofs.

    Level ``k`` is a contiguous ``bytearray`` of the hashes of the complete ``2**k``-leaf
    subtrees, left to right (level 0 = leaf hashes); about 64 bytes per leaf in total.
    Building from n leaf hashes costs n - 1 hashes (~0.1 s per 100k leaves); appends
    cost amortised 1 hash. Roots and proofs for any ``tree_size <= len(self)`` cost
    O(log n) node reads and at most ~log2(n) hashes, because perfect subtrees never
    change as the tree grows. Rebuild after a restart from the stored leaf hashes.
    Not thread-safe.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Build from leaf hashes in order."""
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaf_hashes)

    def __len__(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf_hash: bytes) -> int:
        """Append a 32-byte leaf hash; returns its leaf index."""
        _check_hash(leaf_hash, "leaf hash")
        levels, index = self._levels, len(self)
        levels[0] += leaf_hash
        i, lvl = index, 0
        while i & 1:
            if lvl + 1 == len(levels):
                levels.append(bytearray())
            levels[lvl + 1] += _sha256(
                b"\x01" + levels[lvl][(i - 1) * HASH_SIZE : (i + 1) * HASH_SIZE]
            ).digest()
            i, lvl = i >> 1, lvl + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaf hashes in bulk (faster than repeated :meth:`append`)."""
        levels = self._levels
        levels[0] += b"".join(_checked_list(leaf_hashes))
        lvl = 0
        while True:
            cur = levels[lvl]
            want = len(cur) // (2 * HASH_SIZE)
            if want == 0:
                break
            if lvl + 1 == len(levels):
                levels.append(bytearray())
            have = len(levels[lvl + 1]) // HASH_SIZE
            if have == want:
                break
            levels[lvl + 1] += b"".join(
                [
                    _sha256(
                        b"\x01" + cur[2 * i * HASH_SIZE : (2 * i + 2) * HASH_SIZE]
                    ).digest()
                    for i in range(have, want)
                ]
            )
            lvl += 1

    def node(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``.

        Raises IndexError if that subtree is not complete yet.
        """
        if (
            level < 0
            or index < 0
            or level >= len(self._levels)
            or index >= len(self._levels[level]) // HASH_SIZE
        ):
            raise IndexError(
                f"no complete subtree at level {level}, index {index} in tree of size {len(self)}"
            )
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self.node(0, index)

    def _size(self, tree_size: int | None) -> int:
        if tree_size is None:
            return len(self)
        if not 0 <= tree_size <= len(self):
            raise ProofError(f"tree size {tree_size} not in [0, {len(self)}]")
        return tree_size

    def root(self, tree_size: int | None = None) -> bytes:
        """``MTH`` of the first ``tree_size`` leaves (default: all)."""
        return subtree_root(self.node, 0, self._size(tree_size))

    def inclusion_proof(
        self, leaf_index: int, tree_size: int | None = None
    ) -> list[bytes]:
        """Inclusion proof for ``leaf_index`` in the tree of the first ``tree_size`` leaves (default: all)."""
        return build_inclusion_proof(self.node, leaf_index, self._size(tree_size))

    def consistency_proof(
        self, old_size: int, new_size: int | None = None
    ) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` leaves (default: all)."""
        return build_consistency_proof(self.node, old_size, self._size(new_size))

    def compact_range(self, tree_size: int | None = None) -> CompactRange:
        """The :class:`CompactRange` state of the first ``tree_size`` leaves (default: all)."""
        size = self._size(tree_size)
        nodes, start = [], 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                nodes.append(self.node(level, start >> level))
                start += 1 << level
        return CompactRange(size, nodes)
