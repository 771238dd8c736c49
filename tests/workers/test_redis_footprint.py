"""Redis keeps nothing per stored event: once the worker has stored them, what is left of
5,000 events in Redis is counts and capped bookkeeping, not the events or their keys."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import redis.asyncio as aioredis

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.queue.keys import EVENTS_STORED, counters_key
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.stores import redis_as_text
from tests.support.worker import running_worker

# What is left is ~10 KB whatever the count (9.7 KB after 5,000 events, 11.3 KB after 20,000):
# a leak of the bound's 50 B an event would be 250 KB here, 25 times that.
EVENTS = 5_000
BYTES_PER_EVENT = 50  # the bound: 100,000 stored events grow Redis by ≤ 5 MB


async def key_sizes(redis: aioredis.Redis) -> dict[bytes, int]:
    """Every key's memory (MEMORY USAGE, all of its elements sampled)."""
    sizes = {}
    async for key in redis.scan_iter(count=1000):
        size = await redis.memory_usage(key, samples=0)
        if size is not None:
            sizes[key] = size
    return sizes


async def test_stored_events_leave_no_trace_in_redis(
    settings: Settings, redis: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    before = await key_sizes(redis)
    ids: list[str | None] = []
    async with running_worker(settings):
        # 500 awaited captures share this loop with the worker: on a loaded machine some wait
        # past the default 0.25 s bound (tests/producer's to check); here every one must land.
        patient = dataclasses.replace(settings, capture_timeout_s=5.0)
        async with AuditClient.from_settings(patient) as client:
            for _ in range(EVENTS // 500):  # 500 callers at a time
                events = [AuditEvent(action="doc.viewed", metadata={"n": i}) for i in range(500)]
                ids += await asyncio.gather(*map(client.capture, events))
        assert None not in ids

        async def all_stored() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM audit_log") == EVENTS)

        await wait_for(all_stored, within_s=120)

        async def counted() -> bool:  # the worker's bookkeeping of the last write is done
            stored = await redis.hget(counters_key(settings.queue), EVENTS_STORED)
            return int(stored or 0) == EVENTS

        await wait_for(counted)
    after = await key_sizes(redis)
    grown = sum(size - before.get(key, 0) for key, size in after.items())
    assert grown <= BYTES_PER_EVENT * EVENTS, f"{grown / EVENTS:.0f} B per stored event"
    kept = await redis_as_text(redis)
    assert not [i for i in ids[::241] if i in kept]  # no event, not even its id
