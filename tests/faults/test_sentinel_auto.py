"""AUDITQ_REDIS_WAIT_REPLICAS=auto: a primary promoted with no replica of its own still
accepts events within seconds (unreplicated, counted), where a strict count refuses them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings
from tests.support.polling import wait_for, wait_for_sync
from tests.support.sentinel_cluster import REDIS_DOWN, SentinelCluster
from tests.support.servers import server_dir
from tests.support.worker import running_worker

pytestmark = pytest.mark.faults

ACCEPTED_WITHIN_S = 10.0  # seconds after the promotion by which an event must be accepted


@pytest.fixture
async def cluster() -> AsyncIterator[SentinelCluster]:
    cluster = SentinelCluster(server_dir(), down_after_ms=1000, failover_timeout_ms=3000)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.timeout(300)
async def test_a_promoted_primary_without_a_replica_accepts_events_at_once(
    settings: Settings, cluster: SentinelCluster, pg: asyncpg.Connection
) -> None:
    settings = dataclasses.replace(settings, redis_url=cluster.url)
    auto = AuditClient.from_settings(settings)  # the default: auto, and no spool
    strict = AuditClient.from_settings(dataclasses.replace(settings, redis_wait_replicas=1))
    accepted: list[tuple[float, str]] = []
    refused_strict = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal refused_strict
        while not stop.is_set():
            event_id = await auto.capture(AuditEvent(action="doc.viewed"))
            if event_id is not None:
                accepted.append((time.monotonic(), event_id))
            if await strict.capture(AuditEvent(action="doc.viewed")) is None:
                refused_strict += 1
            await asyncio.sleep(0.02)

    async with running_worker(settings):
        producer = asyncio.create_task(produce())
        try:
            await wait_for(lambda: _has(accepted, 20), within_s=30)
            assert auto.unreplicated == 0  # a replica confirms while there is one
            old, new = cluster.primary, cluster.replica
            await asyncio.to_thread(old.kill)  # SIGKILL; it is not brought back

            def promoted() -> bool:
                return cluster.primary_port() == new.port

            await asyncio.to_thread(
                wait_for_sync, promoted, what="the replica is promoted", ignore=REDIS_DOWN
            )
            promoted_at = time.monotonic()
            refused_before = refused_strict

            async def accepted_after_promotion() -> bool:
                return any(t > promoted_at for t, _ in accepted)

            await wait_for(accepted_after_promotion, within_s=ACCEPTED_WITHIN_S)
            first = min(t for t, _ in accepted if t > promoted_at) - promoted_at
            await wait_for(lambda: _has([a for a in accepted if a[0] > promoted_at], 20))
        finally:
            stop.set()
            await producer
            await auto.aclose()
            await strict.aclose()
        assert auto.unreplicated > 0, "nothing was counted as unreplicated"
        assert refused_strict > refused_before, "a strict count accepted without a replica"
        ids = [i for _, i in accepted]

        async def stored() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", ids)
            return bool(n == len(ids))

        # Every event accepted is stored, those before the kill (a replica had them) included.
        await wait_for(stored, within_s=60)
    print(f"first event accepted {first:.2f} s after the promotion")


async def _has(items: list[tuple[float, str]], n: int) -> bool:
    return len(items) >= n
