"""SQL of sealing: take the pending queue, build a checkpoint's entries, store it signed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity import merkle, note, sealstate
from service.integrity.canonical import entry_seq, iter_entries
from service.integrity.checkpoint import GENESIS_HASH, Checkpoint, body, checkpoint_hash
from service.integrity.keys import key_id
from service.integrity.leaf import action_leaf
from service.integrity.logverify import action_json
from service.integrity.sealstate import SealingStopped
from service.store import copyleaf, tlog
from service.store.db import Conn
from service.store.leaves import LEAF_COLUMNS, LEAF_ROWS, row_leaf_data
from service.store.verify_reads import ACTION_RECORD

SEAL_LOCK_KEY = 0x7365616C  # "seal": one sealer at a time across every worker
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# Entries of committed transactions only: an open one's entries are invisible, so they wait
# for a later checkpoint; a deleted entry is never seen again, so nothing is sealed twice.
TAKE_PENDING = """
WITH taken AS (DELETE FROM seal_pending RETURNING kind, seqs, entries)
SELECT kind, seqs::text AS seqs, entries FROM taken
"""
TAKE_PENDING_SEQS = """
WITH taken AS (DELETE FROM seal_pending RETURNING kind, seqs)
SELECT kind, seqs::text AS seqs FROM taken
"""
# v1 entries of rows queued without them (since migration 0007 the trigger digests nothing).
ROW_ENTRIES = """
SELECT coalesce(string_agg(int8send((x).seq) || uuid_send((x).id) || public.auditq_row_digest(x),
                           ''::bytea), ''::bytea)
FROM unnest($1::text::int8multirange) AS r
CROSS JOIN LATERAL (SELECT a FROM audit_log a WHERE a.seq >= lower(r) AND a.seq < upper(r)) s(x)
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
SELECT greatest((SELECT max(sealed_at) FROM seal_checkpoint),
                (SELECT max(signed_at) FROM tlog_checkpoint)) AS last_sealed_at,
       (SELECT coalesce(sum(upper(r) - lower(r)), 0)
        FROM seal_pending p, unnest(p.seqs) r WHERE p.kind = 'row') AS unsealed_rows
