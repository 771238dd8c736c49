"""Health of the API: liveness, and readiness of Redis and PostgreSQL."""

from __future__ import annotations

import asyncio

from aiohttp import web

from service.api.errors import error_response
from service.api.state import POOL, REDIS
from service.store import db

READY_TIMEOUT = 2.0  # seconds each dependency gets to answer /readyz


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
            await db.ping(conn)
        return True

    checks = {"redis": redis_ok(), "postgresql": postgres_ok()}
    results = await asyncio.gather(
        *(asyncio.wait_for(c, READY_TIMEOUT) for c in checks.values()), return_exceptions=True
    )
    down = [name for name, ok in zip(checks, results, strict=True) if ok is not True]
    if down:
        return error_response(503, "dependency_unavailable", f"not answering: {', '.join(down)}")
    return web.json_response({"status": "ready"})


ROUTES = [web.get("/healthz", healthz), web.get("/readyz", readyz)]
