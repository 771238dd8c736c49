"""The worker on real servers: batches stored once, bad rows isolated, nothing lost."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.queue.jobs import RAW_BYTES_PREFIX
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker


def event(i: int, **extra: object) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "action": "record.updated",
        "actor": {"id": f"user-{i % 7}", "type": "user"},
        "entity": {"type": "record", "id": str(i)},
        "metadata": {"n": i},
        **extra,
    }


async def enqueue(redis: aioredis.Redis, queue: str, payload: str | bytes) -> str:
    """Enqueue with raw Redis commands only, as a producer in any language would."""
    task_id = await redis.eval(ENQUEUE_SCRIPT, 1, queue, payload)
    return task_id.decode()  # type: ignore[no-any-return]


async def queue_empty(redis: aioredis.Redis, queue: str) -> bool:
    return await redis.zcard(queue) == 0


async def test_batch_is_stored_once_even_when_delivered_twice(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    events = [event(i) for i in range(1000)]
    payload = json.dumps(events)
    await enqueue(redis, settings.queue, payload)
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
        assert await count_rows(database_url) == 1000
        await enqueue(redis, settings.queue, payload)  # the same events again, a new task
        await wait_for(lambda: queue_empty(redis, settings.queue))
    assert await count_rows(database_url) == 1000
    assert await dead_letter.list_ids(redis, settings.queue) == []


async def test_one_bad_row_is_isolated_and_dead_lettered(
    settings: Settings, redis: aioredis.Redis, database_url: str, pg: asyncpg.Connection
) -> None:
    events = [event(i) for i in range(1000)]
    # PostgreSQL refuses NUL in text; planted secret must not reach the dead letter.
    events[517] = event(517, source="bad\u0000source", metadata={"password": "hunter2-planted"})
    bad_id = events[517]["id"]
    task_id = await enqueue(redis, settings.queue, json.dumps(events))
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    assert await count_rows(database_url) == 999
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = $1", uuid.UUID(bad_id)) == 0
    assert await dead_letter.list_ids(redis, settings.queue) == [task_id]
    letter = await dead_letter.get(redis, settings.queue, task_id)
    assert letter is not None
    assert letter.event_count == 1
    assert letter.classification == "data"
    assert "0x00" in letter.message  # names the problem: a NUL byte
    assert letter.payload[0]["id"] == bad_id
    raw = await redis.get(dead_letter.record_key(settings.queue, task_id))
    assert b"hunter2-planted" not in raw
    assert await redis.pttl(dead_letter.record_key(settings.queue, task_id)) > 89 * 86_400_000


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"action": "auth.login", ', "invalid JSON"),
        ('[{"action": "Not An Action"}]', "action"),
        ('{"action": "auth.login", "colour": "red"}', "colour"),
        (b'{"action": "auth.login", "source": "\xff\xfe"}', "UTF-8"),
    ],
)
async def test_invalid_input_through_lua_becomes_a_failed_task(
    settings: Settings, redis: aioredis.Redis, database_url: str, payload: str | bytes, reason: str
) -> None:
    task_id = await enqueue(redis, settings.queue, payload)
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    letter = await dead_letter.get(redis, settings.queue, task_id)
    assert letter is not None, "nothing may be dropped silently"
    assert reason in letter.message
    assert await count_rows(database_url) == 0


async def test_a_secret_in_bytes_that_are_not_utf8_never_reaches_the_dead_letter(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Bytes that are not UTF-8 are kept exactly, base64-encoded: the secret inside them is
    redacted in the bytes (base64 would hide it from every rule), and what is kept still
    decodes."""
    payload = b'[{"action": "auth.login", "source": "\xff\xfe", "password": "hunter2-raw"}]'
    task_id = await enqueue(redis, settings.queue, payload)
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    letter = await dead_letter.get(redis, settings.queue, task_id)
    assert letter is not None and isinstance(letter.payload, str)
    assert letter.payload.startswith(RAW_BYTES_PREFIX)
    kept = base64.b64decode(letter.payload.removeprefix(RAW_BYTES_PREFIX), validate=True)
    assert b"hunter2-raw" not in kept and b"[REDACTED]" in kept
    assert kept.startswith(b'[{"action": "auth.login", "source": "\xff\xfe"')
    for key in await redis.keys("*"):
        if await redis.type(key) == b"string":
            assert b"hunter2-raw" not in (await redis.get(key) or b""), key


