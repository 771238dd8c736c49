"""Faults on the write path: a killed worker, a stopped PostgreSQL. Nothing may be lost.

Each test stops or kills only servers and processes it started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from service import dead_letter
from service.client import AuditClient
from service.embedded import EmbeddedPostgres
from service.events import AuditEvent, Entity
from service.settings import Settings
from tests.conftest import count_rows, running_worker, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.harness import DrainWatch, Ledger, Load, reckon, start_producers

pytestmark = pytest.mark.faults

KILL_JOB_TIMEOUT_S = 3  # a killed worker's job is rerun after this + 10 s (arq's in-progress key)


def event(i: int) -> AuditEvent:
    return AuditEvent(action="invoice.paid", entity=Entity(type="invoice", id=str(i)))


async def distinct_ids(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval("SELECT count(DISTINCT id) FROM audit_log")
        return n
    finally:
        await conn.close()


@contextlib.contextmanager
def worker_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `auditq worker` as a child process of this test."""
    env = {
        **os.environ,
        "AUDITQ_REDIS_URL": settings.redis_url or "",
        "AUDITQ_DATABASE_URL": settings.database_url or "",
        "AUDITQ_QUEUE": settings.queue,
        "AUDITQ_JOB_TIMEOUT_S": str(KILL_JOB_TIMEOUT_S),
        "AUDITQ_DATA_DIR": str(log.parent),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"], env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


async def test_worker_sigkilled_mid_load_then_restarted_stores_every_event_once(
    settings: Settings, redis: aioredis.Redis, database_url: str, tmp_path: Path
) -> None:
    total = 20_000
    client = AuditClient.from_settings(dataclasses.replace(settings, flush_max_events=250))
    for i in range(total):
        client.capture_nowait(event(i))
    await client.aclose()
    assert client.sent == total

    log = tmp_path / "worker.log"
    with worker_process(settings, log) as first:

        async def some_stored() -> bool:
            return await count_rows(database_url) > 0

        await wait_for(some_stored, within_s=30, interval=0.005)
        first.send_signal(signal.SIGKILL)  # mid-load: jobs in hand die with it
        first.wait(timeout=10)
    stored_at_kill = await count_rows(database_url)
    assert stored_at_kill < total, "the kill came too late to test anything"

    with worker_process(settings, log):

        async def all_stored() -> bool:
            return (
                await count_rows(database_url) >= total and await redis.zcard(settings.queue) == 0
            )

        await wait_for(all_stored, within_s=KILL_JOB_TIMEOUT_S + 10 + 60)
    assert await count_rows(database_url) == total
    assert await distinct_ids(database_url) == total
    assert await dead_letter.list_ids(redis, settings.queue) == []


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stopped_for_30s_mid_load_loses_nothing(
    settings: Settings,
    redis: aioredis.Redis,
    own_postgres: EmbeddedPostgres,
    ledger: Ledger,
    fault_report: FaultReport,
    mode: str,
) -> None:
    settings = dataclasses.replace(settings, database_url=own_postgres.url)
    client = AuditClient.from_settings(settings)
    load = Load(ledger)
    drain = DrainWatch(ledger, own_postgres.url)
    outage_s = 30.0

    async with running_worker(settings) as worker:
        start_producers(load, client, redis_url=settings.redis_url or "", queue=settings.queue)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(own_postgres.stop, mode)
        await asyncio.sleep(outage_s)  # steady load all through the outage
        await asyncio.to_thread(own_postgres.start)
        drain.start()
        await asyncio.sleep(2.0)
        await load.stop()
        await client.aclose()
        trips = worker.ctx["auditq"].breaker.trips
        figures = await reckon(
            f"postgres-stop-{mode}",
            ledger,
            database_url=own_postgres.url,
            redis=redis,
            queue=settings.queue,
            drain=drain,
            notes=f"worker breaker opened {trips} time(s), no attempt burnt",
        )
    if not trips:
        figures.problems.append("the outage was never noticed")
    fault_report.add(figures)
    assert not figures.problems, figures
