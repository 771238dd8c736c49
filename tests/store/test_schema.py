"""schema.sql: migrating twice is harmless; partitioned, append-only, named one way."""

import asyncpg
import pytest

from service.store import db
from service.store.rollup import fold_all


async def test_every_function_is_auditq_and_every_trigger_named_for_its_table(
    pg: asyncpg.Connection,
) -> None:
    functions = await pg.fetch(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
    )
    assert functions
    assert [f["proname"] for f in functions if not f["proname"].startswith("auditq_")] == []
    # Triggers of audit_log's partitions are its own, cloned: only the table's are named here.
    triggers = await pg.fetch(
        """SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
             AND t.tgparentid = 0"""
    )
    assert triggers
    assert [tuple(t) for t in triggers if not t["tgname"].startswith(t["relname"] + "_")] == []


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


async def test_rows_of_a_store_made_before_the_rollup_are_counted_once(
    pg: asyncpg.Connection, database_url: str
) -> None:
    insert = """INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
                SELECT gen_random_uuid(), now() - n * interval '1 hour', 'auth.login', 'auth',
                       'info', 'success', '{}' FROM generate_series(1, $1) AS n"""
    # The store as it was before the rollup (and before schema versions were recorded): no
    # trigger queues what is stored.
    await pg.execute("DROP TRIGGER audit_log_queue_rollup ON audit_log")
    await pg.execute("DROP TABLE auditq_schema_version")
    await pg.execute(insert, 30)
    await pg.execute(insert, 20)
    assert await pg.fetchval("SELECT count(*) FROM rollup_pending") == 0
    await db.migrate(database_url)
    await db.migrate(database_url)  # queued once, not on every migration
    await pg.execute(insert, 7)  # stored after: queued by the trigger
    assert await fold_all(pg) >= 2
    assert await pg.fetchval("SELECT sum(n) FROM rollup_day") == 57
