"""The runtime roles against the destinations tables: the worker delivers (reads rows, moves
positions) but cannot add, redirect or remove a destination, nor hide rows from delivery; the
API manages destinations but cannot forge the delivery log."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.events import RequestInfo
from service.own_events import requested_by, token_actor
from service.store import db, tokens
from service.store import destinations as store
from tests.support.integrity import store as store_rows
from tests.support.integrity import url_as


@pytest.fixture
async def roles(
    pg: asyncpg.Connection, database_url: str
) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    password = secrets.token_hex(16)
    conns = {}
    for role in ("auditq_worker", "auditq_api"):
        await pg.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{password}'")
        conns[role] = await db.connect(url_as(database_url, role, password))
    yield conns
    for conn in conns.values():
        await conn.close()


async def test_the_worker_role_delivers_but_cannot_redirect_or_hide(
    pg: asyncpg.Connection, roles: dict[str, asyncpg.Connection]
) -> None:
    worker, api = roles["auditq_worker"], roles["auditq_api"]
    ident = await store.add_destination(
        api,
        name="siem",
        kind="webhook",
        url="https://siem.example.com/",
        format="json",
        filter="",
        filter_json={},
        options={},
        secret="s",
        since=None,
        created_by="t",
    )
    assert ident is not None
    stored = await store_rows(worker, 3)  # the worker's own insert leaves its entry
    found = await store.get_destination_by_id(worker, ident)
    assert found is not None and await store.read_secret(worker, ident) == "s"
    assert await store.try_lock(worker, ident)
    rows, end = await store.next_rows(worker, found.position, store.StoredFilter(), max_rows=100)
    assert [row["id"] for row in rows] == stored
    assert await store.advance(worker, ident, found.position, end, delivered=3)
    assert await store.record_failure(worker, ident, "boom") == 1
    for attack in (
        "UPDATE destination SET url = 'https://attacker.example/' WHERE id = $1",
        "DELETE FROM destination WHERE id = $1",
        "UPDATE destination_secret SET secret = 'x' WHERE destination_id = $1",
        "DELETE FROM delivery_log WHERE $1 > 0",
        "INSERT INTO delivery_log (xid, seq_lo, seq_hi, n) VALUES ('99999999', $1, $1, 1)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.execute(attack, ident)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await store.add_destination(
            worker,
            name="mine",
            kind="webhook",
            url="https://attacker.example/",
            format="json",
            filter="",
            filter_json={},
            options={},
            secret=None,
            since=None,
            created_by="w",
        )


async def test_the_api_role_manages_destinations_but_not_the_delivery_log(
    roles: dict[str, asyncpg.Connection],
) -> None:
    api = roles["auditq_api"]
    ident = await store.add_destination(
        api,
        name="siem",
        kind="webhook",
        url="https://siem.example.com/",
        format="json",
        filter="",
        filter_json={},
        options={},
        secret="s",
        since=None,
        created_by="t",
    )
    assert ident is not None
    assert await store.set_paused(api, "siem", True)
    found = await store.get_destination(api, "siem")
    assert found is not None
    await store.lag(api, found.position)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.execute("DELETE FROM delivery_log")
    assert await store.remove_destination(api, "siem")


# A thief of the API role's password, with plain SQL: each would stop or re-point the
# record's streaming (or move where it stands) with no admin record.
API_ATTACKS = (
    "UPDATE destination SET url = 'https://attacker.example/' WHERE id = $1",
    "UPDATE destination SET paused = true WHERE id = $1",
    "DELETE FROM destination WHERE id = $1",
    "UPDATE destination_state SET pos_xid = pg_snapshot_xmin(pg_current_snapshot()),"
    " pos_seq = 1000000 WHERE destination_id = $1",
    "DELETE FROM destination_state WHERE destination_id = $1",
    "UPDATE destination_secret SET secret = 'x' WHERE destination_id = $1",
    "DELETE FROM destination_secret WHERE destination_id = $1",
    "INSERT INTO destination (name, kind, url, format, created_by)"
    " VALUES ('mine' || $1::bigint, 'webhook', 'https://attacker.example/', 'json', 'x')",
    "SELECT nextval(pg_get_serial_sequence('public.destination', 'id')) + $1",
    "SELECT auditq_admin_event('destination.paused', '{}', 'destination', 'siem', '{}') IS NULL"
    " AND $1 > 0",
)


async def test_the_api_role_changes_destinations_only_with_their_record(
    pg: asyncpg.Connection, roles: dict[str, asyncpg.Connection]
) -> None:
    api = roles["auditq_api"]
    ident = await store.add_destination(
        api, name="siem", kind="webhook", url="https://siem.example.com/", format="json",
        filter="", filter_json={}, options={}, secret="s", since=None, created_by="t",
    )  # fmt: skip
    assert ident is not None
    before = await pg.fetch(ROWS)
    for attack in API_ATTACKS:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api.execute(attack, ident)
    assert await pg.fetch(ROWS) == before  # nothing changed
    # Through the functions, each change is stored with its event, in its transaction.
    found = await store.get_destination(api, "siem")
    assert found is not None
    moved = dataclasses.replace(found, url=f"https://u:{SECRET}@elsewhere.example/")
    assert await store.update_destination(
        api, moved, secret=SECRET, clear_secret=False, changed=["secret", "url"]
    )
    assert await store.set_paused(api, "siem", True)
    assert await store.set_paused(api, "siem", False)
    assert await store.backfill(api, ident, datetime.now(UTC) - timedelta(days=1)) is not None
    assert await store.remove_destination(api, "siem")
    assert await store.remove_destination(api, "siem") is False  # none: no event
    assert await store.add_destination(
        api, name="siem", kind="webhook", url=f"https://siem.example.com/h?key={SECRET}",
        format="json", filter="actor_id=u-1", filter_json={}, options={}, secret=None,
        since=None, created_by="t",
    ) is not None  # fmt: skip
    assert await pg.fetch(RECORDED) == [
        ("destination.created", "siem", None),
        ("destination.updated", "siem", '["secret", "url"]'),
        ("destination.paused", "siem", None),
        ("destination.resumed", "siem", None),
        ("destination.backfilled", "siem", None),
        ("destination.removed", "siem", None),
        ("destination.created", "siem", None),
    ]
    hosts = await pg.fetch(
        "SELECT metadata ->> 'host' FROM audit_log WHERE action LIKE $1 ORDER BY seq", "%.removed"
    )
    assert [h[0] for h in hosts] == ["elsewhere.example"]
    assert "u-1" not in await pg.fetchval("SELECT string_agg(metadata::text, '') FROM audit_log")
    leaked = await pg.fetchval(
        "SELECT count(*) FROM audit_log a WHERE a::text LIKE $1", f"%{SECRET}%"
    )
    assert leaked == 0  # nor a key in a URL: the host only


SECRET = "never-in-a-row-7f3a"
ROWS = """
SELECT d::text, s::text, c::text
FROM destination d JOIN destination_state s ON s.destination_id = d.id
LEFT JOIN destination_secret c ON c.destination_id = d.id
"""
RECORDED = """
SELECT action, entity_id, metadata ->> 'changed' AS changed FROM audit_log
WHERE action LIKE 'destination.%' ORDER BY seq
"""


# Of a token's and a destination's records: who asked, from where, and how each is stored.
ASKED = """
SELECT actor_id, actor_type, actor_name, request_id, host(ip) AS ip, method, path, source,
       severity, outcome, received_via, presentation ->> 'code' LIKE 'audit.%' AS coded
