"""A flood of an unknown token is answered from memory; /metrics can want a token."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from service.api import auth
from service.api.app import create_app
from service.settings import Settings
from tests.support.admin_api import Tokens, error_of

WHOAMI = "/api/v1/admin/whoami"


async def test_an_unknown_token_reaches_postgres_once_per_ttl(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection, monkeypatch: Any
) -> None:
    check = api.server.app[auth.TOKEN_CHECK]
    lookups: list[bytes] = []
    real = check._look_up

    async def counted(digest: bytes) -> auth.Principal | None:  # the real lookup, counted
        lookups.append(digest)
        return await real(digest)

    monkeypatch.setattr(check, "_look_up", counted)
    bad = {"Authorization": "Bearer aq_not-a-token"}
    for _ in range(50):
        async with api.get(WHOAMI, headers=bad) as response:
            await error_of(response, 401)
    assert len(lookups) == 1
    # Known tokens still work, and a token made through this API works at once.
    async with api.get(WHOAMI, headers=tokens.admin) as response:
        assert response.status == 200
    async with api.post(
        "/api/v1/admin/tokens", json={"name": "fresh", "role": "reader"}, headers=tokens.admin
    ) as response:
        assert response.status == 201
        fresh = {"Authorization": f"Bearer {(await response.json())['token']}"}
    async with api.get(WHOAMI, headers=fresh) as response:
        assert response.status == 200
    # Past the TTL the unknown token is looked up again (it might exist by now).
    monkeypatch.setattr(auth, "UNKNOWN_TTL_S", 0.0)
    async with api.get(WHOAMI, headers=bad) as response:
        await error_of(response, 401)
    assert len(lookups) == 4


async def test_metrics_behind_a_token_when_one_is_set(settings: Settings) -> None:
    guarded = dataclasses.replace(settings, metrics_token="scrape-secret")
    async with TestClient(TestServer(create_app(guarded))) as api:
        async with api.get("/metrics") as response:
            await error_of(response, 401)
        for wrong in ("Bearer nope", "Basic scrape-secret", "Bearer scrape-secret-2"):
            async with api.get("/metrics", headers={"Authorization": wrong}) as response:
                await error_of(response, 401)
        headers = {"Authorization": "Bearer scrape-secret"}
        async with api.get("/metrics", headers=headers) as response:
            assert response.status == 200
            assert "auditq_" in await response.text()
    async with TestClient(TestServer(create_app(settings))) as api:  # unset: open, as before
        async with api.get("/metrics") as response:
            assert response.status == 200
