"""RFC 6962 / 9162 Merkle code against published vectors and properties.

Vector data (not code) is copied from github.com/transparency-dev/merkle:
rfc6962/rfc6962_test.go (hasher), proof/verify_test.go (8-leaf tree roots and proofs,
corruption probes), proof/proof_test.go (which tree nodes make up each proof).
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitrail.integrity.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTreeIndex,
    ProofError,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_proof,
    consistency_proof_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    split_point,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# --- published vectors -----------------------------------------------------------------

LEAVES = [h(""), h("00"), h("10"), h("2021"), h("3031"), h("40414243"), h("5051525354555657"),
          h("606162636465666768696a6b6c6d6e6f")]  # fmt: skip
LEAF_HASHES = [leaf_hash(x) for x in LEAVES]
ROOTS = [h(x) for x in (  # ROOTS[n - 1] is the root of the first n leaves
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip

# (leaf index, tree size, proof)
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip

# Proof structure as tree nodes (level, index); ``rehash=(b, e)`` means nodes[b:e] are
# folded bottom-up into one ephemeral node of the ragged right edge.
INCLUSION_NODES = [  # (tree size, leaf index, nodes, rehash)
    (1, 0, [], None), (2, 0, [(0, 1)], None), (2, 1, [(0, 0)], None), (3, 1, [(0, 0), (0, 2)], None),
    (7, 0, [(0, 1), (1, 1), (0, 6), (1, 2)], (2, 4)), (7, 1, [(0, 0), (1, 1), (0, 6), (1, 2)], (2, 4)),
    (7, 2, [(0, 3), (1, 0), (0, 6), (1, 2)], (2, 4)), (7, 3, [(0, 2), (1, 0), (0, 6), (1, 2)], (2, 4)),
    (7, 4, [(0, 5), (0, 6), (2, 0)], None), (7, 5, [(0, 4), (0, 6), (2, 0)], None),
    (7, 6, [(1, 2), (2, 0)], None), (4, 2, [(0, 3), (1, 0)], None), (5, 3, [(0, 2), (1, 0), (0, 4)], None),
    (6, 3, [(0, 2), (1, 0), (1, 2)], None), (6, 4, [(0, 5), (2, 0)], None),
    (15, 10, [(0, 11), (1, 4), (0, 14), (1, 6), (3, 0)], (2, 4)),
    (31, 24, [(0, 25), (1, 13), (0, 30), (1, 14), (3, 2), (4, 0)], (2, 4)),
    (95, 81, [(0, 80), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)], (3, 6)),
]  # fmt: skip
CONSISTENCY_NODES = [  # (old size, new size, nodes, rehash)
    (1, 2, [(0, 1)], None), (1, 4, [(0, 1), (1, 1)], None), (1, 6, [(0, 1), (1, 1), (1, 2)], None),
    (2, 3, [(0, 2)], None), (2, 8, [(1, 1), (2, 1)], None),
    (3, 7, [(0, 2), (0, 3), (1, 0), (0, 6), (1, 2)], (3, 5)), (4, 7, [(0, 6), (1, 2)], (0, 2)),
    (5, 7, [(0, 4), (0, 5), (0, 6), (2, 0)], None), (6, 7, [(1, 2), (0, 6), (2, 0)], None),
    (7, 8, [(0, 6), (0, 7), (1, 2), (2, 0)], None),
    (1, 1, [], None), (2, 2, [], None), (3, 3, [], None), (4, 4, [], None), (5, 5, [], None),
    (7, 7, [], None), (8, 8, [], None),
    (2, 4, [(1, 1)], None), (3, 5, [(0, 2), (0, 3), (1, 0), (0, 4)], None),
    (3, 6, [(0, 2), (0, 3), (1, 0), (1, 2)], None), (4, 6, [(1, 2)], None),
    (1, 7, [(0, 1), (1, 1), (0, 6), (1, 2)], (2, 4)),
    (10, 15, [(1, 4), (1, 5), (0, 14), (1, 6), (3, 0)], (2, 4)),
    (24, 31, [(3, 2), (0, 30), (1, 14), (2, 6), (4, 0)], (1, 4)),
    (81, 95, [(0, 80), (0, 81), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)], (4, 7)),
]  # fmt: skip

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- helpers ------------------------------------------------------------------------------


def mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 MTH straight from the definition: the test oracle."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def random_leaves(n: int, seed: int = 0) -> list[bytes]:
    return [leaf_hash(seed.to_bytes(4, "big") + i.to_bytes(4, "big")) for i in range(n)]


def expected_from_nodes(
    leaves: list[bytes], nodes: list[tuple[int, int]], rehash: tuple[int, int] | None
) -> list[bytes]:
    hashes = [mth(leaves[i << lvl : (i + 1) << lvl]) for lvl, i in nodes]
    if rehash:
        b, e = rehash
        acc = hashes[b]
        for x in hashes[b + 1 : e]:
            acc = node_hash(x, acc)
        hashes[b:e] = [acc]
    return hashes


def all_inclusion_proofs(i: int, leaves: list[bytes]) -> list[list[bytes]]:
    index = MerkleTreeIndex(leaves)
    return [
        inclusion_proof(i, leaves),
        index.inclusion_proof(i),
        build_inclusion_proof(index.node, i, len(leaves)),
    ]


def all_consistency_proofs(m: int, leaves: list[bytes]) -> list[list[bytes]]:
    index = MerkleTreeIndex(leaves)
    return [
        consistency_proof(m, leaves),
        index.consistency_proof(m),
        build_consistency_proof(index.node, m, len(leaves)),
    ]


def flip(b: bytes, pos: int = 0, bit: int = 3) -> bytes:
    out = bytearray(b)
    out[pos % len(out)] ^= 1 << bit
    return bytes(out)


def directions(i: int, n: int) -> tuple[int, ...]:
    """Sibling sides (1 = left) along leaf i's path in a tree of size n, from the
    inner/border decomposition of the path; it fixes the verifier's whole computation."""
    inner = (i ^ (n - 1)).bit_length()
    return tuple((i >> k) & 1 for k in range(inner)) + (1,) * (i >> inner).bit_count()