FROM audit_log WHERE action IN ('token.created', 'destination.created') ORDER BY seq
"""


async def test_a_token_and_a_destination_are_recorded_alike(
    pg: asyncpg.Connection, roles: dict[str, asyncpg.Connection]
) -> None:
    """Both records are stored by one function (schema.sql 3.6): the same `by` gives the
    same actor, request, source, severity and provenance."""
    api = roles["auditq_api"]
    request = RequestInfo(id="r-7", ip="203.0.113.9", method="POST", path="/api/v1/admin/x")
    by = requested_by(token_actor("ops"), "auditq-api", request)
    await tokens.create_token(api, name="t-1", role="reader", by=by)
    assert await store.add_destination(
        api, by=by, name="siem", kind="webhook", url="https://siem.example.com/",
        format="json", filter="", filter_json={}, options={}, secret=None, since=None,
        created_by="t",
    ) is not None  # fmt: skip
    token, destination = await pg.fetch(ASKED)
    assert token == destination
    assert tuple(token) == (
        "ops", "api_token", "ops", "r-7", "203.0.113.9", "POST", "/api/v1/admin/x",
        "auditq-api", "notice", "success", "api", True,
    )  # fmt: skip


async def test_the_worker_prunes_the_delivery_log_only_through_the_store_function(
    pg: asyncpg.Connection, roles: dict[str, asyncpg.Connection]
) -> None:
    from tests.destinations.test_prune import ORPHANS, store_old_and_new

    await store_old_and_new(pg)
    worker = roles["auditq_worker"]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker.execute("DELETE FROM delivery_log")
    assert await store.prune(worker) == 2  # what nobody can need, nothing else
    assert await pg.fetchval(ORPHANS) == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await roles["auditq_api"].fetchval(store.PRUNE, 10)
