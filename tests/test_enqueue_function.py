"""The enqueue as a Redis function library: FCALL, the same file as EVAL, reloads, size bound."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.queue.enqueue import (
    ENQUEUE_FUNCTION,
    ENQUEUE_SCRIPT,
    LIBRARY_NAME,
    enqueue_script,
    load_functions,
)
from service.settings import Settings
from tests.support.cli import run_cli
from tests.support.polling import wait_for
from tests.support.queue import queued_events
from tests.support.worker import count_rows, running_worker


def event(action: str = "doc.viewed") -> dict[str, object]:
    return {"action": action, "actor": {"id": "u-1", "type": "user"}}


async def test_fcall_and_eval_of_the_shipped_file_enqueue_the_same_task(
    settings: Settings, redis: aioredis.Redis
) -> None:
    await load_functions(redis)
    by_function = await redis.fcall(ENQUEUE_FUNCTION, 1, settings.queue, json.dumps(event()))
    by_script = await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, json.dumps([event()]))
    assert by_function != by_script
    assert len(await queued_events(redis, settings.queue)) == 2
    async with running_worker(settings):
        await wait_for(lambda: _rows_are(settings, 2))


async def _rows_are(settings: Settings, n: int) -> bool:
    assert settings.database_url
    return await count_rows(settings.database_url) == n


@pytest.mark.usefixtures("cli_env")
async def test_migrate_loads_the_library_and_prints_the_producer_acl(
    settings: Settings, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await redis.function_delete(LIBRARY_NAME)
    assert await run_cli("migrate") == 0
    assert await redis.function_list(library=LIBRARY_NAME)
    out = capsys.readouterr().out
    assert "ACL SETUSER auditq-producer reset on ><password> " in out
    assert f"~{settings.queue} %W~auditq:inbox:{settings.queue}" in out


async def test_the_client_uses_fcall_and_reloads_a_lost_library(
    settings: Settings, redis: aioredis.Redis
) -> None:
    await load_functions(redis)
    client = AuditClient.from_settings(settings)
    try:
        assert await client.capture(AuditEvent(action="doc.viewed"))
        await redis.function_delete(LIBRARY_NAME)  # as a Redis that lost it
        assert await client.capture(AuditEvent(action="doc.viewed"))
        assert client._functions  # FCALL, not the EVAL fallback
    finally:
        await client.aclose()
    assert await redis.function_list(library=LIBRARY_NAME)
    assert len(await queued_events(redis, settings.queue)) == 2


async def test_a_worker_loads_the_library_at_start_and_again_once_lost(
    settings: Settings, redis: aioredis.Redis
) -> None:
    await redis.function_delete(LIBRARY_NAME)
    async with running_worker(settings):

        async def loaded() -> bool:
            return bool(await redis.function_list(library=LIBRARY_NAME))

        await wait_for(loaded)
        await redis.function_delete(LIBRARY_NAME)
        await wait_for(loaded, within_s=30)  # the next heartbeat
        task = await redis.fcall(ENQUEUE_FUNCTION, 1, settings.queue, json.dumps([event()]))
        assert task
        await wait_for(lambda: _rows_are(settings, 1))


async def test_a_payload_over_the_job_bound_is_refused_with_an_error_reply(
    settings: Settings, redis: aioredis.Redis
) -> None:
    small = enqueue_script(100_000)
    big = json.dumps([{**event(), "metadata": {"blob": "x" * 100_000}}])
    with pytest.raises(ResponseError, match="over AUDITQ_MAX_JOB_BYTES"):
        await redis.eval(small, 1, settings.queue, big)
    # Escaping counts: a payload within the bound whose task would not be is refused too.
    quoted = json.dumps([{**event(), "metadata": {"q": '"' * 40_000}}])
    assert len(quoted) < 100_000
    with pytest.raises(ResponseError, match="once encoded"):
        await redis.eval(small, 1, settings.queue, quoted)
    assert await redis.zcard(settings.queue) == 0
    await load_functions(redis)  # the default bound: 8 MiB
    with pytest.raises(ResponseError, match="over AUDITQ_MAX_JOB_BYTES"):
        await redis.fcall(ENQUEUE_FUNCTION, 1, settings.queue, "x" * (8 * 1024 * 1024 + 1))


async def test_a_merge_never_grows_a_job_past_the_bound(
    settings: Settings, redis: aioredis.Redis
) -> None:
    small = enqueue_script(100_000)
    batch = json.dumps([{**event(), "metadata": {"blob": "x" * 30_000}}])  # a merge's batch size
    ids = [await redis.eval(small, 1, settings.queue, batch, "", "finalized") for _ in range(10)]
    tasks = {bytes(i).decode() for i in ids}
    assert len(tasks) < len(ids), "the batches did not merge"
    for task in tasks:
        assert await redis.strlen(f"arq:job:{task}") <= 100_000
    assert len(await queued_events(redis, settings.queue)) == 10
