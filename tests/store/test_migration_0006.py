"""Migration 0006 brings a store of least privilege's schema to this one: the same functions,
grants, tables, triggers and indexes as a new store, idempotently."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from service.store import db, schema
from tests.store.test_migration_0002 import SHAPE, empty_databases, previous_schema, shape

__all__ = ["empty_databases"]
MIGRATION = (
    Path(__file__).resolve().parents[2] / "service" / "store" / "migrations" / "0006_erasure.sql"
)
PREVIOUS = "00b380b"  # the schema of least privilege (0002) that 0006 starts from
INDEXES = """SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
    WHERE indrelid = 'public.audit_log'::regclass ORDER BY 1"""


async def test_0006_brings_a_store_of_least_privilege_to_this_schema(
    empty_databases: list[str],
) -> None:
    old, new = empty_databases
    conn = await asyncpg.connect(old)
    try:
        await conn.execute(previous_schema(PREVIOUS))
        await conn.execute(MIGRATION.read_text())
        await conn.execute(MIGRATION.read_text())  # idempotent
        migrated_indexes = await conn.fetch(INDEXES)
    finally:
        await conn.close()
    fresh = await asyncpg.connect(new)
    try:
        await fresh.execute(schema.SCHEMA_PATH.read_text())
        made_indexes = await fresh.fetch(INDEXES)
    finally:
        await fresh.close()
    migrated, made = await shape(old), await shape(new)
    for part in SHAPE:
        assert migrated[part] == made[part], part
    assert migrated_indexes == made_indexes
    assert any("audit_log_mention_idx" in r[0] for r in made_indexes)
