"""The audit trail of admin actions, for the API and the CLI (contract §7).

Each admin mutation is recorded straight into PostgreSQL (never through a Redis a producer
can reach) by the definer function `auditq_record_admin_event` (schema.sql): it only
inserts, as `api`, sealed like any row. It is written before the mutation takes effect (or in
its transaction, as token changes are): when it cannot be written, the mutation is not done.
"""

from __future__ import annotations

import getpass
import logging
from typing import Any

import asyncpg
import msgspec

from service.errors import AuditqError
from service.events import Actor, AuditEvent, Entity, RequestInfo, finalize
from service.settings import Settings
from service.store import db

logger = logging.getLogger(__name__)

CLI_ACTOR = Actor(id="cli", type="system")
RECORD_ADMIN_EVENT = "SELECT auditq_record_admin_event($1::text::jsonb)"
# What cannot be written: PostgreSQL away, read-only, or the role without the function.
RECORD_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class AuditUnavailable(AuditqError):
    """The record of an admin action could not be written: the action is not done."""


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


def cli_actor() -> Actor:
    """The actor of the CLI's admin actions: the local user who ran the command."""
    return Actor(id="cli", type="system", name=f"cli:{getpass.getuser()}")


def requested_by(actor: Actor, source: str, request: RequestInfo | None = None) -> dict[str, Any]:
    """Who asked, as the token and verification functions of schema.sql record it."""
    by: dict[str, Any] = {"actor": msgspec.to_builtins(actor), "source": source}
    if request is not None:
        by["request"] = msgspec.to_builtins(request)
    return by


def unwritable(action: str, exc: BaseException) -> AuditUnavailable:
    """The error of an action whose record could not be written (so it was not done)."""
    return AuditUnavailable(
        f"the audit record of {action} could not be written ({type(exc).__name__}): "
        "nothing was done"
    )


async def record_admin_event(conn: asyncpg.Connection, event: AuditEvent) -> None:
    """Write the event into the store now; AuditUnavailable when it cannot be written."""
    try:
        # Redacted and checked like any event (the server sets its id and time).
        await conn.fetchval(RECORD_ADMIN_EVENT, finalize(event)[1].decode())
    except RECORD_FAILURES as exc:
        raise unwritable(event.action, exc) from None


async def audit_cli_action(
    settings: Settings,
    action: str,
    *,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Record a CLI mutation before it is done; AuditUnavailable when that cannot be written."""
    event = admin_action(
        action, actor=cli_actor(), source="auditq-cli", entity=entity, metadata=metadata
    )
    try:
        conn = await db.connect(settings.require_database())
    except RECORD_FAILURES as exc:
        raise unwritable(action, exc) from None
    try:
        await record_admin_event(conn, event)
    finally:
        await conn.close()
