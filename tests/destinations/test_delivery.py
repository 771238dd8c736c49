"""Delivery end to end: the worker streams stored rows to a real receiver, at least once, in
stored order, through outages of the receiver and against transactions that commit late."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings
from service.store import destinations as store
from tests.destinations.receivers import Receiver
from tests.support.polling import wait_for
from tests.support.worker import running_worker

SECRET = "hook-secret-4d6f"

STORED_ORDER = """
SELECT a.id::text FROM delivery_log d
JOIN audit_log a ON a.seq BETWEEN d.seq_lo AND d.seq_hi AND (d.seqs IS NULL OR a.seq <@ d.seqs)
ORDER BY d.xid, a.seq
"""
# Every transaction that began before the last entry so far has ended.
NONE_OLDER_RUNNING = """
SELECT pg_snapshot_xmin(pg_current_snapshot()) > (SELECT max(xid) FROM delivery_log)
"""
INSERT_ROW = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
VALUES ($1, now(), $2, 'test', 'info', 'success', '{"code": "x", "params": {}}')
"""


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings whose delivery retries at most every second (the default cap is a minute)."""
    return dataclasses.replace(settings, destination_retry_max_s=1.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


async def add(pg: asyncpg.Connection, name: str, url: str, **fields: Any) -> int:
    ident = await store.add_destination(
        pg,
        name=name,
        kind=fields.pop("kind", "webhook"),
        url=url,
        format=fields.pop("format", "json"),
        filter=fields.pop("filter", ""),
        filter_json=fields.pop("filter_json", {}),
        options={"allow_private": True, **fields.pop("options", {})},
        secret=fields.pop("secret", SECRET),
        since=fields.pop("since", None),
        created_by="test",
    )
    assert ident is not None and not fields
    return ident


async def capture(settings: Settings, n: int, action: str = "doc.updated") -> list[str]:
    client = AuditClient.from_settings(dataclasses.replace(settings, capture_timeout_s=5.0))
    try:
        ids = [await client.capture(AuditEvent(action=action)) for _ in range(n)]
    finally:
        await client.aclose()
    assert all(ids)
    return [str(i) for i in ids]


def first_seen(items: list[dict[str, Any]]) -> list[str]:
    """The ids in the order they first arrived: what a receiver deduplicating by id keeps."""
    return list(dict.fromkeys(item["id"] for item in items))


async def test_a_receiver_down_for_a_while_gets_every_event_in_stored_order(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    ident = await add(pg, "siem", receiver.url("/hook"))
    receiver.down = True
    async with running_worker(fast):
        ids = await capture(fast, 300)

        async def failing() -> bool:
            found = await store.get_destination_by_id(pg, ident)
            return found is not None and found.state == "failing"

        await wait_for(failing, within_s=60)
        failed = await store.get_destination_by_id(pg, ident)
        assert failed is not None and failed.last_error and "503" in failed.last_error
        assert receiver.items == []  # nothing acknowledged: the position has not moved
        more = await capture(fast, 200)
        receiver.down = False

        async def all_arrived() -> bool:
            return set(ids + more) <= {item["id"] for item in receiver.items}

        await wait_for(all_arrived, within_s=60)
    stored = [row[0] for row in await pg.fetch(STORED_ORDER)]
    assert first_seen(receiver.items) == [i for i in stored if i in set(ids + more)]
    assert receiver.bad_signatures == 0 and receiver.refused >= 3
    done = await store.get_destination_by_id(pg, ident)
    assert done is not None and done.state == "active"
    assert done.delivered_total >= 500 and done.failed_attempts_total >= 3
    assert (await store.lag(pg, done.position))[0] == 0


async def test_a_transaction_that_commits_late_is_still_delivered_before_later_ones(
    fast: Settings, pg: asyncpg.Connection, database_url: str, receiver: Receiver
) -> None:
    await add(pg, "siem", receiver.url("/hook"))
    late = await asyncpg.connect(database_url)
    try:
        async with running_worker(fast):
            tx = late.transaction()
            await tx.start()
            early_id = uuid.uuid4()
            await late.execute(INSERT_ROW, early_id, "late.commit")  # holds its xid and seq
            after = await capture(fast, 20)  # stored and committed after it began
            await pg.execute(INSERT_ROW, uuid.uuid4(), "direct.insert")
            await tx.commit()

            async def arrived() -> bool:
                return {str(early_id), *after} <= {item["id"] for item in receiver.items}

            await wait_for(arrived, within_s=60)
    finally:
        await late.close()
    order = first_seen(receiver.items)
    assert order.index(str(early_id)) < min(order.index(i) for i in after)


async def test_the_filter_chooses_what_is_sent_and_the_rest_is_passed_over(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    await add(
        pg,
        "auth-only",
        receiver.url("/hook"),
        filter="action_prefix=auth.",
        filter_json={"action_prefix": "auth."},
    )
    async with running_worker(fast):
        noise = await capture(fast, 30, "doc.updated")
        wanted = await capture(fast, 10, "auth.login")

        async def arrived() -> bool:
            return set(wanted) <= {item["id"] for item in receiver.items}

        await wait_for(arrived, within_s=60)
    got = {item["id"] for item in receiver.items}
    assert not got & set(noise)
    assert all(item["action"] == "auth.login" for item in receiver.items)


async def test_backfill_sends_history_again_and_pause_holds_it(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    before = datetime.now(UTC)
    async with running_worker(fast):
        old = await capture(fast, 15)

        async def old_stored() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", old)
            return bool(n == len(old))

        await wait_for(old_stored, within_s=60)

        async def none_older_running() -> bool:  # else "now" starts at that transaction
            return bool(await pg.fetchval(NONE_OLDER_RUNNING))

        await wait_for(none_older_running, within_s=60)
        ident = await add(pg, "late-comer", receiver.url("/hook"))
        new = await capture(fast, 5)

        async def new_arrived() -> bool:
            return set(new) <= {item["id"] for item in receiver.items}

        await wait_for(new_arrived, within_s=60)
        assert not set(old) & {item["id"] for item in receiver.items}  # it starts now
        assert await store.set_paused(pg, "late-comer", True)
        await store.backfill(pg, ident, before)
        paused = await store.get_destination_by_id(pg, ident)
        assert paused is not None and paused.state == "paused"
        assert (await store.lag(pg, paused.position))[0] >= 20
        assert await store.set_paused(pg, "late-comer", False)

        async def old_arrived() -> bool:
            return set(old) <= {item["id"] for item in receiver.items}

        await wait_for(old_arrived, within_s=60)


async def test_the_item_json_sent_is_the_apis_item(pg: asyncpg.Connection) -> None:
    from service.api.body import json_response
    from service.store.items import SELECT_ITEMS, item
    from tests.support.integrity import store as store_rows
    from workers.delivery import stored_item

    await pg.execute(INSERT_ROW, uuid.uuid4(), "bare.event")  # nulls everywhere they may be
    await pg.execute(  # a whole second: msgspec writes no fraction then
        "INSERT INTO audit_log (id, ts, received_at, action, category, severity, outcome, "
        "entity_id, request_id, duration_ms, presentation) VALUES ($1, '2026-01-02T03:04:05Z', "
        "'2026-01-02T03:04:06Z', 'a.b', 'a', 'notice', 'failure', 'e-1', 'r-1', 1e-05, "
        '\'{"code": "c", "params": {"k": null}}\')',
        uuid.uuid4(),
    )
    await store_rows(pg, 3)  # realistic rows: actor, entity, metadata
    await pg.execute(
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, actor_id, "
        "actor_type, actor_name, actor_email, entity_type, entity_name, tenant, ip, user_agent, "
        "method, path, status, duration_ms, changes, metadata, presentation, source, "
        "received_via) VALUES ($1, now(), 'x.y', 'x', 'critical', 'success', 'u-1', 'user', "
        "'Ada \"A\" L', 'a@example.com', 'doc', 'Doc ✓', 't', '2001:db8::1', 'UA/1', 'POST', "
        '\'/p?q=1\', 201, 12.5, \'[{"field": "f", "old": null, "new": [1, 2.5]}]\', '
        '\'{"nested": {"a": null, "b": "\\u00e9"}}\', \'{"code": "c", "params": {}}\', '
        "'svc', 'http:ci')",
        uuid.uuid4(),
    )
    rows, _ = await store.next_rows(pg, store.Position("1", -1), store.StoredFilter(), max_rows=100)
    assert len(rows) == 6
    for row in rows:
        api = await pg.fetchrow(SELECT_ITEMS + "WHERE id = $1::uuid", row["id"])
        shown = json_response(item(api)).body  # what GET /api/v1/admin/audit-logs/{id} sends
        assert isinstance(shown, bytes)
        # The same JSON value (the stored JSON values keep PostgreSQL's spacing).
        assert json.loads(bytes(stored_item(row).json)) == json.loads(shown)


async def test_a_worker_with_destinations_off_leaves_them_to_others(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    assert Settings.from_env({"AUDITQ_DESTINATIONS": "off"}, published=False).destinations is False
    await add(pg, "siem", receiver.url("/hook"))
    quiet = dataclasses.replace(fast, destinations=False)
    async with running_worker(quiet):
        ids = await capture(quiet, 5)

        async def stored() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", ids)
            return bool(n == len(ids))

        await wait_for(stored, within_s=60)
        found = await store.get_destination(pg, "siem")
        assert found is not None and (await store.lag(pg, found.position))[0] >= 5
    assert receiver.items == []
    async with running_worker(fast):  # a worker that delivers takes them

        async def arrived() -> bool:
            return set(ids) <= {item["id"] for item in receiver.items}

        await wait_for(arrived, within_s=60)


async def test_two_workers_run_one_runner_per_destination_and_hand_over(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    ident = await add(pg, "siem", receiver.url("/hook"))
    holders = """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = $2
    """
    async with running_worker(fast), running_worker(fast):
        first = await capture(fast, 150)

        async def arrived() -> bool:
            return set(first) <= {item["id"] for item in receiver.items}

        await wait_for(arrived, within_s=60)
        assert await pg.fetchval(holders, store.LOCK_CLASS, ident) == 1
    # Both stopped: the lock went with them. No duplicates: one runner sent each batch once.
    got = [item["id"] for item in receiver.items if item["id"] in set(first)]
    assert sorted(got) == sorted(first)
    async with running_worker(fast):  # a worker that starts later takes the destination
        second = await capture(fast, 20)

        async def taken_over() -> bool:
            return set(second) <= {item["id"] for item in receiver.items}

        await wait_for(taken_over, within_s=60)
