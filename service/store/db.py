"""PostgreSQL access: the schema, connection pools, and errors translated at the boundary."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from service.store import schema
from service.store.partitions import ensure_partitions

# A connection of its own or one lent by a pool: the query functions take either.
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
# Serialise concurrent `auditq migrate` runs (several containers starting at once).
MIGRATE_LOCK_KEY = 0x61756469  # "audi"
COMMAND_TIMEOUT = 30.0  # seconds; a statement that takes longer is treated as an outage


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(database_url: str) -> asyncpg.Connection:
    """Open one connection with auditq's codecs."""
    conn = await asyncpg.connect(database_url, command_timeout=COMMAND_TIMEOUT)
    await _init_connection(conn)
    return conn


async def create_pool(database_url: str, *, size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """Open a pool with auditq's codecs."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=size,
        command_timeout=COMMAND_TIMEOUT,
        init=_init_connection,
        **kwargs,
    )
    return pool


async def migrate(database_url: str, *, months_ahead: int = 3) -> schema.Upgrade:
    """Bring the store to the current schema, make partitions ahead; say what was done.

    All or nothing (one transaction); safe to repeat, even concurrently.
    """
    conn = await asyncpg.connect(database_url, command_timeout=COMMAND_TIMEOUT)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
            done = await schema.upgrade(conn)
            await ensure_partitions(conn, months_ahead=months_ahead)
    finally:
        await conn.close()
    return done


async def schema_status(database_url: str) -> list[schema.VersionState] | None:
    """Every known schema version, applied or pending; None for an empty database."""
    conn = await asyncpg.connect(database_url, command_timeout=COMMAND_TIMEOUT)
    try:
        return await schema.status(conn)
    finally:
        await conn.close()
