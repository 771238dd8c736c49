"""Admin mutations are recorded straight into PostgreSQL before they take effect: when the
record cannot be written (the database read-only, or away), nothing is done and the API
answers 503, the CLI one line and a non-zero exit (contract §7)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.queue import dead_letter, revocations
from service.settings import Settings
from service.store import destinations
from tests.api.test_tasks import add_failed, event
from tests.destinations.receivers import Receiver
from tests.support.admin_api import Tokens, admin_events, error_of, make_tokens, queued_payloads
from tests.support.cli import cli_output
from tests.support.servers import Servers

TASKS = "/api/v1/admin/tasks"
DESTINATIONS = "/api/v1/admin/destinations"


@pytest.fixture
async def read_only(pg: asyncpg.Connection, database_url: str) -> AsyncIterator[Tokens]:
    """Tokens, then this test's database made read-only for every new connection."""
    tokens = await make_tokens(pg)
    name = database_url.rpartition("/")[2]
    await pg.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    yield tokens
    await pg.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver


# A destination's row and its state: neither added, changed, moved nor removed.
DESTINATION = (
    "SELECT d::text, s::text FROM destination d JOIN destination_state s ON s.destination_id = d.id"
)


async def add_siem(pg: asyncpg.Connection, receiver: Receiver) -> list[asyncpg.Record]:
    """A destination `siem` at the test's receiver, added (with its record) on a connection
    opened before the database went read-only; its rows as they are."""
    await destinations.add_destination(
        pg, name="siem", kind="webhook", url=receiver.url("/hook"), format="json", filter="",
        filter_json={}, options={"allow_private": True}, secret=None, since=None,
        created_by="t",
    )  # fmt: skip
    return await pg.fetch(DESTINATION)


async def test_no_record_no_mutation(
    read_only: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    receiver: Receiver,
) -> None:
    queue = settings.queue
    await add_failed(redis, queue, "failed-1", [event(1)])
    before = await add_siem(pg, receiver)
    hook = {"name": "other", "type": "webhook", "url": receiver.url("/hook"), "allow_private": True}
    async with TestClient(TestServer(create_app(settings))) as api:
        admin = read_only.admin
        # Reading works: the API is up, the token checks out.
        async with api.get(f"{TASKS}/failed-1", headers=read_only.reader) as response:
            assert response.status == 200
        for method, path, body in [
            ("POST", f"{TASKS}/failed-1/retry", None),
            ("POST", f"{TASKS}/retry-failed", {}),
            ("POST", f"{TASKS}/cleanup", {"failed_older_than_days": 1, "keep_recent_failed": 0}),
            ("POST", "/api/v1/admin/tokens", {"name": "new-one", "role": "admin"}),
            ("POST", "/api/v1/admin/tokens/test-reader/revoke", None),
            ("GET", "/api/v1/admin/audit-logs/export?format=jsonl", None),
            ("POST", "/api/v1/admin/subjects/u-1/anonymise", {"reason": "asked"}),
            ("POST", f"{TASKS}/failed-1/discard", None),
            ("POST", f"{TASKS}/discard-failed", {}),
            ("POST", DESTINATIONS, hook),
            ("PATCH", f"{DESTINATIONS}/siem", {"paused": True}),
            ("POST", f"{DESTINATIONS}/siem/test", None),
            ("POST", f"{DESTINATIONS}/siem/backfill", {"since": "2000-01-01T00:00:00Z"}),
            ("DELETE", f"{DESTINATIONS}/siem", None),
        ]:
            async with api.request(method, path, json=body, headers=admin) as response:
                error = await error_of(response, 503)
                assert "could not be written" in error["message"], (path, error)
        # Nothing happened: the task is still failed, no token made or revoked, no record.
        assert await dead_letter.list_ids(redis, queue) == ["failed-1"]
        assert await queued_payloads(redis, queue) == []
        async with api.get("/api/v1/admin/tokens", headers=read_only.reader) as response:
            listed = {t["name"]: t for t in (await response.json())["items"]}
        assert "new-one" not in listed and listed["test-reader"]["revoked_at"] is None
    assert [e["action"] for e in await admin_events(pg)] == ["destination.created"]  # add_siem's
    assert await pg.fetchval("SELECT count(*) FROM erased_subject") == 0
    assert await pg.fetch(DESTINATION) == before
    assert receiver.items == []  # no test event sent


async def test_the_cli_refuses_too(
    read_only: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    receiver: Receiver,
    cli_env: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    await add_failed(redis, settings.queue, "failed-2", [event(2)])
    before = await add_siem(pg, receiver)
    for args in (
        ("tasks", "retry", "failed-2"),
        ("tasks", "cleanup", "--failed-older-than-days", "0", "--keep-recent-failed", "0"),
        ("tokens", "create", "--name", "cli-made", "--role", "reader"),
        ("tokens", "revoke", "test-reader"),
        ("anonymise", "u-2", "--reason", "asked"),
        ("destinations", "pause", "siem"),
        ("destinations", "remove", "siem"),
        ("destinations", "test", "siem"),
        ("destinations", "backfill", "siem", "--since", "2000-01-01T00:00:00Z"),
    ):
        status, out = await cli_output(capfd, *args)
        assert (status != 0 and "could not be written" in out) or "read-only" in out, (args, out)
        assert out.count("\n") == 1 and "Traceback" not in out, out
    assert await dead_letter.list_ids(redis, settings.queue) == ["failed-2"]
    assert await pg.fetchval("SELECT count(*) FROM api_token WHERE revoked_at IS NULL") == 3
    assert [e["action"] for e in await admin_events(pg)] == ["destination.created"]  # add_siem's
    assert await pg.fetch(DESTINATION) == before
    assert receiver.items == []


@pytest.mark.parametrize("recheck", [False, True], ids=["token-kept", "token-rechecked"])
async def test_postgres_away_is_a_503_and_nothing_is_done(
    settings: Settings,
    redis: aioredis.Redis,
    tokens: Tokens,
    servers: Servers,
    database_url: str,
    recheck: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if recheck:  # the token is looked up again while its database refuses connections
        monkeypatch.setattr(revocations, "RECHECK_AFTER_S", 0.0)
    await add_failed(redis, settings.queue, "failed-3", [event(3)])
    name = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(servers.postgres_url)  # from another database
    try:
        async with TestClient(TestServer(create_app(settings))) as api:
            # The token is verified once; then the database takes no connection and the API's
            # are cut (the token check rides that out on its recent verification; the record
            # cannot).
            async with api.get(f"{TASKS}/failed-3", headers=tokens.admin) as response:
                assert response.status == 200
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            async with api.post(f"{TASKS}/failed-3/retry", headers=tokens.admin) as response:
                error = await error_of(response, 503)
            assert "could not be written" in error["message"]
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert await dead_letter.list_ids(redis, settings.queue) == ["failed-3"]
    assert await queued_payloads(redis, settings.queue) == []
