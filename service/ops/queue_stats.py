"""Queue stats: counts per status, lag, throughput and the workers' last heartbeats."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import cast

import msgspec
import redis.asyncio as aioredis

from service.ops.task_model import StatusCounts
from service.ops.tasks import TaskQueue
from service.queue.keys import (
    EVENTS_DEAD_LETTERED,
    EVENTS_RETRIED,
    EVENTS_STORED,
    counters_key,
    stored_key,
    worker_key,
    workers_key,
)

THROUGHPUT_WINDOW = 60  # seconds behind events_per_s_1m (the current, partial second excluded)
THROUGHPUT_MINUTES = 15  # minutes of the per-minute series (keys.STORED_COUNTER_TTL keeps them)


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    jobs_running: int
    jobs_done: int
    jobs_failed: int
    events_stored: int
    events_dead_lettered: int
    breaker_open: bool


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """Queue health at a glance."""

    queue: str
    counts: StatusCounts
    oldest_queued_age_s: float
    events_per_s_1m: float
    workers: list[WorkerInfo]


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """Running totals since the queue began (they survive worker restarts)."""

    events_stored: int
    events_dead_lettered: int
    events_retried: int


async def events_per_second(redis: aioredis.Redis, queue: str) -> float:
    """Events stored per second over the last full minute."""
    now = int(time.time())
    keys = [stored_key(queue, second) for second in range(now - THROUGHPUT_WINDOW, now)]
    counts = await redis.mget(keys)
    return round(sum(int(c) for c in counts if c is not None) / THROUGHPUT_WINDOW, 3)


class ThroughputMinute(msgspec.Struct, frozen=True, kw_only=True):
    """Events stored per second, averaged over the minute that ends at `until`."""

    until: datetime
    events_per_s: float


class Throughput(msgspec.Struct, frozen=True, kw_only=True):
    """Events stored per second, minute by minute, oldest first (the last ends now)."""

    queue: str
    per_minute: list[ThroughputMinute]


async def throughput(redis: aioredis.Redis, queue: str) -> Throughput:
    """The last THROUGHPUT_MINUTES minutes of events/s, from the workers' per-second counters."""
    now = int(time.time())  # the current, partial second excluded, as in events_per_second
    start = now - THROUGHPUT_MINUTES * THROUGHPUT_WINDOW
    counts = await redis.mget([stored_key(queue, second) for second in range(start, now)])
    per_minute = []
    for minute in range(THROUGHPUT_MINUTES):
        window = counts[minute * THROUGHPUT_WINDOW : (minute + 1) * THROUGHPUT_WINDOW]
        stored = sum(int(c) for c in window if c is not None)
        until = datetime.fromtimestamp(start + (minute + 1) * THROUGHPUT_WINDOW, UTC)
        per_minute.append(
            ThroughputMinute(until=until, events_per_s=round(stored / THROUGHPUT_WINDOW, 3))
        )
    return Throughput(queue=queue, per_minute=per_minute)


async def workers(redis: aioredis.Redis, queue: str) -> list[WorkerInfo]:
    """The workers that sent a heartbeat lately; forget those that went silent."""
    members = await cast(Awaitable[set[bytes]], redis.smembers(workers_key(queue)))
    ids = sorted(m.decode() for m in members)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(worker_key(queue, worker_id))
        beats = await pipe.execute()
    alive: list[WorkerInfo] = []
    gone: list[str] = []
    for worker_id, raw in zip(ids, beats, strict=True):
        if not raw:  # its heartbeat expired: the worker stopped without saying so
            gone.append(worker_id)
            continue
        alive.append(_worker(worker_id, {k.decode(): v.decode() for k, v in raw.items()}))
    if gone:
        await cast(Awaitable[int], redis.srem(workers_key(queue), *gone))
    return alive


def _worker(worker_id: str, beat: dict[str, str]) -> WorkerInfo:
    def number(name: str) -> int:
        try:
            return int(beat.get(name, "0"))
        except ValueError:
            return 0

    def moment(name: str) -> datetime:
        try:
            return datetime.fromtimestamp(float(beat.get(name, "0")), UTC)
        except ValueError:
            return datetime.fromtimestamp(0, UTC)

    return WorkerInfo(
        id=worker_id,
        host=beat.get("host", ""),
        pid=number("pid"),
        started_at=moment("started_at"),
        last_seen=moment("last_seen"),
        jobs_running=number("jobs_running"),
        jobs_done=number("jobs_done"),
        jobs_failed=number("jobs_failed"),
        events_stored=number("events_stored"),
        events_dead_lettered=number("events_dead_lettered"),
        breaker_open=beat.get("breaker_open") == "1",
    )


async def totals(redis: aioredis.Redis, queue: str) -> Totals:
    """The queue's running totals."""
    fields = [EVENTS_STORED, EVENTS_DEAD_LETTERED, EVENTS_RETRIED]
    raw = await cast(Awaitable[list[bytes | None]], redis.hmget(counters_key(queue), fields))
    stored, dead, retried = (int(v) if v is not None else 0 for v in raw)
    return Totals(events_stored=stored, events_dead_lettered=dead, events_retried=retried)


async def queue_stats(tasks: TaskQueue) -> QueueStats:
    """Gather the stats of `tasks`' queue."""
    counts, oldest = await tasks.counts()
    return QueueStats(
        queue=tasks.queue,
        counts=counts,
        oldest_queued_age_s=oldest,
        events_per_s_1m=await events_per_second(tasks.redis, tasks.queue),
        workers=await workers(tasks.redis, tasks.queue),
    )
