"""A worker stopped before it finished starting (a Ctrl-C right after `auditq run`) lets go of
everything its start-up made: no connection to Redis stays open, no background task runs on."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import redis.asyncio as aioredis
from arq.worker import Worker

from service.settings import Settings
from tests.support.polling import wait_for
from workers.runner import build_worker, run_until, worker_state

EARLY_STEPS = 12  # loop steps of the start-up a stop is tried at, one by one: making its pool


def _after(steps: int) -> Callable[[Worker], bool]:
    left = [steps]

    def reached(worker: Worker) -> bool:
        left[0] -= 1
        return left[0] < 0

    return reached


# The stages of a start-up a stop can come in, each told by what the worker holds by then.
STAGES: dict[str, Callable[[Worker], bool]] = {
    **{f"{n} loop steps after it started": _after(n) for n in range(EARLY_STEPS)},
    "once it has its Redis pool": lambda worker: worker._pool is not None,
    "once its start-up has its database pool": lambda worker: worker_state(worker).pool is not None,
}


async def _clients(redis: aioredis.Redis) -> set[int]:
    """The ids of the connections Redis has open now."""
    return {client["id"] for client in await redis.client_list()}


async def test_a_worker_stopped_while_it_starts_leaves_nothing_open(
    settings: Settings, redis: aioredis.Redis
) -> None:
    tasks_before = asyncio.all_tasks()
    clients_before = await _clients(redis)
    for stage, reached in STAGES.items():
        worker = build_worker(settings)
        stop = asyncio.Event()
        running = asyncio.create_task(run_until(worker, stop))
        # One loop step at a time (no event tells these stages): the stop lands at that stage.
        while not reached(worker) and not running.done():  # noqa: ASYNC110
            await asyncio.sleep(0)
        stop.set()
        await running
        # A connection dropped unclosed warns (an error here) once collected: in this test.
        gc.collect()
        left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        left.discard(asyncio.current_task())  # type: ignore[arg-type]
        assert not left, f"stopped {stage}: tasks still running: {left}"

        async def let_go() -> bool:
            return not await _clients(redis) - clients_before

        await wait_for(let_go, what=f"Redis to have none of its connections (stopped {stage})")
