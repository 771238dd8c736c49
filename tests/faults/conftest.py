"""Servers of a fault test's own, and the session's report: docs/reliability.md.

Each scenario reports its figures into the session-scoped `fault_report`; when a session has
run every scenario of the matrix, the report is written to docs/reliability.md (a partial run
leaves the committed file alone).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.embedded.servers import EmbeddedPostgres, EmbeddedValkey
from service.store import db
from tests.faults.harness import Ledger, failure_lines
from tests.faults.report import FaultReport, render
from tests.support.servers import server_dir

REPORT_PATH = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


@pytest.fixture(scope="session")
def fault_report() -> Iterator[FaultReport]:
    report = FaultReport()
    yield report
    if report.complete():
        text = render(
            report.rows,
            when=datetime.now(UTC),
            cores=os.cpu_count() or 0,
            wall_s=report.busy_s,
        )
        REPORT_PATH.write_text(text)


@pytest.fixture(autouse=True)
def _timed(fault_report: FaultReport) -> Iterator[None]:
    """Add each fault test's wall time (its other fixtures' setup and teardown too)."""
    started = time.monotonic()
    yield
    fault_report.busy_s += time.monotonic() - started


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    """What this scenario's producers were told; failure lines name refused events."""
    ledger = Ledger()
    with failure_lines(ledger):
        yield ledger


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, so the test may stop or starve it."""
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


@pytest.fixture
async def own_valkey() -> AsyncIterator[EmbeddedValkey]:
    """A Valkey server of this test's own (append-only), so the test may kill it."""
    data_dir = server_dir()
    server = EmbeddedValkey(data_dir / "valkey")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def own_redis(own_valkey: EmbeddedValkey) -> AsyncIterator[aioredis.Redis]:
    # Rides out the test's own restarts of the server.
    client = aioredis.Redis.from_url(
        own_valkey.url,
        retry=Retry(ExponentialBackoff(cap=1.0), 10),
        retry_on_error=[RedisConnectionError],
    )
    yield client
    await client.aclose()
