"""The 15-minute throughput series on real servers: events/s per minute, from worker counters."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.queue.keys import STORED_COUNTER_TTL, stored_key
from service.settings import Settings
from tests.support.admin_api import Tokens, enqueue, error_of
from tests.support.polling import wait_for
from tests.support.worker import running_worker

THROUGHPUT = "/api/v1/admin/queue/throughput"


async def series(api: TestClient[Any, Any], tokens: Tokens) -> list[dict[str, Any]]:
    async with api.get(THROUGHPUT, headers=tokens.reader) as response:
        assert response.status == 200, await response.text()
        per_minute: list[dict[str, Any]] = (await response.json())["per_minute"]
    return per_minute


async def test_minutes_average_the_per_second_counters(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    assert STORED_COUNTER_TTL >= 15 * 60  # the counters outlive the window they are read for
    now = int(time.time())
    # Seconds well inside their minute, whatever second the request is answered in.
    for seconds_ago, stored in ((30, 120), (200, 60), (2000, 999)):
        await redis.set(stored_key(settings.queue, now - seconds_ago), stored, ex=60)
    minutes = await series(api, tokens)
    assert len(minutes) == 15
    ends = [datetime.fromisoformat(m["until"]).timestamp() for m in minutes]
    assert ends == sorted(ends) and all(b - a == 60 for a, b in itertools.pairwise(ends))
    rates = [m["events_per_s"] for m in minutes]
    assert rates[-1] == 2.0 and rates[-4] == 1.0  # 120 and 60 events over a minute
    assert sum(rates) == 3.0  # the counter of 33 minutes ago is outside the window


async def test_a_working_worker_shows_in_the_last_minute(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    async with api.get(THROUGHPUT) as response:
        await error_of(response, 401)
    events = [{"id": str(uuid.uuid4()), "action": "record.viewed"} for _ in range(12)]
    await enqueue(redis, settings.queue, json.dumps(events))
    async with running_worker(settings):

        async def counted() -> bool:
            return (await series(api, tokens))[-1]["events_per_s"] == 0.2  # 12 / 60 s

        await wait_for(counted, within_s=30)
