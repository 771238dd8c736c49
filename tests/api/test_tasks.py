"""The task routes on real servers: list, show, retry, bulk retry, cleanup, and who may do what."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.queue import dead_letter
from service.queue.keys import IN_PROGRESS_PREFIX, attempts_key, complete_key
from service.settings import Settings
from tests.support.admin_api import Tokens, admin_events, enqueue, error_of, queued_payloads
from tests.support.cli import cli_output
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker

TASKS = "/api/v1/admin/tasks"
DAY_MS = 86_400_000


def event(i: int, **extra: object) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "action": "record.updated",
        "entity": {"type": "record", "id": str(i)},
        "metadata": {"n": i},
        **extra,
    }


async def add_failed(
    redis: aioredis.Redis, queue: str, task_id: str, events: list[dict[str, object]], **kw: Any
) -> None:
    await dead_letter.add(
        redis,
        queue,
        task_id=task_id,
        payload=events,
        event_count=len(events),
        error_name=kw.get("error_name", "RejectedEvent"),
        message=kw.get("message", "invalid byte sequence: password=hunter2"),
        classification=kw.get("classification", "data"),
        attempts=kw.get("attempts", 1),
        enqueued_at_ms=int(time.time() * 1000) - 5000,
    )


async def get_json(
    api: TestClient[Any, Any], path: str, headers: dict[str, str], **params: Any
) -> Any:
    async with api.get(path, headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_retrying_a_failed_task_stores_its_events(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    pg: asyncpg.Connection,
) -> None:
    events = [event(i) for i in range(3)]
    await add_failed(redis, settings.queue, "failed-1", events)

    page = await get_json(api, TASKS, tokens.reader, status="failed")
    assert [t["id"] for t in page["items"]] == ["failed-1"] and page["next_cursor"] is None
    task = page["items"][0]
    assert task["status"] == "failed" and task["event_count"] == 3
    assert task["failure"]["classification"] == "data"
    assert "hunter2" not in json.dumps(task), "failure messages are redacted"
    assert task["presentation"]["status_message"] == "Failed: RejectedEvent"
    assert task["presentation"]["title"] == "Store 3 audit events"
    assert set(task) == {
        "id", "kind", "status", "attempts", "max_attempts", "event_count", "enqueued_at",
        "started_at", "finished_at", "next_attempt_at", "failure", "presentation",
    }  # fmt: skip

    detail = await get_json(api, f"{TASKS}/failed-1", tokens.reader)
    assert [e["id"] for e in detail["payload"]] == [e["id"] for e in events]

    async with api.post(f"{TASKS}/failed-1/retry", headers=tokens.admin) as response:
        assert response.status == 202, await response.text()
        retried = (await response.json())["task"]
    assert retried["id"] == "failed-1" and retried["status"] in ("queued", "in_progress")
    assert retried["failure"] is None
    assert await dead_letter.get(redis, settings.queue, "failed-1") is None

    async with running_worker(settings):
        # Three events, and the audit event of the retry itself.
        await wait_for(lambda: _rows_at_least(database_url, 4))
    stored = await pg.fetchval(
        "SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", [e["id"] for e in events]
    )
    assert stored == 3
    actor = await pg.fetchval("SELECT actor_id FROM audit_log WHERE action = 'task.retried'")
    assert actor == "test-admin"
    done = await get_json(api, f"{TASKS}/failed-1", tokens.reader)
    assert done["status"] == "complete" and done["event_count"] == 3
    listed = await get_json(api, TASKS, tokens.reader, status="complete")
    assert "failed-1" in [t["id"] for t in listed["items"]]


async def _rows_at_least(database_url: str, n: int) -> bool:
    return await count_rows(database_url) >= n


async def test_retrying_a_task_that_is_not_failed_is_409(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    task_id = await enqueue(redis, settings.queue, json.dumps([event(1)]))
    async with api.post(f"{TASKS}/{task_id}/retry", headers=tokens.admin) as response:
        error = await error_of(response, 409)
    assert "queued" in error["message"]
    async with api.post(f"{TASKS}/no-such-task/retry", headers=tokens.admin) as response:
        await error_of(response, 404)
    async with api.get(f"{TASKS}/no-such-task", headers=tokens.admin) as response:
        await error_of(response, 404)


async def test_statuses_and_pages(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    queue = settings.queue
    ids = [await enqueue(redis, queue, json.dumps([event(i), event(i + 100)])) for i in range(5)]
    now_ms = int(time.time() * 1000)
    # One deferred by a Retry after a failed attempt, one running.
    await redis.zadd(queue, {ids[3]: now_ms + 9000})
    await redis.hset(attempts_key(queue), ids[3], 1)
    await redis.set(IN_PROGRESS_PREFIX + ids[4], b"1", px=60_000)
    await add_failed(redis, queue, "failed-x", [event(9)])
    done = {"id": "done-x", "event_count": 7, "attempts": 1, "enqueued_at_ms": now_ms - 900}
    await redis.xadd(
        complete_key(queue), done | {"started_at_ms": now_ms - 500, "finished_at_ms": now_ms}
    )

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await get_json(api, TASKS, tokens.reader, **params)
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    by_id = {t["id"]: t for t in seen}
    assert len(seen) == len(by_id) == 7, "every task exactly once"
    assert [by_id[i]["status"] for i in ids] == [
        "queued", "queued", "queued", "retrying", "in_progress",
    ]  # fmt: skip
    assert by_id[ids[0]]["presentation"]["status_message"] == "Waiting for a worker"
    assert by_id[ids[0]]["event_count"] == 2
    retrying = by_id[ids[3]]
    assert retrying["attempts"] == 1 and retrying["next_attempt_at"] is not None
    assert retrying["presentation"]["status_message"].startswith("Retrying in ")
    assert retrying["presentation"]["status_message"].endswith("(attempt 2 of 3)")
    assert by_id[ids[4]]["started_at"] is not None
    assert by_id["failed-x"]["status"] == "failed"
    assert by_id["done-x"]["status"] == "complete"
    assert by_id["done-x"]["presentation"]["status_message"] == "Stored 7 events"

    for status, expected in [
        ("queued", ids[:3]),
        ("retrying", [ids[3]]),
        ("in_progress", [ids[4]]),
        ("failed", ["failed-x"]),
        ("complete", ["done-x"]),
    ]:
        page = await get_json(api, TASKS, tokens.reader, status=status)
        assert [t["id"] for t in page["items"]] == expected, status
    page = await get_json(api, TASKS, tokens.reader, kind="maintenance")
    assert page["items"] == []

    for params, name in [
        ({"status": "done"}, "status"),
        ({"kind": "cron"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ]:
        async with api.get(TASKS, headers=tokens.reader, params=params) as response:
            error = await error_of(response, 400)
        assert f"`{name}`" in error["message"], error


async def test_bulk_retry_takes_the_filters(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    queue = settings.queue
    await add_failed(redis, queue, "a", [event(1)], classification="data")
    await add_failed(redis, queue, "b", [event(2)], classification="unknown", error_name="Boom")
    await add_failed(redis, queue, "c", [event(3)], classification="data")
    body = {"classification": "data"}
    async with api.post(f"{TASKS}/retry-failed", headers=tokens.admin, json=body) as response:
        assert response.status == 202, await response.text()
        assert await response.json() == {"retried": 2}
    assert await dead_letter.list_ids(redis, queue) == ["b"]
    async with api.post(
        f"{TASKS}/retry-failed", headers=tokens.admin, json={"classification": "nope"}
    ) as response:
        error = await error_of(response, 400)
    assert "`classification`" in error["message"]
    async with api.post(f"{TASKS}/retry-failed", headers=tokens.admin) as response:
        assert response.status == 202
        assert await response.json() == {"retried": 1}
    assert await dead_letter.list_ids(redis, queue) == []
    bulk = await admin_events(pg, "task.retried_bulk")  # in PostgreSQL, before each retry
    assert [e["actor_id"] for e in bulk] == ["test-admin", "test-admin"]
    assert b"task.retried_bulk" not in b"".join(await queued_payloads(redis, queue))


async def test_cleanup_deletes_what_its_policy_says_and_keeps_the_floor(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    queue = settings.queue
    now_ms = int(time.time() * 1000)
    index = dead_letter.index_key(queue)
    for n in range(4):  # four failures 40 days old, one fresh
        await add_failed(redis, queue, f"old-{n}", [event(n)])
        await redis.zadd(index, {f"old-{n}": now_ms - 40 * DAY_MS + n})
    await add_failed(redis, queue, "fresh", [event(9)])
    stream = complete_key(queue)
    for n in range(2):  # two complete tasks 20 days old, one fresh
        await redis.xadd(
            stream, {"id": f"done-{n}", "event_count": 1}, id=f"{now_ms - 20 * DAY_MS + n}-0"
        )
    await redis.xadd(stream, {"id": "done-fresh", "event_count": 1})

    policy = {"complete_older_than_days": 10, "failed_older_than_days": 30, "keep_recent_failed": 2}
    async with api.post(f"{TASKS}/cleanup", headers=tokens.admin, json=policy) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"deleted": {"complete": 2, "failed": 3}}
    assert sorted(await dead_letter.list_ids(redis, queue)) == ["fresh", "old-3"]
    assert await redis.get(dead_letter.record_key(queue, "old-0")) is None
    assert await redis.xlen(stream) == 1
    [cleanup] = await admin_events(pg, "task.cleanup")
    assert cleanup["actor_id"] == "test-admin" and cleanup["metadata"]["policy"] == policy

    # Defaults (365 d, 90 d, keep 100) delete nothing here.
    async with api.post(f"{TASKS}/cleanup", headers=tokens.admin) as response:
        assert await response.json() == {"deleted": {"complete": 0, "failed": 0}}
    for body, name in [
        ({"keep_recent_failed": -1}, "keep_recent_failed"),
        ({"complete_older_than_days": "soon"}, "complete_older_than_days"),
        ({"bogus": 1}, "bogus"),
    ]:
        async with api.post(f"{TASKS}/cleanup", headers=tokens.admin, json=body) as response:
            error = await error_of(response, 400)
        assert name in error["message"], error
    async with api.post(
        f"{TASKS}/cleanup", headers=tokens.admin | {"Content-Type": "text/plain"}, data="{}"
    ) as response:
        await error_of(response, 415)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", TASKS),
        ("GET", f"{TASKS}/some-id"),
        ("POST", f"{TASKS}/some-id/retry"),
        ("POST", f"{TASKS}/retry-failed"),
        ("POST", f"{TASKS}/cleanup"),
        ("GET", "/api/v1/admin/queue/stats"),
    ],
)
async def test_every_task_route_needs_a_token_and_the_right_role(
    api: TestClient[Any, Any], tokens: Tokens, method: str, path: str
) -> None:
    async with api.request(method, path) as response:
        await error_of(response, 401)
    async with api.request(method, path, headers={"Authorization": "Bearer aq_wrong"}) as response:
        await error_of(response, 401)
    async with api.request(method, path, headers=tokens.ingest) as response:
        await error_of(response, 403)
    async with api.request(method, path, headers=tokens.reader) as response:
        if method == "POST":
            await error_of(response, 403)
        else:
            assert response.status in (200, 404)


async def test_cli_is_a_thin_client_of_the_same_functions(
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    cli_env: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    await add_failed(redis, settings.queue, "cli-failed", [event(1), event(2)])
    status, out = await cli_output(capfd, "tasks", "list", "--status", "failed")
    assert status == 0 and "cli-failed" in out and "Failed: RejectedEvent" in out, out
    status, out = await cli_output(capfd, "tasks", "show", "cli-failed")
    assert status == 0 and json.loads(out)["event_count"] == 2, out
    status, out = await cli_output(capfd, "tasks", "retry", "cli-failed")
    assert status == 0 and "queued" in out, out
    status, out = await cli_output(capfd, "tasks", "retry", "cli-failed")
    assert status != 0 and out.count("\n") == 1 and "only a failed task" in out, out
    status, out = await cli_output(capfd, "stats")
    assert status == 0 and "queued" in out and "no worker" in out, out
    status, out = await cli_output(capfd, "tasks", "cleanup", "--keep-recent-failed", "-1")
    assert status != 0 and "keep_recent_failed" in out and "Traceback" not in out, out
    status, out = await cli_output(capfd, "tasks", "cleanup")
    assert status == 0 and out.startswith("deleted 0 complete and 0 failed"), out
    recorded = [(e["action"], e["actor_id"]) for e in await admin_events(pg, "task.")]
    assert recorded == [("task.retried", "cli"), ("task.cleanup", "cli")]


async def test_retrying_while_a_worker_fails_the_task_again_never_loses_it(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    # Invalid events fail without PostgreSQL, within the worker's 20 ms poll: the retry and
    # the next failure race each time.
    await add_failed(
        redis, settings.queue, "racer", [{"action": "Not An Action"}], classification="invalid"
    )

    async def failed_again() -> bool:
        return await dead_letter.get(redis, settings.queue, "racer") is not None

    async with running_worker(settings):
        for _ in range(15):
            async with api.post(f"{TASKS}/racer/retry", headers=tokens.admin) as response:
                assert response.status in (202, 409), await response.text()
            # Wherever the race fell, the task is back in the dead letter, never gone.
            await wait_for(failed_again, within_s=30)
    letter = await dead_letter.get(redis, settings.queue, "racer")
    assert letter is not None and letter.event_count == 1


async def test_a_retried_task_keeps_the_provenance_it_was_delivered_with(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    # Delivered over HTTP by the ingest token, refused by PostgreSQL (a NUL in JSON text).
    event = {"id": str(uuid.uuid4()), "action": "doc.viewed", "metadata": {"bad": "nul\x00byte"}}
    async with api.post("/api/v1/events", headers=tokens.ingest, json=event) as response:
        assert response.status == 202, await response.text()
    async with running_worker(settings):

        async def failed() -> bool:
            return bool(await dead_letter.list_ids(redis, settings.queue))

        await wait_for(failed)
        (task_id,) = await dead_letter.list_ids(redis, settings.queue)
        letter = await dead_letter.get(redis, settings.queue, task_id)
        assert letter is not None and letter.via == "http:test-ingest"
        # The cause is fixed (here: by hand), then the task is retried by an admin.
        fixed = [{**event, "metadata": {"bad": "fixed"}}]
        await redis.set(
            dead_letter.record_key(settings.queue, task_id),
            json.dumps(
                {
                    **json.loads(await redis.get(dead_letter.record_key(settings.queue, task_id))),
                    "payload": fixed,
                }
            ),
        )
        async with api.post(f"{TASKS}/{task_id}/retry", headers=tokens.admin) as response:
            assert response.status == 202, await response.text()

        async def stored() -> bool:
            return bool(
                await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = $1::uuid", event["id"])
            )

        await wait_for(stored)
    via = await pg.fetchval("SELECT received_via FROM audit_log WHERE id = $1::uuid", event["id"])
    assert via == "http:test-ingest"  # not redis:<queue>


async def test_a_large_queued_task_is_shown_without_being_loaded(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, redis: aioredis.Redis
) -> None:
    events = [
        {"action": "doc.viewed", "metadata": {"blob": "x" * 1000, "n": i}} for i in range(2000)
    ]
    task_id = await enqueue(redis, settings.queue, json.dumps(events))  # ~2 MB
    async with api.get(f"{TASKS}/{task_id}", headers=tokens.reader) as response:
        assert response.status == 200, await response.text()
        task = await response.json()
    assert task["status"] == "queued" and task["payload"] is None
    assert "too large to be read" in task["presentation"]["detail_message"]
    async with api.get(TASKS, headers=tokens.reader, params={"status": "queued"}) as response:
        assert response.status == 200
        (listed,) = (await response.json())["items"]
    assert listed["id"] == task_id and "bytes" in listed["presentation"]["title"]
