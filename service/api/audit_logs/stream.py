"""The live tail: Server-Sent Events of each newly stored row matching the filters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from service.api.audit_logs.cursor import CURSORS, Position
from service.api.audit_logs.query import PAGING_FIELDS, AuditLogQuery, query_from_params
from service.api.audit_logs.rows import SELECT_ITEMS, item, where_of
from service.api.openapi import Fields, operation
from service.api.state import POOL

logger = logging.getLogger(__name__)

STREAM_POLL_S = 0.5  # seconds between live-tail polls
STREAM_HEARTBEAT_S = 15.0  # seconds of silence before a comment keeps proxies from closing
STREAM_BATCH_ROWS = 500
STREAM_RETRY_MS = 2000  # the client's reconnect delay, sent to EventSource
# The live tail shows a row once its received_at is 2 s old: received_at is when the writing
# transaction began, so a write that commits after a later-begun one has been sent would
# otherwise fall behind the position and be skipped; any write shorter than 2 s is caught.
STREAM_AFTER = "(received_at, id) > ({0}, {1}) AND received_at < now() - interval '2 seconds'"
STREAM_ORDER_BY = "ORDER BY received_at, id"
SELECT_NOW = "SELECT now()"
STREAMS_STOP = web.AppKey("audit_log_streams_stop", asyncio.Event)
_encoder = msgspec.json.Encoder()


async def stream_context(app: web.Application) -> AsyncIterator[None]:
    """Arm the stop of live tails."""
    app[STREAMS_STOP] = asyncio.Event()
    yield


async def stop_streams(app: web.Application) -> None:
    """End every live tail, so a shutdown does not wait for their clients to leave."""
    app[STREAMS_STOP].set()


_NOTHING_YET = uuid.UUID(int=0)
_POSTGRES_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def stream_query(query: AuditLogQuery, after: Position) -> tuple[str, list[Any]]:
    """The SQL and parameters of one live-tail poll: rows stored after `after`."""
    where = where_of(query)
    where.add(STREAM_AFTER, after.ts, after.id)
    sql = f"{SELECT_ITEMS}{where.sql()} {STREAM_ORDER_BY} LIMIT ${len(where.args) + 1}"
    return sql, [*where.args, STREAM_BATCH_ROWS]


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


@operation(
    query=Fields(AuditLogQuery, PAGING_FIELDS),
    responses={200: {"type": "string"}},
    media_types=("text/event-stream",),
)
async def stream_audit_logs(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each newly stored row matching the filters; resumes at Last-Event-ID."""
    query = query_from_params(request.query, skip=PAGING_FIELDS)
    codec, pool, stop = request.app[CURSORS], request.app[POOL], request.app[STREAMS_STOP]
    resume = request.headers.get("Last-Event-ID", "").strip()
    if resume:
        position = codec.decode(resume, order="live", name="Last-Event-ID")
    else:
        async with pool.acquire() as conn:
            position = Position(await conn.fetchval(SELECT_NOW), _NOTHING_YET, "live")
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    quiet_since = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        await response.write(f"retry: {STREAM_RETRY_MS}\n\n".encode())
        while not stop.is_set() and not _client_gone(request):
            sql, args = stream_query(query, position)
            try:
                async with pool.acquire() as conn:
                    rows = await conn.fetch(sql, *args)
            except _POSTGRES_DOWN as exc:
                # Keep the stream: it resumes where it was once PostgreSQL answers again.
                logger.warning("live tail: PostgreSQL not answering (%s)", type(exc).__name__)
                rows = []
            if rows:
                events = []
                for row in rows:
                    position = Position(row["received_at"], row["id"], "live")
                    data = _encoder.encode(item(row)).decode()
                    events.append(f"id: {codec.encode(position)}\ndata: {data}\n\n")
                await response.write("".join(events).encode())
                quiet_since = time.monotonic()
                if len(rows) == STREAM_BATCH_ROWS:
                    continue  # more are waiting: no pause
            elif time.monotonic() - quiet_since >= STREAM_HEARTBEAT_S:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_POLL_S)
    return response
