"""Queue stats and metrics on real servers: counts, lag, throughput, worker heartbeats."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.queue.keys import worker_key, workers_key
from service.settings import Settings
from tests.support.admin_api import Tokens, enqueue
from tests.support.polling import wait_for
from tests.support.worker import running_worker

STATS = "/api/v1/admin/queue/stats"


def events(n: int) -> str:
    return json.dumps([{"id": str(uuid.uuid4()), "action": "record.viewed"} for _ in range(n)])


async def stats(api: TestClient[Any, Any], tokens: Tokens) -> dict[str, Any]:
    async with api.get(STATS, headers=tokens.reader) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return body


async def test_stats_reflect_a_queued_job_then_a_working_worker(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    empty = await stats(api, tokens)
    assert empty == {
        "queue": settings.queue,
        "counts": {"queued": 0, "in_progress": 0, "retrying": 0, "failed": 0, "complete": 0},
        "oldest_queued_age_s": 0.0,
        "events_per_s_1m": 0.0,
        "workers": [],
    }
    await enqueue(redis, settings.queue, events(30))
    waiting = await stats(api, tokens)
    assert waiting["counts"]["queued"] == 1
    assert waiting["oldest_queued_age_s"] >= 0

    async with running_worker(settings):

        async def worked() -> bool:
            now = await stats(api, tokens)
            return (
                now["counts"]["complete"] == 1
                and now["counts"]["queued"] == 0
                and len(now["workers"]) == 1
                and now["workers"][0]["events_stored"] == 30
            )

        await wait_for(worked, within_s=30)
        # The current second is not counted: wait for it to end.
        await wait_for(lambda: _rate_positive(api, tokens), within_s=30)
        worker = (await stats(api, tokens))["workers"][0]
        assert worker["breaker_open"] is False and worker["jobs_done"] == 1
        assert worker["pid"] > 0 and worker["host"]
        async with api.get("/metrics") as response:  # no token: Prometheus scrapes it as is
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    assert f'auditq_tasks{{queue="{settings.queue}",status="complete"}} 1.0' in text
    assert f'auditq_events_stored_total{{queue="{settings.queue}"}} 30.0' in text
    assert f'auditq_worker_breaker_open{{worker="{worker["id"]}"}} 0.0' in text
    assert 'auditq_api_capture_failures_total{reason="failed"} 0.0' in text
    assert "auditq_api_capture_uncertain_total 0.0" in text
    assert "auditq_api_capture_unreplicated_total 0.0" in text
    # A stopped worker leaves the stats at once, not after its heartbeat expires.
    assert (await stats(api, tokens))["workers"] == []


async def _rate_positive(api: TestClient[Any, Any], tokens: Tokens) -> bool:
    return bool((await stats(api, tokens))["events_per_s_1m"] > 0)


async def test_a_silent_worker_is_forgotten(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    await redis.sadd(workers_key(settings.queue), "ghost", "alive")
    await redis.hset(
        worker_key(settings.queue, "alive"),
        mapping={"id": "alive", "host": "h", "pid": "7", "breaker_open": "1", "last_seen": "1"},
    )
    workers = (await stats(api, tokens))["workers"]
    assert [(w["id"], w["breaker_open"]) for w in workers] == [("alive", True)]
    assert await redis.smembers(workers_key(settings.queue)) == {b"alive"}
