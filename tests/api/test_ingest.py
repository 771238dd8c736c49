"""HTTP ingest on real servers: valid events queued and stored, bad ones named, errors clear."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.settings import Settings
from tests.support.admin_api import Tokens, error_of, queued_payloads
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker

EVENTS = "/api/v1/events"


async def test_valid_events_are_stored_and_the_invalid_one_is_named(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    database_url: str,
    pg: asyncpg.Connection,
) -> None:
    mine = str(uuid.uuid4())
    batch = {
        "events": [
            {"id": mine, "action": "auth.login", "metadata": {"password": "hunter2"}},
            {"action": "Not An Action"},
            {"action": "auth.logout", "actor": {"id": "u-1", "type": "user"}},
        ]
    }
    async with api.post(EVENTS, headers=tokens.ingest, json=batch) as response:
        assert response.status == 202, await response.text()
        body = await response.json()
    assert body["accepted"][0] == mine and len(body["accepted"]) == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    assert "action" in body["rejected"][0]["error"]
    async with running_worker(settings):
        await wait_for(lambda: _rows(database_url, 2))
    rows = await pg.fetch("SELECT id, metadata FROM audit_log ORDER BY action")
    assert sorted(str(r["id"]) for r in rows) == sorted(body["accepted"])
    assert rows[0]["metadata"] == {"password": "[REDACTED]"}


async def _rows(database_url: str, n: int) -> bool:
    return await count_rows(database_url) == n


async def test_one_event_object_and_the_admin_role(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    async with api.post(EVENTS, headers=tokens.admin, json={"action": "config.updated"}) as r:
        assert r.status == 202, await r.text()
        body = await r.json()
    assert len(body["accepted"]) == 1 and body["rejected"] == []
    assert body["accepted"][0].encode() in b"".join(await queued_payloads(redis, settings.queue))


async def test_bad_requests_are_named(api: TestClient[Any, Any], tokens: Tokens) -> None:
    headers = tokens.ingest | {"Content-Type": "application/json"}
    cases: list[tuple[bytes, int, str]] = [
        (b'{"action": ', 400, "JSON"),
        (b"[1, 2]", 400, "event object"),
        (b'{"events": 5}', 400, "`events`"),
        (b'{"events": [], "extra": 1}', 400, "`extra`"),
        (b"", 400, "JSON body"),
        (json.dumps({"events": [{"action": "a.b"}] * 1001}).encode(), 413, "1000"),
        (b'{"events": ["' + b"x" * (3 * 1024 * 1024) + b'"]}', 413, ""),
    ]
    for data, status, words in cases:
        async with api.post(EVENTS, headers=headers, data=io.BytesIO(data)) as response:
            error = await error_of(response, status)
        assert words in error["message"], (data[:40], error)
    async with api.post(
        EVENTS, headers=tokens.ingest | {"Content-Type": "text/plain"}, data='{"action": "a.b"}'
    ) as response:
        await error_of(response, 415)
    async with api.post(EVENTS, json={"action": "a.b"}) as response:
        await error_of(response, 401)
    async with api.post(EVENTS, headers=tokens.reader, json={"action": "a.b"}) as response:
        await error_of(response, 403)


async def test_a_refused_batch_resent_with_its_ids_is_stored_once(
    api: TestClient[Any, Any],
    settings: Settings,
    tokens: Tokens,
    database_url: str,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    batch = {"events": [{"action": "auth.login"}, {"action": "Bad"}, {"action": "auth.logout"}]}
    dead = dataclasses.replace(settings, redis_url="redis://127.0.0.1:9/0")  # nothing listens
    async with TestClient(TestServer(create_app(dead))) as down:
        async with down.post(EVENTS, headers=tokens.ingest, json=batch) as r:
            assert r.status == 503
            body = await r.json()
    assert "Redis" in body["error"]["message"]
    first, bad, second = body["ids"]
    assert first and second and bad is None, "each event's id, none for the rejected one"
    assert [r["index"] for r in body["rejected"]] == [1]

    # The producer sends them again with those ids, twice, once with another ts each time.
    resent = [{"id": first, "action": "auth.login"}, {"id": second, "action": "auth.logout"}]
    later = [dict(e, ts="2026-01-02T03:04:05Z") for e in resent]
    for events in (resent, later):
        async with api.post(EVENTS, headers=tokens.ingest, json={"events": events}) as r:
            assert r.status == 202, await r.text()
    async with running_worker(settings):
        await wait_for(lambda: _stored(database_url, {first, second}, 2))
        await wait_for(lambda: _drained(redis, settings.queue))  # both resends written
    rows = await pg.fetch(
        "SELECT id::text, received_via FROM audit_log WHERE id = ANY($1::uuid[])", [first, second]
    )
    assert sorted(r["id"] for r in rows) == sorted([first, second]), "each stored once"
    assert {r["received_via"] for r in rows} == {"http:test-ingest"}


async def _drained(redis: aioredis.Redis, queue: str) -> bool:
    return int(await redis.zcard(queue)) == 0


async def _stored(database_url: str, ids: set[str], n: int) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", list(ids)
        )
        return found >= n
    finally:
        await conn.close()


async def test_nothing_accepted_is_a_400_naming_every_fault_in_plain_words(
    api: TestClient[Any, Any], tokens: Tokens, redis: aioredis.Redis, settings: Settings
) -> None:
    bad = {
        "action": "NOT A VALID ACTION",
        "severity": "doom",
        "evil": 1,
        "changes": "x",
        "request": {"ip": "10.0.0.0/8"},
        "actor": {"id": "u-1", "type": "god"},
        "tenant": "t" * 2000,
    }
    async with api.post(EVENTS, headers=tokens.ingest, json=bad) as response:
        assert response.status == 400, await response.text()
        body = await response.json()
    assert body["accepted"] == [] and [r["index"] for r in body["rejected"]] == [0]
    error = body["rejected"][0]["error"]
    for field in ("`action`", "`severity`", "`evil`", "`changes`", "`request.ip`",
                  "`actor.type`", "`tenant`"):  # fmt: skip
        assert field in error, (field, error)
    assert "regex" not in error and "[a-z]" not in error and "auth.login" in error
    assert "info, notice, warning, critical" in error
    for single in ({"metadata": {}}, {"action": "a.b", "metadata": {"x": "y" * 70_000}}):
        async with api.post(EVENTS, headers=tokens.ingest, json=single) as response:
            assert response.status == 400, await response.text()
            assert (await response.json())["accepted"] == []
    async with api.post(EVENTS, headers=tokens.ingest, json={"events": [{"metadata": {}}]}) as r:
        assert r.status == 400
        assert "`action` is required" in (await r.json())["rejected"][0]["error"]
    assert await redis.zcard(settings.queue) == 0


async def test_one_id_twice_in_a_request_is_stored_once_the_first_copy(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    database_url: str,
    pg: asyncpg.Connection,
) -> None:
    twin = str(uuid.uuid4())
    batch = {
        "events": [
            {"id": twin, "action": "doc.viewed", "metadata": {"copy": "first"}},
            {
                "id": twin,
                "action": "doc.viewed",
                "metadata": {"copy": "second"},
                "ts": "2020-01-01T00:00:00Z",
            },
        ]
    }
    async with api.post(EVENTS, headers=tokens.ingest, json=batch) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["accepted"] == [twin, twin]
    async with running_worker(settings):
        await wait_for(lambda: _rows(database_url, 1))
    rows = await pg.fetch("SELECT metadata FROM audit_log WHERE id = $1", uuid.UUID(twin))
    assert [r["metadata"] for r in rows] == [{"copy": "first"}]
