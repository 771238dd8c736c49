"""One real app (API + worker) on a TCP port and one Chromium for the console's browser tests."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web

from service.api.app import create_app
from service.cli.demo import demo_event
from service.events import Actor, AuditEvent, Change, Entity, Presentation, RequestInfo
from service.producer.client import AuditClient
from service.settings import Settings
from service.store import db
from service.store.tokens import create_token
from tests.support.console import (
    XSS_IMG,
    XSS_SCRIPT,
    Stack,
    Tab,
    open_tab,
)
from tests.support.polling import wait_for
from tests.support.servers import Servers, new_queue_name
from tests.support.worker import running_worker

# Debian's package; AUDITQ_CHROMIUM names another build (never one of `playwright install`).
CHROMIUM = Path(os.environ.get("AUDITQ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO_EVENTS = 240  # spread over two weeks: the statistics and lists have something to show


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The browser, or a skip (a failure when CI_REQUIRE_BROWSER=1) before any server starts."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing: install Debian's chromium to run the console's browser tests"
    if os.environ.get("CI_REQUIRE_BROWSER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _seed_events() -> tuple[list[AuditEvent], AuditEvent, AuditEvent]:
    rng = random.Random(17)
    now = datetime.now(UTC)
    events = [
        msgspec.structs.replace(
            demo_event(rng), ts=now - timedelta(days=rng.random() * 13, minutes=1)
        )
        for _ in range(DEMO_EVENTS)
    ]
    project = Entity(type="project", id="p-console", name="Apollo")
    ada = Actor(id="u-ada", type="user", name="Ada Lovelace", email="ada@example.com")
    history = [
        AuditEvent(
            action="project.created",
            ts=now - timedelta(hours=3),
            severity="notice",
            actor=ada,
            entity=project,
            tenant="acme",
        ),
        AuditEvent(
            action="project.settings.updated",
            ts=now - timedelta(hours=2),
            actor=ada,
            entity=project,
            tenant="acme",
            changes=[
                Change(field="visibility", old="private", new="public"),
                Change(field="retention_days", old=30, new=90),
            ],
            request=RequestInfo(
                id="req-console-1", ip="203.0.113.9", user_agent="Firefox", method="PATCH"
            ),
        ),
    ]
    xss = AuditEvent(
        action="xss.attempt",
        ts=now - timedelta(days=5),  # off the first page: the README's screenshot shows others
        severity="critical",
        actor=Actor(id="u-xss", type="user", name=XSS_IMG, email="x@example.com"),
        entity=Entity(type="note", id="n-xss", name=XSS_SCRIPT),
        tenant=XSS_SCRIPT,
        changes=[Change(field="body", old=XSS_SCRIPT, new=XSS_IMG)],
        metadata={"html": XSS_IMG},
        presentation=Presentation(code="audit.xss.attempt", params={"p": XSS_SCRIPT}),
    )
    return [*events, *history], history[1], xss


@pytest.fixture(scope="module")
async def stack(chromium: Path, servers: Servers, template_db: str) -> AsyncIterator[Stack]:
    """The API and a worker on real servers, a TCP port, tokens and seeded events."""
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    await admin.execute(servers.copy_database(name, template_db))
    data_dir = Path(tempfile.mkdtemp(prefix="auditq-console-"))
    settings = Settings(
        redis_url=servers.redis_url,
        database_url=servers.database_url(name),
        data_dir=data_dir,
        queue=new_queue_name(),
        job_timeout_s=20.0,
    )
    conn = await db.connect(servers.database_url(name))
    admin_token = await create_token(conn, name="console-admin", role="admin")
    reader_token = await create_token(conn, name="console-reader", role="reader")
    await conn.close()
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with running_worker(settings):
            events, diff, xss = _seed_events()
            ids = []
            async with AuditClient.from_settings(settings) as client:
                for event in [*events, xss]:
                    event_id = await client.capture(event)
                    assert event_id is not None
                    ids.append(event_id)
            assert settings.database_url
            database_url = settings.database_url

            async def all_stored() -> bool:
                # These events' own ids: a row count would also count the store's own
                # events (the tokens made above), and could be reached before the last.
                conn = await asyncpg.connect(database_url)
                try:
                    stored = await conn.fetchval(
                        "SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", ids
                    )
                finally:
                    await conn.close()
                return bool(stored == len(ids))

            await wait_for(all_stored)
            conn = await asyncpg.connect(database_url)
            diff_id = await conn.fetchval(
                "SELECT id::text FROM audit_log WHERE action = $1 AND entity_id = 'p-console'",
                diff.action,
            )
            xss_id = await conn.fetchval(
                "SELECT id::text FROM audit_log WHERE action = 'xss.attempt'"
            )
            await conn.close()
            yield Stack(
                url=f"http://{host}:{port}",
                settings=settings,
                admin_token=admin_token,
                reader_token=reader_token,
                diff_event_id=diff_id,
                xss_event_id=xss_id,
                entity=("project", "p-console"),
            )
    finally:
        await runner.cleanup()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
async def browser(chromium: Path, stack: Stack) -> AsyncIterator[Any]:
    """One headless Chromium for the module (Debian's; `playwright install` is never run)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def tab(browser: Any, stack: Stack) -> AsyncIterator[Tab]:
    """A fresh tab (own session storage); fails the test on a console error or a foreign request."""
    async for opened in open_tab(browser, stack, viewport={"width": 1280, "height": 800}):
        yield opened


@pytest.fixture
async def phone(browser: Any, stack: Stack) -> AsyncIterator[Tab]:
    """The same, 390 px wide, as a phone."""
    viewport = {"width": 390, "height": 844}
    async for opened in open_tab(browser, stack, viewport=viewport, is_mobile=True, has_touch=True):
        yield opened
