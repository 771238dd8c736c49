"""The transparency log on PostgreSQL: the sealer appends rows as leaves and signs C2SP
checkpoints only for a tree that extends the last one it signed; receipts from the store
verify offline, with auditq's checker and the independent one."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity import merkle, note, receipt
from service.integrity.sealstate import SealingStopped
from service.store import tlog
from service.store.receipts import AwaitingCheckpoint, receipt_of
from service.store.seals import LogConfig, seal_once
from tests.integrity import independent_verifier
from tests.support.integrity import store


async def _seal(pg: asyncpg.Connection, key: Ed25519PrivateKey, log: LogConfig) -> int:
    made = 0
    while await seal_once(pg, key, log) is not None:
        made += 1
    return made


def _valid(r: dict, key: Ed25519PrivateKey) -> bool:
    ours = True
    try:
        receipt.verify(r, log_key=key.public_key())
    except receipt.ReceiptError:
        ours = False
    assert ours == independent_verifier.check(r, key.public_key())
    return ours


async def test_stored_rows_become_leaves_and_their_receipts_verify_offline(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    log = LogConfig(state_path=tmp_path / "seal-state", origin="auditq/test")
    ids = []
    for batch in range(3):
        ids += await store(pg, 120, prefix=f"b{batch}")
        with pytest.raises(AwaitingCheckpoint):
            await receipt_of(pg, ids[-1])
        assert await _seal(pg, seal_key, log) == 1
    tree = tlog.Tree(pg)
    size = 360 + await pg.fetchval("SELECT count(*) FROM store_action")  # partitions made
    assert await tree.size() == size
    state = note.parse((tmp_path / "seal-state").read_text())
    assert (state.origin, state.size) == ("auditq/test", size)
    note.verify(state, "auditq/test", seal_key.public_key())
    leaves = await tree.leaves(0, size)
    assert state.root == merkle.root_of(leaves)
    for event_id in random.Random(5).sample(ids, 40):
        r = await receipt_of(pg, event_id)
        assert r is not None and r["item"]["id"] == str(event_id)
        assert _valid(r, seal_key)
        r["item"]["metadata"]["plan"] = "free"
        assert not _valid(r, seal_key)
    # Every checkpoint extends the one before (what a witness checks).
    notes = [
        note.parse(n)
        for n in await pg.fetchval("SELECT array_agg(note ORDER BY size) FROM tlog_checkpoint")
    ]
    for old, new in itertools.pairwise(notes):
        proof = await tree.consistency_proof(old.size, new.size)
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)


async def test_a_restored_older_backup_or_a_rewritten_leaf_is_never_signed_again(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    log = LogConfig(state_path=tmp_path / "seal-state", origin="auditq/test")
    await store(pg, 50, prefix="a")
    await _seal(pg, seal_key, log)
    await store(pg, 50, prefix="b")
    await _seal(pg, seal_key, log)
    signed = note.parse(log.state_path.read_text()).size
    assert signed >= 100
    # A DBA rolls the last seal's leaves and checkpoint back (as a restore of an older dump
    # would), then more rows arrive.
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        await pg.execute("DELETE FROM tlog_batch WHERE first >= 50")
        await pg.execute("DELETE FROM tlog_tile")
        await pg.execute("DELETE FROM tlog_checkpoint WHERE size > 50")
    await store(pg, 30, prefix="c")
    pending = await pg.fetchval("SELECT count(*) FROM seal_pending")
    with pytest.raises(SealingStopped, match=f"signed a checkpoint of {signed}"):
        await seal_once(pg, seal_key, log)
    assert await pg.fetchval("SELECT count(*) FROM seal_pending") == pending  # nothing taken
    assert note.parse(log.state_path.read_text()).size == signed
    # The same size again but another history: a leaf rewritten in place.
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        kept = await tlog.Tree(pg).size()
        forged = b"".join(merkle.leaf_hash(b"forged %d" % i) for i in range(signed - kept))
        await pg.execute(
            "INSERT INTO tlog_batch VALUES ($1, $2, '{}', '{}', $3)", kept, signed - kept, forged
        )
    with pytest.raises(SealingStopped, match="not the one this sealer signed"):
        await seal_once(pg, seal_key, log)


async def test_proofs_from_tiles_match_the_tree_in_memory_past_65536_leaves(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    log = LogConfig(state_path=tmp_path / "seal-state", origin="auditq/test")
    sizes = []
    for n, count in enumerate((40_000, 30_000, 700)):
        await store(pg, count, prefix=f"t{n}")
        await _seal(pg, seal_key, log)
        sizes.append(await tlog.Tree(pg).size())
    assert await pg.fetchval("SELECT count(*) FROM tlog_tile WHERE level = 1 AND width = 256") == 1
    leaves = await tlog.Tree(pg).leaves(0, sizes[-1])
    node = merkle.memory_nodes(leaves)
    rng = random.Random(7)
    for size in sizes:
        tree = tlog.Tree(pg)
        assert await tree.root(size) == merkle.root_of(leaves[:size])
        for index in rng.sample(range(size), 20):
            assert await tlog.Tree(pg).inclusion_proof(index, size) == merkle.inclusion_proof(
                node, index, size
            )
    for old in rng.sample(range(1, sizes[-1]), 10):
        assert await tlog.Tree(pg).consistency_proof(old, sizes[-1]) == merkle.consistency_proof(
            node, old, sizes[-1]
        )


async def test_the_runtime_roles_seal_and_read_the_log_but_cannot_rewrite_it(
    pg: asyncpg.Connection,
    seal_key: Ed25519PrivateKey,
    tmp_path: Path,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
) -> None:
    log = LogConfig(state_path=tmp_path / "seal-state", origin="auditq/roles")
    ids = await store(pg, 30)
    assert await seal_once(worker_conn, seal_key, log) is not None
    r = await receipt_of(api_conn, ids[0])
    assert r is not None and _valid(r, seal_key)
    for conn in (worker_conn, api_conn):
        for sql in (
            "UPDATE tlog_batch SET size = size",
            "DELETE FROM tlog_checkpoint",
            "TRUNCATE tlog_tile",
            "DELETE FROM tlog_erasure",
            "UPDATE tlog_cosignature SET line = ''",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute("INSERT INTO tlog_checkpoint (size, note) VALUES (0, '')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("DELETE FROM tlog_batch")  # even the owner: its triggers refuse
