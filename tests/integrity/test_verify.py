"""Seals and `auditq verify` on a real PostgreSQL: intact passes, each kind of tampering is named.

Tampering is done as the superuser the test's database belongs to, with triggers skipped
(`session_replication_role = replica`), as a rogue DBA would."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.canonical import digest
from service.integrity.checkpoint import body_of
from service.integrity.keys import key_id
from service.store.verify_reads import ROW_RECORD
from tests.support.integrity import run_verify, seal_all, store

AS_DBA = "SET session_replication_role = replica"


async def test_an_untouched_store_verifies(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey
) -> None:
    await store(pg, 50)
    assert await seal_all(pg, seal_key) == 1
    await store(pg, 30, prefix="f")
    assert await seal_all(pg, seal_key) == 1
    report, lines = await run_verify(pg, seal_key)
    assert lines == [] and report.findings == 0
    assert (report.rows, report.checkpoints) == (80, 2)


async def test_the_schema_function_and_the_verifier_digest_alike(pg: asyncpg.Connection) -> None:
    await store(pg, 3)
    await pg.execute(
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation, ip,"
        " duration_ms, status, received_via) VALUES (gen_random_uuid(), now(), 'a.b', 'a',"
        " 'info', 'success', '{}', '::1', 0.1, 204, 'api')"
    )
    rows = await pg.fetch(
        f"SELECT auditq_row_digest(a) AS d, record_send({ROW_RECORD}) AS r FROM audit_log a"
    )
    assert len(rows) == 4
    assert all(bytes(row["d"]) == digest(bytes(row["r"])) for row in rows)


async def test_unsealed_rows_wait_and_old_ones_are_findings(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey
) -> None:
    # What migrate recorded when this session's template database was made can be older than
    # the seal interval by now: sealed first, so only the fresh rows below wait.
    await seal_all(pg, seal_key)
    await store(pg, 5)
    report, lines = await run_verify(pg, seal_key)
    assert report.findings == 0 and report.awaiting_seal == 5, lines
    async with pg.transaction():
        await pg.execute(AS_DBA)
        forged = uuid.uuid4()
        await pg.execute(
            "INSERT INTO audit_log (id, ts, received_at, action, category, severity, outcome,"
            " presentation) VALUES ($1, now() - interval '1 hour', now() - interval '1 hour',"
            " 'auth.login', 'auth', 'info', 'success', '{}')",
            forged,
        )
    await seal_all(pg, seal_key)
    report, lines = await run_verify(pg, seal_key)
    assert lines == [f"row {forged} not covered by any checkpoint"], lines


async def tampered(
    pg: asyncpg.Connection, key: Ed25519PrivateKey, *statements: str, rows_conn: object = None
) -> list[str]:
    """Run `statements` as a DBA skipping triggers, then verify both ways; return the findings."""
    async with pg.transaction():
        await pg.execute(AS_DBA)
        for statement in statements:
            await pg.execute(statement)
    report, lines = await run_verify(pg, key)
    assert report.findings == len(lines)
    streamed, streamed_lines = await run_verify(pg, key, rows_conn=rows_conn)
    assert streamed_lines == lines and streamed == report  # the COPY path finds the same
    return lines


async def test_each_kind_of_tampering_is_named(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, rows_conn: asyncpg.Connection
) -> None:
    def tampered_with(*statements: str) -> Any:
        return tampered(pg, seal_key, *statements, rows_conn=rows_conn)

    ids = await store(pg, 20)
    await seal_all(pg, seal_key)
    more = await store(pg, 10, prefix="g")
    await seal_all(pg, seal_key)
    last = await store(pg, 10, prefix="h")
    await seal_all(pg, seal_key)

    # A column altered.
    lines = await tampered_with(
        f"UPDATE audit_log SET action = 'auth.logout' WHERE id = '{ids[0]}'"
    )
    assert lines == [f"row {ids[0]} altered (checkpoint 1)"]
    # A row deleted.
    lines = await tampered_with(f"DELETE FROM audit_log WHERE id = '{ids[1]}'")
    assert f"row {ids[1]} missing (checkpoint 1)" in lines and len(lines) == 2
    # Two rows' contents swapped (everything but their place in the queue).
    a, b = ids[2], ids[3]
    lines = await tampered_with(
        f"UPDATE audit_log SET id = '00000000-0000-0000-0000-000000000000' WHERE id = '{a}'",
        f"UPDATE audit_log SET id = '{a}' WHERE id = '{b}'",
        f"UPDATE audit_log SET id = '{b}' WHERE id = '00000000-0000-0000-0000-000000000000'",
    )
    assert {f"row {a} altered (checkpoint 1)", f"row {b} altered (checkpoint 1)"} <= set(lines)
    # A checkpoint re-signed with another key.
    other = Ed25519PrivateKey.generate()
    c = await pg.fetchrow("SELECT * FROM seal_checkpoint WHERE n = 2")
    forged_body = body_of(
        n=2,
        sealed_at=c["sealed_at"],
        prev_hash=c["prev_hash"],
        row_count=c["row_count"],
        rows_hash=hashlib.sha256(c["rows"]).digest(),
        action_count=c["action_count"],
        actions_hash=hashlib.sha256(c["actions"]).digest(),
        key_id=key_id(other.public_key()),
    )
    lines = await tampered_with(
        f"UPDATE seal_checkpoint SET key_id = '\\x{key_id(other.public_key()).hex()}',"
        f" signature = '\\x{other.sign(forged_body).hex()}' WHERE n = 2",
    )
    assert any(line.startswith("checkpoint 2 signed with another key") for line in lines), lines
    # A checkpoint deleted: named, and its rows are no longer covered.
    lines = await tampered_with("DELETE FROM seal_checkpoint WHERE n = 2")
    assert "checkpoint 2 removed" in lines, lines
    assert not any(str(more[0]) in line for line in lines)  # young rows wait, not findings
    # An altered checkpoint blob (an entry changed) fails its signature.
    lines = await tampered_with("UPDATE seal_checkpoint SET row_count = row_count + 1 WHERE n = 3")
    assert "checkpoint 3 altered: its signature does not verify" in lines, lines
    assert str(last[0]) not in " ".join(lines)
