"""Faults on the write path: a killed worker, a stopped PostgreSQL. Nothing may be lost.

Each test stops or kills only servers and processes it started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from service import db, dead_letter
from service.client import AuditClient
from service.embedded import EmbeddedPostgres
from service.events import AuditEvent, Entity
from service.settings import Settings
from tests.conftest import count_rows, running_worker, server_dir, wait_for

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


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, so the test may stop it."""
    data_dir = server_dir()
    server = EmbeddedPostgres(data_dir / "pg")
    await asyncio.to_thread(server.start)
    await db.migrate(server.url)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stopped_for_30s_mid_load_loses_nothing(
    settings: Settings, redis: aioredis.Redis, own_postgres: EmbeddedPostgres, mode: str
) -> None:
    settings = dataclasses.replace(settings, database_url=own_postgres.url)
    client = AuditClient.from_settings(settings)
    produced = 0
    outage_s = 30.0

    async def produce(seconds: float, rate: int = 500) -> None:
        nonlocal produced
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for _ in range(rate // 20):
                client.capture_nowait(event(produced))
                produced += 1
            await asyncio.sleep(0.05)

    async with running_worker(settings) as worker:
        await produce(2)
        await asyncio.to_thread(own_postgres.stop, mode)
        await produce(outage_s)  # steady load all through the outage
        await asyncio.to_thread(own_postgres.start)
        await produce(2)
        await client.aclose()
        assert client.sent == produced

        async def all_stored() -> bool:
            return await count_rows(own_postgres.url) >= produced

        await wait_for(all_stored, within_s=90)
        state = worker.ctx["auditq"]
        assert state.breaker.trips >= 1, "the outage was never noticed"
    assert await count_rows(own_postgres.url) == produced
    assert await distinct_ids(own_postgres.url) == produced
    assert await dead_letter.list_ids(redis, settings.queue) == []
