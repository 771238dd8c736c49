"""The live tail: Server-Sent Events of each newly stored row matching the filters.

The worker appends which rows each write stored to a capped Redis stream, after the commit
(service/queue/live.py); a tail blocks on that stream (XREAD) and reads those rows
from PostgreSQL with its filters. Stream order is commit order, so a row of a long
transaction is sent when it commits, never skipped; every API replica reads the same stream;
`Last-Event-ID` is a stream entry id, so a reconnect resumes after the last write it saw (as
far back as the stream's cap reaches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from aiohttp import web

from service.api.audit_logs.query import PAGING_FIELDS, AuditLogQuery, query_from_params
from service.api.auth import request_principal
from service.api.errors import bad_parameter
from service.api.limits import OPEN_REQUESTS, WRITE_TIMEOUT_S
from service.api.openapi import Fields, operation
from service.api.state import POOL, REDIS, SETTINGS
from service.queue.keys import live_key
from service.queue.live import LiveEntry, read_live_entry
from service.store import pages, tokens
from service.store.items import item

logger = logging.getLogger(__name__)

STREAM_BLOCK_MS = 1000  # ms one XREAD waits for a write; bounds how late a stop is seen
STREAM_BATCH_ENTRIES = 100  # writes read from the stream at a time
STREAM_HEARTBEAT_S = 15.0  # seconds of silence before a comment keeps proxies from closing
STREAM_RETRY_MS = 2000  # the client's reconnect delay, sent to EventSource
TOKEN_RECHECK_S = 10.0  # seconds between checks that the token was not revoked
REDIS_DOWN_PAUSE = 1.0  # seconds between tries while Redis or PostgreSQL does not answer

STREAM_PAGE_ROWS = 10_000  # rows of one write read (and sent) at most per entry
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

STREAMS_STOP = web.AppKey("audit_log_streams_stop", asyncio.Event)
_encoder = msgspec.json.Encoder()
_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, redis.exceptions.RedisError)


async def stream_context(app: web.Application) -> AsyncIterator[None]:
    """Arm the stop of live tails."""
    app[STREAMS_STOP] = asyncio.Event()
    yield


async def stop_streams(app: web.Application) -> None:
    """End every live tail, so a shutdown does not wait for their clients to leave."""
    app[STREAMS_STOP].set()


async def _read_entries(
    entries: list[Any],
    position: str,
    pool: Any,
    query: AuditLogQuery,
    send: Callable[[bytes], Awaitable[None]],
) -> tuple[str, list[str]]:
    """The SSE events of the rows the entries name (sent on the way once they are many), and
    the position after the last entry."""
    events: list[str] = []
    for entry_id, fields in entries:
        position = entry_id.decode()
        write = read_live_entry(fields)
        if write is None:  # not an entry of this version's worker, or out of bounds
            continue
        async for rows in _rows_of(pool, query, write):
            events.extend(
                f"id: {position}\ndata: {_encoder.encode(item(row)).decode()}\n\n" for row in rows
            )
            if len(events) >= STREAM_PAGE_ROWS:  # sent before more is read
                await send("".join(events).encode())
                events.clear()
    return position, events


async def _rows_of(pool: Any, query: AuditLogQuery, write: LiveEntry) -> AsyncIterator[list[Any]]:
    """The rows of one write that match the filters, a page at a time."""
    offset = 0
    while True:
        sql, args = pages.write_rows_query(query, write, limit=STREAM_PAGE_ROWS, offset=offset)
        async with pool.acquire(timeout=WRITE_TIMEOUT_S) as conn:
            rows = await conn.fetch(sql, *args)
        yield rows
        if len(rows) < STREAM_PAGE_ROWS:
            return
        offset += len(rows)


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


@operation(
    query=Fields(AuditLogQuery, PAGING_FIELDS),
    responses={200: {"type": "string"}},
    media_types=("text/event-stream",),
    errors=(429,),
)
async def stream_audit_logs(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each newly stored row matching the filters; resumes at Last-Event-ID."""
    query = query_from_params(request.query, skip=PAGING_FIELDS)
    position = request.headers.get("Last-Event-ID", "").strip() or "$"
    if position != "$" and not ENTRY_ID.match(position):
        raise bad_parameter("Last-Event-ID", "is not an event id this stream sent")
    with request.app[OPEN_REQUESTS].hold(request, "stream"):
        return await _tail(request, query, position)


async def _tail(request: web.Request, query: AuditLogQuery, position: str) -> web.StreamResponse:
    app = request.app
    redis, pool, stop = app[REDIS], app[POOL], app[STREAMS_STOP]
    key = live_key(app[SETTINGS].queue)
    token_id = request_principal(request).token_id
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    await response.prepare(request)

    async def send(data: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):  # a client that stops reading is cut
            await response.write(data)

    if position == "$":  # from the newest write on: its id, so that none between reads is missed
        newest = await redis.xrevrange(key, count=1)
        position = newest[0][0].decode() if newest else "0-0"
    quiet_since = checked_at = time.monotonic()
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        await send(f"retry: {STREAM_RETRY_MS}\n\n".encode())
        while not stop.is_set() and not _client_gone(request):
            try:
                if time.monotonic() - checked_at >= TOKEN_RECHECK_S:
                    async with pool.acquire(timeout=WRITE_TIMEOUT_S) as conn:
                        if not await tokens.is_active(conn, token_id):
                            break  # revoked: the tail ends; a reconnect gets a 401
                    checked_at = time.monotonic()
                read = await redis.xread(
                    {key: position}, count=STREAM_BATCH_ENTRIES, block=STREAM_BLOCK_MS
                )
                entries = read[0][1] if read else []
                position, events = await _read_entries(entries, position, pool, query, send)
            except _DOWN as exc:
                # Keep the stream: it resumes where it was once both answer again.
                logger.warning("live tail: a dependency is not answering (%s)", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REDIS_DOWN_PAUSE)
                continue
            if events:
                await send("".join(events).encode())
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= STREAM_HEARTBEAT_S:
                await send(b": keep-alive\n\n")
                quiet_since = time.monotonic()
    return response
