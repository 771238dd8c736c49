"""An arq worker of the test's own settings, in the test's process, and what it stored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from arq import Worker

from service.settings import Settings
from workers.runner import build_worker, run_until


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """Run an arq worker in this process for the duration of the block."""
    worker = build_worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_until(worker, stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


async def count_rows(database_url: str) -> int:
    """The rows the store holds now."""
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM audit_log")
        return n
    finally:
        await conn.close()
