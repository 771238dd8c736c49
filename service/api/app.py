"""The aiohttp application: one factory, one route table, one cleanup context per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from service.api import health, ingest, metrics, openapi
from service.api import tasks as tasks_api
from service.api.audit_logs import export, pages, statistics, stream
from service.api.audit_logs.cursor import cursor_context
from service.api.auth import TOKEN_CHECK, TokenCheck, auth_middleware
from service.api.errors import error_middleware
from service.api.state import CLIENT, POOL, REDIS, SETTINGS
from service.producer.client import AuditClient
from service.settings import Settings
from service.store import db

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1,000-event ingest of typical events fits; larger is 413


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
    web.get("/api/v1/admin/audit-logs/{id}", pages.get_audit_log),
    # Tasks and queue stats, HTTP ingest, metrics, and the OpenAPI document of all of these.
    *tasks_api.ROUTES,
    *ingest.ROUTES,
    *metrics.ROUTES,
    *openapi.ROUTES,
]


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await db.create_pool(settings.require_database(), size=settings.db_pool_size)
    yield
    await app[POOL].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = aioredis.Redis.from_url(
        settings.require_redis(), socket_connect_timeout=health.READY_TIMEOUT
    )
    yield
    await app[REDIS].aclose()


async def _token_check(app: web.Application) -> AsyncIterator[None]:
    app[TOKEN_CHECK] = TokenCheck(app[POOL], app[REDIS])
    yield


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = AuditClient.from_settings(app[SETTINGS])
    yield
    await app[CLIENT].aclose()


def create_app(settings: Settings) -> web.Application:
    """Build the admin API for `settings` (URLs resolved)."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware]
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend(
        [_postgres, _redis, _token_check, _client, cursor_context, stream.stream_context]
    )
    app.on_shutdown.append(stream.stop_streams)
    app.add_routes(ROUTES)
    return app
