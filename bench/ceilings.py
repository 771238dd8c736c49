"""The ceilings: what the servers alone take, with no producer or worker code in the way.

- PostgreSQL: COPY of pre-built rows into the same schema, batches of 1,000, from one
  connection and from two in parallel (the better of the two is the ceiling).
- Redis: pipelined enqueues through service/queue/enqueue.lua with no consumer, one job per event
  and one job per 500 events.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import Stack, count_rows, event_fields
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.store import db

COPY_BATCH = 1000  # rows per COPY
PIPELINE = 1000  # enqueues per pipeline round trip
BATCHED_JOB = 500  # events per job in the batched enqueue figure (the client's flush size)

COLUMNS = (
    "id", "ts", "action", "category", "severity", "outcome",
    "actor_id", "actor_type", "actor_name", "actor_email",
    "entity_type", "entity_id", "entity_name", "tenant",
    "request_id", "ip", "user_agent", "method", "path", "status", "duration_ms",
    "changes", "metadata", "presentation", "source",
)  # fmt: skip


def row(run: str, i: int, ts: datetime | None = None) -> tuple[Any, ...]:
    """The benchmark event as a row of audit_log, ready for COPY."""
    e = event_fields(run, i)
    actor, entity, request = e["actor"], e["entity"], e["request"]
    return (
        uuid.uuid4(),
        ts or datetime.now(UTC),
        e["action"],
        e["action"].split(".", 1)[0],
        "info",
        "success",
        actor["id"],
        actor["type"],
        actor["name"],
        actor["email"],
        entity["type"],
        entity["id"],
        entity["name"],
        e["tenant"],
        request["id"],
        request["ip"],
        request["user_agent"],
        request["method"],
        request["path"],
        request["status"],
        request["duration_ms"],
        json.dumps(e["changes"]),
        json.dumps(e["metadata"]),
        json.dumps({"code": f"audit.{e['action']}", "params": {}}),
        e["source"],
    )


async def _copy(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), COPY_BATCH):
        await conn.copy_records_to_table(
            "audit_log", records=rows[start : start + COPY_BATCH], columns=COLUMNS
        )


async def copy_ceiling(count: int) -> dict[str, Any]:
    """COPY `count` pre-built rows from 1 connection, then from 2 (fresh database each)."""
    result: dict[str, Any] = {}
    with Stack() as stack:
        for connections in (1, 2):
            name = f"copy{connections}"
            stack.stack.postgres.create_database(name)
            url = stack.stack.postgres.url_for(name)
            await db.migrate(url)
            rows = [row(name, i) for i in range(count)]
            share = -(-count // connections)
            conns = [await asyncpg.connect(url) for _ in range(connections)]
            before = stack.server_cpu()["postgres"]
            started = time.perf_counter()
            await asyncio.gather(
                *(_copy(c, rows[n * share : (n + 1) * share]) for n, c in enumerate(conns))
            )
            elapsed = time.perf_counter() - started
            cpu = stack.server_cpu()["postgres"] - before  # backends still open: counted
            assert await count_rows(conns[0]) == count
            for conn in conns:
                await conn.close()
            result[f"{connections}_connection{'s' if connections > 1 else ''}"] = {
                "eps": count / elapsed,
                "postgres_cpu_s_per_10k": cpu * 10_000 / count,
            }
    result["eps"] = max(v["eps"] for v in result.values())
    return result


async def redis_ceiling(count: int) -> dict[str, Any]:
    """Pipelined enqueue.lua calls with no consumer: events/s, per event and batched."""
    result: dict[str, Any] = {}
    with Stack() as stack:
        redis = aioredis.Redis.from_url(stack.redis_url)
        sha = await redis.script_load(ENQUEUE_SCRIPT)
        events = [json.dumps(event_fields("redis", i)) for i in range(count)]
        for name, per_job in (("per_event", 1), ("batched_500", BATCHED_JOB)):
            queue = f"ceiling-{name}"
            payloads = [
                "[" + ",".join(events[s : s + per_job]) + "]" for s in range(0, count, per_job)
            ]
            started = time.perf_counter()
            for start in range(0, len(payloads), PIPELINE):
                async with redis.pipeline(transaction=False) as pipe:
                    for payload in payloads[start : start + PIPELINE]:
                        pipe.evalsha(sha, 1, queue, payload)
                    await pipe.execute()
            elapsed = time.perf_counter() - started
            result[name] = {"eps": count / elapsed, "jobs": await redis.zcard(queue)}
        await redis.aclose()
    return result


async def run_all(copy_rows: int, redis_events: int) -> dict[str, Any]:
    print("  ceilings: COPY …", file=sys.stderr, flush=True)
    copy = await copy_ceiling(copy_rows)
    print(f"    {copy['eps']:,.0f} rows/s", file=sys.stderr, flush=True)
    print("  ceilings: Redis enqueue …", file=sys.stderr, flush=True)
    redis = await redis_ceiling(redis_events)
    print(
        f"    {redis['per_event']['eps']:,.0f} events/s one job each, "
        f"{redis['batched_500']['eps']:,.0f} in jobs of {BATCHED_JOB}",
        file=sys.stderr,
        flush=True,
    )
    return {"copy": copy, "redis_enqueue": redis}
