"""Helpers for tests that look for a value everywhere auditq keeps data: every row, every key."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
import redis.asyncio as aioredis


async def database_as_text(pg: asyncpg.Connection) -> str:
    """Every column (the full-text `search` column too) of every row of every table."""
    tables = await pg.fetch(
        "SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    )
    parts = []
    for table in tables:
        rows = await pg.fetch(f"SELECT t::text AS row FROM {table['name']} t")  # names from PG
        parts += [row["row"] for row in rows]
    search = await pg.fetch("SELECT search::text AS s FROM audit_log")
    parts += [row["s"] for row in search]
    return "\n".join(parts)


async def redis_as_text(client: aioredis.Redis, patterns: Iterable[str] = ("*",)) -> str:
    """Every key matching `patterns` and its value, read by its type."""
    redis: Any = client  # redis-py's async methods are typed as sync-or-async unions
    parts: list[str] = []
    for pattern in patterns:
        async for key in redis.scan_iter(match=pattern, count=1000):
            kind = (await redis.type(key)).decode()
            if kind == "string":
                value: Any = await redis.get(key)
            elif kind == "hash":
                value = await redis.hgetall(key)
            elif kind == "zset":
                value = await redis.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = await redis.xrange(key)
            elif kind == "list":
                value = await redis.lrange(key, 0, -1)
            elif kind == "set":
                value = await redis.smembers(key)
            else:
                value = kind
            parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


async def set_retention(owner: asyncpg.Connection, days: int | None) -> None:
    """Set the store's retention policy, as its owner (`auditq policy set` does the same)."""
    await owner.execute("UPDATE store_policy SET retention_days = $1", days)


def days_since(day: Any) -> int:
    """Whole days from `day` (a date) to today, UTC: a retention whose cutoff falls on it."""
    from datetime import UTC, datetime

    return (datetime.now(UTC).date() - day).days
