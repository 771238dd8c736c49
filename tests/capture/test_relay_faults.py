"""The relay killed at any point, its database restarted under load: every change is stored
exactly once (contract §12)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.capture import installer
from service.embedded.servers import EmbeddedPostgres, EmbeddedValkey
from service.queue.jobs import JOB_FUNCTION
from service.settings import Settings
from tests.support.capture import ITEMS_DDL, outbox_rows, relaying
from tests.support.polling import wait_for
from tests.support.queue import queued_events, queued_jobs
from tests.support.servers import server_dir
from tests.support.worker import running_worker

pytestmark = pytest.mark.faults

ROWS = 30_000
RELAY_COMMAND = (sys.executable, "-m", "service.cli.main", "capture", "relay")


def spawn_relay(settings: Settings, app_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AUDITQ_REDIS_URL": settings.redis_url or "",
        "AUDITQ_QUEUE": settings.queue,
        "AUDITQ_DATA_DIR": str(settings.data_dir),
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*RELAY_COMMAND, "--database-url", app_url],
            env=env,
            stdout=out,
            stderr=out,
        )


async def stored_summary(database_url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT entity_id) FROM audit_log "
            "WHERE action = 'items.created'"
        )
        assert row is not None
        return row[0], row[1], row[2]
    finally:
        await conn.close()


async def test_a_relay_killed_mid_drain_and_restarted_stores_every_change_exactly_once(
    settings: Settings, app_url: str, app: asyncpg.Connection, tmp_path: Path
) -> None:
    assert settings.database_url is not None
    await installer.install(app_url, "shop.items")
    await app.execute(
        "INSERT INTO shop.items (id, name, qty) "
        "SELECT g, 'n' || g, g FROM generate_series(1, $1) g",
        ROWS,
    )
    assert await outbox_rows(app) == ROWS
    log = tmp_path / "relay.log"
    kills = 0
    async with running_worker(settings):
        rng = random.Random(30)
        while kills < 4:
            before = await outbox_rows(app)
            if before == 0:
                break
            relay = spawn_relay(settings, app_url, log)
            try:

                async def drained_some(before: int = before) -> bool:
                    return await outbox_rows(app) < before

                await wait_for(drained_some, within_s=60, interval=0.01)
                # Anywhere in the next batches: between Redis accepting and the rows' delete
                # included.
                await asyncio.sleep(rng.uniform(0, 0.3))
            finally:
                relay.send_signal(signal.SIGKILL)
                await asyncio.to_thread(relay.wait, 10)
            kills += 1
        assert kills >= 2, "the outbox drained before the relay could be killed twice"
        assert await outbox_rows(app) > 0 or kills == 4
        relay = spawn_relay(settings, app_url, log)
        try:

            async def outbox_empty() -> bool:
                return await outbox_rows(app) == 0

            await wait_for(outbox_empty, within_s=120, interval=0.2)

            async def all_stored() -> bool:
                return (await stored_summary(settings.database_url or ""))[0] >= ROWS

            await wait_for(all_stored, within_s=120, interval=0.5)
        finally:
            relay.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(relay.wait, 30) == 0
    assert await stored_summary(settings.database_url) == (ROWS, ROWS, ROWS)


async def test_the_application_database_restarted_under_load_loses_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Writers commit one row at a time while the relay drains; the database is stopped and
    started twice. Every row the table holds at the end was stored as one event, no more."""
    assert settings.database_url is not None
    caplog.set_level(logging.WARNING, logger="service.capture.relay")
    data_dir = server_dir()
    server = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        server.create_database("app")
        url = server.url_for("app")
        conn = await asyncpg.connect(url)
        await conn.execute(ITEMS_DDL)
        await conn.close()
        await installer.install(url, "shop.items")
        stop_writing = asyncio.Event()
        written = 0

        async def writer(first: int) -> None:
            nonlocal written
            next_id = first
            while not stop_writing.is_set():
                try:
                    conn = await asyncpg.connect(url, timeout=5)
                except (OSError, asyncpg.PostgresError, TimeoutError):
                    await asyncio.sleep(0.05)
                    continue
                try:
                    while not stop_writing.is_set():
                        # Committed or not: the table tells at the end.
                        await conn.execute(
                            "INSERT INTO shop.items (id, name) VALUES ($1, 'w')", next_id
                        )
                        next_id += 1
                        written += 1
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,
                ):
                    next_id += 1  # that one may or may not have committed
                finally:
                    conn.terminate()

        async with running_worker(settings), relaying(settings, url):
            writers = [asyncio.create_task(writer(n * 10_000_000)) for n in (1, 2)]
            for _ in range(2):
                target = written + 300
                await wait_for(lambda t=target: _at_least(written, t), within_s=60)
                await asyncio.to_thread(server.stop, "fast")
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.start)
            target = written + 300
            await wait_for(lambda t=target: _at_least(written, t), within_s=60)
            stop_writing.set()
            await asyncio.gather(*writers)
            conn = await asyncpg.connect(url)
            try:
                expected = {str(r[0]) for r in await conn.fetch("SELECT id FROM shop.items")}

                async def outbox_empty() -> bool:
                    return await outbox_rows(conn) == 0

                await wait_for(outbox_empty, within_s=120, interval=0.2)
            finally:
                await conn.close()

            async def all_stored() -> bool:
                return (await stored_summary(settings.database_url or ""))[0] >= len(expected)

            await wait_for(all_stored, within_s=120, interval=0.5)
        store = await asyncpg.connect(settings.database_url)
        try:
            got = [
                r[0]
                for r in await store.fetch(
                    "SELECT entity_id FROM audit_log WHERE action = 'items.created'"
                )
            ]
        finally:
            await store.close()
        assert len(expected) > 900
        # The relay did lose its database (and came back), so the test attacked what it says.
        assert any("lost the database" in r.getMessage() for r in caplog.records)
        assert len(got) == len(set(got))
        assert set(got) == expected
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        server.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _at_least(value: int, target: int) -> bool:
    return value >= target


