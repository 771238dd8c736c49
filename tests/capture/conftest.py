"""An application database of the test's own, beside the auditq store, on the same server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.capture.relay import OutboxRelay, run_relays
from service.settings import Settings
from tests.support.servers import Servers

ITEMS_DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    qty integer,
    ssn text,
    api_token text,
    attrs jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


@pytest.fixture
async def app_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh application database (no auditq schema), with shop.items."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = servers.database_url(name)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(ITEMS_DDL)
        finally:
            await conn.close()
        yield url
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def app(app_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(app_url)
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def relaying(settings: Settings, *urls: str) -> AsyncIterator[list[OutboxRelay]]:
    """Run the relay of `urls` in this process for the duration of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_relays(settings, urls, stop))
    holder: list[OutboxRelay] = []
    try:
        yield holder
    finally:
        stop.set()
        holder += await task


async def outbox_rows(app: asyncpg.Connection) -> int:
    n: int = await app.fetchval("SELECT count(*) FROM auditq_capture.outbox")
    return n