# --- hashing ----------------------------------------------------------------------------


def test_hasher_vectors() -> None:
    assert (
        EMPTY_ROOT.hex()
        == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert (
        leaf_hash(b"").hex()
        == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert (
        leaf_hash(b"L123456").hex()
        == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert (
        node_hash(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )
    assert node_hash(leaf_hash(b"a"), leaf_hash(b"b")) != node_hash(
        leaf_hash(b"b"), leaf_hash(b"a")
    )
    assert node_hash(LEAF_HASHES[0], LEAF_HASHES[1]) != leaf_hash(
        LEAF_HASHES[0] + LEAF_HASHES[1]
    )


def test_split_point() -> None:
    assert [split_point(n) for n in range(2, 11)] == [1, 2, 2, 4, 4, 4, 4, 8, 8]
    with pytest.raises(ProofError):
        split_point(1)


def test_roots_vector() -> None:
    assert (
        root_hash([]) == EMPTY_ROOT == MerkleTreeIndex().root() == CompactRange().root()
    )
    index, cr = MerkleTreeIndex(LEAF_HASHES), CompactRange()
    for n in range(1, 9):
        cr.append(LEAF_HASHES[n - 1])
        assert root_hash(LEAF_HASHES[:n]) == ROOTS[n - 1]
        assert index.root(n) == cr.root() == mth(LEAF_HASHES[:n]) == ROOTS[n - 1]


def test_bad_hash_lengths_rejected() -> None:
    with pytest.raises(ProofError, match=r"leaf hash \[1\] is 3 bytes"):
        root_hash([LEAF_HASHES[0], b"abc"])
    with pytest.raises(ProofError):
        CompactRange().append(b"short")
    with pytest.raises(ProofError):
        MerkleTreeIndex().append(b"short")


# --- proof vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, proof: list[str]) -> None:
    want = [h(p) for p in proof]
    for got in all_inclusion_proofs(index, LEAF_HASHES[:size]):
        assert got == want
    assert (
        verify_inclusion(LEAF_HASHES[index], index, size, want, ROOTS[size - 1]) is True
    )
    assert (
        root_from_inclusion_proof(LEAF_HASHES[index], index, size, want)
        == ROOTS[size - 1]
    )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old: int, new: int, proof: list[str]) -> None:
    want = [h(p) for p in proof]
    for got in all_consistency_proofs(old, LEAF_HASHES[:new]):
        assert got == want
    assert verify_consistency(old, new, want, ROOTS[old - 1], ROOTS[new - 1]) is True


def inclusion_probes(i: int, n: int, proof: list[bytes], root: bytes, leaf: bytes):
    """The corruptions transparency-dev's verifier tests must reject."""
    yield "index - 1", (leaf, i - 1, n, proof, root)
    yield "index + 1", (leaf, i + 1, n, proof, root)
    yield "index ^ 2", (leaf, i ^ 2, n, proof, root)
    yield "size * 2", (leaf, i, n * 2, proof, root)
    yield "size / 2", (leaf, i, n // 2, proof, root)
    yield "wrong leaf", (b"WrongLeaf", i, n, proof, root)
    yield "wrong leaf 32", (leaf_hash(b"WrongLeaf"), i, n, proof, root)
    yield "empty root", (leaf, i, n, proof, EMPTY_ROOT)
    yield "random root", (leaf, i, n, proof, SOME_HASH)
    yield "trailing garbage", (leaf, i, n, [*proof, b""], root)
    yield "trailing root", (leaf, i, n, [*proof, root], root)
    yield "preceding garbage", (leaf, i, n, [b"", *proof], root)
    yield "preceding root", (leaf, i, n, [root, *proof], root)
    for k in range(len(proof)):
        yield (
            f"proof[{k}] bit 3",
            (leaf, i, n, [flip(p) if j == k else p for j, p in enumerate(proof)], root),
        )
    if proof:
        yield "removed component", (leaf, i, n, proof[:-1], root)
    if len(proof) > 1:
        yield (
            "inserted component",
            (leaf, i, n, [proof[0], SOME_HASH, *proof[1:]], root),
        )


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS[1:])
def test_inclusion_vector_corruptions_rejected(
    index: int, size: int, proof: list[str]
) -> None:
    for desc, args in inclusion_probes(
        index, size, [h(p) for p in proof], ROOTS[size - 1], LEAF_HASHES[index]
    ):
        with pytest.raises(ProofError):
            verify_inclusion(*args)
            pytest.fail(f"accepted: {desc}")


def consistency_probes(m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes):
    yield "old - 1", (m - 1, n, proof, r1, r2)
    yield "old + 1", (m + 1, n, proof, r1, r2)
    yield "old ^ 2", (m ^ 2, n, proof, r1, r2)
    yield "new * 2", (m, n * 2, proof, r1, r2)
    yield "new / 2", (m, n // 2, proof, r1, r2)
    yield "wrong old root", (m, n, proof, SOME_HASH, r2)
    yield "wrong new root", (m, n, proof, r1, SOME_HASH)
    yield "short root", (m, n, proof, b"WrongRoot", r2)
    yield "swapped roots", (m, n, proof, r2, r1)
    yield "empty proof", (m, n, [], r1, r2)
    yield "trailing garbage", (m, n, [*proof, b""], r1, r2)
    yield "trailing root1", (m, n, [*proof, r1], r1, r2)
    yield "trailing root2", (m, n, [*proof, r2], r1, r2)
    yield "preceding garbage", (m, n, [b"", *proof], r1, r2)
    yield "preceding root1", (m, n, [r1, *proof], r1, r2)
    yield "preceding root2", (m, n, [r2, *proof], r1, r2)
    yield "preceding proof[0]", (m, n, [proof[0], *proof], r1, r2)
    yield "truncated", (m, n, proof[:-1], r1, r2)
    for k in range(len(proof)):
        yield (
            f"proof[{k}] bit 4",
            (
                m,
                n,
                [flip(p, 0, 4) if j == k else p for j, p in enumerate(proof)],
                r1,
                r2,
            ),
        )


@pytest.mark.parametrize(
    ("old", "new", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]]
)
def test_consistency_vector_corruptions_rejected(
    old: int, new: int, proof: list[str]
) -> None:
    for desc, args in consistency_probes(
        old, new, [h(p) for p in proof], ROOTS[old - 1], ROOTS[new - 1]
    ):
        with pytest.raises(ProofError):
            verify_consistency(*args)
            pytest.fail(f"accepted: {desc}")


@pytest.mark.parametrize(("size", "index", "nodes", "rehash"), INCLUSION_NODES)
def test_inclusion_proof_structure(
    size: int, index: int, nodes: list[tuple[int, int]], rehash
) -> None:
    leaves = random_leaves(size)
    want = expected_from_nodes(leaves, nodes, rehash)
    for got in all_inclusion_proofs(index, leaves):
        assert got == want
    verify_inclusion(leaves[index], index, size, want, mth(leaves))


@pytest.mark.parametrize(("old", "new", "nodes", "rehash"), CONSISTENCY_NODES)
def test_consistency_proof_structure(
    old: int, new: int, nodes: list[tuple[int, int]], rehash
) -> None:
    leaves = random_leaves(new)
    want = expected_from_nodes(leaves, nodes, rehash)
    for got in all_consistency_proofs(old, leaves):
        assert got == want
    verify_consistency(old, new, want, mth(leaves[:old]), mth(leaves))


# --- edge cases -------------------------------------------------------------------------------


def test_generation_rejects_bad_arguments() -> None:
    for i, n in [(0, 0), (1, 0), (1, 1), (2, 1), (8, 7), (-1, 5)]:
        with pytest.raises(ProofError, match="out of range"):
            inclusion_proof(i, random_leaves(n))
    with pytest.raises(ProofError):
        consistency_proof(9, random_leaves(8))
    with pytest.raises(ProofError):
        consistency_proof(-1, random_leaves(8))
    index = MerkleTreeIndex(random_leaves(8))
    with pytest.raises(ProofError):
        index.inclusion_proof(0, 9)
    with pytest.raises(ProofError):
        index.consistency_proof(3, 9)
    with pytest.raises(IndexError):
        index.node(3, 1)


def test_verify_inclusion_edge_cases() -> None:
    leaf = leaf_hash(b"data")
    assert verify_inclusion(leaf, 0, 1, [], leaf)  # single leaf: root == leaf hash
    for root, lh in [(leaf, b""), (b"", leaf), (b"", b"")]:
        with pytest.raises(ProofError):
            verify_inclusion(lh, 0, 1, [], root)
    for i, n in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 3)]:
        with pytest.raises(ProofError, match="out of range"):
            verify_inclusion(SOME_HASH, i, n, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="has 1 hashes, want 3"):
        verify_inclusion(LEAF_HASHES[0], 0, 8, [SOME_HASH], ROOTS[7])


def test_verify_consistency_edge_cases() -> None:
    r1, r2 = leaf_hash(b"1"), leaf_hash(b"2")
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(0, 5, [], EMPTY_ROOT, r2)
    assert verify_consistency(3, 3, [], r1, r1)
    bad = [
        (0, 0, [], EMPTY_ROOT, r2),  # equal sizes, roots differ
        (1, 1, [], r1, r2),
        (0, 1, [], r1, r2),  # size 0 needs the empty-tree root
        (1, 0, [], r1, r2),  # time travel
        (2, 1, [], r1, r2),
        (1, 2, [], r1, r2),  # missing proof
        (
            0,
            0,
            [EMPTY_ROOT],
            EMPTY_ROOT,
            EMPTY_ROOT,
        ),  # trivial cases need an empty proof
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, r1),
        (1, 1, [EMPTY_ROOT], r1, r1),
        (1, 2, [r2], b"short", r2),
    ]
    for args in bad:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_size_is_bound_only_through_the_root() -> None:
    """Inherent to RFC 9162: a proof can verify for another size whose hash path has the
    same shape, so sizes must come from the signed checkpoint alongside the root."""
    leaves = random_leaves(6)
    root5 = mth(leaves[:5])
    assert verify_inclusion(leaves[0], 0, 6, inclusion_proof(0, leaves[:5]), root5)
    assert verify_consistency(
        2, 3, consistency_proof(1, leaves[:2]), leaves[0], mth(leaves[:2])
    )


