"""Helpers for tests of the admin API: tokens per role, the error envelope, raw enqueueing."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from service.queue.enqueue import ENQUEUE_SCRIPT
from service.store.tokens import TOKEN_PREFIX, hash_token


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Authorization headers for each role (and a name per token, its audit actor)."""

    admin: dict[str, str]
    reader: dict[str, str]
    ingest: dict[str, str]


async def insert_token(pg: asyncpg.Connection, *, name: str, role: str) -> str:
    """A token stored by the test's owner directly: no token.created row among the test's own
    (the product makes tokens through auditq_create_token, which stores that event)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await pg.execute(
        "INSERT INTO api_token (name, role, token_hash) VALUES ($1, $2, $3)",
        name,
        role,
        hash_token(token),
    )
    return token


async def make_tokens(pg: asyncpg.Connection) -> Tokens:
    """Make one token of each role."""

    async def header(role: str) -> dict[str, str]:
        token = await insert_token(pg, name=f"test-{role}", role=role)
        return {"Authorization": f"Bearer {token}"}

    return Tokens(
        admin=await header("admin"), reader=await header("reader"), ingest=await header("ingest")
    )


async def error_of(response: Any, status: int) -> dict[str, str]:
    """Assert the response is the error envelope with `status`; return its error."""
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    error: dict[str, str] = body["error"]
    return error


async def enqueue(
    redis: aioredis.Redis, queue: str, payload: str | bytes, task_id: str = ""
) -> str:
    """Enqueue with the Lua script, as any producer would."""
    result = await redis.eval(ENQUEUE_SCRIPT, 1, queue, payload, task_id)
    return result.decode()  # type: ignore[no-any-return]


async def queued_payloads(redis: aioredis.Redis, queue: str) -> list[bytes]:
    """The raw jobs waiting in the queue."""
    ids = [m.decode() for m in await redis.zrange(queue, 0, -1)]
    jobs = await redis.mget([f"arq:job:{i}" for i in ids]) if ids else []
    return [job for job in jobs if job is not None]


async def admin_events(pg: asyncpg.Connection, action_prefix: str = "") -> list[dict[str, Any]]:
    """The admin actions stored (as `api`, straight into PostgreSQL), oldest first."""
    rows = await pg.fetch(
        "SELECT action, actor_id, actor_type, actor_name, entity_type, entity_id, metadata,"
        " path, source, received_via FROM audit_log"
        " WHERE received_via = 'api' AND starts_with(action, $1) ORDER BY seq",
        action_prefix,
    )
    return [dict(r) for r in rows]
