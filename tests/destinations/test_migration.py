"""Migration 0003 brings a store at the previous schema to destinations: rows stored before
it are deliverable (in seq order, before every later row), and applying it again, or the
migrations after it, changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.store import db, schema
from service.store import destinations as store
from tests.support.servers import Servers

ROOT = Path(__file__).resolve().parents[2]
MIGRATION_VERSION = 3
MIGRATION = ROOT / "service" / "store" / "migrations" / "0003_destinations.sql"
INSERT_ROWS = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
SELECT gen_random_uuid(), now(), 'a.b', 'a', 'info', 'success', '{}' FROM generate_series(1, $1)
"""


def migrations(*, before: bool) -> list[schema.Migration]:
    """The migrations before 0003 (a store at them is where it starts), or after it."""
    known = [m for m in schema.known_migrations() if m.version != MIGRATION_VERSION]
    return [m for m in known if (m.version < MIGRATION_VERSION) == before]


@pytest.fixture
async def old_store(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await db.connect(servers.database_url(name))
    try:
        for migration in migrations(before=True):
            await conn.execute(migration.path.read_text())
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_rows_stored_before_the_migration_are_deliverable_first(
    old_store: asyncpg.Connection,
) -> None:
    await old_store.execute(INSERT_ROWS, 2500)
    assert await old_store.fetchval("SELECT to_regclass('delivery_log')") is None
    await old_store.execute(MIGRATION.read_text())
    await old_store.execute(MIGRATION.read_text())  # again: nothing changes
    for migration in migrations(before=False):
        await old_store.execute(migration.path.read_text())
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
