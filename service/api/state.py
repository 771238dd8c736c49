"""The admin API's shared state (web.AppKey), and the audit trail of admin actions."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from service.api.auth import request_principal
from service.events import Actor, Entity, RequestInfo
from service.ops.admin_actions import admin_action
from service.producer.client import AuditClient
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
CLIENT = web.AppKey("client", AuditClient)  # the API's own producer: admin actions are audited


async def record_admin_action(
    request: web.Request,
    action: str,
    *,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write an audit event for an admin mutation, with the token's name as actor."""
    principal = request_principal(request)
    event = admin_action(
        action,
        actor=Actor(id=principal.name, type="api_token", name=principal.name),
        source="auditq-api",
        entity=entity,
        request=RequestInfo(
            ip=request.remote,
            user_agent=request.headers.get("User-Agent", "")[:4096] or None,
            method=request.method,
            path=request.path,
        ),
        metadata=metadata,
    )
    await request.app[CLIENT].capture(event)
