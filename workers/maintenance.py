"""Partition upkeep: monthly partitions made ahead, and the store's retention policy applied."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from service.store import destinations
from service.store.partitions import ensure_partitions
from service.store.policy import apply_retention
from workers.state import STATE, WorkerState

logger = logging.getLogger(__name__)

MAINTENANCE_VIA = "worker"  # the worker's own events: never a producer's


async def drop_expired_partitions(conn: asyncpg.Connection) -> list[str]:
    """Apply the store's retention policy; return the partitions it dropped.

    The store decides what goes (schema.sql, auditq_apply_retention): its policy, written by
    the owner only, is the limit; each removal is a sealed store action and an
    audit.partition_dropped / audit.rows_expired event stored in the same transaction."""
    dropped = []
    for row in await apply_retention(conn):
        name = row["partition"]
        if row["rows"] is None:
            logger.warning("%s is busy (a long read holds it): retention applies later", name)
        elif name == "audit_log_default":
            logger.warning("deleted %d rows of the default partition past retention", row["rows"])
        else:
            logger.warning("dropped partition %s (%d rows) past retention", name, row["rows"])
            dropped.append(name)
    return dropped


async def maintain(ctx: dict[str, Any]) -> None:
    """Make partitions ahead, apply the store's retention policy, and prune the delivery log
    of the entries whose rows retention removed."""
    state: WorkerState = ctx[STATE]
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=state.settings.partitions_ahead_months)
        await drop_expired_partitions(conn)
        await destinations.prune(conn)
