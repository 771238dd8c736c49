"""Quick figure: one worker's events/s for jobs of 1, 100 and 1,000 events (embedded servers).

Usage: .venv/bin/python -m bench.worker_throughput
Events are enqueued first (through the Lua script), then one in-process worker drains them;
the clock runs from the worker's start until the last row is visible.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from service.embedded.servers import EmbeddedStack
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.settings import Settings
from service.store import db
from workers.runner import build_worker, run_until

CASES = [(1, 5_000), (100, 50_000), (1_000, 100_000)]  # (events per job, events)


def event(i: int) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "ts": "2026-11-20T10:00:00Z",
        "action": "document.viewed",
        "actor": {"id": f"user-{i % 100}", "type": "user"},
        "entity": {"type": "document", "id": str(i)},
        "request": {"id": f"req-{i}", "ip": "203.0.113.7"},
        "metadata": {"i": i, "client": "bench"},
    }


async def run_case(stack: EmbeddedStack, per_job: int, total: int) -> float:
    database = f"bench_{per_job}"
    stack.postgres.create_database(database)
    url = stack.postgres.url_for(database)
    await db.migrate(url)
    queue = f"bench-{per_job}"
    redis = aioredis.Redis.from_url(stack.valkey.url)
    script = redis.register_script(ENQUEUE_SCRIPT)
    events = [event(i) for i in range(total)]
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, total, per_job):
            await script(
                keys=[queue], args=[json.dumps(events[start : start + per_job])], client=pipe
            )
        await pipe.execute()
    settings = Settings(redis_url=stack.valkey.url, database_url=url, queue=queue)
    conn = await asyncpg.connect(url)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run_until(build_worker(settings), stop))
    while await conn.fetchval("SELECT count(*) FROM audit_log") < total:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await conn.close()
    await redis.aclose()
    return total / elapsed


async def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="auditq-bench-"))
    stack = EmbeddedStack(data_dir)
    stack.start()
    try:
        print("| events per job | events | events/s |")
        print("|---:|---:|---:|")
        for per_job, total in CASES:
            eps = await run_case(stack, per_job, total)
            print(f"| {per_job} | {total} | {eps:,.0f} |", flush=True)
    finally:
        stack.stop()
        stack.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
