"""The Bearer check at the door: a malformed header is a 401, never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.admin_api import Tokens

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
