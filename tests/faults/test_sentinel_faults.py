"""High availability: the Redis primary SIGKILLed under load, Sentinel promotes its replica.

A Valkey primary, its replica and three Sentinels of the test's own
(tests/support/sentinel_cluster.py); a worker process, the API (HTTP ingest) and producers all
on the `redis+sentinel://` URL, so none of them is told where the primary is. Replication is
asynchronous: an enqueue the primary acknowledged can be missing on the replica it is replaced
by. The client therefore counts a batch as accepted only once a replica confirmed it (WAIT) or
it is in the producer's spool."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api.state import CLIENT
from service.connections import redis_client
from service.producer.client import AuditClient
from service.settings import Settings
from tests.faults.harness import (
    DrainWatch,
    Ledger,
    Load,
    api_in_process,
    auditq_process,
    ingest_token,
    produce_capture,
    produce_http,
    produce_nowait,
    reckon,
)
from tests.faults.report import FaultReport
from tests.support.polling import wait_for, wait_for_sync
from tests.support.sentinel_cluster import REDIS_DOWN, SentinelCluster
from tests.support.servers import server_dir

pytestmark = pytest.mark.faults

JOB_TIMEOUT_S = 5  # a job held by the dead primary's worker connection is rerun after + 10 s
RESTART_AFTER_S = 1.0  # seconds the killed primary stays dead before it is restarted


async def http_status(url: str) -> int:
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


@pytest.fixture
async def cluster() -> AsyncIterator[SentinelCluster]:
    cluster = SentinelCluster(server_dir(), down_after_ms=1000, failover_timeout_ms=3000)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_primary_sigkilled_under_load_replica_promoted(
    settings: Settings,
    cluster: SentinelCluster,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    # Strict: a batch counts only once a replica confirmed it. (The default, `auto`, also
    # accepts while the primary reports no replica connected: availability first, and a
    # failover may then lose what the old primary took alone.)
    settings = dataclasses.replace(settings, redis_url=cluster.url, redis_wait_replicas=1)
    spooling = AuditClient.from_settings(
        dataclasses.replace(settings, spool_dir=tmp_path / "producer-spool")
    )
    bare = AuditClient.from_settings(settings)  # no spool: refuses what no replica confirmed
    redis: aioredis.Redis = redis_client(
        cluster.url,
        connect_timeout=1.0,
        timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=1.0), 10),
        retry_on_error=[RedisConnectionError],
    )
    load = Load(ledger)
    drain = DrainWatch(ledger, database_url)
    token = await ingest_token(database_url)
    conn = await asyncpg.connect(database_url)
    worker_env = {"AUDITQ_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S)}
    try:
        async with (
            auditq_process("worker", settings, tmp_path / "worker.log", **worker_env),
            api_in_process(settings.with_server_spool()) as (api_url, app),
        ):
            stop = load.stopping
            load.run(produce_capture(spooling, ledger, stop))
            load.run(produce_nowait(spooling, ledger, stop))
            load.run(produce_capture(bare, ledger, stop, tasks=1, name="capture-no-spool"))
            load.run(produce_http(api_url, token, ledger, stop))

            async def stored_some() -> bool:
                return bool(await conn.fetchval("SELECT count(*) FROM audit_log") > 300)

            await wait_for(stored_some, within_s=30, what="the worker stores events")
            old, new = cluster.primary, cluster.replica
            killed_at = time.monotonic()
            await asyncio.to_thread(old.kill)  # SIGKILL, under load

            def promoted() -> bool:
                return cluster.primary_port() == new.port

            await asyncio.to_thread(
                wait_for_sync, promoted, what="the replica is promoted", ignore=REDIS_DOWN
            )
            promoted_s = time.monotonic() - killed_at
            await asyncio.sleep(max(0.0, RESTART_AFTER_S - promoted_s))
            # Back on its old data: Sentinel turns it into a replica of the new primary.
            await asyncio.to_thread(old.start)

            def rejoined() -> bool:
                return cluster.online_replicas(new) >= 1

            await asyncio.to_thread(
                wait_for_sync,
                rejoined,
                what="the old primary rejoins as a replica",
                ignore=REDIS_DOWN,
            )
            rejoined_s = time.monotonic() - killed_at
            drain.start()
            sent_before = spooling.sent

            async def api_ready() -> bool:
                # /readyz answers 200 once the API's own Redis client reaches the new primary.
                return await http_status(f"{api_url}/readyz") == 200

            await wait_for(api_ready, within_s=30, what="the API is ready on the new primary")
            await asyncio.sleep(3.0)  # steady load on the new primary and its replica
            ended_at = time.monotonic()
            await load.stop()
            gaps = {
                producer: ledger.longest_gap(producer, since=killed_at, until=ended_at)
                for producer in ("capture", "http", "capture-no-spool")
            }
            after = sum(
                1
                for producer in ("capture", "http")
                for t in ledger.accepted_at.get(producer, [])
                if t > killed_at + promoted_s
            )
            api_client: AuditClient = app[CLIENT]

            async def spools_replayed() -> bool:
                # A running producer replays its spool once a replica confirms again; a closed
                # one leaves it on disk for the next process on that spool.
                return all(c.replayed >= c.spooled for c in (spooling, api_client))

            await wait_for(spools_replayed, within_s=60, what="the spools are replayed")
            await spooling.aclose()
            await bare.aclose()
            spooled = spooling.spooled + api_client.spooled
            replayed = spooling.replayed + api_client.replayed
            figures = await reckon(
                "sentinel-failover",
                ledger,
                database_url=database_url,
                redis=redis,
                queue=settings.queue,
                drain=drain,
                notes=(
                    f"replica promoted {promoted_s:.1f} s after the kill, old primary back as "
                    f"its replica at {rejoined_s:.1f} s; longest time without acceptance: "
                    f"awaited capture {gaps['capture']:.2f} s, HTTP {gaps['http']:.2f} s (both "
                    f"spooling), capture without a spool {gaps['capture-no-spool']:.1f} s; "
                    f"{spooled} events spooled, {replayed} replayed; {ledger.refused} refused "
                    f"to their producer; slowest capture {ledger.capture_max_s * 1000:.0f} ms"
                ),
            )
    finally:
        await conn.close()
        await redis.aclose()
    fault_report.add(figures)
    assert after > 0, "nothing was accepted after the failover"
    assert spooling.sent > sent_before, "the producer did not send to the new primary again"
    assert not figures.problems, figures