# --- properties -------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=60, deadline=None)
@given(n=sizes, data=st.data())
def test_inclusion_property(n: int, data: st.DataObject) -> None:
    leaves = random_leaves(n, seed=n)
    root = mth(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    proofs = all_inclusion_proofs(i, leaves)
    assert proofs[0] == proofs[1] == proofs[2]
    proof = proofs[0]
    assert verify_inclusion(leaves[i], i, n, proof, root)

    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos, bit = (
            data.draw(st.integers(0, 31), label="byte"),
            data.draw(st.integers(0, 7), label="bit"),
        )
        with pytest.raises(ProofError):
            verify_inclusion(
                leaves[i],
                i,
                n,
                [flip(p, pos, bit) if j == k else p for j, p in enumerate(proof)],
                root,
            )
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], i, n, proof[:-1], root)
    pos, bit = (
        data.draw(st.integers(0, 31), label="byte2"),
        data.draw(st.integers(0, 7), label="bit2"),
    )
    with pytest.raises(ProofError):
        verify_inclusion(flip(leaves[i], pos, bit), i, n, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[i], i, n, proof, flip(root, pos, bit))
    with pytest.raises(ProofError):
        verify_inclusion(leaves[i], i, n, [*proof, SOME_HASH], root)

    j = data.draw(st.integers(-1, n), label="wrong index")
    if j != i:  # a wrong index always changes the hash path
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], j, n, proof, root)
    s = data.draw(st.integers(1, 2 * n + 1), label="wrong size")
    if s != n:  # a wrong size is rejected exactly when it changes the hash path's shape
        if i < s and directions(i, s) == directions(i, n):
            assert verify_inclusion(leaves[i], i, s, proof, root)
        else:
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], i, s, proof, root)


