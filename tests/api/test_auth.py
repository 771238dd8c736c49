"""The Bearer check at the door: a malformed header is a 401, never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.api.auth import TokenCheck
from service.settings import Settings
from service.store import db
from tests.support.admin_api import Tokens, error_of

PATHS = ["/api/v1/admin/audit-logs", "/api/v1/events"]


async def raw_status(api: TestClient[Any, Any], path: str, authorization: bytes) -> int:
    """Send a request with these exact header bytes (no client library cleans them up)."""
    reader, writer = await asyncio.open_connection(str(api.host), api.port)
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: test\r\nAuthorization: "
            + authorization
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    ("authorization", "statuses"),
    [
        (b"Bearer aq_\xff\xfe", {401}),  # not UTF-8
        (b"Bearer aq_\xc3\xa9t\xc3\xa9", {401}),  # UTF-8, not ASCII
        (b"Bearer aq_a\tb", {401}),  # a tab inside
        (b"Bearer " + b"a" * 4000, {401}),  # far longer than any token
        (b"Bearer\xa0aq_abc", {401}),  # a no-break space as the separator
        # aiohttp's HTTP parser refuses control characters in a header before auditq sees it.
        (b"Bearer aq_\x01\x02abc", {400, 401}),
    ],
    ids=["latin1", "utf8", "tab", "long", "nbsp", "control"],
)
async def test_a_malformed_authorization_header_is_refused_never_a_500(
    api: TestClient[Any, Any], tokens: Tokens, authorization: bytes, statuses: set[int]
) -> None:
    for path in PATHS:
        assert await raw_status(api, path, authorization) in statuses, path


async def test_the_401_hint_names_the_header_it_wants(api: TestClient[Any, Any]) -> None:
    response = await api.get("/api/v1/admin/audit-logs")
    error = await error_of(response, 401)
    assert error["message"] == "send Authorization: Bearer <token>"


async def test_a_wrong_role_is_named_in_plain_english(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    response = await api.get("/api/v1/admin/audit-logs", headers=tokens.ingest)
    error = await error_of(response, 403)
    assert error["message"] == "an ingest token cannot GET /api/v1/admin/audit-logs"
    response = await api.post("/api/v1/admin/tasks/cleanup", headers=tokens.reader, json={})
    error = await error_of(response, 403)
    assert error["message"].startswith("a reader token cannot POST")


LAST_USED = "SELECT last_used_at FROM api_token WHERE name = $1"


async def test_a_token_records_when_it_was_last_used_at_most_once_a_minute(
    api: TestClient[Any, Any],
    tokens: Tokens,
    pg: asyncpg.Connection,
    settings: Settings,
    redis: aioredis.Redis,
) -> None:
    assert await pg.fetchval(LAST_USED, "test-reader") is None
    response = await api.get("/api/v1/admin/audit-logs", headers=tokens.reader)
    assert response.status == 200
    first = await pg.fetchval(LAST_USED, "test-reader")
    assert first is not None
    assert await pg.fetchval(LAST_USED, "test-admin") is None  # only the token that was used

    # Another replica checks the same token within the minute: no second write.
    pool = await db.create_pool(settings.require_database(), size=2)
    try:
        header = tokens.reader["Authorization"]
        await TokenCheck(pool, redis).principal(header)
        assert await pg.fetchval(LAST_USED, "test-reader") == first
        # A minute later, a use is written again.
        await pg.execute(
            "UPDATE api_token SET last_used_at = now() - interval '2 minutes' WHERE name = $1",
            "test-reader",
        )
        await TokenCheck(pool, redis).principal(header)
        assert await pg.fetchval(LAST_USED, "test-reader") > first
    finally:
        await pool.close()
