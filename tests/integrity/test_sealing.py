"""Sealing with the real worker: two workers, concurrent writers, a transaction held open."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections import Counter
from datetime import date

import asyncpg
import pytest

from service.events import AuditEvent, Entity
from service.integrity.keys import load_or_create_private_key
from service.producer.client import AuditClient
from service.settings import Settings
from service.store.partitions import ensure_partitions
from tests.support.integrity import run_verify, run_verify_log, seal_all, store
from tests.support.polling import wait_for
from tests.support.stores import days_since, set_retention
from tests.support.worker import running_worker
from workers.maintenance import drop_expired_partitions

PRODUCERS = 4
EVENTS_EACH = 300


async def sealed_seqs(pg: asyncpg.Connection) -> Counter[int]:
    """How many times each row's seq is a leaf of the transparency log."""
    counts: Counter[int] = Counter()
    for (seqs,) in await pg.fetch("SELECT row_seqs::text FROM tlog_batch ORDER BY first"):
        for lo, hi in re.findall(r"\[(\d+),(\d+)\)", seqs):
            counts.update(range(int(lo), int(hi)))
    return counts


HELD_INSERT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation, received_via)
VALUES ($1, now(), 'project.updated', 'project', 'info', 'success', '{}', 'redis:test')
"""


async def test_two_workers_and_a_held_transaction_seal_every_row_exactly_once(
    settings: Settings, pg: asyncpg.Connection, role_urls: dict[str, str]
) -> None:
    settings = dataclasses.replace(
        settings, worker_database_url=role_urls["auditq_worker"], seal_interval_s=0.2
    )
    held = await asyncpg.connect(role_urls["auditq_worker"])
    async with running_worker(settings), running_worker(settings):
        # A transaction that stores rows first, then stays open while others are sealed. A
        # plain INSERT: the worker's write path would hold its dedupe lock (service/store/writes.py)
        # all that time, and the probing writes of the others would wait for it.
        transaction = held.transaction()
        await transaction.start()
        held_ids = [uuid.uuid4() for _ in range(5)]
        await held.executemany(HELD_INSERT, [(i,) for i in held_ids])
        held_seqs = {r["seq"] for r in await held.fetch("SELECT seq FROM audit_log")}

        async def produce(p: int) -> None:
            async with AuditClient.from_settings(settings) as client:
                for i in range(EVENTS_EACH):
                    event = AuditEvent(
                        action="doc.viewed", entity=Entity(type="doc", id=f"{p}-{i}")
                    )
                    await client.capture(event)

        await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))
        total = PRODUCERS * EVENTS_EACH

        async def later_rows_sealed() -> bool:
            sealed = await sealed_seqs(pg)
            return sum(sealed.values()) >= total

        await wait_for(later_rows_sealed, within_s=60)
        assert not held_seqs & set(await sealed_seqs(pg))  # open: invisible, not skipped
        await transaction.commit()
        await held.close()

        async def all_sealed() -> bool:
            return sum((await sealed_seqs(pg)).values()) >= total + len(held_ids)

        await wait_for(all_sealed, within_s=60)
    sealed = await sealed_seqs(pg)
    stored = {r["seq"] for r in await pg.fetch("SELECT seq FROM audit_log")}
    assert len(stored) == total + len(held_ids)
    assert set(sealed) == stored and set(sealed.values()) == {1}  # each row exactly once
    assert min(held_seqs) < max(stored)  # the held rows committed after later rows
    # New rows go only into the log (no v1 checkpoint since migration 0007).
    assert await pg.fetchval("SELECT count(*) FROM seal_checkpoint") == 0
    key = load_or_create_private_key(settings.seal_key_path)
    report, lines = await run_verify_log(pg, key)
    assert report.findings == 0, lines
    assert report.rows == total + len(held_ids)


async def test_retention_keeps_the_chain(
    pg: asyncpg.Connection, seal_key: object, worker_conn: asyncpg.Connection
) -> None:
    await ensure_partitions(worker_conn, months_ahead=0, today=date(2020, 1, 10))
    await ensure_partitions(worker_conn, months_ahead=0, today=date(2020, 2, 10))
    insert = (
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
        "VALUES (gen_random_uuid(), $1::text::timestamptz, 'a.b', 'a', 'info', 'success', '{}')"
    )
    for ts in ("2020-01-05T00:00:00Z", "2020-01-06T00:00:00Z", "2020-02-05T00:00:00Z"):
        await worker_conn.execute(insert, ts)
    await store(worker_conn, 3)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    await set_retention(pg, days_since(date(2020, 2, 15)))
    dropped = await drop_expired_partitions(worker_conn)
    assert dropped == ["audit_log_y2020m01"]
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0, lines
    assert report.removed_by_retention == 2
    assert any(
        line.startswith("partition audit_log_y2020m01 removed by retention at")
        and "2 rows, sealed" in line
        for line in lines
    ), lines
    # A partition removed any other way is a finding per row.
    await pg.execute("DROP TABLE audit_log_y2020m02")
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 1 and any("missing (checkpoint" in line for line in lines), lines


async def test_retention_reaches_rows_of_the_default_partition_and_keeps_the_chain(
    pg: asyncpg.Connection, seal_key: object, worker_conn: asyncpg.Connection
) -> None:
    insert = (
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
        "VALUES (gen_random_uuid(), $1::text::timestamptz, 'a.b', 'a', 'info', 'success', '{}')"
    )
    for ts in ("1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z"):  # months without a partition
        await worker_conn.execute(insert, ts)
    kept = await store(worker_conn, 2)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    # The runtime role cannot delete them itself, flag or not.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with worker_conn.transaction():
            await worker_conn.execute("SET LOCAL auditq.retention = 'on'")
            await worker_conn.execute("DELETE FROM audit_log_default")
    await set_retention(pg, 365)
    await drop_expired_partitions(worker_conn)
    left = await pg.fetchval("SELECT count(*) FROM audit_log_default WHERE action = 'a.b'")
    assert left == 0
    assert await pg.fetchval(
        "SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", kept
    ) == len(kept)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0, lines
    assert report.removed_by_retention == 2
    assert any(
        line.startswith("rows of audit_log_default before") and "2 rows, sealed" in line
        for line in lines
    ), lines
