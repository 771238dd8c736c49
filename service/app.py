"""The aiohttp application: one factory, one route table, one cleanup context per resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from service import db
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
    app.cleanup_ctx.extend([_postgres, _redis, _client])
    app.add_routes(ROUTES)
    return app
