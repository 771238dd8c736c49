"""Migration 0005 (the transparency log) is the same block as schema.sql's, idempotent."""

from __future__ import annotations

from pathlib import Path

import asyncpg

import service.store

MIGRATION = Path(service.store.__file__).parent / "migrations" / "0005_transparency_log.sql"
SCHEMA = Path(service.store.__file__).parent / "schema.sql"


def test_the_migration_carries_schema_sqls_block() -> None:
    schema = SCHEMA.read_text()
    block = schema[schema.index("-- Transparency log (docs/integrity.md") :]
    block = block[: block.index("-- (end of transparency log)")]
    assert block in MIGRATION.read_text()


async def test_the_migration_applies_again_on_a_store_that_has_it(pg: asyncpg.Connection) -> None:
    await pg.execute(MIGRATION.read_text())
    await pg.execute(MIGRATION.read_text())
    tables = await pg.fetchval(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tlog\\_%' AND schemaname = 'public'"
    )
    assert tables == 7
