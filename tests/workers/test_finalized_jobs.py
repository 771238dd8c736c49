"""Jobs from auditq's client ("finalized"): merged while queued, stored once, never trusted
beyond that flag; jobs from other producers keep the worker's completion and redaction."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import redis.asyncio as aioredis

from service.events import MAX_NESTING, AuditEvent, finalize
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.queue.jobs import deserialize_job
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.queue import queued_events
from tests.support.worker import count_rows, running_worker


def finalized(n: int) -> str:
    """A batch as the client sends it: events completed and redacted, as a JSON array."""
    events = [finalize(AuditEvent(action="doc.viewed", metadata={"n": i}))[1] for i in range(n)]
    return "[" + ",".join(e.decode() for e in events) + "]"


async def queue_empty(redis: aioredis.Redis, queue: str) -> bool:
    return await redis.zcard(queue) == 0


async def test_batches_join_the_open_job_until_a_worker_takes_it(
    settings: Settings, redis: aioredis.Redis
) -> None:
    queue = settings.queue
    first = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(2), "", "finalized")
    second = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(3), "", "finalized")
    assert first == second and await redis.zcard(queue) == 1
    job = deserialize_job(await redis.get(b"arq:job:" + first))
    # Each batch is a segment (an argument) of its own: the worker reads each alone.
    assert job["k"] == {"finalized": True} and [len(json.loads(a)) for a in job["a"]] == [2, 3]
    # A batch without the flag, or with its own task id, is a job of its own.
    other = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(1))
    assert other != first and await redis.zcard(queue) == 2
    # Once a worker marks the job in progress, nothing more joins it.
    await redis.set(b"arq:in-progress:" + first, b"1")
    third = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(1), "", "finalized")
    assert third != first
    assert len(await queued_events(redis, queue)) == 5 + 1 + 1


async def test_concurrent_clients_share_one_job(settings: Settings, redis: aioredis.Redis) -> None:
    clients = [AuditClient.from_settings(settings) for _ in range(3)]
    try:
        ids = await asyncio.gather(
            *(c.capture(AuditEvent(action="doc.viewed")) for c in clients for _ in range(50))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert all(ids)
    assert {e["id"] for e in await queued_events(redis, settings.queue)} == set(ids)
    assert await redis.zcard(settings.queue) < 10


async def test_a_finalized_job_delivered_twice_is_stored_once(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    payload = finalized(300)
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, "", "finalized")
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
        assert await count_rows(database_url) == 300
        # The same events again: a new task (the producer's spool resending, say).
        await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, "", "finalized")
        await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload)
        await wait_for(lambda: queue_empty(redis, settings.queue))
    assert await count_rows(database_url) == 300


async def test_other_producers_are_still_completed_and_redacted(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    raw = json.dumps([{"action": "auth.login", "metadata": {"password": "hunter2"}}])
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, raw)
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT category, metadata::text AS metadata FROM audit_log")
    finally:
        await conn.close()
    assert row["category"] == "auth"
    assert "hunter2" not in row["metadata"] and "[REDACTED]" in row["metadata"]


async def test_the_flag_does_not_skip_the_checks(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    good = json.loads(finalized(2))
    deep: object = 1
    for _ in range(MAX_NESTING + 5):
        deep = {"a": deep}
    bad = {**good[0], "id": str(uuid.uuid4()), "metadata": {"deep": deep}}
    payload = json.dumps([*good, bad])
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, "", "finalized")
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    assert await count_rows(database_url) == 2
    (task_id,) = await dead_letter.list_ids(redis, settings.queue)
    letter = await dead_letter.get(redis, settings.queue, task_id)
    assert letter is not None and "nests deeper" in letter.message


async def test_a_malformed_flagged_batch_is_a_failed_task_of_its_own(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """It never joins the open job: it fails under the very id the enqueue returned, and the
    batches around it are stored."""
    queue = settings.queue
    honest = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(2), "", "finalized")
    bad = {}
    for text in ("[ ]", "[1]]", '[{"a":1}]x[1]', "[1]", '[{"a":1}]', "[[]]"):
        bad[text] = (await redis.eval(ENQUEUE_SCRIPT, 1, queue, text, "", "finalized")).decode()
    again = await redis.eval(ENQUEUE_SCRIPT, 1, queue, finalized(3), "", "finalized")
    assert again == honest and honest.decode() not in bad.values()
    big = finalized(1500)  # over the size up to which a batch may join: a job of its own
    assert len(big) > 262144
    assert await redis.eval(ENQUEUE_SCRIPT, 1, queue, big, "", "finalized") != honest
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, queue))
        assert settings.database_url

        async def stored() -> bool:
            assert settings.database_url
            return await count_rows(settings.database_url) == 1505

        await wait_for(stored)
    for text, task in bad.items():
        letter = await dead_letter.get(redis, queue, task)
        assert letter is not None and letter.message, text
        assert letter.event_count >= 1, text


async def test_a_flagged_batch_too_big_to_merge_keeps_its_flag(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    """A client's batch of 500 events (~300 KB) is a job of its own: it is still read the
    one-statement way (the worker checks it all the same), not event by event, which cost a
    backlog of such batches about half again the worker's CPU. A malformed one fails alone."""
    queue = settings.queue
    big = finalized(1500)
    assert len(big) > 262144  # over the size up to which a batch may join a task
    task = await redis.eval(ENQUEUE_SCRIPT, 1, queue, big, "", "finalized")
    job = deserialize_job(await redis.get(b"arq:job:" + task))
    assert job["k"] == {"finalized": True}
    broken = big[:-1] + ',{"action":"doc.viewed"'  # no closing brackets
    bad = await redis.eval(ENQUEUE_SCRIPT, 1, queue, broken, "", "finalized")
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, queue))

        async def stored() -> bool:
            return await count_rows(database_url) == 1500

        await wait_for(stored)
    assert await dead_letter.list_ids(redis, queue) == [bad.decode()]
