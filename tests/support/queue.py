"""What waits in a test's queue in Redis: its jobs and their events."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from service.queue.jobs import JOB_FUNCTION, deserialize_job


async def queued_jobs(redis: aioredis.Redis, queue: str) -> list[dict[str, Any]]:
    """Decode every job in the queue."""
    jobs = []
    for task_id in await redis.zrange(queue, 0, -1):
        raw = await redis.get(b"arq:job:" + task_id)
        assert raw is not None, task_id
        jobs.append(deserialize_job(raw))
    return jobs


async def queued_events(redis: aioredis.Redis, queue: str) -> list[dict[str, Any]]:
    """Every event of every job in the queue."""
    events: list[dict[str, Any]] = []
    for job in await queued_jobs(redis, queue):
        assert job["f"] == JOB_FUNCTION
        for segment in job["a"]:  # a merged job: one argument per producer batch
            payload = json.loads(segment)
            events += payload if isinstance(payload, list) else [payload]
    return events