async def test_events_without_id_get_stable_ids(
    settings: Settings, redis: aioredis.Redis, database_url: str, pg: asyncpg.Connection
) -> None:
    task_id = await enqueue(
        redis, settings.queue, '[{"action": "auth.login"}, {"action": "auth.logout"}]'
    )
    job_key, result_key = f"arq:job:{task_id}", f"arq:result:{task_id}"
    job, score = await redis.get(job_key), await redis.zscore(settings.queue, task_id)
    select = "SELECT id, ts, category, presentation FROM audit_log ORDER BY action"
    async with running_worker(settings):
        await wait_for(lambda: redis.exists(result_key))
        first = await pg.fetch(select)
        # The same task delivered again, as after a worker killed before it could say it was
        # done: its events get the same ids, so they are stored once.
        await redis.delete(result_key)
        await redis.set(job_key, job)
        await redis.zadd(settings.queue, {task_id: score})
        await wait_for(lambda: redis.exists(result_key))
    rows = await pg.fetch(select)
    assert [dict(r) for r in rows] == [dict(r) for r in first]
    assert [r["category"] for r in rows] == ["auth", "auth"]
    assert rows[0]["presentation"] == {"code": "audit.auth.login", "params": {}}
    assert all(r["id"].version == 7 for r in rows)
    assert rows[0]["id"] != rows[1]["id"]


async def test_success_lines(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="auditq")
    await enqueue(redis, settings.queue, json.dumps([event(1), event(2)]))
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("auditq")]
    assert "[AuditLogWorker] Successfully logged: record.updated record:1" in lines
    assert sum("2 events stored" in line for line in lines) == 1


async def test_an_unforeseen_failure_is_retried_not_failed(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import job as worker_module

    real_parse = worker_module._parse
    calls = 0

    def flaky_parse(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom with redis://:s3cr3t-planted@db:6379/0")
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(worker_module, "_parse", flaky_parse)
    monkeypatch.setattr(worker_module, "UNEXPECTED_RETRY_DELAY", 0.1)
    await enqueue(redis, settings.queue, json.dumps([event(1), event(2)]))
    async with running_worker(settings):

        async def stored() -> bool:
            return await count_rows(database_url) == 2

        await wait_for(stored)
    assert calls == 2


async def test_provenance_is_set_by_auditq_and_a_forged_claim_is_not_believed(
    settings: Settings, redis: aioredis.Redis, database_url: str, pg: asyncpg.Connection
) -> None:
    from service.producer.client import AuditClient
    from service.queue.jobs import PROVENANCE_SECRET, provenance_tag
    from service.store.secrets import read_secret

    plain, forged, vouched = event(1), event(2), event(3)
    await enqueue(redis, settings.queue, json.dumps([plain]))
    # A producer with Redis access claims to be the API: without the key, no valid tag.
    payload = json.dumps([forged])
    forged_task, api_task = f"forged-{uuid.uuid4()}", f"api-{uuid.uuid4()}"  # ids of this test's
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, forged_task, "", "api", "0" * 64)
    # The API's claim, tagged with the key only the API and the worker read.
    key = await read_secret(pg, PROVENANCE_SECRET)
    payload = json.dumps([vouched])
    tag = provenance_tag(key, task_id=api_task, via="api", payload=payload.encode())
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, api_task, "", "api", tag)
    async with AuditClient.from_settings(settings) as client:
        from service.events import AuditEvent

        captured = await client.capture(AuditEvent(action="record.viewed"))
    async with running_worker(settings):
        await wait_for(lambda: _count_at_least(database_url, 4))
    rows = await pg.fetch("SELECT id::text, received_via FROM audit_log")
    via = {row["id"]: row["received_via"] for row in rows}
    queue_via = f"redis:{settings.queue}"
    assert via[str(plain["id"])] == queue_via
    assert via[str(forged["id"])] == queue_via, "a claim without a valid tag is not believed"
    assert via[str(vouched["id"])] == "api"
    assert via[str(captured)] == queue_via


async def test_redis_keeps_no_event_of_a_stored_job(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    secret_free = [event(i, metadata={"n": i, "note": "x" * 200}) for i in range(200)]
    task_id = await enqueue(redis, settings.queue, json.dumps(secret_free))
    async with running_worker(settings):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    result = await redis.get(f"arq:result:{task_id}")
    assert result is not None and len(result) < 400, "counts and times, not the events"
    assert b"x" * 200 not in result and b"record.updated" not in result


async def test_a_job_over_its_budget_is_retried_and_stored_once(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import dataclasses

    from workers import job as worker_module

    real_record = worker_module._record_stored
    slow_once = True

    async def slow_bookkeeping(*args: Any, **kwargs: Any) -> None:
        nonlocal slow_once
        if slow_once:  # the events are written; then the job outlives its budget
            slow_once = False
            await asyncio.sleep(60)
        await real_record(*args, **kwargs)

    monkeypatch.setattr(worker_module, "_record_stored", slow_bookkeeping)
    monkeypatch.setattr(worker_module, "UNEXPECTED_RETRY_DELAY", 0.1)
    quick = dataclasses.replace(settings, job_timeout_s=2.0)
    events = [event(i) for i in range(10)]
    task_id = await enqueue(redis, settings.queue, json.dumps(events))
    async with running_worker(quick):
        await wait_for(lambda: queue_empty(redis, settings.queue))
    assert await count_rows(database_url) == 10
    result = await redis.get(f"arq:result:{task_id}")
    assert result is not None and b'"s":true' in result, "arq did not fail the job"
    assert await dead_letter.list_ids(redis, settings.queue) == []


async def _count_at_least(database_url: str, n: int) -> bool:
    return await count_rows(database_url) >= n
