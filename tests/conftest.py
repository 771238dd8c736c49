"""Real servers for the suite: the ones named by AUDITQ_TEST_*_URL, else embedded ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from arq import Worker

from service.api.app import create_app
from service.cli import main as cli
from service.embedded.servers import EmbeddedStack
from service.settings import Settings
from service.store import db
from tests.admin_api import Tokens, make_tokens
from workers.runner import build_worker, run_until

# Its own name where several runs share one server (AUDITQ_TEST_DATABASE_URL).
TEMPLATE_DB = os.environ.get("AUDITQ_TEST_TEMPLATE_DB", "auditq_test_template")


class Servers:
    """Where the suite's Redis and PostgreSQL are, and the stack when it is ours."""

    def __init__(self, redis_url: str, postgres_url: str, stack: EmbeddedStack | None) -> None:
        self.redis_url = redis_url
        self.postgres_url = postgres_url  # a maintenance database: databases are made from it
        self.stack = stack

    def database_url(self, name: str) -> str:
        base, _, _ = self.postgres_url.rpartition("/")
        return f"{base}/{name}"


def server_dir() -> Path:
    """A directory for a server's data that its unprivileged user can reach.

    Not under pytest's tmp_path: pytest resets /tmp/pytest-of-<user> to mode 0700, which
    locks out the system user the embedded PostgreSQL runs as (when the suite runs as root).
    """
    return Path(tempfile.mkdtemp(prefix="auditq-test-"))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    redis_url = os.environ.get("AUDITQ_TEST_REDIS_URL")
    postgres_url = os.environ.get("AUDITQ_TEST_DATABASE_URL")
    if redis_url and postgres_url:
        yield Servers(redis_url, postgres_url, None)
        return
    data_dir = server_dir()
    stack = EmbeddedStack(data_dir)
    stack.start()
    try:
        yield Servers(
            redis_url or stack.valkey.url,
            postgres_url or stack.postgres.url_for("postgres"),
            stack,
        )
    finally:
        stack.stop()
        stack.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(servers: Servers) -> AsyncIterator[str]:
    """A database with the schema applied, copied for each test that needs one."""
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        await db.migrate(servers.database_url(TEMPLATE_DB))
        yield TEMPLATE_DB
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(servers: Servers, template_db: str) -> AsyncIterator[str]:
    """A fresh database of this test's own, schema applied."""
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own: its keys never meet another test's."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(servers: Servers, database_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=servers.redis_url,
        database_url=database_url,
        data_dir=tmp_path,
        queue=queue_name,
        job_timeout_s=20.0,
    )


@pytest.fixture
async def redis(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await db.connect(database_url)
    yield conn
    await conn.close()


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, within_s: float = 30.0, interval: float = 0.05
) -> None:
    """Poll `condition` until it holds; fail the test after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(interval)


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
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM audit_log")
        return n
    finally:
        await conn.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path) -> Iterator[None]:
    """The CLI's environment points at this test's servers; its logging setup is undone."""
    assert settings.database_url and settings.redis_url
    monkeypatch.setenv("AUDITQ_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AUDITQ_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("AUDITQ_QUEUE", settings.queue)
    monkeypatch.setenv("AUDITQ_DATA_DIR", str(tmp_path))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def run_cli(*argv: str) -> int:
    """Run `auditq ARGV` as the shell would: its own event loop, in a thread of its own."""
    return await asyncio.to_thread(cli.main, list(argv))


async def queued_events(redis: aioredis.Redis, queue: str) -> list[dict[str, Any]]:
    events = []
    for task_id in await redis.zrange(queue, 0, -1):
        job = json.loads(await redis.get(b"arq:job:" + task_id))
        for segment in job["a"]:  # a merged job: one argument per producer batch
            payload = json.loads(segment)
            events += payload if isinstance(payload, list) else [payload]
    return events


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The admin API of this test's settings, served on a free port."""
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


@pytest.fixture
async def tokens(pg: asyncpg.Connection) -> Tokens:
    """One token of each role, as Authorization headers."""
    return await make_tokens(pg)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m unit` is the inner loop that starts no server: a unit test asking for one
    (the `servers` fixture, directly or through another) is a mistake, said at collection."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("unit") and "servers" in getattr(item, "fixturenames", ())
    ]
    if wrong:
        raise pytest.UsageError("marked unit but needs the servers: " + ", ".join(wrong))