@settings(max_examples=60, deadline=None)
@given(n=sizes, data=st.data())
def test_consistency_property(n: int, data: st.DataObject) -> None:
    leaves = random_leaves(n, seed=n)
    m = data.draw(st.integers(0, n), label="old size")
    old_root, new_root = mth(leaves[:m]), mth(leaves)
    proofs = all_consistency_proofs(m, leaves)
    assert proofs[0] == proofs[1] == proofs[2]
    proof = proofs[0]
    assert verify_consistency(m, n, proof, old_root, new_root)
    assert MerkleTreeIndex(leaves).root(m) == old_root

    pos, bit = (
        data.draw(st.integers(0, 31), label="byte"),
        data.draw(st.integers(0, 7), label="bit"),
    )
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        with pytest.raises(ProofError):
            verify_consistency(
                m,
                n,
                [flip(p, pos, bit) if j == k else p for j, p in enumerate(proof)],
                old_root,
                new_root,
            )
        for bad in (proof[:-1], proof[1:], [*proof, SOME_HASH], [SOME_HASH, *proof]):
            with pytest.raises(ProofError):
                verify_consistency(m, n, bad, old_root, new_root)
        with pytest.raises(ProofError):
            verify_consistency(m, n, proof, new_root, old_root)
    with pytest.raises(ProofError):
        verify_consistency(m, n, proof, flip(old_root, pos, bit), new_root)
    if m:  # every tree extends the empty tree, whatever its root
        with pytest.raises(ProofError):
            verify_consistency(m, n, proof, old_root, flip(new_root, pos, bit))


