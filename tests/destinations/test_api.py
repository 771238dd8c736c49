"""The destinations routes on real servers: who may do what, what is audited, that a secret
never comes back, the test button against a real receiver, health in the API and /metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.settings import Settings
from tests.destinations.receivers import Receiver
from tests.support.admin_api import Tokens, error_of

BASE = "/api/v1/admin/destinations"
SECRET = "whsec-never-shown-9f2c"
HEALTH = {
    "name",
    "state",
    "lag_events",
    "lag_s",
    "last_delivered_at",
    "last_error",
    "delivered_total",
    "failed_attempts_total",
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


def hook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "name": "siem",
        "type": "webhook",
        "url": receiver.url("/hook"),
        "secret": SECRET,
        "allow_private": True,
        **extra,
    }


async def test_add_show_change_remove_with_roles_and_the_secret_never_shown(
    api: TestClient[Any, Any],
    tokens: Tokens,
    receiver: Receiver,
    redis: aioredis.Redis,
    settings: Settings,
    pg: asyncpg.Connection,
) -> None:
    async with api.post(BASE, json=hook(receiver), headers=tokens.reader) as response:
        await error_of(response, 403)
    async with api.post(BASE, json=hook(receiver)) as response:
        await error_of(response, 401)
    async with api.post(BASE, json=hook(receiver), headers=tokens.admin) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert HEALTH <= set(created) and created["state"] == "active"
    assert created["has_secret"] is True and created["lag_events"] == 0
    async with api.post(BASE, json=hook(receiver), headers=tokens.admin) as response:
        await error_of(response, 409)

    async with api.get(BASE, headers=tokens.reader) as response:
        listed = await response.json()
    async with api.get(f"{BASE}/siem", headers=tokens.reader) as response:
        shown = await response.json()
    async with api.get("/metrics") as response:
        metrics = await response.text()
    assert [item["name"] for item in listed["items"]] == ["siem"]
    assert shown["url"] == receiver.url("/hook")
    assert 'auditq_destination_lag_events{destination="siem"} 0.0' in metrics
    assert 'auditq_destination_state{destination="siem",state="active"} 1.0' in metrics

    async with api.patch(f"{BASE}/siem", json={"paused": True}, headers=tokens.reader) as r:
        await error_of(r, 403)
    async with api.patch(f"{BASE}/siem", json={"paused": True}, headers=tokens.admin) as r:
        assert (await r.json())["state"] == "paused"
    async with api.patch(f"{BASE}/siem", json={"paused": False}, headers=tokens.admin) as r:
        assert (await r.json())["state"] == "active"
    async with api.patch(f"{BASE}/siem", json={"secret": None}, headers=tokens.admin) as r:
        assert (await r.json())["has_secret"] is False
    async with api.delete(f"{BASE}/siem", headers=tokens.reader) as response:
        await error_of(response, 403)
    async with api.delete(f"{BASE}/siem", headers=tokens.admin) as response:
        assert await response.json() == {"name": "siem", "removed": True}
    async with api.get(f"{BASE}/siem", headers=tokens.reader) as response:
        await error_of(response, 404)

    # Admin actions are written straight into the store, before each change (contract §7).
    events = [
        dict(r)
        for r in await pg.fetch(
            "SELECT action, actor_id, metadata::text, presentation::text FROM audit_log"
            " WHERE received_via = 'api'"
        )
    ]
    actions = [e["action"] for e in events]
    assert actions.count("destination.created") == 1 and "destination.removed" in actions
    for action in ("destination.paused", "destination.resumed", "destination.updated"):
        assert action in actions
    created_event = next(e for e in events if e["action"] == "destination.created")
    assert created_event["actor_id"] == "test-admin"
    everything = json.dumps([listed, shown, created, events]) + metrics
    assert SECRET not in everything
    rows = await pg.fetch("SELECT * FROM destination")
    assert rows == [] and SECRET not in str(rows)


async def test_bad_input_is_a_400_naming_the_field(
    api: TestClient[Any, Any], tokens: Tokens, receiver: Receiver
) -> None:
    cases = [
        (hook(receiver, filter="severity=loud"), "filter"),
        (hook(receiver, filter="limit=5"), "filter"),
        (hook(receiver, format="cef"), "format"),
        (hook(receiver, type="carrier-pigeon"), "type"),
        (hook(receiver, url="ftp://example.com/"), "url"),
        (hook(receiver, name="../etc"), "name"),
        (hook(receiver, since="yesterday"), "since"),
        ({**hook(receiver), "allow_private": False}, "url"),  # loopback, not allowed
        (hook(receiver, url="http://169.254.169.254/latest", allow_private=False), "url"),
        (hook(receiver, url="http://[fd00:ec2::254]/", allow_private=False), "url"),
        (hook(receiver, url="http://[::ffff:169.254.169.254]/", allow_private=False), "url"),
        (hook(receiver, url="https://user:pw@example.com/"), "url"),
        (hook(receiver, url="https://example.com/hook?api_key=abc"), "url"),
        (hook(receiver, url="https://example.com/hook?Token=abc"), "url"),
    ]
    for body, field in cases:
        async with api.post(BASE, json=body, headers=tokens.admin) as response:
            error = await error_of(response, 400)
            assert f"`{field}`" in error["message"], (body, error)


async def test_the_test_button_answers_with_the_receivers_reply(
    api: TestClient[Any, Any], tokens: Tokens, receiver: Receiver
) -> None:
    async with api.post(BASE, json=hook(receiver), headers=tokens.admin) as response:
        assert response.status == 201
    async with api.post(f"{BASE}/siem/test", headers=tokens.reader) as response:
        await error_of(response, 403)
    async with api.post(f"{BASE}/siem/test", headers=tokens.admin) as response:
        result = await response.json()
    assert result["delivered"] is True and result["status"] == 200
    assert json.loads(result["reply"]) == {"received": 1}
    (item,) = receiver.items
    assert item["id"] == result["event_id"] and item["action"] == "destination.test"
    assert receiver.bad_signatures == 0

    receiver.down = True
    async with api.post(f"{BASE}/siem/test", headers=tokens.admin) as response:
        result = await response.json()
    assert result["delivered"] is False and result["status"] == 503
    assert "maintenance" in result["reply"]

    receiver.down = False
    receiver.secret = "another"  # the receiver expects another secret: a 401, said so
    async with api.post(f"{BASE}/siem/test", headers=tokens.admin) as response:
        result = await response.json()
    assert result["delivered"] is False and result["status"] == 401
    assert SECRET not in json.dumps(result)


async def test_backfill_moves_the_position_back(
    api: TestClient[Any, Any], tokens: Tokens, receiver: Receiver, pg: asyncpg.Connection
) -> None:
    await pg.execute(
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
        "SELECT gen_random_uuid(), now(), 'a.b', 'a', 'info', 'success', '{}' "
        "FROM generate_series(1, 25)"
    )
    async with api.post(BASE, json=hook(receiver), headers=tokens.admin) as response:
        assert (await response.json())["lag_events"] == 0
    body = {"since": "2000-01-01T00:00:00Z"}
    async with api.post(f"{BASE}/siem/backfill", json=body, headers=tokens.reader) as r:
        await error_of(r, 403)
    async with api.post(f"{BASE}/siem/backfill", json=body, headers=tokens.admin) as r:
        assert r.status == 202, await r.text()
        # The 25 rows, and the admin events of the destination's creation and this backfill.
        assert (await r.json())["lag_events"] == await pg.fetchval("SELECT count(*) FROM audit_log")
    async with api.post(f"{BASE}/nope/backfill", json=body, headers=tokens.admin) as r:
        await error_of(r, 404)
    async with api.post(f"{BASE}/siem/backfill", json={"since": "2000"}, headers=tokens.admin) as r:
        assert "`since`" in (await error_of(r, 400))["message"]


async def test_every_destination_route_is_in_the_openapi_document(
    api: TestClient[Any, Any],
) -> None:
    async with api.get("/api/v1/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert set(paths[BASE]) >= {"get", "post"}
    assert set(paths[BASE + "/{name}"]) >= {"get", "patch", "delete"}
    assert "post" in paths[BASE + "/{name}/test"]
    assert "post" in paths[BASE + "/{name}/backfill"]
