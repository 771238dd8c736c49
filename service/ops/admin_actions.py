"""The audit trail of admin actions, for the API and the CLI (contract §7): the events are
built by service/own_events.py, written here.

Each admin mutation is recorded straight into PostgreSQL (never through a Redis a producer
can reach) by the definer function `auditq_record_admin_event` (schema.sql): it only
inserts, as `api`, sealed like any row. It is written before the mutation takes effect (or in
its transaction, as token changes are): when it cannot be written, the mutation is not done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg

from service.errors import AuditqError
from service.events import AuditEvent, Entity, finalize
from service.mentions import MentionIndex
from service.own_events import CLI_SOURCE, admin_action, cli_actor
from service.pseudonyms import clear_mentions
from service.settings import Settings
from service.store import admin_events, db
from service.store import subjects as subjects_sql
from service.store.db import Conn
from service.subject_key import load_subject_key

logger = logging.getLogger(__name__)

# What cannot be written: PostgreSQL away, read-only, or the role without the function. A
# pooled connection whose server process was terminated can fail in asyncpg's own protocol
# state (InternalClientError: "cannot switch to state …"), which is away too, not a bug.
RECORD_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class AuditUnavailable(AuditqError):
    """The record of an admin action could not be written: the action is not done."""


def unwritable(action: str, exc: BaseException) -> AuditUnavailable:
    """The error of an action whose record could not be written (so it was not done)."""
    return AuditUnavailable(
        f"the audit record of {action} could not be written ({type(exc).__name__}): "
        "nothing was done"
    )


async def record_admin_event(conn: Conn, event: AuditEvent, key_path: Path | None = None) -> None:
    """Write the event into the store now; AuditUnavailable when it cannot be written.

    With the subject key's file, the event is first cleared of erased subjects' ids, names
    and emails (an admin's filter or path naming one), each to `[erased]`: never the
    pseudonym, or a reader could learn it by asking with the id and reading the record."""
    try:
        if key_path is not None and (found := await subjects_sql.mentions(conn)):
            index = MentionIndex(load_subject_key(key_path), [(*r[:3], None, r[4]) for r in found])
            event = clear_mentions(event, index)
        # Redacted and checked like any event (the server sets its id and time).
        await admin_events.record(conn, finalize(event)[1].decode())
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
        action, actor=cli_actor(), source=CLI_SOURCE, entity=entity, metadata=metadata
    )
    try:
        conn = await db.connect(settings.require_database())
    except RECORD_FAILURES as exc:
        raise unwritable(action, exc) from None
    try:
        await record_admin_event(conn, event, settings.subject_key_path)
    finally:
        await conn.close()