@settings(max_examples=40, deadline=None)
@given(n=sizes, data=st.data())
def test_proof_node_listing(n: int, data: st.DataObject) -> None:
    """A store can fetch exactly the listed nodes and build the same proofs from them."""
    leaves = random_leaves(n, seed=n)
    index = MerkleTreeIndex(leaves)
    i, m = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n))
    fetched = {node: index.node(*node) for node in inclusion_proof_nodes(i, n)}
    assert build_inclusion_proof(
        lambda lvl, idx: fetched[(lvl, idx)], i, n
    ) == inclusion_proof(i, leaves)
    fetched = {node: index.node(*node) for node in consistency_proof_nodes(m, n)}
    assert build_consistency_proof(
        lambda lvl, idx: fetched[(lvl, idx)], m, n
    ) == consistency_proof(m, leaves)


def test_incremental_root_matches_every_prefix() -> None:
    leaves = random_leaves(300, seed=7)
    cr, index, one_by_one = CompactRange(), MerkleTreeIndex(leaves), MerkleTreeIndex()
    for n, leaf in enumerate(leaves, start=1):
        assert cr.append(leaf) == one_by_one.append(leaf) == n - 1
        want = mth(leaves[:n])
        assert cr.root() == want == index.root(n) == one_by_one.root()
        assert len(cr.nodes) == n.bit_count()
        assert index.compact_range(n) == cr
    assert root_hash(leaves) == cr.root()