async def test_redis_restarted_under_load_loses_nothing(
    settings: Settings, app_url: str, app: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops (twice) while rows are written and relayed: the outbox keeps what Redis
    cannot take, and every row the table holds at the end is stored once."""
    assert settings.database_url is not None
    caplog.set_level(logging.WARNING, logger="service.capture.relay")
    data_dir = server_dir()
    valkey = EmbeddedValkey(data_dir)
    await asyncio.to_thread(valkey.start)
    try:
        own = dataclasses.replace(settings, redis_url=valkey.url)
        await installer.install(app_url, "shop.items")
        stop_writing = asyncio.Event()
        written = 0

        async def writer() -> None:
            nonlocal written
            conn = await asyncpg.connect(app_url)
            try:
                while not stop_writing.is_set():
                    await conn.execute(
                        "INSERT INTO shop.items (id, name) "
                        "SELECT g, 'w' FROM generate_series($1::bigint, $2::bigint) g",
                        written + 1,
                        written + 20,
                    )
                    written += 20
                    await asyncio.sleep(0.005)
            finally:
                await conn.close()

        async with running_worker(own), relaying(own, app_url):
            task = asyncio.create_task(writer())
            for _ in range(2):
                target = written + 400
                await wait_for(lambda t=target: _at_least(written, t), within_s=60)
                await asyncio.to_thread(valkey.stop)  # SIGTERM: it writes its AOF first
                target = written + 400  # rows written while Redis is away
                await wait_for(lambda t=target: _at_least(written, t), within_s=60)
                await asyncio.to_thread(valkey.start)
            stop_writing.set()
            await task

            async def outbox_empty() -> bool:
                return await outbox_rows(app) == 0

            await wait_for(outbox_empty, within_s=120, interval=0.2)

            async def all_stored() -> bool:
                return (await stored_summary(settings.database_url or ""))[0] >= written

            await wait_for(all_stored, within_s=120, interval=0.5)
        assert await stored_summary(settings.database_url) == (written, written, written)
        assert any("Redis did not accept" in r.getMessage() for r in caplog.records)
    finally:
        await asyncio.to_thread(valkey.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_batch_sent_again_after_redis_took_it_is_stored_once(
    settings: Settings, app_url: str, app: asyncpg.Connection, redis: Any
) -> None:
    """The window a SIGKILL may or may not hit, made certain: Redis has accepted a batch, the
    relay's DELETE of its rows waits (the outbox is locked), and its connection is cut. It
    sends the whole batch again; the queue holds every event twice and the store once."""
    assert settings.database_url is not None
    rows = 50
    await installer.install(app_url, "shop.items")
    await app.execute(
        "INSERT INTO shop.items (id, name) SELECT g, 'x' FROM generate_series(1, $1) g", rows
    )
    locker = await asyncpg.connect(app_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE auditq_capture.outbox IN EXCLUSIVE MODE")  # reads go on
        async with relaying(settings, app_url):
            for sent in (rows, 2 * rows):

                async def queued(sent: int = sent) -> bool:
                    return len(await queued_events(redis, settings.queue)) == sent

                await wait_for(queued, within_s=60)
                await wait_for(lambda: _relay_waits_on_a_lock(app), within_s=60)
                if sent == rows:  # cut after Redis took the batch, before its rows went
                    await app.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'auditq-capture-relay'"
                    )
            await tx.rollback()
            await wait_for(lambda: _outbox_empty(app), within_s=60)
    finally:
        await locker.close()
    events = await queued_events(redis, settings.queue)
    assert len(events) == 2 * rows and len({e["id"] for e in events}) == rows
    async with running_worker(settings):

        async def all_stored() -> bool:
            return (await stored_summary(settings.database_url or ""))[0] >= rows

        await wait_for(all_stored, within_s=60)
        await wait_for(lambda: _queue_empty(redis, settings.queue), within_s=60)
    assert await stored_summary(settings.database_url) == (rows, rows, rows)


async def _relay_waits_on_a_lock(app: asyncpg.Connection) -> bool:
    return bool(
        await app.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
            " 'auditq-capture-relay' AND wait_event_type = 'Lock'"
        )
    )


async def _outbox_empty(app: asyncpg.Connection) -> bool:
    return await outbox_rows(app) == 0


async def _queue_empty(redis: Any, queue: str) -> bool:
    """No job of events left (arq takes a job off its queue once it finished)."""
    return not [job for job in await queued_jobs(redis, queue) if job["f"] == JOB_FUNCTION]
