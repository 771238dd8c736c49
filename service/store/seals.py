"""SQL of sealing: take the pending queue, build a checkpoint's entries, store it signed."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.canonical import ACTION_RECORD, entry_seq, iter_entries
from service.integrity.checkpoint import GENESIS_HASH, Checkpoint, body, checkpoint_hash
from service.integrity.keys import key_id
from service.store.db import Conn

SEAL_LOCK_KEY = 0x7365616C  # "seal": one sealer at a time across every worker
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# Entries of committed transactions only: an open one's entries are invisible, so they wait
# for a later checkpoint; a deleted entry is never seen again, so nothing is sealed twice.
# Rows come with their entries, digested by the seal trigger in the inserting transaction.
TAKE_PENDING = """
WITH taken AS (DELETE FROM seal_pending RETURNING kind, seqs, entries)
SELECT kind, seqs::text AS seqs, entries FROM taken
"""
ACTION_ENTRIES = f"""
SELECT count(*) AS n,
       coalesce(string_agg(int8send(s.id) || '\\x00000000000000000000000000000000'::bytea
                           || substr(sha256(record_send({ACTION_RECORD})), 1, 16),
                           ''::bytea ORDER BY s.id), ''::bytea) AS entries
FROM store_action s WHERE s.id <@ $1::text::int8multirange
"""
LAST_CHECKPOINT = "SELECT n, hash, sealed_at FROM seal_checkpoint ORDER BY n DESC LIMIT 1"
INSERT_CHECKPOINT = """
INSERT INTO seal_checkpoint (n, sealed_at, prev_hash, hash, row_count, seq_min, seq_max, rows,
                             action_count, actions, key_id, signature)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
"""
STATUS = """
SELECT (SELECT max(sealed_at) FROM seal_checkpoint) AS last_sealed_at,
       (SELECT coalesce(sum(upper(r) - lower(r)), 0)
        FROM seal_pending p, unnest(p.seqs) r WHERE p.kind = 'row') AS unsealed_rows
"""


async def seal_once(conn: Conn, key: Ed25519PrivateKey) -> Checkpoint | None:
    """Seal every committed pending row and action into one signed checkpoint.

    None when another sealer holds the lock or nothing is pending."""
    async with conn.transaction():
        if not await conn.fetchval(TRY_LOCK, SEAL_LOCK_KEY):
            return None
        taken = await conn.fetch(TAKE_PENDING)
        if not taken:
            return None
        # Every statement's entries together, sorted by seq (their first 8 bytes).
        row_entries = sorted(
            entry
            for r in taken
            if r["kind"] == "row"
            for entry in iter_entries(bytes(r["entries"] or b""))
        )
        action_seqs = [r["seqs"] for r in taken if r["kind"] == "action"]
        actions = await conn.fetchrow(ACTION_ENTRIES, _union(action_seqs))
        assert actions is not None  # an aggregate: always one row
        last = await conn.fetchrow(LAST_CHECKPOINT)
        public = key.public_key()
        checkpoint = Checkpoint(
            n=last["n"] + 1 if last else 1,
            sealed_at=datetime.now(UTC),
            prev_hash=last["hash"] if last else GENESIS_HASH,
            row_count=len(row_entries),
            rows=b"".join(row_entries),
            action_count=actions["n"],
            actions=actions["entries"],
            key_id=key_id(public),
        )
        signed = body(checkpoint)
        await conn.execute(
            INSERT_CHECKPOINT,
            checkpoint.n,
            checkpoint.sealed_at,
            checkpoint.prev_hash,
            checkpoint_hash(signed),
            checkpoint.row_count,
            entry_seq(row_entries[0]) if row_entries else None,
            entry_seq(row_entries[-1]) if row_entries else None,
            checkpoint.rows,
            checkpoint.action_count,
            checkpoint.actions,
            checkpoint.key_id,
            key.sign(signed),
        )
        return checkpoint


def _union(multiranges: list[str]) -> str:
    """One multirange (as text) of several, for a parameter."""
    ranges = [r.strip("{}") for r in multiranges if r.strip("{}")]
    return "{" + ",".join(ranges) + "}"


async def status(conn: Conn) -> asyncpg.Record:
    """When the last checkpoint was made, and how many stored rows wait for one."""
    record = await conn.fetchrow(STATUS)
    assert record is not None  # aggregates: always one row
    return record


# A definer function (schema.sql): the result is kept with its integrity.verified event.
RECORD_VERIFICATION = "SELECT auditq_record_verification($1, $2::jsonb, $3::jsonb)"
LAST_VERIFICATION = """
SELECT id, started_at, finished_at, result FROM integrity_verification ORDER BY id DESC LIMIT 1
"""


async def record_verification(
    conn: asyncpg.Connection,
    *,
    started_at: datetime,
    result: dict[str, object],
    by: dict[str, object],
) -> int:
    """Keep a verification's outcome for `GET /api/v1/admin/integrity`, with its event
    (`by`: who ran it, as the event's actor, request and source)."""
    verification_id: int = await conn.fetchval(RECORD_VERIFICATION, started_at, result, by)
    return verification_id


async def last_verification(conn: Conn) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(LAST_VERIFICATION)
    return record


async def last_checkpoint(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """The head of the chain (number, hash, when), or None before the first seal."""
    record: asyncpg.Record | None = await conn.fetchrow(LAST_CHECKPOINT)
    return record