@settings(max_examples=60, deadline=None)
@given(n=sizes, data=st.data())
def test_restore_continues_identically(n: int, data: st.DataObject) -> None:
    leaves = random_leaves(n, seed=n)
    k = data.draw(st.integers(0, n), label="restart at")
    first = CompactRange()
    first.extend(leaves[:k])
    size, nodes = first.size, first.nodes
    resumed, decoded = (
        CompactRange(size, nodes),
        CompactRange.from_bytes(first.to_bytes()),
    )
    assert resumed == decoded == first
    for leaf in leaves[k:]:
        assert resumed.append(leaf) == first.append(leaf)
        decoded.append(leaf)
    assert resumed == decoded == first
    assert resumed.root() == mth(leaves)

    chunks = MerkleTreeIndex(leaves[:k])
    chunks.extend(leaves[k:])
    assert chunks.root() == resumed.root()
    assert [chunks.node(0, i) for i in range(n)] == leaves


def test_restore_rejects_inconsistent_state() -> None:
    node = leaf_hash(b"x")
    for size, nodes in [(3, [node]), (4, [node, node]), (-1, []), (1, [b"short"])]:
        with pytest.raises(ProofError):
            CompactRange(size, nodes)
    with pytest.raises(ProofError):
        CompactRange.from_bytes(b"\x00" * 7)
    with pytest.raises(ProofError):
        CompactRange.from_bytes((3).to_bytes(8, "big") + node)


def test_compact_range_copy_is_independent() -> None:
    cr = CompactRange()
    cr.append_data(b"a")
    clone = cr.copy()
    clone.append_data(b"b")
    assert cr.size == 1 and clone.size == 2
    assert cr.root() == leaf_hash(b"a")
    assert clone.root() == node_hash(leaf_hash(b"a"), leaf_hash(b"b"))


def test_large_tree_proofs_roundtrip() -> None:
    """Smoke test at a size that exercises deep ragged edges."""
    leaves = [leaf_hash(os.urandom(16)) for _ in range(5000)]
    index = MerkleTreeIndex(leaves)
    root = root_hash(leaves)
    assert index.root() == root
    for i in (0, 1, 2047, 2048, 4095, 4096, 4999):
        assert verify_inclusion(leaves[i], i, 5000, index.inclusion_proof(i), root)
    for m in (1, 1000, 2048, 4096, 4999, 5000):
        assert verify_consistency(
            m, 5000, index.consistency_proof(m), index.root(m), root
        )
