"""Partition upkeep: monthly partitions made ahead, and whole partitions dropped past retention."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import asyncpg

from service.events import AuditEvent, Entity, finalize
from service.partitions import LIST_PARTITIONS, PARTITION_NAME, month_start
from workers.writer import write_events

logger = logging.getLogger(__name__)

# A SECURITY DEFINER function (schema.sql): it records what it dropped for `auditq verify`.
DROP_PARTITION = "SELECT auditq_drop_partition($1, $2)"
ROWS_DROPPED = "SELECT (detail->>'rows')::bigint FROM store_action WHERE id = $1"


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
        async with conn.transaction():
            action_id = await conn.fetchval(DROP_PARTITION, name, retention_days)
            rows = await conn.fetchval(ROWS_DROPPED, action_id)
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
            await write_events(conn, [event])
        logger.warning(
            "dropped partition %s (%d rows) past the %d-day retention", name, rows, retention_days
        )
        dropped.append(name)
    return dropped
