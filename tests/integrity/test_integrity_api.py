"""GET /api/v1/admin/integrity and POST /api/v1/admin/integrity/verify on real servers."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.integrity.keys import load_or_create_private_key
from service.settings import Settings
from tests.support.admin_api import Tokens, admin_events
from tests.support.integrity import seal_all, store
from tests.support.polling import wait_for


async def test_status_then_a_verification_in_the_background(
    api: TestClient[Any, Any],
    tokens: Tokens,
    pg: asyncpg.Connection,
    settings: Settings,
    redis: Any,
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    await store(pg, 7)
    async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as response:
        assert response.status == 200
        body = await response.json()
    assert body["unsealed_rows"] == 7 and body["last_sealed_at"] is None
    assert body["last_verification"] is None
    await seal_all(pg, key)
    async with api.post("/api/v1/admin/integrity/verify", headers=tokens.reader) as response:
        assert response.status == 403
    async with api.post("/api/v1/admin/integrity/verify", headers=tokens.admin) as response:
        assert response.status == 202

    async def verified() -> bool:
        async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as response:
            body.update(await response.json())
        return body["last_verification"] is not None

    await wait_for(verified)
    # The one row not sealed yet is the verification's own integrity.verified event.
    assert body["unsealed_rows"] == 1 and body["last_sealed_at"]
    last = body["last_verification"]
    assert last["intact"] is True and last["rows"] == 7 and last["findings"] == 0

    # Kept with its event, straight in PostgreSQL, naming who asked.
    [verified_event] = await admin_events(pg, "integrity.verified")
    assert verified_event["actor_id"] == "test-admin"
    assert verified_event["metadata"]["verification"] == last["id"]
    assert verified_event["metadata"]["intact"] is True


async def test_a_claimed_result_is_recorded_and_never_breaks_the_status(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    # What a stolen API password can do: claim a result. It is kept with an event naming the
    # role that recorded it, and shown as what it is.
    await pg.execute(
        "SELECT auditq_record_verification(now(), '{\"intact\": true}',"
        ' \'{"actor": {"id": "thief", "type": "api_token"}}\')'
    )
    async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as response:
        assert response.status == 200
        last = (await response.json())["last_verification"]
    assert last["intact"] is False and "incomplete" in last["summary"]
    [event] = await admin_events(pg, "integrity.verified")
    assert event["actor_id"] == "thief" and event["metadata"]["recorded_by"]
