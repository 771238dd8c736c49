"""Helpers for tests of the admin API: tokens per role, the error envelope, raw enqueueing."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from service.queue import ENQUEUE_SCRIPT
from service.store.tokens import create_token


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Authorization headers for each role (and a name per token, its audit actor)."""

    admin: dict[str, str]
    reader: dict[str, str]
    ingest: dict[str, str]


async def make_tokens(pg: asyncpg.Connection) -> Tokens:
    """Make one token of each role."""

    async def header(role: str) -> dict[str, str]:
        token = await create_token(pg, name=f"test-{role}", role=role)  # type: ignore[arg-type]
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
