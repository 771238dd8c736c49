"""Partition upkeep: monthly partitions made ahead, and whole partitions dropped past retention."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from service.events import AuditEvent, Entity, finalize
from service.store.partitions import LIST_PARTITIONS, PARTITION_NAME, ensure_partitions, month_start
from workers.state import STATE, WorkerState
from workers.writer import write_events

logger = logging.getLogger(__name__)

MAINTENANCE_VIA = "worker"  # the worker's own events: never a producer's
# A SECURITY DEFINER function (schema.sql): it records what it dropped for `auditq verify`.
DROP_PARTITION = "SELECT auditq_drop_partition($1, $2)"
ROWS_DROPPED = "SELECT (detail->>'rows')::bigint FROM store_action WHERE id = $1"
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '200ms'"
DELETE_DEFAULT_ROWS = "SELECT auditq_delete_expired_default_rows($1)"


async def drop_expired_partitions(
    conn: asyncpg.Connection, *, retention_days: int, now: datetime | None = None
) -> list[str]:
    """Drop monthly partitions whose every row is older than the retention; audit each drop."""
    now = now or datetime.now(UTC)
    cutoff = (now - timedelta(days=retention_days)).date()
    dropped = []
    for (name,) in await conn.fetch(LIST_PARTITIONS):
        match = PARTITION_NAME.match(name)
        if not match:
            continue
        month = date(int(match[1]), int(match[2]), 1)
        if month_start(month, 1) > cutoff:
            continue
        try:
            async with conn.transaction():
                # Never make writes wait on retention: the drop needs the table to itself
                # (behind a long export, say); it waits this long at most, then tries next run.
                await conn.execute(LOCK_TIMEOUT)
                action_id = await conn.fetchval(DROP_PARTITION, name, retention_days)
                rows = await conn.fetchval(ROWS_DROPPED, action_id)
                await write_events(
                    conn,
                    [_dropped_event(name, month, rows, retention_days, action_id)],
                    received_via=MAINTENANCE_VIA,
                    keyed=True,
                )
        except asyncpg.LockNotAvailableError:
            logger.warning(
                "partition %s is busy (a long read holds it): dropped on a later run", name
            )
            continue
        logger.warning(
            "dropped partition %s (%d rows) past the %d-day retention", name, rows, retention_days
        )
        dropped.append(name)
    await _delete_expired_default_rows(conn, retention_days)
    return dropped


async def _delete_expired_default_rows(conn: asyncpg.Connection, retention_days: int) -> None:
    """Rows of months that had no partition (the default one) leave past retention too."""
    try:
        async with conn.transaction():
            await conn.execute(LOCK_TIMEOUT)
            action_id = await conn.fetchval(DELETE_DEFAULT_ROWS, retention_days)
            if action_id is None:
                return
            rows = await conn.fetchval(ROWS_DROPPED, action_id)
            event, _ = finalize(
                AuditEvent(
                    action="audit.rows_expired",
                    severity="notice",
                    entity=Entity(type="partition", id="audit_log_default"),
                    metadata={
                        "rows": rows,
                        "retention_days": retention_days,
                        "store_action": action_id,
                    },
                    source="auditq-worker",
                )
            )
            await write_events(conn, [event], received_via=MAINTENANCE_VIA, keyed=True)
    except asyncpg.LockNotAvailableError:
        logger.warning("the default partition is busy (a long read holds it): cleaned later")
        return
    logger.warning(
        "deleted %d rows of the default partition past the %d-day retention", rows, retention_days
    )


def _dropped_event(
    name: str, month: date, rows: int, retention_days: int, action_id: int
) -> AuditEvent:
    event, _ = finalize(
        AuditEvent(
            action="audit.partition_dropped",
            severity="notice",
            entity=Entity(type="partition", id=name),
            metadata={
                "rows": rows,
                "retention_days": retention_days,
                "month": month.isoformat(),
                "store_action": action_id,
            },
            source="auditq-worker",
        )
    )
    return event


async def maintain(ctx: dict[str, Any]) -> None:
    """Make partitions ahead and drop those past retention."""
    state: WorkerState = ctx[STATE]
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=state.settings.partitions_ahead_months)
        if state.settings.retention_days:
            await drop_expired_partitions(conn, retention_days=state.settings.retention_days)
