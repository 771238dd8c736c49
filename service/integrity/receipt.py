"""An event's receipt: its item, its inclusion proof and the signed checkpoint; checked offline."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.integrity import merkle, note
from service.integrity.leaf import canonical, row_leaf


class ReceiptError(ValueError):
    """A receipt is malformed or does not prove what it claims (one line, for the user)."""


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def build(
    *,
    item_json: dict[str, Any],
    leaf_index: int,
    tree_size: int,
    inclusion_proof: list[bytes],
    checkpoint: str,
    erasures: Sequence[tuple[dict[str, Any], int, list[bytes]]] = (),
) -> dict[str, Any]:
    """A receipt (contract §8); `erasures`: (action leaf, its index, its proof), oldest first."""
    receipt: dict[str, Any] = {
        "item": item_json,
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "inclusion_proof": _b64(inclusion_proof),
        "checkpoint": checkpoint,
    }
    if erasures:
        receipt["erasures"] = [
            {"leaf": leaf, "leaf_index": index, "inclusion_proof": _b64(proof)}
            for leaf, index, proof in erasures
        ]
    return receipt


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReceiptError(f"{what} is not a list of base64 hashes")
    try:
        out = [base64.b64decode(v, validate=True) for v in value]
    except binascii.Error:
        raise ReceiptError(f"{what} holds a hash that is not base64") from None
    if any(len(h) != merkle.HASH_BYTES for h in out):
        raise ReceiptError(f"{what} holds a hash that is not 32 bytes")
    return out


def _index(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReceiptError(f"{what} is not a non-negative integer")
    return value


def _hash(value: Any, what: str) -> bytes:
    return _hashes([value], what)[0]


def _checkpoint(
    receipt: dict[str, Any],
    log_key: Ed25519PublicKey,
    witness_keys: Sequence[tuple[str, Ed25519PublicKey]],
) -> note.Checkpoint:
    try:
        checkpoint = note.parse(receipt["checkpoint"])
        note.verify(checkpoint, checkpoint.origin, log_key)
        for name, key in witness_keys:
            note.verify_cosignature(checkpoint, name, key)
    except note.NoteError as exc:
        raise ReceiptError(f"checkpoint: {exc}") from None
    return checkpoint


def _undo_erasure(
    erasure: Any, what: str, *, index: int, leaf: bytes, size: int, root: bytes
) -> bytes:
    """The row's leaf hash before `erasure`, which must name `leaf` at `index` as after it."""
    if not isinstance(erasure, dict) or not isinstance(erasure.get("leaf"), dict):
        raise ReceiptError(f"{what} has no action leaf")
    action = erasure["leaf"]
    rows = action.get("rows")
    if action.get("kind") != "action" or not isinstance(rows, list):
        raise ReceiptError(f"{what}'s leaf is not an action that changed rows")
    change = next((r for r in rows if isinstance(r, dict) and r.get("leaf_index") == index), None)
    if change is None:
        raise ReceiptError(f"{what} does not name leaf {index}")
    if _hash(change.get("after"), f"{what}'s after") != leaf:
        raise ReceiptError(f"{what}: the item is not the row as that action left it")
    try:
        merkle.verify_inclusion(
            _index(erasure.get("leaf_index"), f"{what}'s leaf_index"),
            size,
            merkle.leaf_hash(canonical(action)),
            _hashes(erasure.get("inclusion_proof"), f"{what}'s inclusion_proof"),
            root,
        )
    except merkle.ProofError as exc:
        raise ReceiptError(f"{what}: {exc}") from None
    return _hash(change.get("before"), f"{what}'s before")


def verify(
    receipt: Any,
    *,
    log_key: Ed25519PublicKey,
    witness_keys: Sequence[tuple[str, Ed25519PublicKey]] = (),
) -> note.Checkpoint:
    """Check a receipt with only public keys; return its checkpoint or raise ReceiptError."""
    if not isinstance(receipt, dict):
        raise ReceiptError("a receipt is a JSON object")
    for field in ("item", "leaf_index", "tree_size", "inclusion_proof", "checkpoint"):
        if field not in receipt:
            raise ReceiptError(f"the receipt has no {field!r}")
    if not isinstance(receipt["item"], dict) or not isinstance(receipt["checkpoint"], str):
        raise ReceiptError("the receipt's item is not an object or its checkpoint not text")
    checkpoint = _checkpoint(receipt, log_key, witness_keys)
    size = _index(receipt["tree_size"], "tree_size")
    if size != checkpoint.size:
        raise ReceiptError(
            f"the receipt's tree_size {size} is not the checkpoint's size {checkpoint.size}"
        )
    index = _index(receipt["leaf_index"], "leaf_index")
    leaf = merkle.leaf_hash(row_leaf(receipt["item"]))
    erasures = receipt.get("erasures") or []
    if not isinstance(erasures, list):
        raise ReceiptError("the receipt's erasures is not a list")
    # Newest erasure first: each turns the leaf it names from `before` into `after`.
    for n in reversed(range(len(erasures))):
        leaf = _undo_erasure(
            erasures[n], f"erasure {n}", index=index, leaf=leaf, size=size, root=checkpoint.root
        )
    try:
        merkle.verify_inclusion(
            index,
            size,
            leaf,
            _hashes(receipt["inclusion_proof"], "inclusion_proof"),
            checkpoint.root,
        )
    except merkle.ProofError as exc:
        raise ReceiptError(f"item: {exc} (the item or its proof was changed)") from None
    return checkpoint
