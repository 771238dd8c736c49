"""The capture outbox of an application database: its rows, and relays that empty it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from service.capture.relay import OutboxRelay, run_relays
from service.settings import Settings

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
