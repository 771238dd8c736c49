"""Migration 0003 brings a store at the previous schema to destinations: rows stored before
it are deliverable (in seq order, before every later row), and applying it again, or
schema.sql after it, changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.store import db, schema
from service.store import destinations as store
from tests.conftest import Servers

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "service" / "store" / "migrations" / "0003_destinations.sql"
RULE = "-- " + "=" * 87
START = f"\n{RULE}\n-- Destinations"
END = "-- (end of destinations)\n"
INSERT_ROWS = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
SELECT gen_random_uuid(), now(), 'a.b', 'a', 'info', 'success', '{}' FROM generate_series(1, $1)
"""


def previous_schema() -> str:
    """schema.sql without its destinations block: the store this migration starts from."""
    text = schema.SCHEMA_PATH.read_text()
    start = text.index(START)
    end = text.index(END, start) + len(END)
    return text[:start] + text[end:]


@pytest.fixture
async def old_store(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await db.connect(servers.database_url(name))
    try:
        await conn.execute(previous_schema())
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_the_migration_is_the_schema_block() -> None:
    text = schema.SCHEMA_PATH.read_text()
    block = text[text.index(START) : text.index(END) + len(END)]
    assert block.strip() in MIGRATION.read_text()


async def test_rows_stored_before_the_migration_are_deliverable_first(
    old_store: asyncpg.Connection,
) -> None:
    await old_store.execute(INSERT_ROWS, 2500)
    assert await old_store.fetchval("SELECT to_regclass('delivery_log')") is None
    await old_store.execute(MIGRATION.read_text())
    await old_store.execute(MIGRATION.read_text())  # again: nothing changes
    await old_store.execute(schema.SCHEMA_PATH.read_text())
    assert await old_store.fetchval("SELECT sum(n) FROM delivery_log") == 2500
    await old_store.execute(INSERT_ROWS, 10)
    old_seqs = [r[0] for r in await old_store.fetch("SELECT seq FROM audit_log ORDER BY seq")]
    everything, position = [], store.Position("0", 0)
    while True:
        rows, end = await store.next_rows(old_store, position, store.StoredFilter(), max_rows=700)
        if end == position:
            break
        everything += [row["seq"] for row in rows]
        position = end
    assert everything == old_seqs
