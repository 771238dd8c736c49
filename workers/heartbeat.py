"""The worker's heartbeat: who is working, since when, how much, and whether its breaker is open."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from service.queue.keys import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, worker_key, workers_key
from workers import functions
from workers.state import WorkerState

logger = logging.getLogger(__name__)


def snapshot(state: WorkerState, *, worker_id: str, started_at: float) -> dict[str, str]:
    """The fields of one heartbeat."""
    worker = state.worker
    running = sum(1 for t in worker.tasks.values() if not t.done()) if worker is not None else 0
    return {
        "id": worker_id,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "started_at": f"{started_at:.3f}",
        "last_seen": f"{time.time():.3f}",
        "jobs_running": str(running),
        "jobs_done": str(state.tasks_complete),
        "jobs_failed": str(state.tasks_failed),
        "events_stored": str(state.events_stored),
        "events_dead_lettered": str(state.events_dead_lettered),
        "breaker_open": "1" if state.breaker.is_open else "0",
    }


async def beat(state: WorkerState, *, worker_id: str, started_at: float) -> None:
    """Write one heartbeat: the worker's hash (expiring) and its entry in the workers set."""
    queue = state.settings.queue
    key = worker_key(queue, worker_id)
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=snapshot(state, worker_id=worker_id, started_at=started_at))
        pipe.expire(key, HEARTBEAT_TTL)
        pipe.sadd(workers_key(queue), worker_id)
        await pipe.execute()


async def run(state: WorkerState, *, worker_id: str, interval: float = HEARTBEAT_INTERVAL) -> None:
    """Beat every `interval` seconds until cancelled; a failed beat is logged, not fatal."""
    started_at = time.time()
    while True:
        try:
            await beat(state, worker_id=worker_id, started_at=started_at)
            await functions.ensure_loaded(state)  # a Redis that lost the library gets it back
        except Exception as exc:  # Redis away: the next beat tries again
            logger.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
        state.stored_report.flush_if_due()  # the tail of a burst is said within a beat
        await asyncio.sleep(interval)


async def forget(state: WorkerState, *, worker_id: str) -> None:
    """Remove a stopping worker from the stats at once instead of after HEARTBEAT_TTL."""
    queue = state.settings.queue
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.delete(worker_key(queue, worker_id))
        pipe.srem(workers_key(queue), worker_id)
        await pipe.execute()
