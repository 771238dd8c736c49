"""Faults on the queue side: a worker killed mid-batch, Redis killed, Redis unreachable.

Each test stops or kills only servers and processes it started itself. Each ends with one
assertion: every accepted event is stored exactly once (see tests/faults/harness.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api.state import CLIENT
from service.embedded.servers import EmbeddedValkey
from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings
from tests.faults.harness import (
    DrainWatch,
    Ledger,
    Load,
    api_in_process,
    auditq_process,
    ingest_token,
    reckon,
    start_producers,
)
from tests.faults.proxy import TcpProxy
from tests.faults.report import FaultReport
from tests.support.polling import wait_for
from tests.support.servers import Servers
from tests.support.worker import count_rows, running_worker

pytestmark = pytest.mark.faults

KILL_JOB_TIMEOUT_S = 3  # a killed worker's job is rerun after this + 10 s (arq's in-progress key)
REDIS_DOWN_S = 2.0  # seconds between the SIGKILL of Redis and its restart
REDIS_CUT_S = 20.0  # seconds Redis is unreachable (the figure)


def app_client(app: web.Application) -> AuditClient:
    return app[CLIENT]


def spool_note(ledger: Ledger, *clients: AuditClient) -> str:
    spooled = sum(c.spooled for c in clients)
    replayed = sum(c.replayed for c in clients)
    return (
        f"{spooled} events spooled by the producers, {replayed} replayed; "
        f"{ledger.refused} refused to their producer (Lua while down); "
        f"slowest capture {ledger.capture_max_s * 1000:.0f} ms"
    )


def with_application_name(database_url: str, name: str) -> str:
    """The URL with an application_name, so pg_stat_activity tells the workers apart."""
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}application_name={name}"


async def test_one_of_two_workers_sigkilled_mid_batch_then_restarted(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    log = tmp_path / "workers.log"
    timeout = {"AUDITQ_JOB_TIMEOUT_S": str(KILL_JOB_TIMEOUT_S)}
    victim = dataclasses.replace(
        settings, database_url=with_application_name(database_url, "victim")
    )
    client = AuditClient.from_settings(settings)
    load = Load(ledger)
    drain = DrainWatch(ledger, database_url)
    conn = await asyncpg.connect(database_url)
    try:
        async with (
            auditq_process("worker", victim, log, **timeout) as first,
            auditq_process("worker", settings, log, **timeout),
        ):
            start_producers(load, client, redis_url=settings.redis_url or "", queue=settings.queue)

            async def stored_some() -> bool:
                return bool(await conn.fetchval("SELECT count(*) FROM audit_log") > 500)

            await wait_for(stored_some, within_s=30, what="the workers store events")
            # Hold the victim inside a batch: its INSERT waits on a table lock when it dies.
            async with conn.transaction():
                await conn.execute("LOCK TABLE audit_log IN SHARE MODE")

                async def victim_mid_batch() -> bool:
                    # Inside a transaction, pg_stat_activity is a snapshot unless cleared.
                    await conn.execute("SELECT pg_stat_clear_snapshot()")
                    return bool(
                        await conn.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'victim' AND wait_event_type = 'Lock'"
                        )
                    )

                await wait_for(victim_mid_batch, within_s=30, what="the victim is mid-batch")
                first.send_signal(signal.SIGKILL)
                await asyncio.to_thread(first.wait, 10)
                # Its connections die with it (as with a lost machine): PostgreSQL would
                # otherwise finish the dead worker's waiting INSERT once the lock goes.
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'victim'"
                )
            await asyncio.sleep(1.0)  # the worker stays dead a second, then comes back
            async with auditq_process("worker", victim, log, **timeout):
                drain.start()
                await asyncio.sleep(3.0)  # steady load on both workers again
                await load.stop()
                await client.aclose()
                figures = await reckon(
                    "worker-kill",
                    ledger,
                    database_url=database_url,
                    redis=redis,
                    queue=settings.queue,
                    drain=drain,
                    notes=f"killed job rerun after {KILL_JOB_TIMEOUT_S} + 10 s (arq)",
                )
    finally:
        await conn.close()
    fault_report.add(figures)
    assert not figures.problems, figures


async def test_redis_sigkilled_then_restarted_on_its_append_only_file(
    settings: Settings,
    own_valkey: EmbeddedValkey,
    own_redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    # docs/reliability.md: with `everysec`, Valkey may reply before its write(2) while a slow
    # background fsync runs; with `always` every acknowledged write survives the SIGKILL.
    await own_redis.config_set("appendfsync", "always")
    settings = dataclasses.replace(settings, redis_url=own_valkey.url)
    client = AuditClient.from_settings(
        dataclasses.replace(settings, spool_dir=tmp_path / "producer-spool")
    )
    load = Load(ledger)
    drain = DrainWatch(ledger, database_url)
    token = await ingest_token(database_url)
    async with (
        auditq_process("worker", settings, tmp_path / "worker.log"),
        api_in_process(settings.with_server_spool()) as (api_url, app),
    ):
        start_producers(
            load, client, redis_url=own_valkey.url, queue=settings.queue, http=(api_url, token)
        )
        await asyncio.sleep(2.0)  # steady load first
        await asyncio.to_thread(own_valkey.kill)  # SIGKILL
        await asyncio.sleep(REDIS_DOWN_S)  # the outage, under load
        await asyncio.to_thread(own_valkey.start)  # same port, same append-only file
        await own_redis.config_set("appendfsync", "always")
        drain.start()
        await asyncio.sleep(3.0)
        await load.stop()
        await client.aclose()
        figures = await reckon(
            "redis-kill",
            ledger,
            database_url=database_url,
            redis=own_redis,
            queue=settings.queue,
            drain=drain,
            notes=spool_note(ledger, client, app_client(app)),
        )
    fault_report.add(figures)
    assert not figures.problems, figures


def proxied(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_redis_unreachable_for_20s_without_restart(
    settings: Settings,
    servers: Servers,
    redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    target = urlsplit(servers.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    settings = dataclasses.replace(settings, redis_url=proxied(servers.redis_url, proxy.port))
    client = AuditClient.from_settings(
        dataclasses.replace(settings, spool_dir=tmp_path / "producer-spool")
    )
    load = Load(ledger)
    drain = DrainWatch(ledger, database_url)
    token = await ingest_token(database_url)
    try:
        async with (
            auditq_process("worker", settings, tmp_path / "worker.log"),
            api_in_process(settings.with_server_spool()) as (api_url, app),
        ):
            start_producers(
                load,
                client,
                redis_url=settings.redis_url or "",
                queue=settings.queue,
                http=(api_url, token),
            )
            await asyncio.sleep(2.0)
            # The outage, under load: a partition first (everything hangs), then refused
            # connections.
            await proxy.cut("hang")
            await asyncio.sleep(REDIS_CUT_S / 2)
            await proxy.cut("refuse")
            await asyncio.sleep(REDIS_CUT_S / 2)
            await proxy.restore()
            drain.start()
            await asyncio.sleep(2.0)
            await load.stop()
            await client.aclose()
            figures = await reckon(
                "redis-unreachable",
                ledger,
                database_url=database_url,
                redis=redis,
                queue=settings.queue,
                drain=drain,
                notes=spool_note(ledger, client, app_client(app)),
            )
    finally:
        await proxy.close()
    fault_report.add(figures)
    assert not figures.problems, figures


async def test_the_worker_outlives_redis_errors_beyond_its_retries(
    settings: Settings, database_url: str
) -> None:
    """arq ends its poll loop on the first Redis error that outlasts the command retries (so a
    long Redis outage used to stop the worker for good); ours waits, and gives back the job
    slot arq took for a job it could not start."""
    async with (
        AuditClient.from_settings(settings) as client,
        running_worker(settings) as worker,
    ):

        async def started() -> bool:
            return worker._pool is not None and "redis" in worker.ctx

        await wait_for(started, within_s=30, what="the worker starts")
        pool = worker.pool
        calls = {"poll": 0, "start": 0}

        async def poll_fails(*args: object, **kwargs: object) -> list[bytes]:
            calls["poll"] += 1
            raise RedisConnectionError("Redis is away")

        pool.zrangebyscore = poll_fails  # type: ignore[method-assign]

        async def polled_thrice() -> bool:
            return calls["poll"] >= 3

        await wait_for(polled_thrice, within_s=30, what="the worker polls on")
        del pool.zrangebyscore  # Redis is back for the poll; not yet for starting a job

        def start_fails(*args: object, **kwargs: object) -> object:
            calls["start"] += 1
            raise RedisConnectionError("Redis is away")

        pool.pipeline = start_fails  # type: ignore[method-assign]
        assert await client.capture(AuditEvent(action="auth.login")) is not None

        async def start_failed() -> bool:
            return calls["start"] >= 2

        await wait_for(start_failed, within_s=30, what="a job start fails")
        del pool.pipeline

        async def stored() -> bool:
            return await count_rows(database_url) == 1

        await wait_for(stored, within_s=30, what="the event is stored once Redis is back")
        assert not worker.main_task or not worker.main_task.done(), "the worker loop died"

        async def slot_given_back() -> bool:
            # the row commits before arq counts the job finished: wait for the count, a lost
            # slot never comes back
            return worker.job_counter == 0

        await wait_for(slot_given_back, within_s=30, what="a job slot was lost to the outage")
