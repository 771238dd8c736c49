"""PostgreSQL access: the schema, connection pools, and errors translated at the boundary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from service.errors import ConfigError
from service.store import schema
from service.store.partitions import ensure_partitions
from service.subject_key import keep_moved_key

# A connection of its own or one lent by a pool: the query functions take either.
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
# Serialise concurrent `auditq migrate` runs (several containers starting at once).
MIGRATE_LOCK_KEY = 0x61756469  # "audi"
COMMAND_TIMEOUT = 30.0  # seconds; a statement that takes longer is treated as an outage
# Run first by every migrate (new store or old): who may create objects where auditq's live.
PREFLIGHT_PATH = Path(__file__).with_name("preflight.sql")
# How preflight.sql begins its refusal of a schema others may create objects in.
UNSAFE_SCHEMA = "schema public "


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


async def ping(conn: Conn) -> None:
    """One round trip: the server answers queries."""
    await conn.fetchval("SELECT 1")


# Releases before the subject key file kept the key of pseudonyms in the database.
OLD_SUBJECT_KEY = """
SELECT secret FROM api_secret WHERE name = 'subject'
"""
DROP_OLD_SUBJECT_KEY = "DELETE FROM api_secret WHERE name = 'subject'"


# The subject types of a new store: the migrating process's setting (contract §9), pinned in
# the policy so an erasure's caller can only narrow them (schema.sql, auditq_erase_subject).
PIN_SUBJECT_TYPES = """
UPDATE store_policy SET subject_entity_types = $1 WHERE subject_entity_types IS NULL
"""


async def migrate(
    database_url: str,
    *,
    months_ahead: int = 3,
    subject_key_path: Path | None = None,
    subject_entity_types: frozenset[str] | None = None,
) -> schema.Upgrade:
    """Bring the store to the current schema, make partitions ahead; say what was done.

    All or nothing (one transaction); safe to repeat, even concurrently. A store that still
    holds the key of pseudonyms has it moved out to `subject_key_path` first (migration 0002
    then deletes it): the pseudonyms of subjects erased before stay.
    """
    conn = await asyncpg.connect(database_url, command_timeout=COMMAND_TIMEOUT)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
            await _move_subject_key(conn, subject_key_path)
            try:
                await conn.execute(PREFLIGHT_PATH.read_text())
            except asyncpg.InsufficientPrivilegeError as exc:
                if str(exc).startswith(UNSAFE_SCHEMA):  # one line naming the fix
                    raise ConfigError(f"migrate refused: {exc}") from None
                raise
            done = await schema.upgrade(conn)
            if subject_entity_types:
                await conn.execute(PIN_SUBJECT_TYPES, sorted(subject_entity_types))
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


async def _move_subject_key(conn: asyncpg.Connection, path: Path | None) -> None:
    if await conn.fetchval("SELECT to_regclass('public.api_secret')") is None:
        return  # a new store
    try:
        async with conn.transaction():  # a savepoint: migrate's transaction goes on
            old = await conn.fetchval(OLD_SUBJECT_KEY)
    except asyncpg.InsufficientPrivilegeError:
        return  # not the owner: schema.sql refuses this role anyway
    if old is None:
        return
    if path is None:
        raise ConfigError(
            "this store keeps the key of pseudonyms in the database: migrate it with "
            "AUDITQ_SUBJECT_KEY_FILE set, to move the key out to that file"
        )
    keep_moved_key(path, bytes(old))
    # Gone from the store with this migrate's transaction (also where 0002 ran long ago).
    await conn.execute(DROP_OLD_SUBJECT_KEY)
