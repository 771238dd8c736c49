"""The audit trail of admin actions: one builder of their events, for the API and the CLI."""

from __future__ import annotations

import logging
from typing import Any

from service.events import Actor, AuditEvent, Entity, RequestInfo
from service.producer.client import AuditClient
from service.settings import Settings

logger = logging.getLogger(__name__)

CLI_ACTOR = Actor(id="cli", type="system")


def admin_action(
    action: str,
    *,
    actor: Actor,
    source: str,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
    request: RequestInfo | None = None,
) -> AuditEvent:
    """The audit event of one admin mutation."""
    return AuditEvent(
        action=action,
        severity="notice",
        actor=actor,
        entity=entity,
        request=request,
        metadata=metadata,
        source=source,
    )


async def audit_cli_action(
    settings: Settings,
    action: str,
    *,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Record a CLI mutation, best effort: the command stands whether or not it is recorded."""
    if not settings.redis_url:
        logger.warning("no Redis URL: %s is not audited", action)
        return
    event = admin_action(
        action, actor=CLI_ACTOR, source="auditq-cli", entity=entity, metadata=metadata
    )
    try:
        async with AuditClient.from_settings(settings) as client:
            await client.capture(event)  # never raises; a failure is logged by the client
    except Exception as exc:
        logger.warning("%s is not audited: %s", action, exc)
