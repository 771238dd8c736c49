"""The suite's fixtures: real servers (the ones named by AUDITQ_TEST_*_URL, else embedded ones),
a database and a queue of each test's own. Helpers tests import live in tests/support/."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.embedded.servers import EmbeddedStack
from service.settings import Settings
from service.store import db
from tests.support.admin_api import Tokens, make_tokens
from tests.support.servers import TEMPLATE_DB, Servers, delete_run_keys, new_queue_name, server_dir


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    redis_url = os.environ.get("AUDITQ_TEST_REDIS_URL")
    try:
        yield from _servers(redis_url, os.environ.get("AUDITQ_TEST_DATABASE_URL"))
    finally:
        if redis_url:  # a Redis not ours keeps nothing of this run (an embedded one is removed)
            delete_run_keys(redis_url)


def _servers(redis_url: str | None, postgres_url: str | None) -> Iterator[Servers]:
    if redis_url and postgres_url:
        yield Servers(redis_url, postgres_url, None)
        return
    data_dir = server_dir()
    stack = EmbeddedStack(data_dir)
    stack.start()
    try:
        # A throwaway cluster needs no durability against a machine crash: without fsync each
        # test's CREATE/DROP DATABASE and every commit skip the disk flush (2x faster a test
        # database). A killed server process loses nothing still (the OS has the writes), so
        # no test's promise changes; servers named by AUDITQ_TEST_*_URL are never touched.
        stack.postgres.psql("ALTER SYSTEM SET fsync = off")
        stack.postgres.psql("SELECT pg_reload_conf()")
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
        await admin.execute(servers.copy_database(name, template_db))
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own: its keys never meet another test's."""
    return new_queue_name()


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
