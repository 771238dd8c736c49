"""An application database of the test's own, beside the auditq store, on the same server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.capture import ITEMS_DDL
from tests.support.servers import Servers


@pytest.fixture
async def app_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh application database (no auditq schema), with shop.items."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(servers.copy_database(name, "template1"))  # CREATE DATABASE's own
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
