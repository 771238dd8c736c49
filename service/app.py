"""The aiohttp application: one factory, one route table, one cleanup context per resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from service import audit_logs, db, ingest, integrity_api, metrics, openapi, tasks_api
from service.api import subjects as subjects_api
from service.auth import auth_middleware
from service.client import AuditClient
from service.http import error_middleware, error_response
from service.settings import Settings
from service.state import CLIENT, POOL, REDIS, SETTINGS

READY_TIMEOUT = 2.0  # seconds each dependency gets to answer /readyz
MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1,000-event ingest of typical events fits; larger is 413


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis and PostgreSQL both answer."""
    app = request.app

    async def redis_ok() -> bool:
        await app[REDIS].ping()
        return True

    async def postgres_ok() -> bool:
        async with app[POOL].acquire(timeout=READY_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1")
        return True

    checks = {"redis": redis_ok(), "postgresql": postgres_ok()}
    results = await asyncio.gather(
        *(asyncio.wait_for(c, READY_TIMEOUT) for c in checks.values()), return_exceptions=True
    )
    down = [name for name, ok in zip(checks, results, strict=True) if ok is not True]
    if down:
        return error_response(503, "dependency_unavailable", f"not answering: {', '.join(down)}")
    return web.json_response({"status": "ready"})


ROUTES = [
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    # Audit logs: the fixed paths before `{id}`, as aiohttp matches in order.
    web.get("/api/v1/admin/audit-logs", audit_logs.list_audit_logs),
    # Streamed bodies: a HEAD would still run (and audit) the export and send its body.
    web.get("/api/v1/admin/audit-logs/export", audit_logs.export_audit_logs, allow_head=False),
    web.get("/api/v1/admin/audit-logs/statistics", audit_logs.audit_log_statistics),
    web.get("/api/v1/admin/audit-logs/stream", audit_logs.stream_audit_logs, allow_head=False),
    web.post("/api/v1/admin/audit-logs/search", audit_logs.search_audit_logs),
    web.get(
        "/api/v1/admin/audit-logs/entity/{entity_type}/{entity_id:.+}", audit_logs.entity_history
    ),
    web.get("/api/v1/admin/audit-logs/user/{actor_id:.+}", audit_logs.actor_history),
    web.get("/api/v1/admin/audit-logs/{id}", audit_logs.get_audit_log),
    # Tasks and queue stats, HTTP ingest, metrics, and the OpenAPI document of all of these.
    *tasks_api.ROUTES,
    *ingest.ROUTES,
    *integrity_api.ROUTES,
    *subjects_api.ROUTES,  # erasure (contract §9)
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
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=READY_TIMEOUT)
    yield
    await app[REDIS].aclose()


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = AuditClient.from_settings(app[SETTINGS])
    yield
    await app[CLIENT].aclose()


def create_app(settings: Settings) -> web.Application:
    """Build the admin API for `settings` (URLs resolved)."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware(POOL)]
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend(
        [
            _postgres,
            _redis,
            _client,
            audit_logs.audit_log_context,
            integrity_api.integrity_context,
            subjects_api.subjects_context,
        ]
    )
    app.on_shutdown.append(audit_logs.stop_streams)
    app.add_routes(ROUTES)
    return app
