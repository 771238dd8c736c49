"""Partition upkeep on a real PostgreSQL: made ahead, dropped past retention, audited."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg

from service.store.partitions import LIST_PARTITIONS, ensure_partitions
from tests.support.stores import days_since, set_retention
from workers.maintenance import drop_expired_partitions

INSERT_AT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
VALUES (gen_random_uuid(), $1::text::timestamptz, 'a.b', 'a', 'info', 'success', '{}')
"""


async def partitions(pg: asyncpg.Connection) -> set[str]:
    return {r["relname"] for r in await pg.fetch(LIST_PARTITIONS)}


async def test_partitions_are_made_ahead_once(pg: asyncpg.Connection) -> None:
    made = await ensure_partitions(pg, months_ahead=2, today=date(2031, 11, 15))
    assert made == ["audit_log_y2031m11", "audit_log_y2031m12", "audit_log_y2032m01"]
    assert await ensure_partitions(pg, months_ahead=2, today=date(2031, 11, 15)) == []
    await pg.execute(INSERT_AT, "2031-12-24T12:00:00Z")
    where = await pg.fetchval("SELECT tableoid::regclass::text FROM audit_log WHERE action = 'a.b'")
    assert where == "audit_log_y2031m12"


async def test_a_month_already_in_the_default_partition_is_left_there(
    pg: asyncpg.Connection,
) -> None:
    await pg.execute(INSERT_AT, "2040-03-03T00:00:00Z")
    assert await ensure_partitions(pg, months_ahead=0, today=date(2040, 3, 1)) == []
    assert await pg.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_retention_drops_whole_old_partitions_and_audits_each(pg: asyncpg.Connection) -> None:
    await ensure_partitions(pg, months_ahead=0, today=date(2020, 1, 10))
    await ensure_partitions(pg, months_ahead=0, today=date(2020, 2, 10))
    for ts in ("2020-01-05T00:00:00Z", "2020-01-06T00:00:00Z", "2020-02-05T00:00:00Z"):
        await pg.execute(INSERT_AT, ts)
    # With the cutoff on 2020-02-15 only January lies wholly before it.
    await set_retention(pg, days_since(date(2020, 2, 15)))
    dropped = await drop_expired_partitions(pg)
    assert dropped == ["audit_log_y2020m01"]
    assert "audit_log_y2020m01" not in await partitions(pg)
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'a.b'") == 1
    audit = await pg.fetchrow(
        "SELECT entity_id, metadata FROM audit_log WHERE action = 'audit.partition_dropped'"
    )
    assert audit["entity_id"] == "audit_log_y2020m01"
    assert audit["metadata"]["rows"] == 2


async def test_two_workers_making_the_same_new_month_at_once_both_succeed(
    pg: asyncpg.Connection, database_url: str
) -> None:
    import asyncio

    others = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        for year in range(2101, 2111):  # ten new months, each made by two at the same instant
            day = date(year, 6, 15)
            made = await asyncio.gather(
                *(ensure_partitions(conn, months_ahead=0, today=day) for conn in others)
            )
            assert sorted(len(m) for m in made) == [0, 1], made  # one made it, none failed
            assert f"audit_log_y{year}m06" in await partitions(pg)
    finally:
        for conn in others:
            await conn.close()


async def test_retention_never_makes_writes_wait_behind_a_long_read(
    pg: asyncpg.Connection, database_url: str
) -> None:
    import asyncio
    import time

    await ensure_partitions(pg, months_ahead=0, today=date(2020, 1, 10))
    await pg.execute(INSERT_AT, "2020-01-05T00:00:00Z")
    reader, writer = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        # A long export: a snapshot reading the old month, held open.
        export = reader.transaction(isolation="repeatable_read", readonly=True)
        await export.start()
        await reader.fetch("SELECT id FROM audit_log WHERE ts < '2020-02-01'")
        await set_retention(pg, days_since(date(2020, 2, 15)))
        retention = asyncio.create_task(drop_expired_partitions(pg))
        await asyncio.sleep(0.1)  # retention is now trying to drop the partition
        started = time.monotonic()
        await writer.execute(INSERT_AT, datetime.now(UTC).isoformat())
        waited = time.monotonic() - started
        assert await retention == [], "the busy partition is left for a later run"
        # Without a lock timeout the write would wait for the whole export (here: forever).
        assert waited < 5, f"a write waited {waited:.1f} s behind retention"
        await export.rollback()
        dropped = await drop_expired_partitions(pg)
        assert dropped == ["audit_log_y2020m01"]
    finally:
        await reader.close()
        await writer.close()
