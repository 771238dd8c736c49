"""Bounds a producer cannot push past: a task over AUDITQ_MAX_JOB_BYTES is set aside unread,
and a task whose runs never end (it kills its worker) is set aside, not run forever."""

from __future__ import annotations

import dataclasses
import json

import redis.asyncio as aioredis

from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.queue.keys import oversized_key, unfinished_key
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker
from workers.retry import MAX_UNFINISHED_RUNS


def _events(n: int, blob: str = "") -> str:
    return json.dumps([{"action": "doc.viewed", "metadata": {"n": i, "b": blob}} for i in range(n)])


async def test_a_task_over_the_bound_is_set_aside_unread(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A Redis whose script allowed more than this worker reads (another limit, an old library).
    settings = dataclasses.replace(settings, max_job_bytes=100_000)
    big = _events(40, "x" * 4000)  # ~160 kB: each event is fine, the task is too big
    big_task = (await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, big)).decode()
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, _events(3))
    assert settings.database_url
    async with running_worker(settings):

        async def settled() -> bool:
            letter = await dead_letter.get(redis, settings.queue, big_task)
            assert settings.database_url
            return letter is not None and await count_rows(settings.database_url) == 3

        await wait_for(settled)
    letter = await dead_letter.get(redis, settings.queue, big_task)
    assert letter is not None
    assert letter.error_name == "OversizedTask" and "AUDITQ_MAX_JOB_BYTES" in letter.message
    assert letter.event_count == 1 and letter.payload is None  # unread
    kept = await redis.get(oversized_key(settings.queue, big_task))
    assert kept is not None and big.encode()[:100] in kept.replace(b'\\"', b'"')
    assert await redis.zcard(settings.queue) == 0


async def test_a_task_whose_runs_never_end_is_set_aside_with_its_events(
    settings: Settings, redis: aioredis.Redis
) -> None:
    task = (await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, _events(2))).decode()
    # As after MAX_UNFINISHED_RUNS runs that each killed their worker.
    await redis.hset(unfinished_key(settings.queue), task, MAX_UNFINISHED_RUNS)
    async with running_worker(settings):

        async def set_aside() -> bool:
            return await dead_letter.get(redis, settings.queue, task) is not None

        await wait_for(set_aside)
    letter = await dead_letter.get(redis, settings.queue, task)
    assert letter is not None and letter.error_name == "UnfinishedRuns"
    assert isinstance(letter.payload, str) and '"n": 1' in letter.payload  # its text, unparsed
    assert settings.database_url and await count_rows(settings.database_url) == 0
    assert not await redis.hexists(unfinished_key(settings.queue), task)
