"""Migration 0005 (the transparency log) is idempotent (tests/store/test_migrations.py checks
that the migrations replayed equal schema.sql)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

import service.store

MIGRATION = Path(service.store.__file__).parent / "migrations" / "0005_transparency_log.sql"


async def test_the_migration_applies_again_on_a_store_that_has_it(pg: asyncpg.Connection) -> None:
    await pg.execute(MIGRATION.read_text())
    await pg.execute(MIGRATION.read_text())
    tables = await pg.fetchval(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tlog\\_%' AND schemaname = 'public'"
    )
    assert tables == 7
