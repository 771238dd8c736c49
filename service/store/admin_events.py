"""The write of an admin action's audit event (contract §7).

`auditq_record_admin_event` (schema.sql) is a definer function that only inserts, as `api`:
the record is sealed like any row, and never passes through a Redis a producer can reach."""

from __future__ import annotations

from service.store.db import Conn

RECORD_ADMIN_EVENT = "SELECT auditq_record_admin_event($1::text::jsonb)"


async def record(conn: Conn, event_json: str) -> None:
    """Insert one finalized event (its JSON text) into the audit log."""
    await conn.fetchval(RECORD_ADMIN_EVENT, event_json)
