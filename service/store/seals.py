"""SQL of sealing: take the pending queue, build a checkpoint's entries, store it signed."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.canonical import ACTION_RECORD, ROW_RECORD
from service.integrity.checkpoint import GENESIS_HASH, Checkpoint, body, checkpoint_hash
from service.integrity.keys import key_id

SEAL_LOCK_KEY = 0x7365616C  # "seal": one sealer at a time across every worker
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# The entries are sorted in memory: 40 bytes a row, a few MB for a busy interval.
SORT_MEMORY = "SET LOCAL work_mem = '64MB'"
# Entries of committed transactions only: an open one's entries are invisible, so they wait
# for a later checkpoint; a deleted entry is never seen again, so nothing is sealed twice.
TAKE_PENDING = """
WITH taken AS (DELETE FROM seal_pending RETURNING kind, seqs)
SELECT kind, range_agg(r)::text AS seqs FROM taken, unnest(taken.seqs) r GROUP BY kind
"""
ROW_ENTRIES = f"""
SELECT count(*) AS n, min(a.seq) AS lo, max(a.seq) AS hi,
       coalesce(string_agg(int8send(a.seq) || uuid_send(a.id)
                           || substr(sha256(record_send({ROW_RECORD})), 1, 16),
                           ''::bytea ORDER BY a.seq), ''::bytea) AS entries
FROM unnest($1::text::int8multirange) r
CROSS JOIN LATERAL (SELECT * FROM audit_log a
                    WHERE a.seq >= lower(r) AND a.seq < upper(r)) a
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
EMPTY = "{}"


async def seal_once(conn: asyncpg.Connection, key: Ed25519PrivateKey) -> Checkpoint | None:
    """Seal every committed pending row and action into one signed checkpoint.

    None when another sealer holds the lock or nothing is pending."""
    async with conn.transaction():
        if not await conn.fetchval(TRY_LOCK, SEAL_LOCK_KEY):
            return None
        pending = {r["kind"]: r["seqs"] for r in await conn.fetch(TAKE_PENDING)}
        if not pending:
            return None
        await conn.execute(SORT_MEMORY)
        rows = await conn.fetchrow(ROW_ENTRIES, pending.get("row", EMPTY))
        actions = await conn.fetchrow(ACTION_ENTRIES, pending.get("action", EMPTY))
        last = await conn.fetchrow(LAST_CHECKPOINT)
        public = key.public_key()
        checkpoint = Checkpoint(
            n=last["n"] + 1 if last else 1,
            sealed_at=datetime.now(UTC),
            prev_hash=last["hash"] if last else GENESIS_HASH,
            row_count=rows["n"],
            rows=rows["entries"],
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
            rows["lo"],
            rows["hi"],
            checkpoint.rows,
            checkpoint.action_count,
            checkpoint.actions,
            checkpoint.key_id,
            key.sign(signed),
        )
        return checkpoint


async def status(conn: asyncpg.Connection) -> asyncpg.Record:
    """When the last checkpoint was made, and how many stored rows wait for one."""
    record: asyncpg.Record = await conn.fetchrow(STATUS)
    return record


RECORD_VERIFICATION = """
INSERT INTO integrity_verification (started_at, finished_at, result) VALUES ($1, now(), $2)
RETURNING id
"""
LAST_VERIFICATION = """
SELECT id, started_at, finished_at, result FROM integrity_verification ORDER BY id DESC LIMIT 1
"""


async def record_verification(
    conn: asyncpg.Connection, *, started_at: datetime, result: dict[str, object]
) -> int:
    """Keep a verification's outcome for `GET /api/v1/admin/integrity`."""
    verification_id: int = await conn.fetchval(RECORD_VERIFICATION, started_at, result)
    return verification_id


async def last_verification(conn: asyncpg.Connection) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(LAST_VERIFICATION)
    return record


async def last_checkpoint(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """The head of the chain (number, hash, when), or None before the first seal."""
    record: asyncpg.Record | None = await conn.fetchrow(LAST_CHECKPOINT)
    return record
