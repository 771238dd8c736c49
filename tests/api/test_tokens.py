"""Token routes and the console's serving, on real servers: who may do what, what is audited."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.api.console import CSP
from service.settings import Settings
from tests.support.admin_api import Tokens, admin_events, error_of
from tests.support.queue import queued_events

TOKENS = "/api/v1/admin/tokens"


async def test_whoami_names_the_token_and_its_role(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    async with api.get("/api/v1/admin/whoami", headers=tokens.reader) as response:
        assert response.status == 200
        assert await response.json() == {"name": "test-reader", "role": "reader"}
    async with api.get("/api/v1/admin/whoami") as response:
        await error_of(response, 401)


async def test_create_list_revoke_audited(
    api: TestClient[Any, Any],
    tokens: Tokens,
    redis: aioredis.Redis,
    settings: Settings,
    pg: asyncpg.Connection,
) -> None:
    body = {"name": "ci-bot", "role": "ingest"}
    async with api.post(TOKENS, json=body, headers=tokens.admin) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert created["name"] == "ci-bot" and created["token"].startswith("aq_")
    async with api.post(TOKENS, json=body, headers=tokens.admin) as response:
        assert "revoke it first" in (await error_of(response, 409))["message"]
    ingest = {"Authorization": f"Bearer {created['token']}"}
    async with api.post("/api/v1/events", json={"action": "a.b"}, headers=ingest) as response:
        assert response.status == 202
    async with api.get(TOKENS, headers=tokens.reader) as response:
        listed = (await response.json())["items"]
    assert {"ci-bot", "test-admin"} <= {t["name"] for t in listed}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    async with api.post(f"{TOKENS}/ci-bot/revoke", headers=tokens.admin) as response:
        assert response.status == 200 and (await response.json())["revoked"] is True
    async with api.post(f"{TOKENS}/ci-bot/revoke", headers=tokens.admin) as response:
        await error_of(response, 404)
    async with api.post("/api/v1/events", json={"action": "a.b"}, headers=ingest) as response:
        await error_of(response, 401)

    # Stored straight into PostgreSQL with the changes themselves (never through Redis).
    events = await admin_events(pg, "token.")
    assert [e["action"] for e in events] == ["token.created", "token.revoked"]
    assert all(e["actor_id"] == "test-admin" for e in events)
    assert all((e["entity_type"], e["entity_id"]) == ("api_token", "ci-bot") for e in events)
    assert created["token"] not in str(events)
    assert not [e for e in await queued_events(redis, settings.queue) if "token" in e["action"]]


async def test_readers_cannot_change_tokens(api: TestClient[Any, Any], tokens: Tokens) -> None:
    body = {"name": "x", "role": "admin"}
    async with api.post(TOKENS, json=body, headers=tokens.reader) as response:
        await error_of(response, 403)
    async with api.post(f"{TOKENS}/test-admin/revoke", headers=tokens.reader) as response:
        await error_of(response, 403)
    for bad in ({"name": " x", "role": "admin"}, {"name": "x", "role": "root"}, {"name": ""}):
        async with api.post(TOKENS, json=bad, headers=tokens.admin) as response:
            await error_of(response, 400)


async def test_console_is_served_with_a_strict_policy(api: TestClient[Any, Any]) -> None:
    async with api.get("/", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/console/"
    for path in ("/console/", "/console/audit-logs", "/console/tasks/abc"):
        async with api.get(path) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert response.headers["Content-Security-Policy"] == CSP
            assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP
            assert (
                '<script type="module" src="/console/assets/js/main.js">' in await response.text()
            )
    async with api.get("/console/assets/vendor/preact.module.js") as response:
        assert response.status == 200 and response.content_type == "text/javascript"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for missing in ("/console/assets/../../app.py", "/console/assets/vendor/refresh.sh"):
        async with api.get(missing) as response:
            assert response.status == 404


async def test_the_operator_messages_overlay_the_shipped_ones(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    (settings.data_dir / "console-messages.json").write_text('{"audit.auth.login": "Hi {actor}"}')
    async with api.get("/console/assets/messages.json") as response:
        messages = await response.json()
    assert messages["audit.auth.login"] == "Hi {actor}"
    assert "audit.task.retried" in messages
