"""The aiohttp application: one factory, one route table, one cleanup context per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from service.api import health, ingest, metrics, openapi
from service.api import tasks as tasks_api
from service.api.audit_logs import export, pages, statistics, stream
from service.api.audit_logs.cursor import cursor_context
from service.api.auth import auth_middleware
from service.api.errors import error_middleware
from service.api.state import CLIENT, POOL, REDIS, SETTINGS
from service.producer.client import AuditClient
from service.settings import Settings
from service.store import db

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1,000-event ingest of typical events fits; larger is 413
# The request line: every filter at its longest (1,024 characters of 4-byte UTF-8, each byte
# percent-encoded) fits, where aiohttp's default of 8,190 bytes refused valid queries.
MAX_REQUEST_LINE_BYTES = 256 * 1024


ROUTES = [
    *health.ROUTES,
    # Audit logs: the fixed paths before `{id}`, as aiohttp matches in order.
    web.get("/api/v1/admin/audit-logs", pages.list_audit_logs),
    # Streamed bodies: a HEAD would still run (and audit) the export and send its body.
    web.get("/api/v1/admin/audit-logs/export", export.export_audit_logs, allow_head=False),
    web.get("/api/v1/admin/audit-logs/statistics", statistics.audit_log_statistics),
    web.get("/api/v1/admin/audit-logs/stream", stream.stream_audit_logs, allow_head=False),
    web.post("/api/v1/admin/audit-logs/search", pages.search_audit_logs),
    web.get("/api/v1/admin/audit-logs/entity/{entity_type}/{entity_id:.+}", pages.entity_history),
    web.get("/api/v1/admin/audit-logs/user/{actor_id:.+}", pages.actor_history),
    # Not the fixed paths beside it: their other methods are 405 with their own Allow.
    web.get(
        "/api/v1/admin/audit-logs/{id:(?!(search|export|statistics|stream)$)[^/]+}",
        pages.get_audit_log,
    ),
    # Tasks and queue stats, HTTP ingest, metrics, and the OpenAPI document of all of these.
    *tasks_api.ROUTES,
    *ingest.ROUTES,
    *metrics.ROUTES,
    *openapi.ROUTES,
]


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None
    app[POOL] = await db.create_pool(settings.database_url, size=settings.db_pool_size)
    yield
    await app[POOL].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.redis_url is not None
    app[REDIS] = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=health.READY_TIMEOUT
    )
    yield
    await app[REDIS].aclose()


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = AuditClient.from_settings(app[SETTINGS])
    yield
    await app[CLIENT].aclose()


def create_app(settings: Settings) -> web.Application:
    """Build the admin API for `settings` (URLs resolved)."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[error_middleware, auth_middleware(POOL)],
        handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES},
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_postgres, _redis, _client, cursor_context, stream.stream_context])
    app.on_shutdown.append(stream.stop_streams)
    app.add_routes(ROUTES)
    return app
