"""The delivery log is pruned of what nobody can need: entries whose rows retention removed,
once every destination passed them. A destination far behind keeps its entries, and rows
still stored keep theirs (a backfill finds history through them)."""

from __future__ import annotations

from datetime import date

import asyncpg

from service.store import destinations as store
from service.store.partitions import ensure_partitions
from tests.support.stores import days_since, set_retention
from workers.maintenance import drop_expired_partitions

INSERT_AT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
VALUES (gen_random_uuid(), $1::text::timestamptz, 'a.b', 'a', 'info', 'success', '{}')
"""
ENTRIES_OF = """
SELECT count(*) FROM delivery_log d
WHERE EXISTS (SELECT FROM audit_log a
              WHERE a.seq BETWEEN d.seq_lo AND d.seq_hi AND a.ts < $1::text::timestamptz)
"""
ORPHANS = """
SELECT count(*) FROM delivery_log d
WHERE NOT EXISTS (SELECT FROM audit_log a WHERE a.seq BETWEEN d.seq_lo AND d.seq_hi)
"""
ROWS_WITHOUT_ENTRY = """
SELECT count(*) FROM audit_log a WHERE NOT EXISTS (
    SELECT FROM delivery_log d WHERE a.seq BETWEEN d.seq_lo AND d.seq_hi
      AND (d.seqs IS NULL OR a.seq <@ d.seqs))
"""


async def store_old_and_new(pg: asyncpg.Connection) -> None:
    """Rows of January and February 2020 (each its own statement), then January dropped."""
    await ensure_partitions(pg, months_ahead=0, today=date(2020, 1, 10))
    await ensure_partitions(pg, months_ahead=0, today=date(2020, 2, 10))
    for ts in ("2020-01-05T00:00:00Z", "2020-01-06T00:00:00Z", "2020-02-05T00:00:00Z"):
        await pg.execute(INSERT_AT, ts)
    assert await pg.fetchval(ENTRIES_OF, "2020-01-31T00:00:00Z") == 2
    await set_retention(pg, days_since(date(2020, 2, 15)))
    assert await drop_expired_partitions(pg) == ["audit_log_y2020m01"]
    assert await pg.fetchval(ORPHANS) == 2  # January's two entries point at nothing now


async def add(pg: asyncpg.Connection, name: str) -> int:
    ident = await store.add_destination(
        pg,
        name=name,
        kind="webhook",
        url="http://127.0.0.1:9/hook",
        format="json",
        filter="",
        filter_json={},
        options={"allow_private": True},
        secret=None,
        since=None,
        created_by="test",
    )
    assert ident is not None
    return ident


async def test_entries_of_rows_retention_removed_go_and_every_stored_row_keeps_its_own(
    pg: asyncpg.Connection,
) -> None:
    await store_old_and_new(pg)
    await add(pg, "siem")  # starts now: past every entry
    assert await store.prune(pg) == 2
    assert await pg.fetchval(ORPHANS) == 0
    assert await pg.fetchval(ROWS_WITHOUT_ENTRY) == 0  # history is still there to backfill
    assert await store.prune(pg) == 0


async def test_a_destination_far_behind_keeps_its_entries(pg: asyncpg.Connection) -> None:
    await store_old_and_new(pg)
    ident = await add(pg, "behind")
    first = await pg.fetchval("SELECT min(xid)::text FROM delivery_log")
    await pg.execute(store.MOVE_POSITION, ident, first, -1)  # every entry is still ahead of it
    await add(pg, "current")
    before = await pg.fetchval("SELECT count(*) FROM delivery_log")
    assert await store.prune(pg) == 0
    assert await pg.fetchval("SELECT count(*) FROM delivery_log") == before
    # Once it has passed them (here: moved to where a new one starts), they go.
    now = await store.start_position(pg, None)
    await pg.execute(store.MOVE_POSITION, ident, now.xid, now.seq)
    assert await store.prune(pg) == 2
    assert await pg.fetchval(ROWS_WITHOUT_ENTRY) == 0
