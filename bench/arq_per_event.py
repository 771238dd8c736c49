"""The one-job-per-event design on arq: each job is one event, written with one INSERT.

    python -m bench.arq_per_event REDIS_URL DATABASE_URL

arq's defaults (max_jobs 10, pickle), except the poll delay, set to auditq's (0.02 s) so
both designs pick up work equally fast; rows go into auditq's schema, like every system here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import datetime
from typing import Any

import asyncpg
from arq import Worker
from arq.connections import RedisSettings

from workers.runner import POLL_DELAY

INSERT = """
INSERT INTO audit_log (
    id, ts, action, category, severity, outcome,
    actor_id, actor_type, actor_name, actor_email,
    entity_type, entity_id, entity_name, tenant,
    request_id, ip, user_agent, method, path, status, duration_ms,
    changes, metadata, presentation, source)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
        $15, $16::inet, $17, $18, $19, $20, $21, $22::jsonb, $23::jsonb, $24::jsonb, $25)
"""


async def store_event(ctx: dict[str, Any], event: dict[str, Any]) -> None:
    actor, entity, request = event["actor"], event["entity"], event["request"]
    await ctx["pg"].execute(
        INSERT,
        event["id"],
        datetime.fromisoformat(event["ts"]),
        event["action"],
        event["action"].split(".", 1)[0],
        "info",
        "success",
        actor["id"],
        actor["type"],
        actor["name"],
        actor["email"],
        entity["type"],
        entity["id"],
        entity["name"],
        event["tenant"],
        request["id"],
        request["ip"],
        request["user_agent"],
        request["method"],
        request["path"],
        request["status"],
        request["duration_ms"],
        json.dumps(event["changes"]),
        json.dumps(event["metadata"]),
        json.dumps({"code": f"audit.{event['action']}", "params": {}}),
        event["source"],
    )


async def main(redis_url: str, database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["pg"] = pool

    worker = Worker(
        functions=[store_event],
        redis_settings=RedisSettings.from_dsn(redis_url),
        poll_delay=POLL_DELAY,
        on_startup=startup,
        handle_signals=True,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
        await pool.close()


if __name__ == "__main__":
    # arq's own CLI logs every job start and end at INFO: keep its defaults.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s: %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
