"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

Written here rather than taken from a library: no maintained Python package implements the
RFC 9162 proof algorithms over a tree whose nodes come from storage (the proofs are built
from a `node(level, index)` function, so the tree can live in PostgreSQL as tiles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256

# A perfect subtree's hash: node(level, index) covers leaves [index << level, (index+1) << level).
NodeFn = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or its shape is wrong for the sizes given."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree head of the leaves with these hashes (MTH of RFC 9162 §2.1.1)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return fold(perfect_nodes(leaf_hashes))


def perfect_nodes(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The hashes of the perfect subtrees that make up the tree, largest (leftmost) first."""
    stack: list[tuple[int, bytes]] = []  # (level, hash), a compact range from 0
    for h in leaf_hashes:
        level, value = 0, h
        while stack and stack[-1][0] == level:
            value = node_hash(stack.pop()[1], value)
            level += 1
        stack.append((level, value))
    return [value for _, value in stack]


def fold(nodes: Sequence[bytes]) -> bytes:
    """Combine a tree's perfect subtrees (largest first) into its root: right to left."""
    value = nodes[-1]
    for left in reversed(nodes[:-1]):
        value = node_hash(left, value)
    return value


def decompose(start: int, end: int) -> list[tuple[int, int]]:
    """The aligned perfect subtrees (level, index) that cover leaves [start, end), in order."""
    out: list[tuple[int, int]] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while (1 << level) > end - start:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def range_hash(node: NodeFn, start: int, end: int) -> bytes:
    """MTH of leaves [start, end) where the range is a subtree of the tree RFC 6962 builds."""
    return fold([node(level, index) for level, index in decompose(start, end)])


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(node: NodeFn, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, bottom to top."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(range_hash(node, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(node, start, start + k))
            start += k
    proof.reverse()
    return proof


def _subproof(node: NodeFn, m: int, start: int, end: int, whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[start:end], whole) of RFC 9162 §2.1.4.1, bottom to top."""
    n = end - start
    if m == n:
        return [] if whole else [range_hash(node, start, end)]
    k = _split(n)
    if m <= k:
        return [*_subproof(node, m, start, start + k, whole), range_hash(node, start + k, end)]
    return [*_subproof(node, m - k, start + k, end, False), range_hash(node, start, start + k)]


def consistency_proof(node: NodeFn, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    return _subproof(node, old_size, 0, new_size, True)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if len(p) != HASH_BYTES:
            raise ProofError("a proof hash is not 32 bytes")
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is high")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `leaf` is at `index` of the tree of `size` with `root`."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("the inclusion proof does not lead to the checkpoint's root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless the tree (new_size, new_root) extends (old_size, old_root)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of size {new_size} cannot extend one of size {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("two different roots for the same tree size")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof or any(len(p) != HASH_BYTES for p in proof):
        raise ProofError("the consistency proof is empty or holds a hash that is not 32 bytes")
    fr, sr = _consistency_roots(old_size, new_size, old_root, list(proof))
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root")


def _consistency_roots(
    old_size: int, new_size: int, old_root: bytes, path: list[bytes]
) -> tuple[bytes, bytes]:
    """The old and new roots a consistency proof leads to (RFC 9162 §2.1.4.2, steps 2-6)."""
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the proof
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    return fr, sr


def memory_nodes(leaf_hashes: Sequence[bytes]) -> NodeFn:
    """A node function over leaf hashes held in memory (tests, small trees)."""
    cache: dict[tuple[int, int], bytes] = {}

    def node(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hashes[index]
        key = (level, index)
        value = cache.get(key)
        if value is None:
            value = node_hash(node(level - 1, 2 * index), node(level - 1, 2 * index + 1))
            cache[key] = value
        return value

    return node
