"""Row changes made straight in an application's database end up stored in auditq, once each,
with their diff and the actor the transaction named (contract §12)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import asyncpg
import msgspec
import pytest

from service.capture import installer
from service.capture.relay import BATCH_ROWS, OutboxRelay, relay_client
from service.errors import ConfigError
from service.settings import Settings
from tests.support.capture import outbox_rows, relaying
from tests.support.cli import run_cli
from tests.support.polling import wait_for
from tests.support.worker import running_worker

# Each bulk statement spans three of the relay's batches (a statement's rows are read, sent
# and deleted a batch at a time): what 10,000 rows proved, in a third of the time.
ROWS = 3 * BATCH_ROWS
SSN = "ssn-secret-"  # a masked column's values: never stored anywhere
TOKEN = "tok-secret-"  # a column the redaction rules name (api_token): never stored either


async def stored(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def stored_count(database_url: str, action: str) -> int:
    rows = await stored(database_url, "SELECT count(*) FROM audit_log WHERE action = $1", action)
    n: int = rows[0][0]
    return n


async def test_bulk_statements_of_thousands_of_rows_become_one_event_per_row_each(
    settings: Settings, app_url: str, app: asyncpg.Connection, cli_env: None
) -> None:
    assert settings.database_url is not None
    status = await run_cli(
        "capture", "install", "--database-url", app_url, "--table", "shop.items",
        "--entity", "item", "--mask", "ssn",
    )  # fmt: skip
    assert status == 0
    async with running_worker(settings), relaying(settings, app_url):
        async with app.transaction():
            await app.execute("SELECT set_config('auditq.actor_id', 'u-creator', true)")
            await app.execute("SELECT set_config('auditq.request_id', 'req-bulk-1', true)")
            await app.execute(
                "INSERT INTO shop.items (id, name, qty, ssn, api_token, attrs) "
                "SELECT g, 'n' || g, g, $1 || g, $2 || g, jsonb_build_object('colour', 'red') "
                "FROM generate_series(1, $3) g",
                SSN,
                TOKEN,
                ROWS,
            )
        async with app.transaction():
            await app.execute("SELECT set_config('auditq.actor_id', 'svc-batch', true)")
            await app.execute("SELECT set_config('auditq.actor_type', 'service', true)")
            # updated_at is bookkeeping (ignored by default): only name, qty, attrs and the
            # masked ssn show in the diff.
            await app.execute(
                "UPDATE shop.items SET name = name || '!', qty = qty + 1, updated_at = now(), "
                "ssn = ssn || 'x', attrs = jsonb_build_object('colour', 'blue')"
            )
        async with app.transaction():
            await app.execute("SELECT set_config('auditq.actor_id', 'u-remover', true)")
            await app.execute("DELETE FROM shop.items")

        async def all_stored() -> bool:
            rows = await stored(
                settings.database_url,
                "SELECT count(*) FROM audit_log WHERE source = $1",
                f"db:{app_url.rpartition('/')[2]}/shop.items",
            )
            return bool(rows[0][0] >= 3 * ROWS)

        await wait_for(all_stored, within_s=240, interval=0.5)
        assert await outbox_rows(app) == 0

    created = await stored(
        settings.database_url,
        "SELECT entity_type, entity_id, actor_id, actor_type, request_id, changes::text AS c "
        "FROM audit_log WHERE action = 'item.created'",
    )
    assert len(created) == ROWS
    assert {r["entity_id"] for r in created} == {str(i) for i in range(1, ROWS + 1)}
    for r in created:
        i = int(r["entity_id"])
        assert r["entity_type"] == "item"
        assert (r["actor_id"], r["actor_type"], r["request_id"]) == (
            "u-creator",
            "user",
            "req-bulk-1",
        )
        assert msgspec.json.decode(r["c"]) == [
            {"field": "id", "new": i},
            {"field": "name", "new": f"n{i}"},
            {"field": "qty", "new": i},
            {"field": "ssn", "new": "[REDACTED]"},
            {"field": "api_token", "new": "[REDACTED]"},
            {"field": "attrs.colour", "new": "red"},
        ]

    updated = await stored(
        settings.database_url,
        "SELECT entity_id, actor_id, actor_type, request_id, changes::text AS c "
        "FROM audit_log WHERE action = 'item.updated'",
    )
    assert len(updated) == ROWS
    assert len({r["entity_id"] for r in updated}) == ROWS
    for r in updated:
        i = int(r["entity_id"])
        assert (r["actor_id"], r["actor_type"], r["request_id"]) == ("svc-batch", "service", None)
        assert msgspec.json.decode(r["c"]) == [
            {"field": "name", "old": f"n{i}", "new": f"n{i}!"},
            {"field": "qty", "old": i, "new": i + 1},
            {"field": "ssn", "old": "[REDACTED]", "new": "[REDACTED]"},
            {"field": "attrs.colour", "old": "red", "new": "blue"},
        ]

    deleted = await stored(
        settings.database_url,
        "SELECT entity_id, actor_id, changes::text AS c FROM audit_log "
        "WHERE action = 'item.deleted'",
    )
    assert len(deleted) == ROWS
    assert len({r["entity_id"] for r in deleted}) == ROWS
    for r in deleted:
        i = int(r["entity_id"])
        assert r["actor_id"] == "u-remover"
        assert msgspec.json.decode(r["c"]) == [
            {"field": "id", "old": i},
            {"field": "name", "old": f"n{i}!"},
            {"field": "qty", "old": i + 1},
            {"field": "ssn", "old": "[REDACTED]"},
            {"field": "api_token", "old": "[REDACTED]"},
            {"field": "attrs.colour", "old": "blue"},
        ]

    # The masked and the secret columns' values are nowhere in the store, not in any column.
    leaks = await stored(
        settings.database_url,
        "SELECT count(*) FROM audit_log a WHERE a::text LIKE '%secret-%'",
    )
    assert leaks[0][0] == 0


async def test_a_rolled_back_transaction_produces_nothing(
    settings: Settings, app_url: str, app: asyncpg.Connection, cli_env: None
) -> None:
    assert settings.database_url is not None
    assert (
        await run_cli("capture", "install", "--database-url", app_url, "--table", "shop.items") == 0
    )
    tx = app.transaction()
    await tx.start()
    await app.execute(
        "INSERT INTO shop.items (id, name) SELECT g, 'gone' FROM generate_series(1, 500) g"
    )
    await app.execute("UPDATE shop.items SET qty = 1")
    await tx.rollback()
    # A savepoint rolled back inside a committed transaction leaves nothing of its own either.
    async with app.transaction():
        await app.execute("INSERT INTO shop.items (id, name) VALUES (1000, 'kept')")
        try:
            async with app.transaction():
                await app.execute("INSERT INTO shop.items (id, name) VALUES (1001, 'undone')")
                raise RuntimeError("undo the savepoint")
        except RuntimeError:
            pass
    async with running_worker(settings), relaying(settings, app_url):

        async def marker_stored() -> bool:
            return await stored_count(settings.database_url or "", "items.created") >= 1

        await wait_for(marker_stored, within_s=60)
        await wait_for(lambda: _zero(outbox_rows(app)), within_s=30)
    rows = await stored(settings.database_url, "SELECT action, entity_id FROM audit_log")
    assert [(r["action"], r["entity_id"]) for r in rows] == [("items.created", "1000")]


async def _zero(count: Any) -> bool:
    return bool(await count == 0)


async def test_a_worker_with_capture_urls_relays_their_outboxes(
    settings: Settings, app_url: str, app: asyncpg.Connection
) -> None:
    """AUDITQ_CAPTURE_DATABASE_URLS: the worker (and so `auditq run`) relays on its own."""
    assert settings.database_url is not None
    await installer.install(app_url, "shop.items")
    await app.execute("INSERT INTO shop.items (id, name) VALUES (1, 'a'), (2, 'b')")
    worker_settings = dataclasses.replace(settings, capture_database_urls=(app_url,))
    async with running_worker(worker_settings):

        async def stored_both() -> bool:
            return await stored_count(settings.database_url or "", "items.created") == 2

        await wait_for(stored_both, within_s=60)
        await app.execute("UPDATE shop.items SET name = 'c' WHERE id = 1")

        async def stored_update() -> bool:
            return await stored_count(settings.database_url or "", "items.updated") == 1

        await wait_for(stored_update, within_s=60)
    assert await outbox_rows(app) == 0


def test_the_capture_urls_setting_is_read_and_checked() -> None:
    env = {"AUDITQ_CAPTURE_DATABASE_URLS": " postgresql://a/x , postgres://b/y,postgresql://a/x"}
    urls = Settings.from_env(env, published=False).capture_database_urls
    assert urls == ("postgresql://a/x", "postgres://b/y")
    assert Settings.from_env({}, published=False).capture_database_urls == ()
    bad = {"AUDITQ_CAPTURE_DATABASE_URLS": "redis://:hunter2@h/0"}
    with pytest.raises(ConfigError, match="postgresql://") as caught:
        Settings.from_env(bad, published=False)
    assert "hunter2" not in str(caught.value)


async def test_the_relay_is_woken_at_commit_and_one_relay_drains_an_outbox(
    settings: Settings, app_url: str, app: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await installer.install(app_url, "shop.items")
    stop = asyncio.Event()
    # Polling once a minute: only the NOTIFY of the commit can wake them within the wait.
    relays = [
        OutboxRelay(
            app_url,
            relay_client(settings),
            max_event_bytes=65536,
            max_future_s=300,
            poll_interval_s=60,
        )
        for _ in range(2)
    ]
    caplog.set_level(logging.INFO, logger="service.capture.relay")
    tasks = [asyncio.create_task(relay.run(stop)) for relay in relays]
    try:

        async def one_draining() -> bool:
            return any("draining its outbox" in r.getMessage() for r in caplog.records)

        await wait_for(one_draining, within_s=30)
        await app.execute(
            "INSERT INTO shop.items (id, name) SELECT g, 'x' FROM generate_series(1, 50) g"
        )
        await wait_for(lambda: _zero(outbox_rows(app)), within_s=30)
        assert sorted(relay.rows_done for relay in relays) == [0, 50]
        assert any("another relay drains this outbox" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for relay in relays:
            await relay.client.aclose()


async def test_the_relay_never_holds_a_lock_the_application_waits_on(
    settings: Settings, app_url: str, app: asyncpg.Connection
) -> None:
    """While it drains a large outbox, the application takes its strongest table lock at once,
    and the relay's locks are only ever on auditq_capture's own relations."""
    await installer.install(app_url, "shop.items")
    await app.execute(
        "INSERT INTO shop.items (id, name) SELECT g, 'x' FROM generate_series(1, 30000) g"
    )
    seen: set[str] = set()
    async with relaying(settings, app_url):  # no worker: Redis keeps what it is given
        await wait_for(lambda: _below(outbox_rows(app), 30_000), within_s=60, interval=0.01)
        while await outbox_rows(app) > 0:
            # The system catalogs left out: a statement's planning reads pg_class and its
            # index under ACCESS SHARE, which no application lock waits on.
            rows = await app.fetch(
                "SELECT l.relation::regclass::text AS rel FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "JOIN pg_class c ON c.oid = l.relation "
                "WHERE a.application_name = 'auditq-capture-relay' AND l.locktype = 'relation'"
                " AND c.relnamespace <> 'pg_catalog'::regnamespace"
            )
            seen.update(r["rel"] for r in rows)
            async with app.transaction():
                await app.execute("SET LOCAL lock_timeout = '2s'")
                await app.execute("LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE")
                await app.execute("UPDATE shop.items SET qty = 1 WHERE id = 1")
    assert seen, "the relay's locks were never sampled while it drained"
    assert all(rel.startswith("auditq_capture.") for rel in seen), seen


async def _below(count: Any, limit: int) -> bool:
    return bool(await count < limit)


async def test_a_reinstall_applies_to_the_running_relay_at_once(
    settings: Settings, app_url: str, app: asyncpg.Connection, redis: Any
) -> None:
    from tests.support.queue import queued_events

    await installer.install(app_url, "shop.items")
    async with relaying(settings, app_url):
        await app.execute("INSERT INTO shop.items (id, name) VALUES (1, 'alice')")
        await wait_for(lambda: _zero(outbox_rows(app)), within_s=30)
        # Now the name is to be masked, and the rows are parts: the same relay goes on.
        await installer.install(app_url, "shop.items", entity="part", mask=["name"])
        await app.execute("UPDATE shop.items SET name = 'bob'")
        await wait_for(lambda: _zero(outbox_rows(app)), within_s=30)
    events = await queued_events(redis, settings.queue)
    assert [(e["action"], e.get("changes")) for e in events] == [
        ("items.created", [{"field": "id", "new": 1}, {"field": "name", "new": "alice"}]),
        ("part.updated", [{"field": "name", "old": "[REDACTED]", "new": "[REDACTED]"}]),
    ]


async def test_a_change_whose_notify_never_came_is_relayed_by_the_poll(
    settings: Settings, app_url: str, app: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """The polling fallback: an outbox row that arrived with no NOTIFY (written here straight
    into the outbox, as a superuser could) is still relayed, within a few poll intervals."""
    await installer.install(app_url, "shop.items")
    stop = asyncio.Event()
    relay = OutboxRelay(
        app_url, relay_client(settings), max_event_bytes=65536, max_future_s=300,
        poll_interval_s=0.5,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="service.capture.relay")
    task = asyncio.create_task(relay.run(stop))
    try:

        async def draining() -> bool:
            return any("draining its outbox" in r.getMessage() for r in caplog.records)

        await wait_for(draining, within_s=30)
        await app.execute(
            "INSERT INTO auditq_capture.outbox (table_id, operation, entity_id, changes,"
            " captured_at, xid) SELECT table_id, 'c', '5', '{\"id\":[null,5]}', now(),"
            " pg_current_xact_id() FROM auditq_capture.captured_tables"
        )
        await wait_for(lambda: _zero(outbox_rows(app)), within_s=30)
        assert relay.rows_done == 1
    finally:
        stop.set()
        await task
        await relay.client.aclose()
