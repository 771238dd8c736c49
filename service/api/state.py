"""The admin API's shared state (web.AppKey), and the audit trail of admin actions."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from service.api.auth import request_principal
from service.api.errors import ApiError
from service.events import Actor, Entity, RequestInfo
from service.ops.admin_actions import (
    RECORD_FAILURES,
    AuditUnavailable,
    record_admin_event,
    unwritable,
)
from service.own_events import API_SOURCE, admin_action, requested_by, token_actor
from service.producer.client import AuditClient
from service.settings import Settings

logger = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
CLIENT = web.AppKey("client", AuditClient)  # the API's own producer: admin actions are audited


def _actor(request: web.Request) -> Actor:
    return token_actor(request_principal(request).name)


def _origin(request: web.Request) -> RequestInfo:
    return RequestInfo(
        ip=request.remote,
        user_agent=request.headers.get("User-Agent", "")[:4096] or None,
        method=request.method,
        path=request.path,
    )


def unrecorded(exc: AuditUnavailable) -> ApiError:
    """The 503 of a mutation whose record could not be written (so it was not done)."""
    logger.error("%s", exc)
    return ApiError(503, "dependency_unavailable", str(exc))


async def record_admin_action(
    request: web.Request,
    action: str,
    *,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write the audit event of an admin mutation into PostgreSQL, with the token's name as
    actor, before the mutation is done; 503 when it cannot be written."""
    event = admin_action(
        action,
        actor=_actor(request),
        source=API_SOURCE,
        entity=entity,
        request=_origin(request),
        metadata=metadata,
    )
    try:
        async with request.app[POOL].acquire() as conn:
            await record_admin_event(conn, event, request.app[SETTINGS].subject_key_path)
    except AuditUnavailable as exc:
        raise unrecorded(exc) from None
    except RECORD_FAILURES as exc:  # no connection to be had
        raise unrecorded(unwritable(action, exc)) from None


def request_by(request: web.Request) -> dict[str, Any]:
    """Who asks, for the schema's functions that record what they did (tokens, verifications)."""
    return requested_by(_actor(request), API_SOURCE, _origin(request))
