"""PostgreSQL faults under load, on a server of the test's own: stopped for 30 s (fast and
immediate), and out of connections for 10 s. Nothing may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from service.embedded.servers import EmbeddedPostgres
from service.producer.client import AuditClient
from service.settings import Settings
from tests.faults.harness import (
    DrainWatch,
    Ledger,
    Load,
    auditq_process,
    reckon,
    start_producers,
)
from tests.faults.report import FaultReport
from tests.support.worker import running_worker

pytestmark = pytest.mark.faults

STARVED_S = 10.0  # seconds the test holds every connection slot
OTHER_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> ALL($1::int[])
"""


async def take_every_slot(url: str, hogs: list[asyncpg.Connection]) -> None:
    """Open connections until the server refuses one (superuser slots included)."""
    while True:
        try:
            hogs.append(await asyncpg.connect(url, timeout=5))
        except asyncpg.TooManyConnectionsError:
            return


async def starve(url: str, hogs: list[asyncpg.Connection]) -> int:
    """Hold every slot, with the worker's connections ended; return how many were taken."""
    await take_every_slot(url, hogs)
    # The worker's pool holds connections already: end them, and take their slots before it
    # reconnects, until nothing but the test is connected.
    for _ in range(50):
        mine = [hog.get_server_pid() for hog in hogs]
        others = [row["pid"] for row in await hogs[0].fetch(OTHER_BACKENDS, mine)]
        if not others:
            break
        await hogs[0].execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", others)
        await take_every_slot(url, hogs)
    return len(hogs)


async def test_postgres_out_of_connections_for_10s(
    settings: Settings,
    redis: aioredis.Redis,
    own_postgres: EmbeddedPostgres,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    settings = dataclasses.replace(settings, database_url=own_postgres.url)
    client = AuditClient.from_settings(settings)
    load = Load(ledger)
    drain = DrainWatch(ledger, own_postgres.url)
    hogs: list[asyncpg.Connection] = []
    try:
        async with auditq_process("worker", settings, tmp_path / "worker.log"):
            start_producers(load, client, redis_url=settings.redis_url or "", queue=settings.queue)
            await asyncio.sleep(2.0)
            taken = await starve(own_postgres.url, hogs)
            await asyncio.sleep(STARVED_S)  # steady load all the while
            for hog in hogs:
                await hog.close()
            hogs.clear()
            drain.start()
            await asyncio.sleep(2.0)
            await load.stop()
            await client.aclose()
            figures = await reckon(
                "postgres-connections",
                ledger,
                database_url=own_postgres.url,
                redis=redis,
                queue=settings.queue,
                drain=drain,
                notes=f"the test held all {taken} connection slots, the worker's ended",
            )
    finally:
        for hog in hogs:
            with contextlib.suppress(Exception):
                await hog.close()
    fault_report.add(figures)
    assert not figures.problems, figures


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
