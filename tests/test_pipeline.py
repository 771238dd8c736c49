"""The write path end to end: producers → queue → worker → rows, exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from service.events import Actor, AuditEvent, Entity
from service.producer.client import AuditClient
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker

PRODUCERS = 5
EVENTS_PER_PRODUCER = 2_000


def make_event(producer: int, i: int) -> AuditEvent:
    return AuditEvent(
        action="document.viewed",
        actor=Actor(id=f"user-{producer}", type="user"),
        entity=Entity(type="document", id=str(i)),
        metadata={"producer": producer, "i": i},
    )


async def test_ten_thousand_events_from_five_producers_stored_exactly_once(
    settings: Settings, redis: aioredis.Redis, database_url: str, pg: asyncpg.Connection
) -> None:
    # The client shares this loop with the worker: on a loaded machine its first connection
    # can take past the default bounds (tests/producer's to check); here every event must land.
    client = AuditClient.from_settings(dataclasses.replace(settings, capture_timeout_s=5.0))

    async def produce(producer: int) -> None:
        for i in range(EVENTS_PER_PRODUCER):
            client.capture_nowait(make_event(producer, i))
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the sender run, as a real service's loop would

    total = PRODUCERS * EVENTS_PER_PRODUCER
    async with running_worker(settings):
        await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))
        await client.aclose()
        assert client.dropped == 0 and client.failed == 0

        async def all_stored() -> bool:
            return await count_rows(database_url) >= total

        await wait_for(all_stored, within_s=60)
        rows = await pg.fetch("SELECT id, metadata FROM audit_log")
        assert len(rows) == total
        assert len({r["id"] for r in rows}) == total
        assert {(r["metadata"]["producer"], r["metadata"]["i"]) for r in rows} == {
            (p, i) for p in range(PRODUCERS) for i in range(EVENTS_PER_PRODUCER)
        }

        # The same events delivered again (as a redelivering producer would): still 10,000.
        stored = await pg.fetch("SELECT id, ts, action, actor_id, actor_type FROM audit_log")
        again = [
            {
                "id": str(r["id"]),
                "ts": r["ts"].isoformat(),
                "action": r["action"],
                "actor": {"id": r["actor_id"], "type": r["actor_type"]},
            }
            for r in stored
        ]
        for start in range(0, total, 1_000):
            await redis.eval(
                ENQUEUE_SCRIPT, 1, settings.queue, json.dumps(again[start : start + 1_000])
            )

        async def queue_drained() -> bool:
            return await redis.zcard(settings.queue) == 0

        await wait_for(queue_drained, within_s=60)
    assert await count_rows(database_url) == total


SECRETS = ["hunter2-pw-planted", "tok-planted-9f8e7d", "sk_live_planted_42", "Zm9vOmJhcg-planted"]


async def test_planted_secrets_never_reach_rows_or_logs(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_meta = {
        "Password": SECRETS[0],
        "nested": {"deeper": [{"ACCESS_TOKEN": SECRETS[1]}]},
        "note": f"called https://api.example/cb?api_key={SECRETS[2]}&page=2",
        "header": f"Authorization: Basic {SECRETS[3]}",
    }
    changes = [{"field": "password", "old": SECRETS[0], "new": SECRETS[1]}]
    client = AuditClient.from_settings(settings)
    assert await client.capture(
        msgspec.convert(
            {"action": "user.updated", "metadata": secret_meta, "changes": changes}, AuditEvent
        )
    )
    await client.aclose()
    # A producer in another language that forgot to redact: the worker redacts on its way in.
    raw = json.dumps({"action": "user.updated", "metadata": secret_meta, "changes": changes})
    task_id = (await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, raw)).decode()
    async with running_worker(settings):

        async def stored() -> bool:
            return await count_rows(database_url) == 2

        await wait_for(stored)
    rows = await pg.fetch("SELECT row_to_json(a)::text AS row FROM audit_log a")
    text = "\n".join(r["row"] for r in rows) + "\n".join(r.getMessage() for r in caplog.records)
    # What arq keeps of the finished job in Redis holds counts, not the events (nor raw ones).
    kept = await redis.get(f"arq:result:{task_id}")
    assert kept is not None and b'"stored":' in kept
    text += kept.decode()
    for secret in SECRETS:
        assert secret not in text
    assert text.count("[REDACTED]") >= 2 * 5
