"""A checkpoint: what is signed (its body), its hash, and the link to its predecessor."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime

import msgspec

GENESIS_HASH = bytes(32)  # prev_hash of checkpoint 1
_BODY_PREFIX = b"auditq-checkpoint-v1\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One row of seal_checkpoint, blobs included."""

    n: int
    sealed_at: datetime
    prev_hash: bytes
    row_count: int
    rows: bytes
    action_count: int
    actions: bytes
    key_id: bytes


def micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def body(c: Checkpoint) -> bytes:
    """The bytes the Ed25519 signature covers (docs/integrity.md, "A checkpoint")."""
    return body_of(
        n=c.n,
        sealed_at=c.sealed_at,
        prev_hash=c.prev_hash,
        row_count=c.row_count,
        rows_hash=hashlib.sha256(c.rows).digest(),
        action_count=c.action_count,
        actions_hash=hashlib.sha256(c.actions).digest(),
        key_id=c.key_id,
    )


def body_of(
    *,
    n: int,
    sealed_at: datetime,
    prev_hash: bytes,
    row_count: int,
    rows_hash: bytes,
    action_count: int,
    actions_hash: bytes,
    key_id: bytes,
) -> bytes:
    """The body from the hashes of the blobs (what verify has before it reads a blob)."""
    return b"".join(
        (
            _BODY_PREFIX,
            struct.pack("!qq", n, micros(sealed_at)),
            prev_hash,
            struct.pack("!q", row_count),
            rows_hash,
            struct.pack("!q", action_count),
            actions_hash,
            key_id,
        )
    )


def checkpoint_hash(body_bytes: bytes) -> bytes:
    """What the next checkpoint's prev_hash must be."""
    return hashlib.sha256(body_bytes).digest()
