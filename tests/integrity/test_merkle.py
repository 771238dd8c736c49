"""RFC 6962 / 9162 tree hashing and proofs, against the known vectors and brute force."""

from __future__ import annotations

import hashlib

import pytest

from service.integrity import merkle
from service.integrity.logverify import prefix_roots

# The eight leaves, roots and proofs of the RFC 6962 test vectors (Certificate Transparency,
# Trillian, transparency-dev/merkle).
LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f")
]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, proof)
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
CONSISTENCY = [  # (old size, new size, proof)
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

HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]
NODE = merkle.memory_nodes(HASHES)


def _mth(hashes: list[bytes]) -> bytes:
    """MTH by the RFC's recursive definition, the reference for brute force."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def test_roots_match_the_known_vectors() -> None:
    assert merkle.root_of([]) == hashlib.sha256(b"").digest()
    for n in range(1, 9):
        assert merkle.root_of(HASHES[:n]).hex() == ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_known_vectors(index: int, size: int, proof: list[str]) -> None:
    made = merkle.inclusion_proof(NODE, index, size)
    assert [p.hex() for p in made] == proof
    root = bytes.fromhex(ROOTS[size - 1])
    merkle.verify_inclusion(index, size, HASHES[index], made, root)
    for wrong in (index + 1, index ^ 2):
        if wrong < size:
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(wrong, size, HASHES[index], made, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, size * 2, HASHES[index], made, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, size, HASHES[index], [*made, root], root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, size, HASHES[index], made[:-1], root)
    for i in range(len(made)):
        flipped = list(made)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(index, size, HASHES[index], flipped, root)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_known_vectors(old: int, new: int, proof: list[str]) -> None:
    made = merkle.consistency_proof(NODE, old, new)
    assert [p.hex() for p in made] == proof
    old_root, new_root = bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    merkle.verify_consistency(old, new, old_root, new_root, made)
    probes = [
        (old - 1, new, old_root, new_root, made),
        (old + 1, new, old_root, new_root, made),
        (old, new * 2, old_root, new_root, made),
        (old, new, new_root, old_root, made),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, [*made, old_root]),
        (old, new, old_root, new_root, [made[0], *made]),
        (old, new, old_root, new_root, made[:-1]),
    ]
    for i in range(len(made)):
        flipped = list(made)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((old, new, old_root, new_root, flipped))
    for args in probes:
        if 0 < args[0] <= args[1]:
            with pytest.raises(merkle.ProofError):
                merkle.verify_consistency(*args)


def test_every_proof_of_trees_up_to_70_leaves_verifies_against_brute_force() -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    node = merkle.memory_nodes(hashes)
    roots = [merkle.root_of(hashes[:n]) for n in range(71)]
    for n in range(1, 71):
        assert roots[n] == _mth(hashes[:n])
        for i in range(n):
            merkle.verify_inclusion(i, n, hashes[i], merkle.inclusion_proof(node, i, n), roots[n])
        for m in range(0, n + 1):
            proof = merkle.consistency_proof(node, m, n)
            merkle.verify_consistency(m, n, roots[m], roots[n], proof)
            if 0 < m < n:
                with pytest.raises(merkle.ProofError):  # another old tree of the same size
                    merkle.verify_consistency(m, n, merkle.leaf_hash(b"x"), roots[n], proof)


def test_a_shrinking_tree_or_two_roots_for_one_size_never_verify() -> None:
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(5, 4, bytes.fromhex(ROOTS[4]), bytes.fromhex(ROOTS[3]), [])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(4, 4, bytes.fromhex(ROOTS[3]), bytes.fromhex(ROOTS[4]), [])


def test_decompose_covers_a_range_with_aligned_perfect_subtrees() -> None:
    assert merkle.decompose(0, 7) == [(2, 0), (1, 2), (0, 6)]
    for start in range(0, 40):
        for end in range(start, 80):
            covered = []
            for level, index in merkle.decompose(start, end):
                assert (index << level) >= start
                covered.extend(range(index << level, (index + 1) << level))
            assert covered == list(range(start, end))


@pytest.mark.unit
def test_the_verifiers_prefix_roots_are_the_roots_of_each_prefix() -> None:
    """logverify.prefix_roots (every checkpoint's root, in one pass over the leaves) against
    root_of each prefix: every size up to 70 leaves, an odd one, and sizes past the end."""
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(70)]
    sizes = set(range(71)) | {100}
    roots = prefix_roots(leaves, sizes)
    assert roots == {n: merkle.root_of(leaves[:n]) for n in range(71)}
