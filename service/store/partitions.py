"""Monthly partitions of audit_log: their names, and making them ahead of time."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime

import asyncpg

logger = logging.getLogger(__name__)

LIST_PARTITIONS = """
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_log'::regclass
"""
PARTITION_NAME = re.compile(r"^audit_log_y(\d{4})m(\d{2})$")
# A SECURITY DEFINER function (schema.sql): the runtime roles may not run DDL themselves.
ENSURE_PARTITION = "SELECT auditq_ensure_partition($1)"


def month_start(day: date, offset: int = 0) -> date:
    index = day.year * 12 + day.month - 1 + offset
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"audit_log_y{month.year:04d}m{month.month:02d}"


async def ensure_partitions(
    conn: asyncpg.Connection, *, months_ahead: int, today: date | None = None
) -> list[str]:
    """Create this month's partition and `months_ahead` more; return the ones made."""
    today = today or datetime.now(UTC).date()
    existing = {row["relname"] for row in await conn.fetch(LIST_PARTITIONS)}
    made = []
    for offset in range(months_ahead + 1):
        start = month_start(today, offset)
        name = partition_name(start)
        if name in existing:
            continue
        try:
            if not await conn.fetchval(ENSURE_PARTITION, start):
                continue  # made meanwhile by another worker
        except asyncpg.CheckViolationError:
            # The default partition already holds rows of that month (far-future events);
            # they stay there, still found by every query, and the month keeps using it.
            logger.warning(
                "partition %s not made: the default partition holds rows of that month", name
            )
            continue
        made.append(name)
    if made:
        logger.info("made partitions %s", ", ".join(made))
    return made