"""


@dataclass(frozen=True)
class Sealed:
    """What one seal took: rows and store actions."""

    row_count: int
    action_count: int


async def seal_once(
    conn: Conn, key: Ed25519PrivateKey, log: LogConfig | None = None
) -> Sealed | None:
    """Seal every committed pending row and action.

    With `log` (the sealer's way), they are appended to the transparency log and a C2SP
    checkpoint is signed, only when the stored tree extends the sealer's state (else
    SealingStopped, and nothing is taken). Without it, a v1 checkpoint is signed instead
    (the format of stores before the log, docs/integrity.md). None when another sealer
    holds the lock or nothing is pending."""
    async with conn.transaction():
        if not await conn.fetchval(TRY_LOCK, SEAL_LOCK_KEY):
            return None
        if log is None:
            return await _seal_v1(conn, key)
        taken = await conn.fetch(TAKE_PENDING_SEQS)
        if not taken:
            return None
        rows = _union([r["seqs"] for r in taken if r["kind"] == "row"])
        actions = _union([r["seqs"] for r in taken if r["kind"] == "action"])
        sealed, signed = await extend_log(conn, key, log, row_seqs=rows, action_ids=actions)
    if signed is not None:  # committed: now it is what this sealer signed
        sealstate.write(log.state_path, signed)
    return sealed


async def _seal_v1(conn: Conn, key: Ed25519PrivateKey) -> Sealed | None:
    """Take the pending queue and sign a v1 checkpoint of it (in the caller's transaction)."""
    taken = await conn.fetch(TAKE_PENDING)
    if not taken:
        return None
    blobs = [bytes(r["entries"]) for r in taken if r["kind"] == "row" and r["entries"]]
    unqueued = [r["seqs"] for r in taken if r["kind"] == "row" and r["entries"] is None]
    if unqueued:
        blobs.append(bytes(await conn.fetchval(ROW_ENTRIES, _union(unqueued))))
    # Every statement's entries together, sorted by seq (their first 8 bytes).
    row_entries = sorted(entry for blob in blobs for entry in iter_entries(blob))
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
    return Sealed(checkpoint.row_count, checkpoint.action_count)


@dataclass(frozen=True)
class LogConfig:
    """Where the sealer keeps its last signed checkpoint, and the log's origin line."""

    state_path: Path
    origin: str | None = None  # None: auditq/<database name>


NEW_ROWS = LEAF_ROWS  # times as datetimes (the sealer's connections keep their DateStyle)
NEW_ACTIONS = """
SELECT s.* FROM unnest($1::text::int8multirange) AS r
CROSS JOIN LATERAL (
    SELECT id, at, action, actor, detail FROM store_action
    WHERE id >= lower(r) AND id < upper(r) ORDER BY id
) s
"""
DATABASE = "SELECT current_database()"


async def check_extends(tree: tlog.Tree, size: int, state: note.Checkpoint | None) -> None:
    """Raise SealingStopped unless the stored tree of `size` extends the last signed one."""
    if state is None:
        return
    if size < state.size:
        raise SealingStopped(
            f"the store's log has {size} leaves but this sealer signed a checkpoint of "
            f"{state.size}: a cut tail or a restored older backup"
        )
    try:
        root = await tree.root(state.size)
    except tlog.TreeError as exc:
        raise SealingStopped(f"the store's log cannot be read up to {state.size}: {exc}") from None
    if root != state.root:
        raise SealingStopped(
            f"the store's log of {state.size} leaves is not the one this sealer signed "
            "(rewritten or restored from another backup)"
        )


async def extend_log(
    conn: Conn,
    key: Ed25519PrivateKey,
    log: LogConfig,
    *,
    row_seqs: str,
    action_ids: str,
) -> tuple[Sealed | None, str | None]:
    """Append the new rows and actions as leaves and sign a checkpoint: what was sealed and
    the signed note, or (None, None) when there was nothing."""
    state = sealstate.read(log.state_path)
    tree = tlog.Tree(conn)
    size = await tree.size()
    await check_extends(tree, size, state)
    seqs, hashes = await copyleaf.leaf_hashes(conn, row_seqs)
    actions = await conn.fetch(NEW_ACTIONS, action_ids)
    # Where this batch's rows land, for an erasure of one of them (only with actions).
    batch_index = {seq: size + n for n, seq in enumerate(seqs)} if actions else {}
    for action in actions:
        action_index = size + len(hashes)
        changes = await _log_erasure(
            conn,
            tree,
            action,
            action_index,
            batch_index=batch_index,
            batch_hashes=hashes,
            first=size,
        )
        hashes.append(merkle.leaf_hash(action_leaf(action_json(action, changes))))
    if not hashes:
        return None, None
    await tlog.append(conn, first=size, hashes=hashes, row_seqs=row_seqs, action_ids=action_ids)
    new_size = size + len(hashes)
    origin = log.origin or f"auditq/{await conn.fetchval(DATABASE)}"
    body_text = note.checkpoint_body(origin, new_size, await tree.root(new_size))
    signed = note.sign(body_text, origin, key)
    await conn.execute(tlog.INSERT_CHECKPOINT, new_size, signed)
    return Sealed(len(seqs), len(hashes) - len(seqs)), signed


REPLACED = "SELECT seq FROM row_replacement WHERE action_id = $1 ORDER BY seq"
ROW_BY_SEQ = f"SELECT {LEAF_COLUMNS} FROM audit_log WHERE seq = ANY($1::bigint[]) ORDER BY seq"
LAST_AFTER = """
SELECT after FROM tlog_erasure WHERE leaf_index = $1 ORDER BY action_leaf DESC LIMIT 1
"""
INSERT_ERASURE = """
INSERT INTO tlog_erasure (action_leaf, action_id, leaf_index, seq, before, after)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def _log_erasure(
    conn: Conn,
    tree: tlog.Tree,
    action: asyncpg.Record,
    action_index: int,
    *,
    batch_index: dict[int, int],
    batch_hashes: list[bytes],
    first: int,
) -> list[dict[str, Any]]:
    """For an action that changed rows in place: each row's leaf hash before and after it."""
    seqs = [r["seq"] for r in await conn.fetch(REPLACED, action["id"])]
    if not seqs:
        return []
    changes: list[dict[str, Any]] = []
    for row in await conn.fetch(ROW_BY_SEQ, seqs):
        index = batch_index.get(row["seq"])
        if index is None:
            index = await tlog.row_leaf_index(conn, row["seq"])
        if index is None:  # sealed only by a v1 checkpoint, before the log began
            continue
        after = merkle.leaf_hash(row_leaf_data(row))
        before = await conn.fetchval(LAST_AFTER, index)
        if before is None:
            before = (
                batch_hashes[index - first]
                if index >= first
                else (await tree.leaves(index, index + 1))[0]
            )
        await conn.execute(
            INSERT_ERASURE, action_index, action["id"], index, row["seq"], bytes(before), after
        )
        changes.append({"leaf_index": index, "before": bytes(before), "after": after})
    changes.sort(key=lambda c: int(c["leaf_index"]))
    return changes


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
    conn: Conn,
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


async def last_checkpoint(conn: Conn) -> asyncpg.Record | None:
    """The head of the chain (number, hash, when), or None before the first seal."""
    record: asyncpg.Record | None = await conn.fetchrow(LAST_CHECKPOINT)
    return record
