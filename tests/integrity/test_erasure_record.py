"""The erasure design of docs/integrity.md: a row changed in place with a sealed replacement
record still verifies; the same change without one is a finding. (The anonymisation function
itself has tests of its own, tests/api/test_subjects.py; this plays its part as the owner.)"""

from __future__ import annotations

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.integrity import run_verify, seal_all, store

ERASE = """
WITH old AS (SELECT seq, auditq_row_digest(a) AS digest FROM audit_log a WHERE id = $1),
changed AS (
    UPDATE audit_log a SET entity_name = NULL, metadata = '{}' WHERE id = $1
    RETURNING a.seq, auditq_row_digest(a) AS digest
)
INSERT INTO row_replacement (action_id, seq, old_digest, new_digest)
SELECT $2, old.seq, old.digest, changed.digest FROM old JOIN changed USING (seq)
"""


async def erase(pg: asyncpg.Connection, row_id: object) -> int:
    """What the anonymisation function does for one row, in one transaction."""
    async with pg.transaction():
        action_id: int = await pg.fetchval(
            "SELECT auditq_record_action('subject.anonymised', '{\"rows\": 1}')"
        )
        await pg.execute(f"SET LOCAL auditq.erasing = '{action_id}'")
        await pg.execute(ERASE, row_id, action_id)
    return action_id


async def test_a_sealed_erasure_keeps_the_store_verifiable(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey
) -> None:
    ids = await store(pg, 5)
    await seal_all(pg, seal_key)
    action_id = await erase(pg, ids[2])
    assert await pg.fetchval("SELECT entity_name FROM audit_log WHERE id = $1", ids[2]) is None
    await seal_all(pg, seal_key)
    report, lines = await run_verify(pg, seal_key)
    assert report.findings == 0, lines
    assert lines == [f"1 row changed by anonymisation (action {action_id})"]
    assert report.anonymised == 1

    # Changed again afterwards, by hand: the replacement no longer explains it.
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        await pg.execute("UPDATE audit_log SET tenant = 'x' WHERE id = $1", ids[2])
    report, lines = await run_verify(pg, seal_key)
    assert lines == [f"row {ids[2]} altered (checkpoint 1) after its anonymisation"]


async def test_a_forged_replacement_record_is_caught(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey
) -> None:
    ids = await store(pg, 3)
    await seal_all(pg, seal_key)
    action_id = await erase(pg, ids[0])  # never sealed: a DBA's doing, an hour ago
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        await pg.execute("DELETE FROM seal_pending")
        await pg.execute(
            "UPDATE store_action SET at = now() - interval '1 hour' WHERE id = $1", action_id
        )
    _, lines = await run_verify(pg, seal_key)
    assert f"row {ids[0]} changed by an unsealed action {action_id}" in lines, lines
    assert any(line.startswith(f"action {action_id} ") for line in lines), lines
