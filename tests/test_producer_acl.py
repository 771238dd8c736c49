"""The producer's Redis user: it can enqueue, through the function, and nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_FUNCTION, ENQUEUE_SCRIPT, load_functions
from service.queue.keys import live_key
from service.queue.producer_acl import PRODUCER_USER, acl_line, ensure_producer_user, with_user
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def producer_url(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[str]:
    """The URL of a producer user of this test's queue (as `auditq run` makes it; a name of
    its own, so a shared Redis's users are left alone, and removed afterwards)."""
    assert settings.redis_url
    password = secrets.token_hex(16)
    user = f"{PRODUCER_USER}-{settings.queue}"
    await load_functions(redis)
    await ensure_producer_user(redis, settings.queue, password, user=user)
    yield with_user(settings.redis_url, user, password)
    await redis.execute_command("ACL", "DELUSER", user)


@pytest.fixture
async def producer(producer_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(producer_url)
    yield client
    await client.aclose()


def event(n: int = 0) -> str:
    return json.dumps({"action": "doc.viewed", "metadata": {"n": n}})


async def test_the_producer_user_can_enqueue_and_its_events_are_stored(
    settings: Settings, producer: aioredis.Redis, redis: aioredis.Redis
) -> None:
    assert await producer.ping()
    task = (await producer.fcall(ENQUEUE_FUNCTION, 1, settings.queue, event())).decode()
    batch = json.dumps([json.loads(event(1)), json.loads(event(2))])
    await producer.fcall(ENQUEUE_FUNCTION, 1, settings.queue, batch, "", "finalized")
    with pytest.raises(ResponseError, match="AUDITQ_MAX_JOB_BYTES"):
        await producer.fcall(ENQUEUE_FUNCTION, 1, settings.queue, "x" * (8 * 1024 * 1024 + 1))
    assert settings.database_url
    async with running_worker(settings):

        async def stored() -> bool:
            assert settings.database_url
            return await count_rows(settings.database_url) == 3

        await wait_for(stored)
        # The task id the function returned is the task's: it completed under that id.
        assert not await dead_letter.list_ids(redis, settings.queue)
    assert task


async def test_the_producer_user_can_do_nothing_else(
    settings: Settings, producer: aioredis.Redis, redis: aioredis.Redis
) -> None:
    queue = settings.queue
    task = (await redis.fcall(ENQUEUE_FUNCTION, 1, queue, event())).decode()
    await dead_letter.add(
        redis,
        queue,
        task_id="t-1",
        payload=[],
        event_count=1,
        error_name="X",
        message="m",
        classification="invalid",
        attempts=1,
        enqueued_at_ms=0,
    )
    job, inbox = f"arq:job:{task}", f"auditq:inbox:{queue}"
    await producer.fcall(ENQUEUE_FUNCTION, 1, queue, event())  # something in the inbox
    refused = [
        ("GET", job),
        ("GETRANGE", job, 0, 10),
        ("SET", job, "{}"),
        ("DEL", job),
        ("DEL", queue),
        ("ZRANGE", queue, 0, -1),
        ("ZADD", queue, 0, "forged"),
        ("SCAN", 0),
        ("KEYS", "*"),
        ("XADD", live_key(queue), "*", "rows", "{}"),
        ("EVAL", ENQUEUE_SCRIPT, 1, queue, event()),
        ("EVAL", "return 1", 0),
        ("GET", dead_letter.record_key(queue, "t-1")),
        ("ZRANGE", dead_letter.index_key(queue), 0, -1),
        ("LRANGE", inbox, 0, -1),
        ("LPOP", inbox),
        ("DEL", inbox),
        ("RPUSH", f"auditq:inbox:{queue}-other", "x"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('e', function() end)"),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("FLUSHALL",),
        ("SUBSCRIBE", "x"),
    ]
    for command in refused:
        with pytest.raises(NoPermissionError):
            await producer.execute_command(*command)
    # The workers' function is no way around it: it runs with the caller's rights.
    with pytest.raises(ResponseError):
        await producer.fcall("auditq_drain", 1, queue, 100)
    assert await redis.exists(job) and await redis.zscore(queue, task) is not None
    assert await redis.llen(inbox) == 1


async def test_the_python_client_enqueues_as_the_producer_user(
    settings: Settings, producer_url: str
) -> None:
    client = AuditClient.from_url(producer_url, queue=settings.queue)
    try:
        ids = await asyncio.gather(
            *(client.capture(AuditEvent(action="doc.viewed")) for _ in range(20))
        )
    finally:
        await client.aclose()
    assert all(ids) and client.failed == 0
    async with running_worker(settings):

        async def stored() -> bool:
            assert settings.database_url
            return await count_rows(settings.database_url) == 20

        await wait_for(stored)


def test_the_acl_line_for_external_servers_names_the_user_and_its_rules() -> None:
    line = acl_line("audit-logs", "s3cret")
    assert line.startswith(f"ACL SETUSER {PRODUCER_USER} reset on >s3cret ")
    assert "+fcall" in line and "-@all" in line and "%W~auditq:inbox:audit-logs" in line
    assert "+get" not in line and "+eval" not in line and "~*" not in line


def _doc_blocks(language: str) -> list[str]:
    """The code blocks of docs/producers.md in `language`."""
    text = (REPO / "docs" / "producers.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="Debian's redis-cli is not here")
async def test_the_docs_recipes_work_as_written(
    settings: Settings, producer_url: str, redis: aioredis.Redis
) -> None:
    """docs/producers.md: FCALL as the producer user (redis-cli, redis-py), and EVAL of the
    shipped file as the fallback, with the URLs as auditq writes them (user name spelled out)."""
    assert settings.redis_url
    commands = [
        line.replace("audit-logs", settings.queue)
        for block in _doc_blocks("sh")
        for line in block.splitlines()
        if line.startswith("redis-cli")
    ]
    assert len(commands) == 2 and "FCALL" in commands[0] and "--eval" in commands[1]
    replies = [
        await asyncio.to_thread(_shell, commands[0], producer_url),
        await asyncio.to_thread(_shell, commands[1], settings.redis_url),
    ]
    (python,) = [b for b in _doc_blocks("python") if "fcall" in b]
    scope: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUDITQ_REDIS_URL", producer_url)
        await asyncio.to_thread(exec, python.replace("audit-logs", settings.queue), scope)
    assert all(replies) and scope["task_id"]
    async with running_worker(settings):

        async def stored() -> bool:
            assert settings.database_url
            return await count_rows(settings.database_url) == 3

        await wait_for(stored)


def _shell(command: str, url: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
        env={**os.environ, "AUDITQ_REDIS_URL": url},
    )  # fmt: skip
    assert done.returncode == 0 and "ERR" not in done.stdout, (done.stdout, done.stderr)
    return done.stdout.strip()
