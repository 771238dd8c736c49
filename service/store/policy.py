"""The store's policy (contract §6): how long rows are kept, written only by the schema owner.

The removal functions of schema.sql read their limit here; the worker only asks the store to
apply it. Every change is stamped (when, by which role) and sealed as a store action.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

SHOW = "SELECT retention_days, set_at, set_by FROM store_policy"
SET_RETENTION = (
    "UPDATE store_policy SET retention_days = $1 RETURNING retention_days, set_at, set_by"
)
# The worker's maintenance: one row per partition (or the default one's rows) removed, or
# busy (rows null) and left for the next run.
SUBJECT_TYPES = "SELECT subject_entity_types FROM store_policy"
SET_SUBJECT_TYPES = "UPDATE store_policy SET subject_entity_types = $1"
APPLY_RETENTION = "SELECT partition, rows, action_id FROM auditq_apply_retention($1)"
LOCK_TIMEOUT_MS = 200  # a partition busy longer (a long read) is left for the next run


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """The store's policy: `retention_days` null keeps every row."""

    retention_days: int | None
    set_at: datetime | None
    set_by: str | None


class NotOwner(Exception):
    """The role may not write the policy (only the schema owner may)."""


async def show(conn: asyncpg.Connection) -> Policy:
    """The policy as stored."""
    row = await conn.fetchrow(SHOW)
    if row is None:
        return Policy(retention_days=None, set_at=None, set_by=None)
    return Policy(retention_days=row["retention_days"], set_at=row["set_at"], set_by=row["set_by"])


async def set_retention(conn: asyncpg.Connection, days: int | None) -> Policy:
    """Set the retention (None: keep every row); NotOwner unless this is the owner's role."""
    try:
        row = await conn.fetchrow(SET_RETENTION, days)
    except asyncpg.InsufficientPrivilegeError:
        raise NotOwner from None
    assert row is not None  # schema.sql makes the one row
    return Policy(retention_days=row["retention_days"], set_at=row["set_at"], set_by=row["set_by"])


async def subject_types(conn: asyncpg.Connection) -> list[str] | None:
    """The entity types the owner pinned as subjects' (None: each caller's own setting)."""
    types: list[str] | None = await conn.fetchval(SUBJECT_TYPES)
    return types


async def set_subject_types(conn: asyncpg.Connection, types: list[str]) -> None:
    """Pin the subjects' entity types; NotOwner unless this is the owner's role."""
    try:
        await conn.execute(SET_SUBJECT_TYPES, types)
    except asyncpg.InsufficientPrivilegeError:
        raise NotOwner from None


async def apply_retention(
    conn: asyncpg.Connection, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS
) -> list[asyncpg.Record]:
    """Ask the store to remove what its policy lets go; (partition, rows, action_id) each."""
    rows: list[asyncpg.Record] = await conn.fetch(APPLY_RETENTION, lock_timeout_ms)
    return rows
