"""The aiohttp application: one factory, one route table, one cleanup context per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.api import (
    console,
    health,
    ingest,
    integrity,
    metrics,
    openapi,
    subjects,
    tokens,
    transparency,  # the transparency log (contract §8)
)
from service.api import destinations as destinations_api
from service.api import policy as policy_api
from service.api import tasks as tasks_api
from service.api.audit_logs import export, pages, statistics, stream, suggestions
from service.api.audit_logs.cursor import cursor_context
from service.api.auth import TOKEN_CHECK, TokenCheck, auth_middleware
from service.api.errors import REDACT_EXTRA_KEYS, error_middleware
from service.api.limits import OPEN_REQUESTS, OpenRequests
from service.api.producers import producers_context
from service.api.state import CLIENT, POOL, REDIS, SETTINGS
from service.connections import redis_client
from service.own_events import API_SOURCE, STARTED, STOPPING, lifecycle_event
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
    web.get("/api/v1/admin/audit-logs/suggestions", suggestions.audit_log_suggestions),
    web.post("/api/v1/admin/audit-logs/search", pages.search_audit_logs),
    web.get("/api/v1/admin/audit-logs/entity/{entity_type}/{entity_id:.+}", pages.entity_history),
    web.get("/api/v1/admin/audit-logs/user/{actor_id:.+}", pages.actor_history),
    # Not the fixed paths beside it: their other methods are 405 with their own Allow.
    web.get(
        "/api/v1/admin/audit-logs/{id:(?!(search|export|statistics|stream|suggestions)$)[^/]+}",
        pages.get_audit_log,
    ),
    # Tasks and queue stats, HTTP ingest, metrics, and the OpenAPI document of all of these.
    *tasks_api.ROUTES,
    *tokens.ROUTES,
    *ingest.ROUTES,
    *integrity.ROUTES,
    *transparency.ROUTES,  # receipts, checkpoint, consistency (contract §8)
    *subjects.ROUTES,  # erasure (contract §9)
    *policy_api.ROUTES,  # the store's policy (contract §6)
    *destinations_api.ROUTES,  # streaming the record out (contract §11)
    *metrics.ROUTES,
    *openapi.ROUTES,
    *console.ROUTES,  # the browser console: no token needed to load it
]


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await db.create_pool(settings.require_database(), size=settings.db_pool_size)
    yield
    await app[POOL].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = redis_client(
        settings.require_redis(),
        connect_timeout=health.READY_TIMEOUT,
        # After a restart or a failover the pooled connections are dead: the first command
        # reconnects (for Sentinel: to the new primary) instead of failing.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    yield
    await app[REDIS].aclose()


async def _token_check(app: web.Application) -> AsyncIterator[None]:
    app[TOKEN_CHECK] = TokenCheck(app[POOL], app[REDIS])
    yield


async def _record_started(app: web.Application) -> None:
    app[CLIENT].capture_nowait(lifecycle_event(STARTED, source=API_SOURCE))


async def _record_stopping(app: web.Application) -> None:
    # Sent at once; the client's cleanup (aclose, last) waits until it is.
    app[CLIENT].capture_nowait(lifecycle_event(STOPPING, source=API_SOURCE))


def create_app(settings: Settings, *, audit_lifecycle: bool = False) -> web.Application:
    """Build the admin API for `settings` (URLs resolved).

    With `audit_lifecycle` (the `auditq` commands), the API records `service.started` once
    it is up and `service.stopping` first when it shuts down.
    """
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[error_middleware, auth_middleware],
        handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES},
    )
    app[SETTINGS] = settings
    app[REDACT_EXTRA_KEYS] = settings.redact_extra_keys
    app[OPEN_REQUESTS] = OpenRequests()
    app.cleanup_ctx.extend(
        [
            _postgres,
            _redis,
            _token_check,
            producers_context,
            cursor_context,
            stream.stream_context,
            integrity.integrity_context,
            subjects.subjects_context,
        ]
    )
    app.on_shutdown.append(stream.stop_streams)
    if audit_lifecycle:
        app.on_startup.append(_record_started)  # after the cleanup contexts: the client exists
        app.on_shutdown.insert(0, _record_stopping)
    app.add_routes(ROUTES)
    return app
