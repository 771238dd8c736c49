"""PostgreSQL stopped under a delivering worker: the runner waits it out, takes its lock
again, and every event stored before and after reaches the receiver, in stored order."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.embedded.servers import EmbeddedPostgres
from service.settings import Settings
from service.store import db
from service.store import destinations as store
from tests.destinations.receivers import Receiver
from tests.destinations.test_delivery import SECRET, STORED_ORDER, add, capture, first_seen
from tests.support.polling import wait_for
from tests.support.servers import server_dir
from tests.support.worker import running_worker


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
        server.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_postgres_restart_under_delivery_loses_nothing(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    settings = dataclasses.replace(
        settings, database_url=own_postgres.url, destination_retry_max_s=1.0
    )
    async with Receiver(secret=SECRET) as receiver:
        pg = await db.connect(own_postgres.url)
        try:
            await add(pg, "siem", receiver.url("/hook"))
        finally:
            await pg.close()
        async with running_worker(settings):
            before = await capture(settings, 50)

            async def arrived(ids: list[str]) -> bool:
                return set(ids) <= {item["id"] for item in receiver.items}

            await wait_for(lambda: arrived(before), within_s=60)
            await asyncio.to_thread(own_postgres.stop, "immediate")
            during = await capture(settings, 50)  # queued in Redis meanwhile
            await asyncio.sleep(3)  # the outage itself: the runner's connection is gone
            await asyncio.to_thread(own_postgres.start)
            await wait_for(lambda: arrived(during), within_s=120)
        pg = await asyncpg.connect(own_postgres.url)
        try:
            stored = [row[0] for row in await pg.fetch(STORED_ORDER)]
            found = await store.get_destination(pg, "siem")
        finally:
            await pg.close()
    wanted = set(before + during)
    assert first_seen(receiver.items) == [i for i in stored if i in wanted]
    assert found is not None and found.state == "active"
