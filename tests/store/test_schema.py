"""schema.sql: idempotent, partitioned, append-only."""

import asyncpg
import pytest

from service.store import db


async def test_schema_applies_twice(database_url: str) -> None:
    await db.migrate(database_url)
    await db.migrate(database_url)


async def test_rows_are_append_only(pg: asyncpg.Connection) -> None:
    await pg.execute(
        """INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
           VALUES (gen_random_uuid(), now(), 'auth.login', 'auth', 'info', 'success', '{}')"""
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("UPDATE audit_log SET action = 'auth.logout'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("DELETE FROM audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("TRUNCATE audit_log")
    # The old escape is gone: no setting lets a DELETE through.
    async with pg.transaction():
        await pg.execute("SET LOCAL auditq.maintenance = 'on'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pg.execute("DELETE FROM audit_log")


async def test_full_text_column_covers_metadata_and_changes(pg: asyncpg.Connection) -> None:
    await pg.execute(
        """INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation,
                                  metadata, changes)
           VALUES (gen_random_uuid(), now(), 'config.updated', 'config', 'info', 'success', '{}',
                   '{"note": "rotated the flamingo key"}', '[{"field": "mode", "new": "zebra"}]')"""
    )
    for word in ("flamingo", "zebra"):
        found = await pg.fetchval(
            "SELECT count(*) FROM audit_log WHERE search @@ plainto_tsquery('simple', $1)", word
        )
        assert found == 1
